"""Plotly figures for the studio: DataFrames in (from app/readers.py), figures out; no streamlit here."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .readers import UNLABELED

FALSE_COLOR, TRUE_COLOR, NONE_COLOR, EXCLUDED_COLOR = "#d1495b", "#2e86ab", "#e9ecef", "#495057"
SHARE_TICKS = {"tickvals": [0, 0.25, 0.5, 0.75, 1], "tickformat": ".0%"}  # a share never reads past 100%
MAX_NAMED_ROWS = 150  # examples the raster names on its axis; more get hover only
GOLD_TITLE = "Agreement with gold (audit only: never used by the search)"
MAX_RASTER_COLUMNS = 400  # a browser draws a few hundred columns well; longer runs are subsampled


def _layout(fig: go.Figure, title: str, height: int = 280) -> go.Figure:
    fig.update_layout(title=title, height=height, margin={"l": 50, "r": 20, "t": 60, "b": 40},
                      legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom"},
                      hovermode="x unified")
    return fig


def _mark_steering(fig: go.Figure, marks: pd.DataFrame | None, rows: int = 1) -> None:
    """A dotted line per steering event, labeled on hover and on the top row."""
    if marks is None or not len(marks):
        return
    for mark in marks.itertuples(index=False):
        for row in range(1, rows + 1):
            fig.add_vline(x=mark.iteration, line_dash="dot", line_color="#6c757d", row=row if rows > 1 else None,
                          col=1 if rows > 1 else None)
    fig.add_trace(go.Scatter(x=marks["iteration"], y=[0] * len(marks), mode="markers", name="steering",
                             marker={"symbol": "triangle-down", "size": 10, "color": "#6c757d"},
                             text=marks["text"], hovertemplate="%{text}<extra>steering</extra>"),
                  **({"row": 1, "col": 1} if rows > 1 else {}))


def _mark_rescaling(fig: go.Figure, curves: pd.DataFrame, marks: pd.DataFrame | None) -> None:
    """An alpha change rescales U(D) at once: say so on the U panel, where the cliff is."""
    if marks is None or not len(marks):
        return
    for mark in marks[marks["alpha"].notna()].itertuples(index=False):
        after = curves[curves["iteration"] >= mark.iteration]["u"].dropna()
        y = float(after.iloc[0]) if len(after) else 0.0
        fig.add_annotation(x=mark.iteration, y=y, text=f"alpha={mark.alpha:g}: U rescaled", showarrow=True, arrowhead=2,
                           ax=40, ay=-30, font={"size": 10, "color": "#6a4c93"}, row=2, col=1)


def search_curves_figure(curves: pd.DataFrame, marks: pd.DataFrame | None = None) -> go.Figure:
    """Temperature, U(D) with alpha*P(D), and I(D) against iteration, one panel each."""
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("temperature T", "U(D) and alpha·P(D)", "I(D): inconsistent pairs"))
    x = curves["iteration"]
    fig.add_trace(go.Scatter(x=x, y=curves["temperature"], name="T", line={"color": "#f18f01"}), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=curves["u"], name="U(D)", line={"color": "#2e86ab"}), row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=curves["ap"], name="alpha·P(D)", line={"color": "#6a4c93", "dash": "dash"}),
                  row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=curves["inconsistencies"], name="I(D)", line={"color": "#d1495b", "shape": "hv"}),
                  row=3, col=1)
    _mark_steering(fig, marks, rows=3)
    _mark_rescaling(fig, curves, marks)
    fig.update_xaxes(title_text="iteration", row=3, col=1)
    return _layout(fig, "Search", height=560)


def acceptance_figure(acceptance: pd.DataFrame, window: int) -> go.Figure:
    fig = go.Figure(go.Scatter(x=acceptance["iteration"], y=acceptance["acceptance"], name="accepted",
                               line={"color": "#2e86ab"}))
    fig.update_yaxes(range=[0, 1.02], title_text="share accepted", **SHARE_TICKS)
    fig.update_xaxes(title_text="iteration")
    return _layout(fig, f"Acceptance rate (rolling, last {window} proposals)")


def labeled_figure(balance: pd.DataFrame, marks: pd.DataFrame | None = None) -> go.Figure:
    """Labeled count and the share labeled True, against iteration."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=balance["iteration"], y=balance["labeled"], name="labeled", line={"color": "#333"}))
    fig.add_trace(go.Scatter(x=balance["iteration"], y=balance["true_share"], name="share True",
                             line={"color": TRUE_COLOR}), secondary_y=True)
    fig.update_yaxes(title_text="labeled examples", secondary_y=False)
    fig.update_yaxes(title_text="share True", range=[0, 1.02], secondary_y=True, **SHARE_TICKS)
    fig.update_xaxes(title_text="iteration")
    _mark_steering(fig, marks)
    return _layout(fig, "Labeled count and label balance")


