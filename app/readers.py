"""Pure DataFrame builders over what the Store returns: no streamlit, no database access.

Pages fetch frames from the store (app/services.py caches them) and shape them here, so every
number a page shows can be tested without a browser.
"""
from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from icm_engine.core.prompts import Prompts, demonstrations
from icm_engine.core.records import SEARCH_KINDS, STEERING_KINDS
from icm_engine.core.scoring import label_confidence, normalize
from icm_engine.core.tasks import LABEL_NAMES, Example, Task

STALL_WINDOW = 50  # proposals without one accepted change, with examples still unlabeled, before the Live page says so
UNLABELED = -1  # raster value of an example that is not in D at that iteration
# Examples above which the in-context search takes hours on a CPU with a small model, while the scalable
# one labels 1,000 sentences in about 6 minutes (docs/scalable.md): the Data and Run pages say so.
LARGE_DATASET = 500


def search_curves(events: pd.DataFrame) -> pd.DataFrame:
    """One row per search iteration: T, U(D), alpha*P(D) and I(D) after it, accepted or not, labeled count.

    After a rejected proposal D is unchanged, so its scores are the ones before the step.
    """
    columns = ["iteration", "temperature", "u", "ap", "inconsistencies", "accepted", "labeled"]
    steps = events[events["kind"].isin(SEARCH_KINDS)] if len(events) else events
    if not len(steps):
        return pd.DataFrame(columns=columns)
    kept = steps["accepted"].astype(bool) & steps["u_after"].notna()
    return pd.DataFrame({
        "iteration": steps["iteration"].astype(int).to_numpy(),
        "temperature": steps["temperature"].to_numpy(dtype=float),
        "u": np.where(kept, steps["u_after"], steps["u_before"]).astype(float),
        "ap": np.where(kept, steps["ap_after"], steps["ap_before"]).astype(float),
        "inconsistencies": np.where(kept, steps["i_after"], steps["i_before"]).astype(float),
        "accepted": steps["accepted"].astype(bool).to_numpy(),
        "labeled": steps["labeled_count"].astype(int).to_numpy(),
    })


def before_first_step(state: str | None) -> str:
    """What a run with no committed step is doing, in words."""
    if state == "loading":
        return "No steps yet: the model is loading (progress above); the search starts when it is ready."
    if state == "running":
        return ("Scoring the initial labels: the first step asks the model about each of the K randomly labeled "
                "examples given the others, then the search proposes one label per step.")
    return "No steps yet: start the run (Resume or Step on the Run page)."


def store_usage(cache, hit_rate: float | None) -> str | None:
    """The key/value prefix store of a run's model, in words: what it holds of its budget and how
    much of the prompts it served. None where the run has no store (a server, a fake model, no worker)."""
    if cache is None:
        return None
    mib = 2**20
    served = "no prompt tokens yet" if hit_rate is None else f"{hit_rate:.0%} of this run's prompt tokens read from it"
    return (f"Key/value store ({cache.kv_dtype}, shared by the runs on this model): {cache.held_bytes / mib:,.0f} MiB "
            f"held of a {cache.budget_bytes / mib:,.0f} MiB budget (peak {cache.peak_bytes / mib:,.0f} MiB, "
            f"{cache.evictions} evictions); {served}.")


def runs_in_order(runs: pd.DataFrame, positions: Mapping[int, tuple[int, int, int]]) -> list[int]:
    """Run ids newest first, each batched run followed by its batch runs in batch order
    (`positions`: runs.batches.batch_positions), so they show under their parent."""
    ids = [int(r) for r in runs["run_id"]]
    under: dict[int, list[int]] = {}
    for run_id, (_, _, parent) in sorted(positions.items(), key=lambda item: item[1][0]):
        if parent in ids:
            under.setdefault(parent, []).append(run_id)
    placed = {child for children in under.values() for child in children}
    return [r for top in sorted((r for r in ids if r not in placed), reverse=True) for r in [top, *under.get(top, [])]]


def coverage(n_examples: int, labels: pd.DataFrame, excluded: set[int]) -> dict:
    """How much of the dataset is labeled: labeled, total, excluded, and the active (not excluded) count."""
    active = n_examples - len(excluded)
    return {"labeled": int(len(labels)), "total": int(n_examples), "excluded": int(len(excluded)), "active": int(active),
            "unlabeled": int(active - len(labels))}


