"""The app's long-lived handle and its cached readers; every page reads through here.

One RunManager per database file for the whole server process (st.cache_resource): DuckDB lets
only one process hold the file, and the manager's worker threads must outlive page reruns.
A run's readers are st.cache_data keyed by the run's last event number, so a rerun with nothing
new costs no query, and a new step is picked up at once; what never changes once stored (a
dataset, an evaluation) is keyed by its id. Lists that any run's step changes (runs, datasets)
are read fresh. Pages never touch manager.store themselves (tests/test_layers.py checks).
"""
from __future__ import annotations

import atexit
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from icm_engine.core.tasks import Example, Task
from icm_engine.evaluation.baseline_export import export_baseline
from icm_engine.evaluation.trust import TrustReport, diagnose
from icm_engine.evaluation.trust import seed_runs as trust_seed_runs
from icm_engine.runs.export import export
from icm_engine.runs.export import labeled_frame as export_frame
from icm_engine.runs.manager import RunManager, RunStatus
from icm_engine.store.location import default_db
from icm_engine.store.run_loader import load_dataset_inputs

from . import readers

CURRENT_RUN = "studio.run_id"  # the run the pages show, shared by all pages of a session


def db_path() -> str:
    return default_db()


@st.cache_resource(show_spinner="Opening the database…", on_release=lambda manager: manager.shutdown())
def get_manager(path: str) -> RunManager:
    manager = RunManager(path)
    # Workers are daemon threads: pause them at a step boundary and close DuckDB cleanly on exit.
    atexit.register(manager.shutdown)
    return manager


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
    alpha: float  # in force now (steering changes it); the config's until the first step
    t0: float
    params: pd.DataFrame  # what each set_param event changed (Store.param_changes)

    @property
    def uids(self) -> list[str]:
        return [e.uid for e in self.examples]

    @property
    def last_iteration(self) -> int:
        return int(self.run["last_iteration"]) if self.run["last_iteration"] is not None else 0


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


def run_info(manager: RunManager, run_id: int) -> dict:
    """The run's row (status, config, last_seq): one cheap query, the key the cached readers use."""
    return manager.store.run(run_id)


def run_view(manager: RunManager, run_id: int) -> RunView:
    run = run_info(manager, run_id)
    task, examples, gold = _dataset(manager, manager.key, int(run["dataset_id"]))
    events, flips, labels, excluded, steering, params = _run_frames(manager, manager.key, run_id, int(run["last_seq"]))
    alpha, t0 = steering or (run["config"]["search"]["alpha"], run["config"]["search"]["t0"])
    return RunView(run, task, examples, gold, events, flips, labels, excluded, alpha, t0, params)


def runs(manager: RunManager) -> pd.DataFrame:
    """Every run with its dataset and coverage."""
    return manager.store.runs()


def datasets(manager: RunManager) -> pd.DataFrame:
    return manager.store.datasets()


def dataset_task(manager: RunManager, dataset_id: int) -> Task:
    return _dataset(manager, manager.key, int(dataset_id))[0]


@st.cache_data(show_spinner=False, max_entries=64)
def _history(_manager: RunManager, manager_key: str, run_id: int, last_seq: int, example: int) -> pd.DataFrame:
    return _manager.store.label_history(run_id, example)


def label_history(manager: RunManager, view: RunView, example: int) -> pd.DataFrame:
    """Every flip of one example with the step that caused it, as of the view's event number."""
    return _history(manager, manager.key, int(view.run["run_id"]), int(view.run["last_seq"]), int(example))


def evals(manager: RunManager) -> pd.DataFrame:
    return manager.store.evals()


@st.cache_data(show_spinner=False, max_entries=16)
def _eval_rows(_manager: RunManager, manager_key: str, eval_id: int) -> pd.DataFrame:
    return _manager.store.eval_rows(eval_id)


def eval_rows(manager: RunManager, eval_id: int) -> pd.DataFrame:
    """A stored evaluation's rows; `icm eval` cannot write the file while the studio holds it."""
    return _eval_rows(manager, manager.key, int(eval_id))


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


