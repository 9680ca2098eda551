"""Pieces of page that several pages draw: the run picker and a run's status panel.

They read through app/services.py like any page; what they add is Streamlit: widgets, their
session-state keys, and the session's current run that the pickers share.
"""
from __future__ import annotations

import json

import streamlit as st

from icm_engine.runs.batches import batch_positions, is_batched
from icm_engine.runs.manager import RunManager, RunStatus

from . import readers, services

CURRENT_RUN = "studio.run_id"  # the run the pages show, shared by all pages of a session


def run_label(row, batch: tuple[int, int, int] | None = None) -> str:
    """A run's option text. It must not change while the run is picked: Streamlit's selectbox
    sends back the option's text, and text that no longer exists (a state that moved from paused
    to running) resets the widget to the newest run. The state is shown beside the picker.
    `batch`: a batch run's (index, count, parent), runs.batches.batch_positions."""
    text = f"#{int(row['run_id'])} {row['name']} · {row['dataset_name']}"
    if batch is not None:
        return f"↳ {text} · batch {batch[0]}/{batch[1]} of run {batch[2]}"
    if is_batched(json.loads(row["config_json"])):
        return f"{text} · in batches of {json.loads(row['config_json'])['search']['batch_size']}"
    return text


def run_picker(manager: RunManager, page: str, label: str = "Run", shared: bool = True,
               avoid: int | None = None) -> int | None:
    """A run selectbox; with shared=True it follows and sets the session's current run. `avoid`:
    a run not to start on (Compare's second picker starts on the newest run the first is not on)."""
    stored = services.runs(manager)
    if not len(stored):
        st.info("No runs yet: load data on the Data page, then start a run on the Run page.")
        return None
    positions = batch_positions(stored)
    ids = readers.runs_in_order(stored, positions)  # newest first, batch runs under their parent
    names = {int(r["run_id"]): run_label(r, positions.get(int(r["run_id"]))) for _, r in stored.iterrows()}
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


def batch_panel(manager: RunManager, run_id: int, status: RunStatus) -> None:
    """A batched run's progress: batches done, examples labeled over the whole dataset, the batch
    in flight, and a row per batch run (each one opens in the run picker like any run)."""
    rows = services.batch_rows(manager, run_id)
    n = int(services.run_info(manager, run_id)["config"]["search"]["batch_size"])
    total = int(services.datasets(manager).set_index("dataset_id").loc[status.dataset_id, "n_examples"])
    done = int((rows["state"] == "finished").sum())
    flight = rows[rows["state"].isin(["loading", "running"])]
    cols = st.columns(4)
    cols[0].metric("State", "pausing (after this step)" if status.pausing else status.state)
    cols[1].metric("Batches done", f"{done} / {len(rows)}" if len(rows) else "not planned yet",
                   help=f"batches of about {n} examples, whole consistency groups, each one prompt's worth")
    cols[2].metric("Labeled over the dataset", f"{int(rows['labeled'].sum())} / {total}")
    cols[3].metric("Batch in flight", f"{flight['batch'].iloc[0]} (run {int(flight['run'].iloc[0])})"
                   if len(flight) else "none")
    if status.state == "loading":
        st.progress(status.progress or 0.0, text=status.message or "loading the model…")
    elif len(rows):
        st.progress(min(int(rows["labeled"].sum()) / max(total, 1), 1.0))
        st.dataframe(rows, hide_index=True, key=f"batches.{run_id}", column_config={
            "coverage": st.column_config.ProgressColumn("coverage", min_value=0.0, max_value=1.0, format="percent")})
        st.caption("Each batch is an in-context run of its own: pick it in the run picker to watch, audit or steer it.")
    if status.error:
        st.error(f"Run failed: {status.error}")


def show_status(manager: RunManager, run_id: int) -> RunStatus:
    """State, progress through the step budget, model loading, and errors of one run (a batched
    run: batch_panel)."""
    status = manager.status(run_id)
    if services.is_batched(manager, run_id):
        batch_panel(manager, run_id, status)
        return status
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
