"""Tables and the Figure-3-style chart of an evaluation, from its rows as run or as stored.

Every function takes the rows DataFrame that `evaluation.evaluate` returns and that
`Store.eval_rows(eval_id)` gives back (method, seed, accuracy, n_test, n_demos, and extras such
as label_accuracy); nothing here runs a model or touches the database. plotly is imported
when a figure is built, so the CLI's table path stays light.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .evaluation import DECISION_RULES

# Display order and names, following the paper's Figures 3, 8 and 10.
METHOD_NAMES = {
    "zero_shot": "Zero-shot",
    "gold": "Gold labels",
    "icm": "ICM",
    "icm_centered": "ICM (centered objective)",
    "icm_no_consistency": "ICM without consistency",
    "perturbed": "Perturbed gold (ICM's accuracy)",
}
METHOD_COLORS = {
    "gold": "#E3A33B",
    "icm": "#2F6EBA",
    "icm_centered": "#6FA0DC",
    "icm_no_consistency": "#9DB9D8",
    "perturbed": "#9A9A9A",
}
RANDOM_GUESS = 0.5
# Each row's accuracy under every decision rule, as evaluation.add_row names them.
DECISION_COLUMNS = tuple(f"accuracy_{rule}" for rule in DECISION_RULES)  # a binary label guessed by a fair coin


def _std(values: pd.Series) -> float:
    # Sample std over seeds (ddof=1); a single value has no spread to report.
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _ordered(methods) -> list[str]:
    known = [m for m in METHOD_NAMES if m in set(methods)]
    return known + sorted(set(methods) - set(known))


SUMMARY_COLUMNS = ["method", "mean", "std", "n_test", "n_demos", "seeds"] + [
    f"{c}{s}" for c in ("demo_accuracy", "label_accuracy", "label_coverage") for s in ("", "_std")
] + list(DECISION_COLUMNS)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per method: mean and std of test accuracy over seeds, and of the ICM labels' accuracy."""
    lines = []
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
        for column in ("demo_accuracy", "label_accuracy", "label_coverage"):
            values = part[column].dropna() if column in part else pd.Series(dtype=float)
            line[column] = float(values.mean()) if len(values) else np.nan
            line[f"{column}_std"] = _std(values) if len(values) else np.nan
        lines.append(line)
    return pd.DataFrame(lines, columns=SUMMARY_COLUMNS)


def format_table(summary: pd.DataFrame) -> str:
    """The summary as fixed-width text for the terminal."""
    def pct(value) -> str:
        return "" if pd.isna(value) else f"{value:.3f}"

    table = pd.DataFrame({
        "method": summary["method"],
        "mean acc": summary["mean"].map(pct),
        "std": summary["std"].map(pct),
        "n_test": summary["n_test"],
        "n_demos": summary["n_demos"],
        "seeds": summary["seeds"],
        "argmax": summary["accuracy_argmax"].map(pct),
        "centered": summary["accuracy_centered"].map(pct),
        "demo label acc": summary["demo_accuracy"].map(pct),
        "ICM label acc (search split)": [
            "" if pd.isna(m) else f"{m:.3f} ± {s:.3f}" for m, s in zip(summary["label_accuracy"], summary["label_accuracy_std"])
        ],
        "labeled": summary["label_coverage"].map(lambda v: "" if pd.isna(v) else f"{v:.0%}"),
    })
    return table.to_string(index=False)


def accuracy_figure(rows: pd.DataFrame, title: str | None = None):
    """Bars per many-shot method (mean over seeds, std error bars, each seed as a dot), with
    zero-shot and random-guess lines, as in the paper's Figure 3. Returns a plotly Figure."""
    import plotly.graph_objects as go

    summary = summarize(rows)
    bars = summary[summary["method"] != "zero_shot"]
    names = [METHOD_NAMES.get(m, m) for m in bars["method"]]
    text = [
        f"{mean:.2f}" + ("" if pd.isna(label) else f"<br>labels {label:.2f}")
        for mean, label in zip(bars["mean"], bars["label_accuracy"])
    ]
    fig = go.Figure()
    fig.add_trace(go.Bar(
        x=names, y=bars["mean"], error_y={"type": "data", "array": bars["std"], "visible": True},
        marker_color=[METHOD_COLORS.get(m, "#5B8C5A") for m in bars["method"]], text=text, textposition="inside",
        customdata=[[float(s), int(n), d] for s, n, d in zip(bars["std"], bars["seeds"], bars["n_demos"])],
        hovertemplate="%{x}<br>test accuracy %{y:.3f} ± %{customdata[0]:.3f}<br>"
                      "%{customdata[1]} seeds, %{customdata[2]} demonstrations<extra></extra>",
        name="many-shot",
    ))
    seeded = rows[rows["method"].isin(bars["method"])]
    if len(seeded):
        fig.add_trace(go.Scatter(
            x=[METHOD_NAMES.get(m, m) for m in seeded["method"]], y=seeded["accuracy"], mode="markers",
            marker={"color": "black", "size": 6, "opacity": 0.6}, name="one seed",
            hovertemplate="seed %{text}: %{y:.3f}<extra></extra>",
            text=["-" if pd.isna(s) else str(int(s)) for s in seeded["seed"]],
        ))
    zero = summary[summary["method"] == "zero_shot"]
    if len(zero):
        fig.add_hline(y=float(zero["mean"].iloc[0]), line_dash="dash", line_color="#444",
                      annotation_text=f"zero-shot {float(zero['mean'].iloc[0]):.2f}", annotation_position="top left")
    fig.add_hline(y=RANDOM_GUESS, line_dash="dot", line_color="#B03A2E",
                  annotation_text="random guess", annotation_position="bottom right")
    n_test = int(summary["n_test"].max()) if len(summary) else 0
    fig.update_layout(
        title=title or f"Test accuracy, many-shot prompting ({n_test} test examples)",
        yaxis={"title": "test accuracy", "range": [0, 1.05]}, xaxis={"title": None},
        showlegend=False, template="plotly_white", bargap=0.35,
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
