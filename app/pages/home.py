"""Home: what ICM Studio does, the runs in this database with their state and coverage, what to do next."""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from icm_engine.runs.batches import batch_positions
from icm_engine.runs.manager import RunManager

from .. import readers, services

INTRO = """
ICM Studio labels a dataset **without any labels to start from**. It searches for the labels a
pretrained model finds most *mutually predictable*: each example's label should follow from all
the others shown as demonstrations, with no logical contradictions between them (Internal
Coherence Maximization, Wen et al. 2025). You watch the search live, audit why a label changed,
steer it (pin, exclude, change alpha), and export every example with its label to fine-tune on.
"""

STEPS = [
    ("Data", "load a bundled sample or your own table (CSV, JSONL, Parquet)"),
    ("Run", "pick a model and settings, start the search"),
    ("Live", "watch temperature, U(D), inconsistencies, coverage and label flips"),
    ("Audit", "see why each label changed, with the prompt and scores of that step"),
    ("Steer", "pin or exclude examples, change alpha or the temperature"),
    ("Export", "download every example with its label, source and confidence"),
]


def _next_step(n_datasets: int, runs: pd.DataFrame) -> str:
    if not n_datasets:
        return "Next: load data on the **Data** page (the Yelp sample is a good first run)."
    if not len(runs):
        return "Next: start a search on the **Run** page."
    unfinished = runs[runs["status"].isin(["created", "paused", "stopped", "interrupted", "failed"])]
    if len(unfinished):
        row = unfinished.iloc[-1]
        return f"Next: run #{int(row['run_id'])} is {row['status']}; continue it on the **Run** page."
    return "Next: audit the newest run's labels on **Audit**, then export them on **Export**."


def render_home(manager: RunManager) -> None:
    st.title("ICM Studio")
    st.markdown(INTRO)
    st.markdown("  \n".join(f"{k}. **{page}**: {what}" for k, (page, what) in enumerate(STEPS, 1)))
    runs = services.runs(manager)
    live = {r: manager.status(r).state for r in manager.active_runs()}
    st.subheader("Runs in this database")
    if len(runs):
        # a batch run's scope is its own examples: the rest of the dataset was never in its search
        size = [len(json.loads(c).get("members") or ()) or int(n) for c, n in zip(runs["config_json"], runs["n_examples"])]
        left_out = [int(x) - (int(n) - k) for x, n, k in zip(runs["excluded"], runs["n_examples"], size)]
        table = pd.DataFrame({
            "run": runs["run_id"].astype(int), "name": runs["name"], "dataset": runs["dataset_name"],
            "state": [live.get(int(r), s) for r, s in zip(runs["run_id"], runs["status"])],
            "iteration": runs["last_iteration"],
            "coverage": [labeled / max(n - excluded, 1) for labeled, n, excluded in zip(runs["labeled"], size, left_out)],
            "labeled": [f"{int(labeled)} of {int(n - excluded)}" + (f" ({int(excluded)} excluded)" if excluded else "")
                        for labeled, n, excluded in zip(runs["labeled"], size, left_out)],
            "updated": runs["updated_at"],
        })
        table.index = runs["run_id"].astype(int).to_numpy()
        positions = batch_positions(runs)
        table.insert(2, "batch", [f"{positions[r][0]}/{positions[r][1]} of run {positions[r][2]}" if r in positions
                                  else "" for r in table.index])
        table = table.loc[readers.runs_in_order(runs, positions)]  # newest first, batch runs under their parent
        st.dataframe(table, hide_index=True, key="home.runs", column_config={
            "coverage": st.column_config.ProgressColumn("coverage", min_value=0.0, max_value=1.0, format="percent")})
    else:
        st.caption("No runs yet.")
    st.info(_next_step(len(services.datasets(manager)), runs))
    st.caption(f"Database: {manager.db_path}")