def growth_stall(events: pd.DataFrame, unlabeled: int, window: int = STALL_WINDOW) -> str | None:
    """A note when the search has stopped growing: examples are still unlabeled and none of the
    last `window` proposals changed D. None while it moves, or once everything is labeled."""
    if unlabeled <= 0 or not len(events):
        return None
    proposals = events[events["kind"] == "propose"].tail(window)
    if len(proposals) < window:
        return None
    changed = proposals["accepted"].astype(bool) & (proposals["old_label"].astype("Float64").fillna(-1)
                                                   != proposals["proposed_label"].astype("Float64").fillna(-1))
    if changed.any():
        return None
    return (f"The search has stopped growing: none of the last {window} proposals changed the labels, and "
            f"{unlabeled} examples are still unlabeled. Each addition costs more than the temperature allows "
            "(usual with the paper's sum objective on a small model). Label the rest now with the final pass, "
            "lower alpha or raise T0 on the Steer page, or start a run with the mean or chance objective.")


def rolling_acceptance(curves: pd.DataFrame, window: int = 20) -> pd.DataFrame:
    """Share of accepted proposals over the last `window` iterations (the initialization excluded)."""
    proposals = curves[curves["iteration"] > 0]
    rate = proposals["accepted"].astype(float).rolling(window, min_periods=1).mean()
    return pd.DataFrame({"iteration": proposals["iteration"].to_numpy(), "acceptance": rate.to_numpy()})


def steering_marks(events: pd.DataFrame, params: pd.DataFrame, uids: Sequence[str] | None = None) -> pd.DataFrame:
    """A person's actions, to draw on the charts: iteration, kind, a short description, and the
    alpha a set_param event set (None otherwise: an alpha change rescales U). `params` is the run's
    parameter rows (Store.param_changes): a set_param event is described from them."""
    columns = ["seq", "iteration", "kind", "text", "alpha"]
    rows = events[events["kind"].isin(STEERING_KINDS)] if len(events) else events
    if not len(rows):
        return pd.DataFrame(columns=columns)
    changes: dict[int, dict] = {}
    for c in params.itertuples(index=False):
        changes.setdefault(int(c.seq), {})[c.parameter] = (None if pd.isna(c.old_value) else float(c.old_value),
                                                           float(c.new_value))
    texts, alphas = [], []
    for r in rows.itertuples(index=False):
        who = "" if pd.isna(r.example) else (uids[int(r.example)] if uids is not None else f"#{int(r.example)}")
        changed = changes.get(int(r.seq), {})
        alphas.append(changed["alpha"][1] if "alpha" in changed else None)
        if r.kind == "pin":
            texts.append(f"pin {who} = {LABEL_NAMES[int(r.proposed_label)]}")
        elif r.kind == "set_param":
            texts.append(param_change_text(changed))
        else:
            texts.append(f"{r.kind} {who}")
    return pd.DataFrame({"seq": rows["seq"].astype(int).to_numpy(), "iteration": rows["iteration"].astype(int).to_numpy(),
                         "kind": rows["kind"].to_numpy(), "text": texts, "alpha": alphas})


def param_change_text(changed: Mapping[str, tuple[float | None, float]]) -> str:
    """One set_param event in words, from its parameters' (old, new) values (old None: not recorded)."""
    def value(name: str) -> str:
        old, new = changed[name]
        return f"{new:g}" + ("" if old is None else f" (was {old:g})")

    if "extended_until" in changed:
        cap = f", step cap {value('steps')}" if "steps" in changed else ""
        return f"more steps: no stopping rule before iteration {changed['extended_until'][1]:g}{cap}"
    said = [f"{name}={value(name)}" for name in ("alpha", "t0") if name in changed]
    return "set " + ", ".join(said) if said else "set nothing"


def label_matrix(flips: pd.DataFrame, n_examples: int, last_iteration: int | None = None) -> pd.DataFrame:
    """Label of every example after every iteration: rows examples 0..n-1, columns iterations, values
    0/1 or UNLABELED. Replays the flips table, so steering in an iteration counts for that iteration."""
    last = int(last_iteration if last_iteration is not None else (flips["iteration"].max() if len(flips) else 0))
    iterations = pd.RangeIndex(0, max(last, 0) + 1, name="iteration")
    if not len(flips):
        return pd.DataFrame(UNLABELED, index=pd.RangeIndex(n_examples, name="example"), columns=iterations)
    ordered = flips.sort_values(["seq", "ord"])
    values = ordered["new_label"].astype("Float64").fillna(UNLABELED).astype(int)
    final = (pd.DataFrame({"example": ordered["example"].astype(int), "iteration": ordered["iteration"].astype(int),
                           "label": values.to_numpy()})
             .groupby(["example", "iteration"])["label"].last().unstack("iteration"))
    matrix = final.reindex(index=range(n_examples), columns=iterations).ffill(axis=1).fillna(UNLABELED)
    matrix.index.name = "example"
    return matrix.astype(int)


