"""Trust: can these labels be trusted? The engine's diagnose(), drawn; a person's audit on top."""
from __future__ import annotations

import streamlit as st

from icm_engine.evaluation.baseline_export import SUFFIX, slug
from icm_engine.core.tasks import LABEL_NAMES
from icm_engine.evaluation.trust import REVIEW_ROWS, accuracy_estimate, audit_sample, recorded_verdicts
from icm_engine.evaluation.trust_report import (
    balance_text, ccs_text, polarity_text, salience_text, seeds_text, support_text, to_html,
)
from icm_engine.runs.manager import RunManager

from .. import services
from ..widgets import run_picker

VERDICTS = ("not judged", "correct", "incorrect")


def _backend(manager: RunManager, run: dict):
    """The run's model through the manager, so a model a run already loaded is shared, not loaded twice."""
    with st.spinner(f"Loading {services.run_settings(run).model.name}…"):
        return manager.model_for(int(run["run_id"]))


def _report(manager: RunManager, run_id: int, with_model: bool, seeds: tuple[int, ...]):
    """diagnose() once per run state and choice: asking the model again on every click would be slow."""
    run = services.run_info(manager, run_id)
    key = (manager.key, run_id, int(run["last_seq"]), with_model, seeds)
    cached = st.session_state.get("trust.report")
    if cached is None or cached[0] != key:
        try:
            backend = _backend(manager, run) if with_model else None
        except Exception as error:  # a model that will not load: the other checks still stand
            backend, failed = None, f"the model did not load ({error})"
        else:
            failed = None
        with st.spinner("Checking the labels…"):
            cached = (key, services.trust_report(manager, run_id, backend, list(seeds)))
        if failed:
            cached[1].notes.insert(0, failed)
        st.session_state["trust.report"] = cached
    return cached[1]


def _audit(manager: RunManager, report, run_id: int) -> None:
    st.subheader("Accuracy from a human audit")
    st.caption("Judge a random sample of the labels; a Wilson interval for the accuracy of all of them updates "
               "as you go. Record your verdicts to keep them: each becomes a human label (a pin), as the Audit "
               "page's Right/Wrong buttons make them, and they are read back here.")
    recorded = recorded_verdicts(services.run_view(manager, run_id).events)
    cols = st.columns(2)
    size = cols[0].number_input("Sample size", 5, 200, 30, key="trust.audit.size")
    seed = cols[1].number_input("Sample seed", 0, 1_000_000, 0, key="trust.audit.seed")
    labeled = [int(e) for e in report.review["example"]]
    sample = audit_sample(labeled, int(size), int(seed))
    rows = report.review.set_index("example")
    verdicts = {}
    for example in sample:
        row = rows.loc[example]
        if example in recorded:  # a recorded verdict is a pin: change it on the Steer page
            verdicts[example] = recorded[example]
            st.markdown(f"{row['uid']} · {row['text']} · recorded: the search's label was "
                        f"**{'right' if recorded[example] else 'wrong'}**")
            continue
        said = st.radio(f"{row['uid']} · labeled **{row['label']}** · {row['text']}", VERDICTS, horizontal=True,
                        key=f"trust.verdict.{run_id}.{example}")
        if said != "not judged":
            verdicts[example] = said == "correct"
    unrecorded = {e: right for e, right in verdicts.items() if e not in recorded}
    if unrecorded and st.button(f"Record {len(unrecorded)} verdicts as human labels (pins)", key="trust.record"):
        for example, right in unrecorded.items():
            label = LABEL_NAMES.index(rows.loc[example]["label"])
            manager.pin(run_id, example, label if right else 1 - label)
        st.success(f"{len(unrecorded)} pins queued: they apply between two steps of the run.")
    estimate = accuracy_estimate(verdicts)
    cols = st.columns(3)
    cols[0].metric("Judged", f"{estimate.n} of {len(sample)}")
    cols[1].metric("Accuracy", "–" if estimate.accuracy is None else f"{estimate.accuracy:.0%}")
    cols[2].metric("95% interval", f"{estimate.low:.0%} – {estimate.high:.0%}")
    st.caption(estimate.describe())


