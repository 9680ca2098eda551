"""A TrustReport as text (for `icm trust`) and as one self-contained HTML file.

The HTML uses plain tables and inline CSS only, no scripts or web fonts: the studio and its
reports must work offline, and a report file should open anywhere, years later.
"""
from __future__ import annotations

import html
import math

import pandas as pd

from .salience import SALIENCE_ALARM
from .statistics import binomial_cdf
from .trust import REVIEW_ROWS, TrustReport

SHARE_ROWS = 25  # iterations shown in the balance table; a long run is subsampled, its last row kept
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
.warn { background: #fff4e5; border-left: 4px solid #e8a33d; padding: 0.5em 1em; }
.ok { background: #edf7ed; border-left: 4px solid #4caf50; padding: 0.5em 1em; }
.unsure { background: #f1f4f9; border-left: 4px solid #7a8fb5; padding: 0.5em 1em; margin-top: 0.5em; }
.note { color: #666; }
"""


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def polarity_text(report: TrustReport) -> str:
    check = report.polarity
    if check is None:
        return "not checked (no model)"
    if not check.n:
        return "nothing to compare: the run has no labels yet"
    agree = int(round(check.agreement * check.n))
    chance = (f"P(agreement this high by coin flips) = {1 - binomial_cdf(agree - 1, check.n):.2g}" if check.agreement > 0.5
              else f"P(agreement this low by coin flips) = {check.p_value:.2g}")
    return (f"{check.verdict}: {check.agreement:.0%} of {check.n} labels agree with the model's calibrated zero-shot "
            f"reading (flag below {check.threshold:.0%}; {chance}, one-sided binomial)")


def support_text(report: TrustReport) -> str:
    """Which of the model's own readings back the run's labels beyond chance."""
    check = report.support
    if check is None:
        return "not checked (no model)"
    if not len(check.readings):
        return "no reading of the model to compare with"
    said = ", ".join(f"{r.reading} agrees on {r.agreement:.0%} (kappa {_number(float(r.kappa), 2)}, p = {r.p:.2g}"
                     + (f"; follows the flagged group feature too, AUROC {check.confounded[r.reading]:.2f}"
                        if r.reading in check.confounded else "") + ")"
                     for r in check.readings.itertuples(index=False))
    verdict = (f"backed by {' and '.join(check.supported_by)}" if check.supported_by
               else "nothing the model reads without the search backs these labels beyond chance")
    return f"{verdict}: {said}"


def balance_text(report: TrustReport) -> str:
    b = report.balance
    parts = [f"{_number(b.share_true, 2)} True in the run's labels"]
    if b.zero_shot_share_true is not None:
        parts.append(f"{b.zero_shot_share_true:.2f} in the calibrated zero-shot labels "
                     f"({b.zero_shot_raw_share_true:.2f} uncalibrated)")
    if b.content_free_p_true is not None:
        parts.append(f"the model's content-free P(True) is {b.content_free_p_true:.2f}")
    return "; ".join(parts)


def salience_text(report: TrustReport) -> str:
    features = report.salience.features.dropna(subset=["strength"])
    strongest = (f"{features.iloc[0]['feature']} (AUROC {features.iloc[0]['strength']:.2f}, family-wise permutation "
                 f"p = {features.iloc[0]['p']:.2g})" if len(features) else "none (too few labels of each kind)")
    return (f"strongest surface feature: {strongest}; the model's own margin: {_number(report.salience.model_auroc, 2)}. "
            f"A surface feature close to the margin, or above {SALIENCE_ALARM}, may be what the labels follow.")


def seeds_text(report: TrustReport) -> str:
    s = report.seeds
    if s is None:
        return "no other seed to compare with"
    u = s.final_u["u"].dropna()
    spread = f"final U {u.min():.2f} to {u.max():.2f}" if len(u) else "no final U"
    return (f"runs {', '.join(map(str, s.run_ids))}: mean agreement {s.pairs['agreement'].mean():.0%}, "
            f"mean kappa {_number(float(s.pairs['kappa'].mean()), 2)}, {spread}; "
            f"{len(s.disagreements)} examples disputed")


def baselines_text(report: TrustReport) -> str:
    """How often each cheap labeler agrees with the run, on the run's labeled examples."""
    if report.baselines is None:
        return "not compared (no model)"
    row = report.baselines.set_index("labeling").loc["run"].drop("run")
    return "agreement with the run: " + ", ".join(f"{name} {_number(float(v), 2)}" for name, v in row.items())


def ccs_text(report: TrustReport) -> str | None:
    """The CCS probe in a sentence, or why there is none; None when no model was asked."""
    if report.ccs is not None:
        return report.ccs.describe()
    if report.ccs_unavailable is not None:
        return f"CCS unavailable: {report.ccs_unavailable}"
    return None


def summary_lines(report: TrustReport) -> list[str]:
    """What `icm trust` prints: one line per check, then the warnings."""
    r = report
    lines = [f"run {r.run_id} ({r.run_name}) on {r.dataset_name}: {r.n_labeled} of {r.n_examples} examples labeled",
             f"polarity: {polarity_text(r)}", f"support: {support_text(r)}", f"balance: {balance_text(r)}",
             f"salience: {salience_text(r)}",
             f"seeds: {seeds_text(r)}",
             f"baselines: {baselines_text(r)}",
             *([f"CCS: {ccs_text(r)}"] if r.ccs is not None else []),
             f"review queue: {len(r.review)} labeled examples, most doubtful first; the top ones:"]
    lines += [f"  {q.uid} ({q.label}, margin {_number(q.margin, 2)}, {q.flips} flips"
              f"{', seeds disagree' if q.seeds_disagree else ''}): {q.text[:80]}" for q in r.review.head(5).itertuples()]
    if r.audit is not None:
        lines.append(f"audit: {r.audit.describe()}")
    lines += [f"note: {n}" for n in r.notes]
    lines += [f"WARNING {w}" for w in r.warnings] or ["no warnings"]
    lines += [f"inconclusive: {w}" for w in r.inconclusive]
    return lines


def _table(frame: pd.DataFrame, rows: int | None = None) -> str:
    if frame is None or not len(frame):
        return '<p class="note">none</p>'
    shown = frame if rows is None else frame.head(rows)
    return shown.to_html(index=False, escape=True, float_format=lambda v: f"{v:.3f}", na_rep="–", border=0)


def _subsampled(frame: pd.DataFrame, rows: int = SHARE_ROWS) -> pd.DataFrame:
    if len(frame) <= rows:
        return frame
    step = math.ceil(len(frame) / rows)
    return pd.concat([frame.iloc[::step], frame.iloc[[-1]]]).drop_duplicates()


def to_html(report: TrustReport) -> str:
    r = report
    e = html.escape
    warnings = "".join(f"<li>{e(w)}</li>" for w in r.warnings)
    head = (f'<div class="warn"><b>Warnings</b><ul>{warnings}</ul></div>' if warnings
            else '<div class="ok">No check raised a warning.</div>')
    if r.inconclusive:
        items = "".join(f"<li>{e(w)}</li>" for w in r.inconclusive)
        head += (f'<div class="unsure"><b>Too few examples to tell</b> (these would be warnings if they were unlikely '
                 f'by chance on this many examples)<ul>{items}</ul></div>')
    sections = [
        f"<h1>Can I trust these labels? Run #{r.run_id}</h1>",
        f"<p>{e(r.run_name)} on {e(r.dataset_name)}: {r.n_labeled} of {r.n_examples} examples labeled. "
        "Gold labels are not used by any check here.</p>", head,
        "".join(f'<p class="note">{e(n)}</p>' for n in r.notes),
        "<h2>Polarity</h2>", f"<p>{e(polarity_text(r))}</p>", f"<p>Support: {e(support_text(r))}</p>",
        "<p class=\"note\">Mutual predictability rewards a labeling and its mirror image alike; the model's own "
        "zero-shot reading, centered over the dataset, tells them apart.</p>",
    ]
    if r.polarity is not None:
        sections += ["<h3>Confident zero-shot readings the run contradicts</h3>", _table(r.polarity.disagreements)]
    sections += ["<h2>Label balance</h2>", f"<p>{e(balance_text(r))}</p>", _table(_subsampled(r.balance.by_iteration)),
                 "<h2>Review queue</h2>",
                 "<p class=\"note\">Most doubtful first: seeds disagree, then the margin (the label's log-odds given "
                 "the other labels under the run's calibration; below 0 the model prefers the other label), then flips."
                 "</p>", _table(r.review, REVIEW_ROWS)]
    if r.baselines is not None:
        sections += ["<h2>Baselines</h2>", "<p class=\"note\">Share of the run's labeled examples on which two "
                     "labelings agree: a cheap labeler close to the run recovers most of what the search found. "
                     "Each baseline's labels can be exported (<code>icm trust --export-baselines DIR</code>, or the "
                     "Trust page).</p>", _table(r.baselines)]
        if ccs_text(r) is not None:
            sections.append(f"<p>{e(ccs_text(r))}</p>")
    if r.audit is not None:
        sections += ["<h2>Accuracy from a human audit</h2>", f"<p>{e(r.audit.describe())}</p>"]
    sections += ["<h2>Salience</h2>", f"<p>{e(salience_text(r))}</p>",
                 "<p class=\"note\">p: the share of random relabelings of these examples under which any feature is "
                 "at least as strong (family-wise permutation test); a warning needs p &lt; 0.05 and enough examples "
                 "of each label.</p>",
                 _table(r.salience.features), "<h2>Seed agreement</h2>", f"<p>{e(seeds_text(r))}</p>"]
    if r.seeds is not None:
        sections += [_table(r.seeds.pairs), _table(r.seeds.final_u), "<h3>Examples the seeds disagree on</h3>",
                     _table(r.seeds.disagreements, 100)]
    body = "\n".join(sections)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>ICM trust report: run {r.run_id}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n")