def exclusion_matrix(events: pd.DataFrame, n_examples: int, iterations: pd.Index) -> pd.DataFrame:
    """True where an example is excluded from the search after that iteration (exclude/include
    events replayed), shaped like label_matrix: the raster tells excluded from unlabeled."""
    mask = pd.DataFrame(False, index=pd.RangeIndex(n_examples, name="example"), columns=iterations)
    moves = events[events["kind"].isin(["exclude", "include"])] if len(events) else events
    for row in moves.sort_values("seq").itertuples(index=False):
        mask.loc[int(row.example), mask.columns >= int(row.iteration)] = row.kind == "exclude"
    return mask


def label_balance(matrix: pd.DataFrame) -> pd.DataFrame:
    """Per iteration: labeled count, True count and the share of True among labeled."""
    labeled = (matrix != UNLABELED).sum(axis=0)
    true = (matrix == 1).sum(axis=0)
    share = (true / labeled.where(labeled > 0)).astype(float)
    return pd.DataFrame({"iteration": matrix.columns.to_numpy(), "labeled": labeled.to_numpy(),
                         "true": true.to_numpy(), "true_share": share.to_numpy()})


def gold_agreement_by_iteration(matrix: pd.DataFrame, gold: Mapping[int, int] | None) -> pd.DataFrame | None:
    """Audit only: per iteration, the share of labeled examples whose label equals gold; None without gold."""
    if not gold:
        return None
    truth = pd.Series(gold, dtype=float).reindex(matrix.index)
    labeled = (matrix != UNLABELED) & truth.notna().to_numpy()[:, None]
    correct = labeled & (matrix.to_numpy() == truth.to_numpy()[:, None])
    n = labeled.sum(axis=0)
    return pd.DataFrame({"iteration": matrix.columns.to_numpy(), "agreement": (correct.sum(axis=0) / n.where(n > 0)).to_numpy(),
                         "n": n.to_numpy()})


def example_text(example: Example, limit: int = 120) -> str:
    text = " | ".join(str(v) for v in example.fields.values()).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def audit_table(examples: Sequence[Example], labels: pd.DataFrame, excluded: set[int] | None = None,
                gold: Mapping[int, int] | None = None) -> pd.DataFrame:
    """Every example with its current label, confidence, flip count, pinned and excluded flags.

    `gold` adds an audit-only column; the search never sees it.
    """
    current = labels.set_index("example") if len(labels) else pd.DataFrame()
    probability = {}  # of each label over the two label words, as scored (uncalibrated)
    if len(current):
        raw = current[["logp_false", "logp_true"]].to_numpy(dtype=float)
        probability = dict(zip(current.index, label_confidence(raw, current["label"].to_numpy(dtype=int))[0]))
    rows = []
    for index, example in enumerate(examples):
        # the short columns first and the text last, so a narrow window still shows every flag
        out = index in (excluded or ())
        row = {"example": index, "uid": example.uid, "label": "excluded" if out else "unlabeled", "confidence": None,
               "flips": 0, "pinned": False, "excluded": out}
        if index in current.index and not out:
            got = current.loc[index]
            row.update(label=LABEL_NAMES[int(got["label"])], flips=int(got["n_flips"]), pinned=bool(got["pinned"]),
                       confidence=None if np.isnan(probability[index]) else float(probability[index]))
        if gold is not None:
            row["gold (audit only)"] = LABEL_NAMES[gold[index]] if index in gold else None
        row.update(group=example.group, text=example_text(example))
        rows.append(row)
    return pd.DataFrame(rows)


def why(row, uids: Sequence[str] | None = None) -> str:
    """One flip's reason, in words, from a label_history row."""
    name = (lambda i: uids[int(i)] if uids is not None else f"#{int(i)}")
    if row["cause"] == "initial":
        if row.get("kind") == "init" and isinstance(row.get("note"), str) and row["note"].startswith("labeled "):
            return f"initial label (scalable ICM, Algorithm 3 line 1): {row['note']}"
        return "random initial label (one of the K examples labeled before the search starts)"
    if row["cause"] == "fold":
        return (f"relabeled by a model fit on the other folds (scalable ICM): {row['note']}; accepted with "
                f"delta U = {row['delta']:+.3f}, T = {row['temperature']:.3f}, "
                f"acceptance probability {row['accept_prob']:.3f}")
    if row["cause"] == "proposal":
        return (f"accepted proposal: delta U = {row['delta']:+.3f}, T = {row['temperature']:.3f}, "
                f"acceptance probability {row['accept_prob']:.3f}")
    if row["cause"] == "fix":
        if row.get("kind") in ("fold", "init"):
            return "made consistent with the most confident member of its group (Algorithm 4, ConsistencyFix-MaxProb)"
        if pd.isna(row["partner"]):
            return "consistency fix (the pair contradicted the task's rule)"
        partner = int(row["partner"])
        fix = next((f for f in fixes_of(row.get("fixes_json")) if f["applied"] and partner in f["pair"]), None)
        gain = "" if fix is None else f"; U {fix['u_before']:.3f} -> {fix['u_after']:.3f}"
        return f"consistency fix with {name(partner)} (the pair contradicted the task's rule{gain})"
    if row["cause"] == "final_pass":
        return ("final pass: the search left it unlabeled, so it got the label the model predicts given the "
                "final labeled set (argmax under the run's calibration)")
    if row["kind"] == "exclude":
        return "a person excluded the example"
    return f"a person's override ({row['kind']})"


