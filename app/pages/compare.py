"""Compare: two runs side by side, their curves and where their labels disagree."""
from __future__ import annotations

import streamlit as st

from icm_engine.runs.manager import RunManager

from .. import charts, readers
from .. import services
from ..services import label_matrix, run_view
from ..widgets import run_picker


def render_compare(manager: RunManager) -> None:
    st.title("Compare")
    if len(services.runs(manager)) < 2:
        st.info("Comparing needs two runs.")
        return
    left, right = st.columns(2)
    with left:
        run_a = run_picker(manager, "compare.a", label="Run A")
    with right:
        run_b = run_picker(manager, "compare.b", label="Run B", shared=False, avoid=run_a)
    if run_a == run_b:
        st.warning("Pick two different runs.")
        return
    views = {f"A #{run_a}": run_view(manager, run_a), f"B #{run_b}": run_view(manager, run_b)}
    curves = {name: readers.search_curves(view.events) for name, view in views.items()}
    balance = {name: readers.label_balance(label_matrix(manager, view)) for name, view in views.items()}
    cols = st.columns(2)
    cols[0].plotly_chart(charts.compare_figure(curves, "u", "U(D)"), key="compare.u")
    cols[1].plotly_chart(charts.compare_figure(curves, "temperature", "Temperature"), key="compare.t")
    cols = st.columns(2)
    cols[0].plotly_chart(charts.compare_figure(balance, "labeled", "Labeled count"), key="compare.labeled")
    cols[1].plotly_chart(charts.compare_figure(balance, "true_share", "Share labeled True"), key="compare.balance")
    view_a, view_b = views.values()
    table, summary = readers.disagreements(view_a.labels, view_b.labels, view_a.examples, view_b.examples)
    st.subheader("Label disagreements")
    if view_a.run["dataset_id"] != view_b.run["dataset_id"]:
        st.caption("The runs use different datasets: examples are matched by their id.")
    if summary["both"]:
        st.metric("Agreement on examples labeled by both", f"{summary['agreement']:.1%}",
                  help=f"{summary['both']} examples labeled in both runs; {summary['disagree']} differ")
    else:
        st.caption("No example is labeled in both runs.")
    st.dataframe(table, hide_index=True, key="compare.table")
