"""Audit: every example's label, and for one example why each change happened and what the model saw."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from icm_engine.core.prompts import fold_of
from icm_engine.core.scoring import normalize
from icm_engine.core.tasks import LABEL_NAMES
from icm_engine.evaluation.trust import recorded_verdicts
from icm_engine.runs.manager import RunManager

from .. import actions, charts, readers, services
from ..services import run_view
from ..widgets import run_picker

SORTS = {"example": True, "flips": False, "confidence": True, "uid": True}


def _filtered(table: pd.DataFrame) -> pd.DataFrame:
    cols = st.columns(4)
    labels = cols[0].multiselect("Label", ["True", "False", "unlabeled", "excluded"], key="audit.labels")
    pinned_only = cols[1].checkbox("Pinned only", key="audit.pinned")
    min_flips = cols[2].number_input("At least this many flips", 0, 100_000, 0, key="audit.min_flips")
    sort = cols[3].selectbox("Sort by", list(SORTS), key="audit.sort")
    text = st.text_input("Text contains", key="audit.text")
    shown = table
    if labels:
        shown = shown[shown["label"].isin(labels)]
    if pinned_only:
        shown = shown[shown["pinned"]]
    if min_flips:
        shown = shown[shown["flips"] >= min_flips]
    if text:
        shown = shown[shown["text"].str.contains(text, case=False, regex=False) | shown["uid"].str.contains(text, regex=False)]
    return shown.sort_values(sort, ascending=SORTS[sort], na_position="last")


def _verdict(manager: RunManager, view, example: int) -> None:
    """A person's verdict on the search's label, recorded as a human label: right pins the label,
    wrong pins the other one. The Trust page reads verdicts back from these pins."""
    current = view.labels[view.labels["example"] == example]
    if not len(current) or example in view.excluded:
        return
    said = recorded_verdicts(view.events).get(example)
    if said is not None:
        st.caption(f"Your verdict: the search's label was {'right' if said else 'wrong'} (recorded as a pin).")
        return
    label = int(current.iloc[0]["label"])
    cols = st.columns([1, 1, 2])
    pin = None
    if cols[0].button(f"Right: pin {LABEL_NAMES[label]}", key=f"audit.right.{example}"):
        pin = label
    if cols[1].button(f"Wrong: pin {LABEL_NAMES[1 - label]}", key=f"audit.wrong.{example}"):
        pin = 1 - label
    cols[2].caption("Your verdict on this label, kept as a human label; the Trust page's audit counts it.")
    run_id, key = int(view.run["run_id"]), f"audit.pending.{int(view.run['run_id'])}"
    if pin is not None:
        future = manager.pin(run_id, example, pin)
        actions.submit(key, future, f"Verdict on {view.uids[example]}")
        if future.done():  # landed at once: draw the page with it (a queued one redraws when it lands)
            st.rerun()
    actions.outcomes(key)


def _detail(manager: RunManager, view, example: int) -> None:
    scalable = view.settings.search.algorithm == "scalable"
    uid = view.uids[example]
    st.subheader(f"Example {uid}")
    _verdict(manager, view, example)
    st.json(dict(view.examples[example].fields), expanded=True)
    history = readers.label_reasons(services.label_history(manager, view, example), view.uids)
    if len(history):
        st.plotly_chart(charts.label_timeline_figure(history, view.last_iteration), key="audit.timeline")
        st.dataframe(history, hide_index=True, key="audit.history", column_config={
            "P(True) then": st.column_config.NumberColumn(
                "P(True) then", format="%.3f",
                help="the model's P(True) over the two label words at that step, given the labeled set as it was "
                     "then (empty for a partner a consistency fix changed)")})
        if not scalable:  # a scalable run's labels come from a fold's model, not from a prompt of demonstrations
            _as_it_was(view, example, history)
    else:
        st.caption("Never labeled.")
    current = view.labels[view.labels["example"] == example]
    if len(current):
        row = current.iloc[0]
        if not (pd.isna(row["logp_false"]) or pd.isna(row["logp_true"])):
            renormalized = normalize([[row["logp_false"], row["logp_true"]]])[0]
            folds = view.settings.search.icl_folds
            given = ("from the model fit on the other folds' labels, not this one's (scalable ICM)" if scalable
                     else f"given the labeled examples of the other {folds - 1} in-context folds as demonstrations "
                          f"(this one is in fold {fold_of(example, folds) + 1} of {folds})" if folds
                     else "given every other labeled example as demonstrations")
            st.markdown(f"**Label log-probabilities now** (iteration {view.last_iteration}, {given}): "
                        f"P(True) = {np.exp(renormalized[1]):.3f}")
            st.dataframe(pd.DataFrame({
                "label": ["False", "True"], "word": list(view.task.label_words),
                "log P (whole vocabulary)": [row["logp_false"], row["logp_true"]],
                "log P (over the two label words)": renormalized,
            }), hide_index=True)
        else:
            st.caption("Not scored since the last steering action; scores return with the next step.")
    if example in view.excluded:
        st.info("Excluded from the search: the model is not asked about it, and it is no demonstration for others. "
                "Include it again on the Steer page.")
        return
    if scalable:
        st.markdown("**What the fold's model reads**: this query, after the head's reading context (the demonstrations "
                    "the initial label's note names, labeled by the model's own zero-shot reading); the other folds' "
                    "labels are in its weights, not in the prompt")
        st.code(view.task.render_query(view.examples[example]), language=None, wrap_lines=True)
        return
    st.markdown("**The prompt the model sees for this example now** (demonstrations in position order, then the "
                "query; before any trimming to the model's context window)")
    st.code(readers.prompt_text(view.task, view.examples, view.labels, example, view.settings.search.icl_folds),
            language=None, wrap_lines=True)


def _as_it_was(view, example: int, history: pd.DataFrame) -> None:
    """One change of this example's label, shown with what the search saw at that step."""
    changes = history.to_dict("records")
    pick = st.selectbox("Show a change as it was", range(len(changes)), index=len(changes) - 1, key="audit.change",
                        format_func=lambda k: f"iteration {changes[k]['iteration']}: {changes[k]['from']} "
                                              f"→ {changes[k]['to']} ({changes[k]['cause']})")
    change = changes[pick]
    before = readers.labels_before(view.flips, int(change["seq"]))
    demos = readers.prompt_demos(before, example, view.settings.search.icl_folds)
    p_true = history["P(True) then"].iloc[pick]
    scored = "" if pd.isna(p_true) else f" The model gave it P(True) = {p_true:.3f} then."
    with st.expander(f"At iteration {change['iteration']}, before this change: {len(demos)} demonstrations.{scored}",
                     expanded=False):
        st.code(readers.prompt_text(view.task, view.examples, before, example, view.settings.search.icl_folds),
                language=None, wrap_lines=True)


