"""The app's long-lived handle and its cached readers; every page reads through here.

One RunManager per database file for the whole server process (st.cache_resource): DuckDB lets
only one process hold the file, and the manager's worker threads must outlive page reruns.
Readers are st.cache_data keyed by the run's last event number, so a rerun with nothing new
costs no query, and a new step is picked up at once.
"""
from __future__ import annotations

import atexit
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from icm_engine.runs.manager import RunManager, RunStatus
from icm_engine.store.database import default_db
from icm_engine.core.tasks import Example, Task, load_task

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

    @property
    def uids(self) -> list[str]:
        return [e.uid for e in self.examples]

    @property
    def last_iteration(self) -> int:
        return int(self.run["last_iteration"]) if self.run["last_iteration"] is not None else 0


@st.cache_data(show_spinner=False, max_entries=32)
def _dataset(_manager: RunManager, manager_key: str, dataset_id: int):
    store = _manager.store
    return load_task(store.dataset_task(dataset_id)), store.load_examples(dataset_id), store.load_gold(dataset_id)


@st.cache_data(show_spinner=False, max_entries=32)
def _run_frames(_manager: RunManager, manager_key: str, run_id: int, last_seq: int):
    store = _manager.store
    snapshot = store.load_snapshot(run_id)
    return store.events(run_id), store.flips(run_id), store.labels(run_id), set(snapshot.excluded) if snapshot else set()


def run_view(manager: RunManager, run_id: int) -> RunView:
    run = manager.store.run(run_id)
    task, examples, gold = _dataset(manager, manager.key, int(run["dataset_id"]))
    events, flips, labels, excluded = _run_frames(manager, manager.key, run_id, int(run["last_seq"]))
    return RunView(run, task, examples, gold, events, flips, labels, excluded)


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
    runs = manager.store.runs()
    if not len(runs):
        st.info("No runs yet: load data on the Data page, then start a run on the Run page.")
        return None
    ids = [int(r) for r in runs["run_id"]][::-1]  # newest first
    names = {int(r["run_id"]): run_label(r) for _, r in runs.iterrows()}
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
            with st.expander("Traceback"):
                st.code(status.traceback)
    if status.steering_error:
        st.warning(f"Last steering action was refused: {status.steering_error}")
    return status


def is_live(status: RunStatus) -> bool:
    """Whether a page showing this run should keep refreshing."""
    return status.state in ("loading", "running") or status.busy
