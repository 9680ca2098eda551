"""Steer: a person's actions on a run (pin, unpin, exclude, include, alpha and T_0), each recorded as an event."""
from __future__ import annotations

import streamlit as st

from icm_engine.core.tasks import LABEL_NAMES
from icm_engine.runs.manager import RunManager

from .. import actions, readers, services
from ..services import run_view
from ..widgets import run_picker

ACTIONS = ("Pin True", "Pin False", "Unpin", "Exclude", "Include")


def _act(manager: RunManager, run_id: int, action: str, example: int):
    if action.startswith("Pin"):
        return manager.pin(run_id, example, 1 if action == "Pin True" else 0)
    return {"Unpin": manager.unpin, "Exclude": manager.exclude, "Include": manager.include}[action](run_id, example)


def render_steer(manager: RunManager) -> None:
    st.title("Steer")
    run_id = run_picker(manager, "steer")
    if run_id is None:
        return
    if services.is_batched(manager, run_id):
        st.info(f"Run #{run_id} is a batched run: steer one of its batch runs (listed under it in the picker).")
        return
    status = manager.status(run_id)
    view = run_view(manager, run_id)
    where = "before its first step" if status.iteration is None or status.iteration < 0 else f"at iteration {status.iteration}"
    st.caption(f"Run #{run_id} is {status.state} {where}. Actions apply between two "
               "steps; a run that is not loaded loads its model first.")
    current = {int(r.example): (int(r.label), bool(r.pinned)) for r in view.labels.itertuples()}

    def state_of(e: int) -> str:
        return "excluded" if e in view.excluded else (
            "unlabeled" if e not in current else LABEL_NAMES[current[e][0]] + (" (pinned)" if current[e][1] else ""))

    def describe(e: int) -> str:
        # no label in the option text: Streamlit sends the text back, and text that changed with the
        # label (unlabeled -> True (pinned)) would reset the choice to the first example
        return f"{view.uids[e]} · {readers.example_text(view.examples[e], 80)}"

    st.subheader("An example")
    example = st.selectbox("Example", range(len(view.examples)), format_func=describe, key="steer.example")
    st.caption(f"Now: {state_of(int(example))}")
    with st.form("steer.example_form"):
        action = st.radio("Action", ACTIONS, horizontal=True, key="steer.action",
                          help="Pin: a person's label the search may not change. Exclude: out of the search.")
        apply_example = st.form_submit_button("Apply", type="primary")
    if apply_example:
        actions.submit(f"steer.pending.{run_id}", _act(manager, run_id, action, int(example)),
                       f"{action} {view.uids[int(example)]}")

    st.subheader("Search parameters")
    alpha_now, t0_now = view.alpha, view.t0
    with st.form("steer.params_form"):
        cols = st.columns(2)
        alpha = cols[0].number_input("alpha", 0.0, 1e6, float(alpha_now), key="steer.alpha")
        t0 = cols[1].number_input("T_0 (the schedule continues from the current iteration)", 1e-6, 1e6,
                                  float(t0_now), key="steer.t0")
        apply_params = st.form_submit_button("Apply parameters")
    if apply_params:
        changed = {k: v for k, v, now in (("alpha", alpha, alpha_now), ("t0", t0, t0_now)) if v != now}
        if changed:
            actions.submit(f"steer.pending.{run_id}", manager.set_params(run_id, **changed),
                           ", ".join(f"{k}={v:g}" for k, v in changed.items()))
        else:
            st.info("Nothing changed.")

    actions.outcomes(f"steer.pending.{run_id}")
    st.subheader("Steering so far")
    now = run_view(manager, run_id)  # read again: an action applied above shows at once
    marks = readers.steering_marks(now.events, now.params, view.uids)
    if len(marks):
        st.dataframe(marks, hide_index=True, key="steer.events")
    else:
        st.caption("No steering yet.")