@st.cache_data(show_spinner=False, max_entries=32)
def _matrix(_view_flips: pd.DataFrame, manager_key: str, run_id: int, last_seq: int, n_examples: int, last: int):
    return readers.label_matrix(_view_flips, n_examples, last)


def label_matrix(manager: RunManager, view: RunView) -> pd.DataFrame:
    """Cached: replaying every flip is the costliest thing a refresh does."""
    return _matrix(view.flips, manager.key, int(view.run["run_id"]), int(view.run["last_seq"]),
                   len(view.examples), view.last_iteration)


def run_label(row) -> str:
    """A run's option text. It must not change while the run is picked: Streamlit's selectbox
    sends back the option's text, and text that no longer exists (a state that moved from paused
    to running) resets the widget to the newest run. The state is shown beside the picker."""
    return f"#{int(row['run_id'])} {row['name']} · {row['dataset_name']}"


def run_picker(manager: RunManager, page: str, label: str = "Run", shared: bool = True,
               avoid: int | None = None) -> int | None:
    """A run selectbox; with shared=True it follows and sets the session's current run. `avoid`:
    a run not to start on (Compare's second picker starts on the newest run the first is not on)."""
    stored = runs(manager)
    if not len(stored):
        st.info("No runs yet: load data on the Data page, then start a run on the Run page.")
        return None
    ids = [int(r) for r in stored["run_id"]][::-1]  # newest first
    names = {int(r["run_id"]): run_label(r) for _, r in stored.iterrows()}
    key = f"{page}.run"
    synced = f"{key}.synced"  # the session's run as this picker last agreed with it
    current = st.session_state.get(CURRENT_RUN)
    # Follow the session's run only when it moved elsewhere (another page, a new run): a choice the
    # user just made in this widget arrives in its key before this line runs, and must win.
    if shared and current in ids and (st.session_state.get(synced) != current or key not in st.session_state):
        st.session_state[key] = current  # set before the widget exists, so no default clashes
    if st.session_state.get(key) not in ids:
        st.session_state[key] = next((r for r in ids if r != avoid), ids[0])
    chosen = st.selectbox(label, ids, format_func=lambda r: names[r], key=key)
    # the worker's state where one runs it (loading, running), else the stored one (interrupted included)
    st.caption(f"Run #{chosen} is {manager.status(chosen).state}.")
    if shared:
        st.session_state[CURRENT_RUN] = st.session_state[synced] = chosen
    return chosen


def show_status(manager: RunManager, run_id: int) -> RunStatus:
    """State, progress through the step budget, model loading, and errors of one run."""
    status = manager.status(run_id)
    iteration = status.iteration if status.iteration is not None else -1
    steps = status.steps or 1
    cols = st.columns(4)
    cols[0].metric("State", "pausing (after this step)" if status.pausing else status.state)
    cols[1].metric("Iteration", f"{max(iteration, 0)} / {steps}")
    cols[2].metric("Labeled", "–" if status.labeled is None else status.labeled)
    cols[3].metric("Steps this session", status.steps_taken)
    if status.applying == "final_pass":
        st.info("Labeling the rest: each unlabeled example is scored given the labeled set (the final pass)…")
    if status.state == "loading":
        st.progress(status.progress or 0.0, text=status.message or "loading the model…")
    elif status.state == "running" and iteration < 0:
        st.progress(0.0, text=readers.before_first_step("running"))
    else:
        st.progress(min(max(iteration + 1, 0) / (steps + 1), 1.0))
    if status.error:
        st.error(f"Run failed: {status.error}")
        if status.traceback:
            with st.expander("Details for a bug report (an unexpected error)"):
                st.code(status.traceback)
    if status.steering_error:
        st.warning(f"Last steering action was refused: {status.steering_error}")
    return status


def is_live(status: RunStatus) -> bool:
    """Whether a page showing this run should keep refreshing."""
    return status.state in ("loading", "running") or status.busy
