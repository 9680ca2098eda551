"""The app's door to the database: the long-lived handle and every read a page makes.

One RunManager per database file for the whole server process (st.cache_resource): DuckDB lets
only one process hold the file, and the manager's worker threads must outlive page reruns.
A run's readers are st.cache_data keyed by the run's last event number, so a rerun with nothing
new costs no query, and a new step is picked up at once; what never changes once stored (a
dataset, an evaluation) is keyed by its id. Lists that any run's step changes (runs, datasets)
are read fresh. Pages never touch manager.store themselves (tests/test_layers.py checks): what
they need of it, engine calls that take the store included, is a function here. Widgets that
several pages share (the run picker, the status panel) are in app/widgets.py.
"""
from __future__ import annotations

import atexit
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from icm_engine.core.config import RunConfig
from icm_engine.core.tasks import Example, Task
from icm_engine.evaluation.baseline_export import export_baseline
from icm_engine.evaluation.trust import TrustReport, diagnose
from icm_engine.evaluation.trust import seed_runs as trust_seed_runs
from icm_engine.runs import batches
from icm_engine.runs.export import export
from icm_engine.runs.export import labeled_frame as export_frame
from icm_engine.runs.manager import RunManager
from icm_engine.store.run_loader import load_dataset_inputs

from . import readers


# ----- the handle -----

@st.cache_resource(show_spinner="Opening the database…", on_release=lambda manager: manager.shutdown())
def get_manager(path: str) -> RunManager:
    manager = RunManager(path)
    # Workers are daemon threads: pause them at a step boundary and close DuckDB cleanly on exit.
    atexit.register(manager.shutdown)
    return manager


# ----- lists that any step changes: read fresh -----

def runs(manager: RunManager) -> pd.DataFrame:
    """Every run with its dataset and coverage."""
    return manager.store.runs()


def batch_rows(manager: RunManager, run_id: int) -> pd.DataFrame:
    """A batched run's batch runs, in order: batch (k/B), run, state (its worker's where one holds
    it), examples, labeled (of its own examples) and coverage. Empty before the model loaded."""
    rows = batches.batch_table(manager.store, run_id)
    return pd.DataFrame({
        "batch": [f"{r.index}/{r.total}" for r in rows], "run": [r.run_id for r in rows],
        "state": [manager.status(r.run_id).state for r in rows], "examples": [r.examples for r in rows],
        "labeled": [r.labeled for r in rows], "coverage": [r.labeled / max(r.examples, 1) for r in rows]},
        columns=["batch", "run", "state", "examples", "labeled", "coverage"])


def is_batched(manager: RunManager, run_id: int) -> bool:
    """Whether the run is a batched run, whose batch runs search (runs/batches.py)."""
    return batches.is_batched(run_info(manager, run_id)["config"])


def datasets(manager: RunManager) -> pd.DataFrame:
    return manager.store.datasets()


def evals(manager: RunManager) -> pd.DataFrame:
    return manager.store.evals()


def run_info(manager: RunManager, run_id: int) -> dict:
    """The run's row (status, config, last_seq): one cheap query, the key the cached readers use."""
    return manager.store.run(run_id)


# ----- one run at one event number: cached by it -----

@dataclass
class RunView:
    """What the pages need to draw one run at one moment (one event number)."""

    run: dict
    task: Task
    examples: list[Example]
    gold: dict[int, int] | None
    events: pd.DataFrame
    flips: pd.DataFrame
    labels: pd.DataFrame
    excluded: set[int]
    settings: RunConfig  # as the run was started (run_settings)
    alpha: float  # in force now (steering changes it); the settings' until the first step
    t0: float
    params: pd.DataFrame  # what each set_param event changed (Store.param_changes)

    @property
    def uids(self) -> list[str]:
        return [e.uid for e in self.examples]

    @property
    def last_iteration(self) -> int:
        return int(self.run["last_iteration"]) if self.run["last_iteration"] is not None else 0


def run_settings(run: dict) -> RunConfig:
    """A run's settings as the engine reads them, from its row (run_info, RunView.run): the one
    place the studio opens a stored config."""
    return RunConfig.from_dict(run["config"])


