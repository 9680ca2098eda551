"""Live: the search's curves and the flip raster, redrawn every second while the run moves."""
from __future__ import annotations

import streamlit as st

from icm_engine.evaluation.run_report import prefix_store_summary
from icm_engine.runs.manager import RunManager

from .. import charts, readers
from ..services import is_batched, label_matrix, run_view
from ..widgets import batch_panel, is_live, run_picker

# Redrawing five plotly charts costs the browser ~0.3-1 s of main-thread time on a small, busy
# machine (measured on 2 cores); every 2 s keeps the charts current and the page quick to answer.
REFRESH_CHOICES = (1, 2, 5, 10)
DEFAULT_REFRESH = 2


def draw_live(manager: RunManager, run_id: int, state: str | None = None) -> None:
    """Every chart of one run, from the store as it is now."""
    view = run_view(manager, run_id)
    curves = readers.search_curves(view.events)
    if not len(curves):
        st.info(readers.before_first_step(state))
        return
    # a batch run's scope is its own examples: the rest of the dataset was never in its search
    scope = list(view.settings.members) if view.settings.members is not None else range(len(view.examples))
    covered = readers.coverage(len(scope), view.labels, view.excluded & set(scope))
    cols = st.columns(4)
    cols[0].metric("Labeled", f"{covered['labeled']} / {covered['active']}",
                   help="labeled examples of those not excluded")
    cols[1].metric("Unlabeled", covered["unlabeled"])
    cols[2].metric("Excluded", covered["excluded"])
    by_pass = int((view.flips["cause"] == "final_pass").sum()) if len(view.flips) else 0
    ran = len(view.events) and (view.events["kind"] == "final_pass").any()
    cols[3].metric("Labeled by the final pass", by_pass if ran else "not needed" if not covered["unlabeled"] else "not run yet",
                   help="examples the search left, labeled by argmax given the final labeled set")
    served = prefix_store_summary(view.events)  # as stored with each step: any run, whoever ran it
    if served:
        st.caption(served, help="Prompt tokens read from the model's key/value prefix store instead of forwarded, "
                                "as each step recorded them (steps written before ICM Studio recorded it are left out).")
    stall = readers.growth_stall(view.events, covered["unlabeled"])
    if stall:
        st.warning(stall)
    marks = readers.steering_marks(view.events, view.params, view.uids)
    st.plotly_chart(charts.search_curves_figure(curves, marks), key="live.curves")
    matrix = label_matrix(manager, view)
    if view.settings.members is not None:
        matrix = matrix.loc[scope]
    window = st.session_state.get("live.window", 20)
    left, right = st.columns(2)
    with left:
        st.plotly_chart(charts.acceptance_figure(readers.rolling_acceptance(curves, window), window), key="live.accept")
    with right:
        st.plotly_chart(charts.labeled_figure(readers.label_balance(matrix), marks), key="live.labeled")
    agreement = readers.gold_agreement_by_iteration(matrix, view.gold)
    if agreement is not None:
        st.plotly_chart(charts.gold_figure(agreement), key="live.gold")
        st.caption("Gold labels are read for this chart only; the search never sees them.")
    excluded = readers.exclusion_matrix(view.events, len(view.examples), matrix.columns).loc[matrix.index]
    st.plotly_chart(charts.flip_raster_figure(matrix, view.uids, excluded), key="live.raster")
    if len(marks):
        with st.expander(f"Steering events ({len(marks)})"):
            st.dataframe(marks, hide_index=True)


def render_live(manager: RunManager) -> None:
    st.title("Live")
    left, middle, right = st.columns([4, 1, 1])
    with left:
        run_id = run_picker(manager, "live")
    if run_id is None:
        return
    middle.number_input("Acceptance window", 1, 1000, 20, key="live.window", help="proposals in the rolling rate")
    refresh = right.selectbox("Refresh every (s)", REFRESH_CHOICES, index=REFRESH_CHOICES.index(DEFAULT_REFRESH),
                              key="live.refresh", help="while the run moves")
    status = manager.status(run_id)

    @st.fragment(run_every=refresh if is_live(status) else None)
    def live_charts() -> None:
        now = manager.status(run_id)
        if is_batched(manager, run_id):  # its batch runs search: progress per batch, each one's charts on its own
            batch_panel(manager, run_id, now)
            if is_live(now) != is_live(status):
                st.rerun(scope="app")
            return
        started = now.iteration is not None and now.iteration >= 0
        where = f"iteration {now.iteration} of at most {now.steps}" if started else "not started yet"
        st.caption(f"Run #{run_id} · {now.state} · {where}" + (f" · refreshing every {refresh} s" if is_live(now) else ""))
        if now.state == "loading":
            st.progress(now.progress or 0.0, text=now.message or "loading the model…")
        store = readers.store_usage(now.cache, now.hit_rate)
        if store:
            st.caption(store, help="Every prompt continues the longest prefix the store holds; the rest is "
                                   "forwarded. Budget: ICM_KV_CACHE_MB, else half the memory free at load.")
        draw_live(manager, run_id, now.state)
        if is_live(now) != is_live(status):
            st.rerun(scope="app")  # the run started or stopped moving: switch refreshing on or off

    live_charts()
