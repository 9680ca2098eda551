"""One declared settings surface: every field of a run's config (SearchConfig, ModelConfig, LearnerConfig) is
offered by a CLI flag of `icm run` or a widget of the studio's Run form, both built from the
field's declaration (core/settings.py) and checked against it here, or is exempt with a reason."""
from __future__ import annotations

import argparse

import pytest

from app.pages.run import widget_key
from icm_engine.cli.entry import build_parser
from icm_engine.core.config import LearnerConfig, ModelConfig, SearchConfig
from icm_engine.core.settings import settings
from tests.conftest import add_polarity_dataset
from tests.test_app_pages import open_page

CONFIGS = (SearchConfig, ModelConfig, LearnerConfig)
DECLARED = [(config, s) for config in CONFIGS for s in settings(config)]


def run_flags() -> dict[str, argparse.Action]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags: dict[str, argparse.Action] = {}
    for action in commands.choices["run"]._actions:
        flags.setdefault(action.dest, action)  # the declared flag, not an alias such as --no-consistency
    return flags


@pytest.fixture
def form_widgets(manager) -> dict:
    add_polarity_dataset(manager)  # the form is drawn once there is data to run on
    at = open_page(manager, "run")
    assert not at.exception
    return {w.key: w for kind in ("selectbox", "number_input", "checkbox") for w in at.get(kind)}


def test_every_setting_has_a_flag_or_a_widget_or_an_exemption(form_widgets):
    flags = run_flags()
    missing, exempt_but_offered = [], []
    for config, s in DECLARED:
        offered = [where for where, found in (("flag", s.option in flags), ("widget", widget_key(s) in form_widgets))
                   if found]
        if s.exempt is None and not offered:
            missing.append(f"{config.__name__}.{s.name}")
        if s.exempt is not None and offered:
            exempt_but_offered.append(f"{config.__name__}.{s.name} ({', '.join(offered)})")
    assert not missing, f"settings offered nowhere (give them setting(..., exempt='why') if meant): {missing}"
    assert not exempt_but_offered, f"exempt settings that are offered after all: {exempt_but_offered}"


def test_flags_are_built_from_the_declarations():
    flags = run_flags()
    for config, s in DECLARED:
        action = flags.get(s.option)
        if action is None:
            continue
        assert action.option_strings[0] == s.flag and s.help in action.help, s.name
        if s.choices:
            assert tuple(action.choices) == s.choices, s.name
        elif s.kind is bool:
            assert isinstance(action, argparse.BooleanOptionalAction), s.name
        else:
            assert action.type is s.kind, s.name
        if config in (ModelConfig, LearnerConfig):  # model and learner flags default to the declaration; search flags to the preset
            assert action.default == s.default, s.name


def test_widgets_are_built_from_the_declarations(form_widgets):
    for config, s in DECLARED:
        widget = form_widgets.get(widget_key(s))
        if widget is None:
            continue
        assert widget.label == s.label, s.name
        if s.name == "name":  # the model picker offers bundled names, a local path or a server instead
            continue
        assert widget.help == s.help, s.name
        if s.choices:
            assert widget.options == [s.describe(c) for c in s.choices], s.name
        elif s.kind is not bool:
            assert (widget.min, widget.max) == (s.low, s.high), s.name


def test_a_setting_placed_on_no_row_still_gets_its_widget(manager, monkeypatch):
    import app.pages.run as run_page

    rows = tuple(tuple(name for name in row if name != "beta") for row in run_page.MORE_ROWS)
    monkeypatch.setattr(run_page, "MORE_ROWS", rows)
    add_polarity_dataset(manager)
    at = open_page(manager, "run")
    assert not at.exception and at.number_input(key="run.beta").value == SearchConfig().beta
