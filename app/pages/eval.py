"""Eval: stored evaluations (test accuracy of methods over seeds), as a table and, when available, a chart."""
from __future__ import annotations

import importlib
import json

import streamlit as st

from icm_engine.manager import RunManager


def _accuracy_figure():
    """icm_engine.eval_report.accuracy_figure if that module offers it; otherwise the table stands alone."""
    try:
        return getattr(importlib.import_module("icm_engine.eval_report"), "accuracy_figure", None)
    except ImportError:
        return None


def render_eval(manager: RunManager) -> None:
    st.title("Evaluations")
    evals = manager.store.evals()
    if not len(evals):
        st.info("No evaluations stored yet (they are written by the evaluation command).")
        return
    ids = [int(e) for e in evals["eval_id"]][::-1]
    names = {int(r["eval_id"]): f"#{int(r['eval_id'])} {r['name']} ({int(r['n_rows'])} rows, {r['created_at']:%Y-%m-%d %H:%M})"
             for _, r in evals.iterrows()}
    eval_id = st.selectbox("Evaluation", ids, format_func=names.get, key="eval.id")
    rows = manager.store.eval_rows(eval_id)
    figure = _accuracy_figure()
    if figure is not None and len(rows):
        try:
            st.plotly_chart(figure(rows), key="eval.chart")
        except Exception as error:  # a report that cannot draw these rows must not hide the table
            st.warning(f"No chart for this evaluation: {error}")
    st.dataframe(rows, hide_index=True, key="eval.rows")
    with st.expander("Configuration"):
        config = evals[evals["eval_id"] == eval_id]["config_json"].iloc[0]
        st.json(json.loads(config))
