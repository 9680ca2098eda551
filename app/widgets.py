"""Pieces of page that several pages draw: the run picker and a run's status panel.

They read through app/services.py like any page; what they add is Streamlit: widgets, their
session-state keys, and the session's current run that the pickers share.
"""
from __future__ import annotations

import streamlit as st

from icm_engine.runs.manager import RunManager, RunStatus

from . import readers, services

CURRENT_RUN = "studio.run_id"  # the run the pages show, shared by all pages of a session


def run_label(row) -> str:
    """A run's option text. It must not change while the run is picked: Streamlit's selectbox
    sends back the option's text, and text that no longer exists (a state that moved from paused
    to running) resets the widget to the newest run. The state is shown beside the picker."""
    return f"#{int(row['run_id'])} {row['name']} · {row['dataset_name']}"


def run_picker(manager: RunManager, page: str, label: str = "Run", shared: bool = True,
               avoid: int | None = None) -> int | None:
    """A run selectbox; with shared=True it follows and sets the session's current run. `avoid`:
    a run not to start on (Compare's second picker starts on the newest run the first is not on)."""
    stored = services.runs(manager)
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
