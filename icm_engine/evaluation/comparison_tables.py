"""Tables and the Figure-3-style chart of an evaluation, from its rows as run or as stored.

Every function takes the rows DataFrame that `comparison.evaluate` returns and that
`Store.eval_rows(eval_id)` gives back (method, seed, accuracy, n_test, n_demos, and extras such
as label_accuracy); nothing here runs a model or touches the database. plotly is imported
when a figure is built, so the CLI's table path stays light.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core.config import CALIBRATIONS, OBJECTIVES
from .comparison import DECISION_RULES, LABEL_TABLE, TEST_TABLE
from .finetune_table import FINETUNE_TABLE

# Display order and names, following the paper's Figures 3, 8 and 10.
METHOD_NAMES = {
    "zero_shot": "Zero-shot",
    "gold": "Gold labels",
    "icm": "ICM (defaults)",
    **{f"icm_{o}_{c}": f"ICM, {o} objective, {'centered' if c == 'centered' else 'uncalibrated'}"
       for o in OBJECTIVES for c in CALIBRATIONS},
    "icm_released_code": "ICM, released code's settings",
    "icm_centered": "ICM (centered objective)",  # evaluations stored before the objectives existed
    "icm_no_consistency": "ICM without consistency",
    "perturbed": "Perturbed gold (ICM's accuracy)",
    "zero_shot_labels": "Zero-shot labels",
    "self_labels": "Iterated self-labeling",
    "random_labels": "Random labels",
}
RANDOM_GUESS = 0.5
# Each row's accuracy under every decision rule, as comparison.evaluate names them.
DECISION_COLUMNS = tuple(f"accuracy_{rule}" for rule in DECISION_RULES)  # a binary label guessed by a fair coin


def _std(values: pd.Series) -> float:
    # Sample std over seeds (ddof=1); a single value has no spread to report.
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _spread_over_seeds(line: dict, part: pd.DataFrame, columns) -> None:
    """line[c] and line[c_std]: mean and sample std over seeds of each column (NaN where absent)."""
    for column in columns:
        values = part[column].dropna() if column in part else pd.Series(dtype=float)
        line[column] = float(values.mean()) if len(values) else np.nan
        line[f"{column}_std"] = _std(values) if len(values) else np.nan


def _ordered(methods) -> list[str]:
    known = [m for m in METHOD_NAMES if m in set(methods)]
    return known + sorted(set(methods) - set(known))


SUMMARY_COLUMNS = ["method", "mean", "std", "n_test", "n_demos", "seeds"] + [
    f"{c}{s}" for c in ("demo_accuracy", "label_accuracy", "label_coverage") for s in ("", "_std")
] + list(DECISION_COLUMNS)
LABEL_SUMMARY_COLUMNS = ["method", "accuracy", "std", "n", "coverage", "search_share", "search_share_std",
                         "search_share_at_4n", "search_share_at_4n_std", "iterations_per_example",
                         "iterations_per_example_std", "share_true", "seeds"]


def table_rows(rows: pd.DataFrame, table: str) -> pd.DataFrame:
    """The rows of one table; evaluations stored before the label table have only test rows."""
    if "table" not in rows:
        return rows if table == TEST_TABLE else rows.iloc[0:0]
    return rows[rows["table"].fillna(TEST_TABLE) == table]


def summarize_labels(rows: pd.DataFrame) -> pd.DataFrame:
    """The label table: one line per method, accuracy of its labels on the whole search split over seeds."""
    part_rows = table_rows(rows, LABEL_TABLE)
    lines = []
    for method in _ordered(part_rows["method"].unique()) if len(part_rows) else []:
        part = part_rows[part_rows["method"] == method]
        line = {"method": method, "accuracy": float(part["accuracy"].mean()), "std": _std(part["accuracy"]),
                "n": int(part["n_test"].max()), "coverage": float(part["coverage"].mean()), "seeds": len(part),
                "share_true": float(part["share_true"].mean())}
        _spread_over_seeds(line, part, ("search_share", "search_share_at_4n", "iterations_per_example"))
        lines.append(line)
    return pd.DataFrame(lines, columns=LABEL_SUMMARY_COLUMNS)


def format_label_table(summary: pd.DataFrame) -> str:
    """The label table as fixed-width text for the terminal."""
    def spread(mean, std) -> str:
        return "" if pd.isna(mean) else f"{mean:.3f} ± {std:.3f}"

    table = pd.DataFrame({
        "method": summary["method"],
        "label accuracy": [spread(m, s) for m, s in zip(summary["accuracy"], summary["std"])],
        "coverage": summary["coverage"].map(lambda v: f"{v:.0%}"),
        "labeled by the search": [spread(m, s) for m, s in zip(summary["search_share"], summary["search_share_std"])],
        "... by 4 it/example": [spread(m, s) for m, s in zip(summary["search_share_at_4n"], summary["search_share_at_4n_std"])],
        "iterations/example": [spread(m, s) for m, s in zip(summary["iterations_per_example"], summary["iterations_per_example_std"])],
        "share True": summary["share_true"].map(lambda v: f"{v:.2f}"),
        "seeds": summary["seeds"],
        "n": summary["n"],
    })
    return table.to_string(index=False)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """The test table: one line per method, mean and std of test accuracy over seeds, and of the ICM labels' accuracy."""
    lines = []
    rows = table_rows(rows, TEST_TABLE)
    if not len(rows):
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    for method in _ordered(rows["method"].unique()):
        part = rows[rows["method"] == method]
        demos = sorted({int(n) for n in part["n_demos"].dropna()})
        line = {
            "method": method,
            "mean": float(part["accuracy"].mean()),
            "std": _std(part["accuracy"]),
            "n_test": int(part["n_test"].max()),
            "n_demos": str(demos[0]) if len(demos) == 1 else f"{demos[0]}-{demos[-1]}" if demos else "",
            "seeds": len(part),
        }
        for column in DECISION_COLUMNS:  # each decision rule's mean (older evals: absent)
            line[column] = float(part[column].mean()) if column in part and part[column].notna().any() else np.nan
        _spread_over_seeds(line, part, ("demo_accuracy", "label_accuracy", "label_coverage"))
        lines.append(line)
    return pd.DataFrame(lines, columns=SUMMARY_COLUMNS)