def render_audit(manager: RunManager) -> None:
    st.title("Audit")
    run_id = run_picker(manager, "audit")
    if run_id is None:
        return
    if services.is_batched(manager, run_id):
        st.info(f"Run #{run_id} is a batched run: its labels are its batch runs' (export them on Export); audit "
                "one of its batch runs, listed under it in the picker, to see why a label changed.")
        return
    view = run_view(manager, run_id)
    show_gold = view.gold is not None and st.checkbox("Show gold labels (audit only: the search never sees them)",
                                                       key="audit.gold")
    table = readers.audit_table(view.examples, view.labels, view.excluded, view.gold if show_gold else None)
    shown = _filtered(table)
    st.caption(f"{len(shown)} of {len(table)} examples · {len(view.labels)} labeled · "
               f"{int(table['pinned'].sum())} pinned · {len(view.excluded)} excluded")
    st.dataframe(shown, hide_index=True, height=320, key="audit.table", column_config={
        "confidence": st.column_config.ProgressColumn("confidence", min_value=0.0, max_value=1.0, format="%.2f")})
    if not len(shown):
        return
    options = [int(e) for e in shown["example"]]
    # a new sort or filter starts the picker on the table's first row, the one the user now looks at
    view_of_table = (st.session_state.get("audit.sort"), tuple(st.session_state.get("audit.labels") or ()),
                     st.session_state.get("audit.pinned"), st.session_state.get("audit.min_flips"),
                     st.session_state.get("audit.text"), run_id)
    if st.session_state.get("audit.example") not in options or st.session_state.get("audit.table_view") != view_of_table:
        st.session_state["audit.example"] = options[0]
    st.session_state["audit.table_view"] = view_of_table
    example = st.selectbox("Example to inspect", options, key="audit.example",
                           format_func=lambda e: f"{view.uids[e]} · {readers.example_text(view.examples[e], 80)}")
    _detail(manager, view, example)