def label_reasons(history: pd.DataFrame, uids: Sequence[str] | None = None) -> pd.DataFrame:
    """A label timeline with a reason for every change (from Store.label_history)."""
    def name(value):
        return "unlabeled" if pd.isna(value) else LABEL_NAMES[int(value)]

    if not len(history):
        return pd.DataFrame(columns=["iteration", "seq", "from", "to", "cause", "P(True) then", "why"])
    return pd.DataFrame({
        "iteration": history["iteration"].astype(int), "seq": history["seq"].astype(int),
        "from": [name(v) for v in history["old_label"]], "to": [name(v) for v in history["new_label"]],
        "cause": history["cause"], "P(True) then": [_p_true_then(r) for _, r in history.iterrows()],
        "why": [why(r, uids) for _, r in history.iterrows()],
    })


def _p_true_then(row) -> float | None:
    """P(True) over the two label words as the model gave it at that step, for the example the
    step proposed (a partner changed by a consistency fix was not scored alone)."""
    logp = row.get("proposal_logp_json")
    if not isinstance(logp, str) or pd.isna(row.get("step_example")) or int(row["step_example"]) != int(row["example"]):
        return None
    return float(np.exp(normalize(np.array([json.loads(logp)]))[0][1]))


def labels_before(flips: pd.DataFrame, seq: int) -> pd.DataFrame:
    """The labeled set as it was just before step `seq`: (example, label, position), replayed from
    the flips, positions in labeling order (what the search uses to order demonstrations)."""
    state: dict[int, int] = {}
    for row in flips[flips["seq"] < seq].sort_values(["seq", "ord"]).itertuples():
        if pd.isna(row.new_label):
            state.pop(int(row.example), None)
        else:
            state.setdefault(int(row.example), 0)
            state[int(row.example)] = int(row.new_label)  # a relabel keeps its place (dict order)
    return pd.DataFrame([{"example": e, "label": y, "position": k} for k, (e, y) in enumerate(state.items())],
                        columns=["example", "label", "position"])


def prompt_demos(labels: pd.DataFrame, target: int, folds: int = 0) -> pd.DataFrame:
    """The labeled examples the prompt for `target` shows (every other one, or the other in-context
    folds'), in position order: the engine's own choice (prompts.demonstrations)."""
    if not len(labels):
        return labels
    ordered = labels.sort_values("position")
    shown = set(demonstrations([int(e) for e in ordered["example"]], target, folds))
    return ordered[ordered["example"].isin(shown)]


def prompt_text(task: Task, examples: Sequence[Example], labels: pd.DataFrame, target: int, folds: int = 0) -> str:
    """What the model reads to score `target`: the labeled examples it may see in position order as
    demonstrations, then the target's query (before any trimming to the model's context window)."""
    demos = prompt_demos(labels, target, folds)
    return Prompts(task, examples).text(((int(r.example), int(r.label)) for r in demos.itertuples()), target)


def fixes_of(fixes_json: str) -> list[dict]:
    return json.loads(fixes_json) if isinstance(fixes_json, str) and fixes_json else []


def disagreements(labels_a: pd.DataFrame, labels_b: pd.DataFrame, examples_a: Sequence[Example],
                  examples_b: Sequence[Example]) -> tuple[pd.DataFrame, dict]:
    """Examples labeled in both runs, matched by uid, where the labels differ; plus a summary."""
    def by_uid(labels, examples):
        return {examples[int(r.example)].uid: (int(r.label), examples[int(r.example)]) for r in labels.itertuples()}

    a, b = by_uid(labels_a, examples_a), by_uid(labels_b, examples_b)
    both = sorted(set(a) & set(b))
    rows = [{"uid": u, "text": example_text(a[u][1]), "run A": LABEL_NAMES[a[u][0]], "run B": LABEL_NAMES[b[u][0]]}
            for u in both if a[u][0] != b[u][0]]
    summary = {"labeled_a": len(a), "labeled_b": len(b), "both": len(both), "disagree": len(rows),
               "agreement": None if not both else 1 - len(rows) / len(both)}
    return pd.DataFrame(rows, columns=["uid", "text", "run A", "run B"]), summary