def summarize_finetune(rows: pd.DataFrame) -> pd.DataFrame:
    """The fine-tuning table: one line per learner and label source, test accuracy over seeds."""
    part_rows = table_rows(rows, FINETUNE_TABLE)
    lines = []
    for learner in sorted(part_rows["learner"].unique()) if len(part_rows) else []:
        mine = part_rows[part_rows["learner"] == learner]
        for method in _ordered(mine["method"].unique()):
            part = mine[mine["method"] == method]
            lines.append({"learner": learner, "method": method, "mean": float(part["accuracy"].mean()),
                          "std": _std(part["accuracy"]), "n_test": int(part["n_test"].max()),
                          "n_train": int(part["n_train"].max()), "seeds": len(part),
                          "train_seconds": float(part["train_seconds"].mean()),
                          **{f"accuracy_{rule}": float(part[f"accuracy_{rule}"].mean()) for rule in DECISION_RULES}})
    return pd.DataFrame(lines)


def format_finetune_table(summary: pd.DataFrame) -> str:
    def pct(value) -> str:
        return "" if pd.isna(value) else f"{value:.3f}"

    return pd.DataFrame({
        "learner": summary["learner"], "trained on": summary["method"],
        **{f"{rule} acc": summary[f"accuracy_{rule}"].map(pct) for rule in DECISION_RULES},
        "std": summary["std"].map(pct), "n_train": summary["n_train"], "n_test": summary["n_test"],
        "seeds": summary["seeds"], "train s": summary["train_seconds"].map(lambda v: f"{v:.1f}"),
    }).to_string(index=False)


