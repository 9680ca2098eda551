"""Eval: stored evaluations: the label table (accuracy of each method's exported labels on the
whole search split), the test table and its chart with both decision rules, each seed's rows,
and the configuration that produced them."""
from __future__ import annotations

import json

import streamlit as st

from icm_engine.evaluation.comparison_tables import DECISION_COLUMNS, METHOD_NAMES, accuracy_figure, summarize, summarize_labels
from icm_engine.runs.manager import RunManager

from .. import services

# Per-seed columns worth a glance; the full rows (predictions, log-odds, demo ids) are in the download.
SEED_COLUMNS = ["table", "method", "seed", "accuracy", *DECISION_COLUMNS, "n_demos", "demo_accuracy", "coverage",
                "search_share", "iterations_per_example", "label_accuracy", "label_coverage", "label_seconds",
                "predict_seconds"]


def render_eval(manager: RunManager) -> None:
    st.title("Evaluations")
    evals = services.evals(manager)
    if not len(evals):
        st.info("No evaluations stored yet: run `icm eval` (see `icm eval --help`) on a database the studio "
                "is not holding, then open it here.")
        return
    ids = [int(e) for e in evals["eval_id"]][::-1]
    names = {int(r["eval_id"]): f"#{int(r['eval_id'])} {r['name']} ({int(r['n_rows'])} rows, {r['created_at']:%Y-%m-%d %H:%M})"
             for _, r in evals.iterrows()}
    eval_id = st.selectbox("Evaluation", ids, format_func=names.get, key="eval.id")
    rows = services.eval_rows(manager, eval_id)
    config = json.loads(evals[evals["eval_id"] == eval_id]["config_json"].iloc[0])
    if not len(rows):
        st.warning("This evaluation stored no rows.")
        return
    labels = summarize_labels(rows)
    if len(labels):
        st.subheader("Labels: what each method would export, scored on the whole search split")
        labels.insert(0, "name", labels["method"].map(lambda m: METHOD_NAMES.get(m, m)))
        st.dataframe(labels.dropna(axis="columns", how="all"), hide_index=True, key="eval.labels")
        st.caption("Gold is read only to score these labels; no search or baseline labeler sees it.")
    st.subheader("Test: many-shot prompting with those labels as demonstrations")
    try:
        st.plotly_chart(accuracy_figure(rows), key="eval.chart")
    except Exception as error:  # a chart that cannot draw these rows must not hide the table
        st.warning(f"No chart for this evaluation: {error}")
    if config.get("decision_rule"):
        st.caption(f"Decision rule (every row): {config['decision_rule']}")
    summary = summarize(rows)
    summary.insert(0, "name", summary["method"].map(lambda m: METHOD_NAMES.get(m, m)))
    st.dataframe(summary.dropna(axis="columns", how="all"), hide_index=True, key="eval.summary")
    with st.expander("Each seed"):
        st.dataframe(rows[[c for c in SEED_COLUMNS if c in rows]], hide_index=True, key="eval.rows")
        st.download_button("Download all rows (CSV)", rows.to_csv(index=False).encode(), f"eval_{eval_id}.csv",
                           "text/csv", key="eval.download")
    with st.expander("Configuration"):
        st.json(config)