def _baseline_download(manager: RunManager, report) -> None:
    """One baseline's labels for every example, in a run's export formats."""
    if not report.baseline_labels:
        return
    cols = st.columns([2, 1, 1], vertical_alignment="bottom")
    name = cols[0].selectbox("Export a baseline's labels", list(report.baseline_labels), key="trust.export.baseline")
    fmt = cols[1].selectbox("Format", ("csv", "sft"), key="trust.export.format")
    data = services.baseline_file(manager, report, name, fmt)
    cols[2].download_button("Download labels", data, file_name=f"run-{report.run_id}-{slug(name)}{SUFFIX[fmt]}",
                            mime="text/csv" if fmt == "csv" else "application/jsonl", key="trust.export.download")


def render_trust(manager: RunManager) -> None:
    st.title("Trust")
    st.caption("Can I trust these labels? A coherent labeling can be the mirror image of the intended one, or follow "
               "a surface feature. None of these checks uses gold labels.")
    run_id = run_picker(manager, "trust")
    if run_id is None:
        return
    candidates = services.seed_runs(manager, run_id)
    others = [int(r) for r in services.runs(manager)["run_id"] if int(r) != run_id]
    cols = st.columns([1, 2])
    with_model = cols[0].checkbox("Ask the model (polarity, prior, baselines)", value=True, key="trust.model",
                                  help="loads the run's model if no run has it loaded; each example is asked once")
    seeds = cols[1].multiselect("Compare with runs (other seeds)", others,
                                default=[r for r in candidates if r != run_id], key=f"trust.seeds.{run_id}")
    report = _report(manager, run_id, with_model, tuple(sorted(seeds)))
    for warning in report.warnings:
        st.warning(warning)
    if not report.warnings:
        st.success("No check raised a warning.")
    for doubt in report.inconclusive:
        st.info(doubt)
    for note in report.notes:
        st.caption(note)

    st.subheader("Polarity")
    st.write(polarity_text(report))
    st.write(f"Support: {support_text(report)}")
    if report.polarity is not None and len(report.polarity.disagreements):
        st.caption("The most confident zero-shot readings the run contradicts:")
        st.dataframe(report.polarity.disagreements, hide_index=True, key="trust.polarity")

    st.subheader("Label balance")
    st.write(balance_text(report))
    if len(report.balance.by_iteration):
        st.line_chart(report.balance.by_iteration, x="iteration", y="share_true", height=220)

    st.subheader("Review queue")
    st.caption("Most doubtful first: seeds disagree, then the margin (below 0 the model, given the other labels, "
               "prefers the other label), then the number of flips.")
    st.dataframe(report.review.head(REVIEW_ROWS), hide_index=True, key="trust.review")

    _audit(manager, report, run_id)

    st.subheader("Salience")
    st.write(salience_text(report))
    st.caption("p: the share of random relabelings of these examples under which any feature is at least as strong "
               "(family-wise permutation test); a warning needs p < 0.05 and enough examples of each label.")
    st.dataframe(report.salience.features, hide_index=True, key="trust.salience")

    if report.baselines is not None:
        st.subheader("Baselines")
        st.caption("Share of the run's labeled examples on which two labelings agree: a cheap labeler close to the "
                   "run recovers most of what the search found.")
        st.dataframe(report.baselines, hide_index=True, key="trust.baselines")
        if ccs_text(report) is not None:
            st.write(ccs_text(report))
        _baseline_download(manager, report)

    st.subheader("Seed agreement")
    st.write(seeds_text(report))
    if report.seeds is not None:
        st.dataframe(report.seeds.pairs, hide_index=True, key="trust.seed_pairs")
        st.dataframe(report.seeds.disagreements, hide_index=True, key="trust.seed_disputes")
    st.download_button("Download this report (HTML)", to_html(report), file_name=f"trust-run-{run_id}.html",
                       mime="text/html", key="trust.download")