def gold_figure(agreement: pd.DataFrame) -> go.Figure:
    fig = go.Figure(go.Scatter(x=agreement["iteration"], y=agreement["agreement"], name="agreement",
                               customdata=agreement["n"], line={"color": "#5b8c5a"},
                               hovertemplate="%{y:.3f} of %{customdata} labeled<extra></extra>"))
    fig.add_hline(y=0.5, line_dash="dash", line_color="#999")
    fig.update_yaxes(range=[0, 1.02], title_text="agreement", **SHARE_TICKS)
    fig.update_xaxes(title_text="iteration")
    return _layout(fig, GOLD_TITLE)


EXCLUDED = UNLABELED - 1  # raster value of an excluded example


def flip_raster_figure(matrix: pd.DataFrame, uids: list[str] | None = None,
                       excluded: pd.DataFrame | None = None) -> go.Figure:
    """Examples x iterations, colored by label: long runs of one color show where the search
    settled, stripes show where it thrashes. `excluded` (readers.exclusion_matrix) draws excluded
    examples dark, apart from unlabeled ones."""
    step = max(1, -(-matrix.shape[1] // MAX_RASTER_COLUMNS))
    columns = list(range(0, matrix.shape[1], step))
    if columns[-1] != matrix.shape[1] - 1:
        columns.append(matrix.shape[1] - 1)  # the last iteration always shows
    shown = matrix.iloc[:, columns]
    z = shown.to_numpy().copy()
    if excluded is not None:
        z[excluded.iloc[:, columns].to_numpy()] = EXCLUDED
    names = [uids[i] for i in shown.index] if uids is not None else [str(i) for i in shown.index]
    colorscale = [[0.0, EXCLUDED_COLOR], [0.16, EXCLUDED_COLOR], [0.17, NONE_COLOR], [0.49, NONE_COLOR],
                  [0.5, FALSE_COLOR], [0.83, FALSE_COLOR], [0.84, TRUE_COLOR], [1.0, TRUE_COLOR]]
    text = np.array(["excluded", "unlabeled", "False", "True"])[z - EXCLUDED]  # index by value: -2..1
    fig = go.Figure(go.Heatmap(z=z, x=list(shown.columns), y=names, zmin=EXCLUDED, zmax=1,
                               colorscale=colorscale, text=text, showscale=False,
                               hovertemplate="%{y} at iteration %{x}: %{text}<extra></extra>"))
    named = len(names) <= MAX_NAMED_ROWS  # then every example gets its name on the axis
    fig.update_yaxes(autorange="reversed", title_text="example", showticklabels=named,
                     **({"tickmode": "array", "tickvals": names, "tickfont": {"size": 9 if len(names) > 40 else 11}}
                        if named else {}))
    fig.update_xaxes(title_text="iteration" + (f" (every {step}th)" if step > 1 else ""))
    title = "Flip raster: red False, blue True, light grey unlabeled, dark grey excluded"
    fig = _layout(fig, title, height=max(260, min(2000, 13 * len(names) + 110)))
    return fig.update_layout(hovermode="closest")


def label_timeline_figure(history: pd.DataFrame, last_iteration: int) -> go.Figure:
    """One example's label against iteration, a marker per change colored by its cause."""
    points = history.assign(value=history["to"].map({"False": 0, "True": 1, "unlabeled": None}))
    xs = list(points["iteration"]) + [last_iteration]
    ys = list(points["value"]) + ([points["value"].iloc[-1]] if len(points) else [None])
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines", line={"shape": "hv", "color": "#333"}, name="label"))
    for cause, color in (("initial", "#999"), ("proposal", "#2e86ab"), ("fix", "#f18f01"), ("final_pass", "#5B8C5A"),
                         ("human", "#d1495b")):
        part = points[points["cause"] == cause]
        if len(part):
            fig.add_trace(go.Scatter(x=part["iteration"], y=part["value"], mode="markers", name=cause,
                                     marker={"size": 10, "color": color}, text=part["why"],
                                     hovertemplate="%{text}<extra></extra>"))
    fig.update_yaxes(tickvals=[0, 1], ticktext=["False", "True"], range=[-0.3, 1.3])
    fig.update_xaxes(title_text="iteration")
    return _layout(fig, "Label timeline", height=240)


def compare_figure(curves: dict[str, pd.DataFrame], column: str, title: str) -> go.Figure:
    """One curve per run, e.g. U(D) of run A and run B."""
    fig = go.Figure()
    for name, frame in curves.items():
        fig.add_trace(go.Scatter(x=frame["iteration"], y=frame[column], name=name))
    fig.update_xaxes(title_text="iteration")
    return _layout(fig, title)
