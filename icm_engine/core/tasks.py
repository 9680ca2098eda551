"""Tasks are data: a prompt template, label words, the input columns, a consistency rule.

Definitions live as JSON in icm_engine/task_defs/; a custom task is the same dict built by
a person. Labels are binary claims: index 0 means False, index 1 means True.

Consistency rules (each looks only at inputs: the example's group and key, never gold):
- exclusive: in a group, claims with different keys cannot both be True, and claims with
  the same key must agree (GSM8K-verification: key = the solution's final answer).
- asymmetric_pair: "A beats B" and "B beats A" (one group, two keys) cannot both be True,
  nor both False.
- complementary: a group holds two claims of which exactly one is True
  ("this review is positive" / "this review is negative"); checked pairwise as for
  asymmetric_pair.
- none: no constraint.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from itertools import product
from typing import Iterator, Mapping

RULES = ("exclusive", "asymmetric_pair", "complementary", "none")
LABEL_NAMES = ("False", "True")


@dataclass(frozen=True)
class Example:
    """One unlabeled input as the search sees it: no gold label lives here."""

    uid: str
    fields: Mapping[str, str]
    group: str | None = None
    key: str | None = None


# A template substitutes named fields and nothing else: {name}, with {{ and }} for literal braces.
# str.format would also evaluate {text.__class__}, {text[0]} and nested format specs, which render
# Python internals from a user's template.
_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")


def _template_parts(template: str) -> Iterator[tuple[str, str | None]]:
    """(literal text, field name or None) pieces; a brace that is not {name}, {{ or }} is refused."""
    start = 0
    for match in _TEMPLATE_TOKEN.finditer(template):
        token, name = match.group(0), match.group(1)
        if name is None and token not in ("{{", "}}"):
            end = template.find("}", match.start())
            shown = template[match.start():end + 1 if end >= 0 else match.start() + 20]
            raise ValueError(f"template: {shown!r} is not a field; write fields as {{name}} (letters, digits, _) "
                             f"and literal braces as {{{{ and }}}}")
        yield template[start:match.start()] + (token[0] if name is None else ""), name
        start = match.end()
    yield template[start:], None


def template_fields(template: str) -> list[str]:
    """The field names a template uses, in order of first use."""
    return list(dict.fromkeys(name for _, name in _template_parts(template) if name))


def render_template(template: str, values: Mapping[str, str]) -> str:
    return "".join(text + ("" if name is None else str(values[name])) for text, name in _template_parts(template))


@dataclass(frozen=True)
class Task:
    name: str
    template: str  # str.format template over `fields`; ends right before the label word
    label_words: tuple[str, str] = (" False", " True")
    fields: tuple[str, ...] = ()
    rule: str = "none"
    group_field: str | None = None  # dataset column holding the consistency group
    key_field: str | None = None  # dataset column holding the consistency key
    separator: str = "\n\n"  # between demonstrations
    description: str = ""
    pairwise_fields: tuple[str, str] | None = None  # (chosen-side, other-side) fields of a pairwise task

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"task {self.name!r}: rule must be one of {RULES}, got {self.rule!r}")
        if len(self.label_words) != 2 or self.label_words[0] == self.label_words[1]:
            raise ValueError(f"task {self.name!r}: need two distinct label words")
        used = set(template_fields(self.template))
        missing = used - set(self.fields)
        if missing:
            raise ValueError(f"task {self.name!r}: template uses undeclared fields {sorted(missing)}")
        if self.rule != "none" and not self.group_field:
            raise ValueError(f"task {self.name!r}: rule {self.rule!r} needs a group_field")
        if self.rule == "exclusive" and not self.key_field:
            raise ValueError(f"task {self.name!r}: rule 'exclusive' needs a key_field")

    def render_query(self, example: Example) -> str:
        """The prompt text for one example, ending where the label word goes."""
        return render_template(self.template, example.fields)

    def render_label(self, label: int) -> str:
        """The text after a demonstration's query: its label word and the separator."""
        return self.label_words[label] + self.separator

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "Task":
        data = dict(data)
        data["label_words"] = tuple(data.get("label_words", (" False", " True")))
        data["fields"] = tuple(data.get("fields", ()))
        if data.get("pairwise_fields") is not None:
            data["pairwise_fields"] = tuple(data["pairwise_fields"])
        return cls(**data)


def builtin_task_names() -> list[str]:
    folder = resources.files("icm_engine.core").joinpath("task_defs")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_task(name_or_dict: str | Mapping) -> Task:
    """A built-in task by name, or a custom task from its dict."""
    if not isinstance(name_or_dict, str):
        return Task.from_dict(name_or_dict)
    # a name, never a path: "../../x" must not reach some other JSON file
    if name_or_dict not in builtin_task_names():
        raise KeyError(f"unknown task {name_or_dict!r}; built-in tasks: {', '.join(builtin_task_names())}")
    path = resources.files("icm_engine.core").joinpath("task_defs", f"{name_or_dict}.json")
    if not path.is_file():
        raise KeyError(f"unknown task {name_or_dict!r}; built-in tasks: {', '.join(builtin_task_names())}")
    return Task.from_dict(json.loads(path.read_text()))


def is_inconsistent(rule: str, a: Example, label_a: int, b: Example, label_b: int) -> bool:
    """c(x_a, y_a, x_b, y_b) of the paper: True where the two labels contradict each other."""
    if rule == "none" or a.group is None or a.group != b.group:
        return False
    if rule == "exclusive":
        if a.key == b.key:
            return label_a != label_b
        return label_a == 1 and label_b == 1
    # asymmetric_pair and complementary: exactly one of the two claims holds
    return label_a == label_b


def consistent_options(rule: str, a: Example, b: Example) -> list[tuple[int, int]]:
    """Every consistent labeling of a pair (Algorithm 2, line 4); for exclusive this includes both False."""
    return [(ya, yb) for ya, yb in product((0, 1), repeat=2) if not is_inconsistent(rule, a, ya, b, yb)]


@dataclass
class ConsistencyIndex:
    """Which examples can conflict: precomputed group membership so I(D) stays cheap."""

    rule: str
    examples: list[Example]
    groups: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rule == "none":
            return
        for index, example in enumerate(self.examples):
            if example.group is not None:
                self.groups.setdefault(example.group, []).append(index)

    def partners(self, index: int) -> list[int]:
        group = self.examples[index].group
        if self.rule == "none" or group is None:
            return []
        return [other for other in self.groups.get(group, []) if other != index]

    def inconsistent_pairs(self, labels: Mapping[int, int]) -> list[tuple[int, int]]:
        """Unordered pairs (i < j) of labeled examples whose labels contradict; I(D) is their count."""
        pairs = []
        for members in self.groups.values():
            labeled = [m for m in members if m in labels]
            for position, i in enumerate(labeled):
                for j in labeled[position + 1 :]:
                    if is_inconsistent(self.rule, self.examples[i], labels[i], self.examples[j], labels[j]):
                        pairs.append((min(i, j), max(i, j)))
        return sorted(pairs)
