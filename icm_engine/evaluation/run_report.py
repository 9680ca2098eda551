"""One run's summary from the database (`icm report`): progress, acceptance, cost against |D|,
and audit-only comparisons with gold, which the search never calls."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..store.database import Store

RECENT_STEPS = 50  # the window of the "over the last N steps" hit rate the Live page shows beside the whole run's


@dataclass(frozen=True)
class PrefixStoreHits:
    """Prompt tokens of a run's steps: read from the backend's prefix store, or forwarded."""

    reused: int
    forwarded: int
    steps: int  # the steps that recorded it (schema 6 on)

    @property
    def rate(self) -> float | None:
        """Share of the prompt tokens the store served; None where the steps used no token."""
        total = self.reused + self.forwarded
        return self.reused / total if total else None


def prefix_store_hits(events: pd.DataFrame, last: int | None = None) -> PrefixStoreHits | None:
    """The prefix store's hits summed over a run's events (Store.events), or over its `last` events;
    None where none of them recorded tokens_reused (written before schema 6)."""
    window = events if last is None else events.tail(last)
    known = window[window["tokens_reused"].notna()]
    if known.empty:
        return None
    return PrefixStoreHits(int(known["tokens_reused"].sum()), int(known["tokens_forwarded"].sum()), len(known))


def prefix_store_summary(events: pd.DataFrame, recent: int = RECENT_STEPS) -> str | None:
    """The run's prefix-store hit rate as stored with its steps, in words: over the whole run (the steps
    that recorded it, where older ones did not) and over the last `recent` steps. None where no step
    recorded it, or none was served a token: a run without a store (a server, a stand-in model) or
    with it off would only read 0%."""
    whole = prefix_store_hits(events)
    if whole is None or not whole.reused:
        return None
    over = (f"the whole run ({whole.steps} steps)" if whole.steps == len(events)
            else f"the {whole.steps} of its {len(events)} steps that recorded it")
    text = f"Prefix store: served {whole.rate:.0%} of the prompt tokens over {over}"
    latest = prefix_store_hits(events, recent) if len(events) > recent else None
    if latest is not None and latest.steps == recent and latest.rate is not None:  # not straddling older steps
        text += f", {latest.rate:.0%} over the last {recent} steps"
    return text + "."


def cost_by_labeled_count(events: pd.DataFrame, bins: int = 6) -> pd.DataFrame:
    """Seconds and tokens per search step, grouped by how many examples were labeled."""
    steps = events[events["kind"] == "propose"]
    if steps.empty:
        return pd.DataFrame(columns=["labeled", "steps", "seconds_per_step", "tokens_per_step"])
    buckets = pd.cut(steps["labeled_count"], bins=min(bins, steps["labeled_count"].nunique()))
    table = steps.groupby(buckets, observed=True).agg(
        steps=("iteration", "size"), seconds_per_step=("seconds", "mean"), tokens_per_step=("tokens_forwarded", "mean")
    )
    table.index = [f"{int(interval.left) + 1}-{int(interval.right)}" for interval in table.index]
    return table.rename_axis("labeled").reset_index()


def run_gold_agreement(store: Store, run_id: int) -> dict | None:
    """Audit only: share of the run's labeled examples whose label equals gold, or None if the
    dataset has no gold. (The studio's per-iteration curve is app/readers.gold_agreement_by_iteration.)"""
    run = store.run(run_id)
    gold = store.load_gold(run["dataset_id"])
    if not gold:
        return None
    labels = store.labels(run_id)
    pairs = [(int(r.label), gold[int(r.example)]) for r in labels.itertuples(index=False) if int(r.example) in gold]
    if not pairs:
        return {"accuracy": None, "n": 0}
    correct = sum(label == truth for label, truth in pairs)
    return {"accuracy": correct / len(pairs), "n": len(pairs)}


def summarize_run(store: Store, run_id: int) -> str:
    """A batched run is summed over its batch runs' steps, with a line per batch."""
    from ..runs.batches import batch_table, is_batched

    run = store.run(run_id)
    batches = batch_table(store, run_id) if is_batched(run["config"]) else []
    events = (pd.concat([store.events(row.run_id) for row in batches], ignore_index=True) if batches
              else store.events(run_id))
    steps = events[events["kind"] == "propose"]
    changed = steps[steps["old_label"].fillna(-1) != steps["proposed_label"]]
    labels = store.labels(run_id)
    search = run["config"].get("search", {})  # a run stored before a setting existed lacks its key
    iterations = "no steps yet" if run["last_iteration"] is None else f"iterations {int(run['last_iteration'])}"
    if batches:
        iterations = f"iterations {sum(int(store.run(r.run_id)['last_iteration'] or 0) for r in batches)} over its batches"
    lines = [
        f"run {run_id} ({run['status']}): task {run['config'].get('task')}, model {run['model'].get('name')}, "
        f"seed {search.get('seed')}, calibration {search.get('calibration', 'none')}",
        f"{iterations}, labeled {len(labels)} "
        f"({int(labels['label'].sum())} True / {int((1 - labels['label']).sum())} False), "
        f"accepted {int(changed['accepted'].sum())} of {len(changed)} proposals that changed D",
        f"search time {steps['seconds'].sum():.0f} s, {steps['seconds'].mean():.2f} s/step, "
        f"{steps['tokens_forwarded'].sum() / max(steps['seconds'].sum(), 1e-9):,.0f} tokens/s",
        *filter(None, [prefix_store_summary(events)]),
        *([f"{len(batches)} batches, {sum(r.status == 'finished' for r in batches)} finished:"] if batches else []),
        *(f"  batch {r.index}/{r.total}: run {r.run_id} {r.status}, {r.labeled} of {r.examples} labeled"
          for r in batches),
        "",
        "cost per step against the number of labeled examples:",
        cost_by_labeled_count(events).to_string(index=False, float_format=lambda v: f"{v:,.2f}"),
    ]
    agreement = run_gold_agreement(store, run_id)
    if agreement and agreement["accuracy"] is not None:
        lines += ["", f"audit only (gold never used by the search): {agreement['accuracy']:.3f} "
                      f"agreement with gold on {agreement['n']} labeled"]
    return "\n".join(lines)


def prompting_baselines(store: Store, run_id: int, backend, shots: int = 8, seed: int = 0) -> dict | None:
    """Audit only: zero-shot and `shots`-shot (gold demonstrations) accuracy on the run's dataset.

    Each example is asked once with no demonstrations and once after `shots` gold-labeled
    examples drawn (seeded) from other consistency groups, so no prompt shows the example itself
    or its group-mates. Both decide by argmax of the renormalized label words (centering needs a
    whole row of queries). None if there is no gold.
    """
    import numpy as np

    from ..core.prompts import demo_prefix
    from ..store.run_loader import load_run
    from .comparison import predict

    stored = load_run(store, run_id)
    gold = store.load_gold(stored.run["dataset_id"])
    if not gold:
        return None
    task, examples = stored.task, stored.examples
    truth = np.array([gold[i] for i in range(len(examples))])
    zero_shot = predict(backend, task, (), examples)
    rng = np.random.default_rng(seed)
    few_shot = []
    for index, example in enumerate(examples):
        others = [j for j, other in enumerate(examples) if other.group is None or other.group != example.group]
        others = [j for j in others if j != index]
        demos = rng.choice(others, size=min(shots, len(others)), replace=False).tolist()
        prefix = demo_prefix(task, [examples[j] for j in demos], [gold[j] for j in demos])
        few_shot.append(int(predict(backend, task, prefix, [example])[0]))
    return {
        "n": len(examples),
        "zero_shot": float((zero_shot == truth).mean()),
        f"{shots}_shot_gold": float((np.array(few_shot) == truth).mean()),
        "shots": shots,
        "share_true_zero_shot": float(zero_shot.mean()),
    }