def format_table(summary: pd.DataFrame) -> str:
    """The test table as fixed-width text for the terminal: both decision rules side by side."""
    def pct(value) -> str:
        return "" if pd.isna(value) else f"{value:.3f}"

    table = pd.DataFrame({
        "method": summary["method"],
        **{f"{rule} acc": summary[f"accuracy_{rule}"].map(pct) for rule in DECISION_RULES},
        "std": summary["std"].map(pct),
        "n_test": summary["n_test"],
        "n_demos": summary["n_demos"],
        "seeds": summary["seeds"],
        "demo label acc": summary["demo_accuracy"].map(pct),
    })
    return table.to_string(index=False)


RULE_COLORS = {"centered": "#2F6EBA", "argmax": "#9DB9D8"}


def accuracy_figure(rows: pd.DataFrame, title: str | None = None):
    """Test accuracy of many-shot prompting per method, one bar per decision rule side by side
    (mean over seeds), with a zero-shot line per rule and the random-guess line, as in the paper's
    Figure 3. Returns a plotly Figure."""
    import plotly.graph_objects as go

    summary = summarize(rows)
    bars = summary[summary["method"] != "zero_shot"]
    names = [METHOD_NAMES.get(m, m) for m in bars["method"]]
    fig = go.Figure()
    for rule in DECISION_RULES:
        column = f"accuracy_{rule}"
        values = bars[column] if column in bars else bars["mean"]
        fig.add_trace(go.Bar(
            x=names, y=values, name=f"decision: {rule}", marker_color=RULE_COLORS.get(rule, "#5B8C5A"),
            text=[f"{v:.2f}" if pd.notna(v) else "" for v in values], textposition="inside",
            customdata=[[int(n), d] for n, d in zip(bars["seeds"], bars["n_demos"])],
            hovertemplate=f"%{{x}}<br>{rule}: %{{y:.3f}}<br>%{{customdata[0]}} seeds, %{{customdata[1]}} demonstrations<extra></extra>",
        ))
    zero = summary[summary["method"] == "zero_shot"]
    if len(zero):
        for rule in DECISION_RULES:
            value = zero[f"accuracy_{rule}"].iloc[0] if f"accuracy_{rule}" in zero else zero["mean"].iloc[0]
            if pd.notna(value):
                fig.add_hline(y=float(value), line_dash="dash", line_color=RULE_COLORS.get(rule, "#444"),
                              annotation_text=f"zero-shot ({rule}) {float(value):.2f}", annotation_position="top left")
    fig.add_hline(y=RANDOM_GUESS, line_dash="dot", line_color="#B03A2E",
                  annotation_text="random guess", annotation_position="bottom right")
    n_test = int(summary["n_test"].max()) if len(summary) else 0
    fig.update_layout(
        title=title or f"Test accuracy, many-shot prompting ({n_test} test examples)",
        yaxis={"title": "test accuracy", "range": [0, 1.05]}, xaxis={"title": None}, barmode="group",
        template="plotly_white", bargap=0.3, legend={"orientation": "h", "y": -0.25},
    )
    return fig


def write_figure(fig, out: str | Path) -> tuple[list[Path], str | None]:
    """Write `out` as HTML (always) and PNG (only when kaleido is installed).

    Returns the paths written and, when no PNG was made, why. The HTML embeds plotly.js so it
    opens without a network.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    html = out.with_suffix(".html")
    fig.write_html(html, include_plotlyjs=True)
    written, skipped = [html], None
    try:
        import kaleido  # noqa: F401  (only to learn whether static export can work)
    except ImportError:
        return written, "no PNG: kaleido is not installed"
    try:
        fig.write_image(out.with_suffix(".png"))
        written.append(out.with_suffix(".png"))
    except Exception as error:  # kaleido present but unusable (e.g. no browser for kaleido>=1)
        skipped = f"no PNG: {error}"
    return written, skipped
