"""How a setting is declared once and offered everywhere.

A config dataclass (config.SearchConfig, config.ModelConfig) declares each field with `setting()`:
its default, one line of help, the label a form shows, its choices or the range a form offers.
The surfaces read those declarations back with `settings()`: the CLI builds one flag per field
(cli/options.py) and the studio's Run form one widget per field (app/pages/run.py), so a new
field appears in both without touching either. A field no surface should offer says why in
`exempt`; tests/test_settings_surface.py fails on a field that is offered nowhere and not exempt.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping


def setting(default: Any, help: str, *, label: str, choices: tuple | None = None,
            choice_names: Mapping[str, str] | None = None, low: float | None = None, high: float | None = None,
            kind: type | None = None, flag: str | None = None, form_format: str | None = None,
            exempt: str | None = None):
    """A dataclass field with its declaration in the field's metadata.

    low/high: the range the Run form offers (what the config accepts is checked by the config
    itself, which may be wider); kind: the value's type where the default (None) cannot say;
    flag: the CLI flag where it is not --field-name; form_format: the form's printf format for a
    number; exempt: why neither the CLI nor the form offers this field.
    """
    metadata = {"help": help, "label": label, "choices": choices, "choice_names": dict(choice_names or {}),
                "low": low, "high": high, "kind": kind or type(default), "flag": flag, "form_format": form_format,
                "exempt": exempt}
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Setting:
    """One declared field, as a surface reads it."""

    name: str
    default: Any
    kind: type  # bool, int, float or str
    help: str
    label: str
    choices: tuple | None
    choice_names: dict
    low: float | None
    high: float | None
    flag: str  # e.g. "--patience-sweeps"
    form_format: str | None
    exempt: str | None

    @property
    def option(self) -> str:
        """The name the surfaces give it: the CLI's argparse attribute ("model" for --model) and,
        as run.<option>, the Run form's widget key."""
        return self.flag.lstrip("-").replace("-", "_")

    def describe(self, value: Any) -> str:
        """A choice's name as the form shows it (the value itself where none is declared)."""
        return self.choice_names.get(value, value)


def settings(config_class) -> list[Setting]:
    """The declared fields of a config dataclass, in declaration order."""
    declared = []
    for f in dataclasses.fields(config_class):
        if "help" not in f.metadata:
            raise TypeError(f"{config_class.__name__}.{f.name} is not declared with setting()")
        m = f.metadata
        declared.append(Setting(
            name=f.name, default=f.default, kind=m["kind"], help=m["help"], label=m["label"], choices=m["choices"],
            choice_names=m["choice_names"], low=m["low"], high=m["high"],
            flag=m["flag"] or "--" + f.name.replace("_", "-"), form_format=m["form_format"], exempt=m["exempt"]))
    return declared