def run_view(manager: RunManager, run_id: int) -> RunView:
    run = run_info(manager, run_id)
    task, examples, gold = _dataset(manager, manager.key, int(run["dataset_id"]))
    events, flips, labels, excluded, steering, params = _run_frames(manager, manager.key, run_id, int(run["last_seq"]))
    settings = run_settings(run)
    alpha, t0 = steering or (settings.search.alpha, settings.search.t0)
    return RunView(run, task, examples, gold, events, flips, labels, excluded, settings, alpha, t0, params)


@st.cache_data(show_spinner=False, max_entries=32)
def _dataset(_manager: RunManager, manager_key: str, dataset_id: int):
    task, examples = load_dataset_inputs(_manager.store, dataset_id)
    return task, examples, _manager.store.load_gold(dataset_id)  # gold for the audit views only


@st.cache_data(show_spinner=False, max_entries=32)
def _run_frames(_manager: RunManager, manager_key: str, run_id: int, last_seq: int):
    store = _manager.store
    snapshot = store.load_snapshot(run_id)
    steering = (snapshot.alpha, snapshot.t0) if snapshot else None
    return (store.events(run_id), store.flips(run_id), store.labels(run_id),
            set(snapshot.excluded) if snapshot else set(), steering, store.param_changes(run_id))


def dataset_task(manager: RunManager, dataset_id: int) -> Task:
    return _dataset(manager, manager.key, int(dataset_id))[0]


@st.cache_data(show_spinner=False, max_entries=64)
def _history(_manager: RunManager, manager_key: str, run_id: int, last_seq: int, example: int) -> pd.DataFrame:
    return _manager.store.label_history(run_id, example)


def label_history(manager: RunManager, view: RunView, example: int) -> pd.DataFrame:
    """Every flip of one example with the step that caused it, as of the view's event number."""
    return _history(manager, manager.key, int(view.run["run_id"]), int(view.run["last_seq"]), int(example))


@st.cache_data(show_spinner=False, max_entries=32)
def _matrix(_view_flips: pd.DataFrame, manager_key: str, run_id: int, last_seq: int, n_examples: int, last: int):
    return readers.label_matrix(_view_flips, n_examples, last)


def label_matrix(manager: RunManager, view: RunView) -> pd.DataFrame:
    """Cached: replaying every flip is the costliest thing a refresh does."""
    return _matrix(view.flips, manager.key, int(view.run["run_id"]), int(view.run["last_seq"]),
                   len(view.examples), view.last_iteration)


# ----- what never changes once stored: cached by its id -----

@st.cache_data(show_spinner=False, max_entries=16)
def _eval_rows(_manager: RunManager, manager_key: str, eval_id: int) -> pd.DataFrame:
    return _manager.store.eval_rows(eval_id)


def eval_rows(manager: RunManager, eval_id: int) -> pd.DataFrame:
    """A stored evaluation's rows; `icm eval` cannot write the file while the studio holds it."""
    return _eval_rows(manager, manager.key, int(eval_id))


# ----- engine work on the store, for the pages that ask for it -----

def labeled_frame(manager: RunManager, run_id: int) -> pd.DataFrame:
    """Every example with its label, source and confidence, as the CSV export has them."""
    return export_frame(manager.store, run_id)


def export_file(manager: RunManager, run_id: int, fmt: str) -> bytes:
    """Byte for byte what `icm export` writes (the Export page keeps it per event number)."""
    return export(manager.store, run_id, fmt)


def seed_runs(manager: RunManager, run_id: int) -> list[int]:
    return trust_seed_runs(manager.store, run_id)


def trust_report(manager: RunManager, run_id: int, backend, seed_run_ids: list[int]) -> TrustReport:
    """Every trust check of one run (the Trust page keeps it per event number and choice)."""
    return diagnose(manager.store, run_id, backend, seed_run_ids=seed_run_ids)


def baseline_file(manager: RunManager, report: TrustReport, name: str, fmt: str) -> bytes:
    """One baseline's labels of a trust report, in a run's export format (csv or sft)."""
    return export_baseline(manager.store, report.run_id, name, report.baseline_labels[name],
                           report.baseline_p_true.get(name), fmt)
