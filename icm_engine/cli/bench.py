"""`icm bench`: the naive reference scorer against the fast exact scorer, in one process.

It prints, per step type (adding a label, relabeling one, a ConsistencyFix with its options)
and for the mix of step types a real search produces: tokens forwarded and seconds per step for
both scorers, their ratio, the largest |U difference|, peak memory, and the model's raw
throughput on one long forward measured in the same run. It also reports how often the
approximate prequential mode makes the same accept/reject decisions as the exact mode.
"""
from __future__ import annotations

import argparse
import resource
import time
from dataclasses import dataclass

import numpy as np

from ..core.config import KV_DTYPES, SearchConfig
from ..core.records import LabelState, SearchSnapshot
from ..core.scoring import Scorer
from ..core.search import Search, acceptance_probability
from ..core.tasks import consistent_options
from .options import add_model_options, apply_server_options, model_config
from .progress import Progress


@dataclass
class Cost:
    tokens: int = 0
    seconds: float = 0.0
    count: int = 0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens, self.seconds, self.count = self.tokens + tokens, self.seconds + seconds, self.count + 1

    def per_step(self) -> tuple[float, float]:
        return (self.tokens / self.count, self.seconds / self.count) if self.count else (float("nan"), float("nan"))


def _measure(scorer: Scorer, candidates):
    before = scorer.backend.stats.snapshot()
    started = time.perf_counter()
    evaluations = scorer.evaluate_many(candidates)
    seconds = time.perf_counter() - started
    return evaluations, scorer.backend.stats.since(before).tokens_forwarded, seconds


def step_type_candidates(labels: dict[int, int], order: list[int], new_example: int, rng, scorer: Scorer):
    """The labeled sets each step type asks to score, starting from (order, labels)."""
    add_order, add_labels = order + [new_example], {**labels, new_example: int(rng.integers(2))}
    middle = order[int(rng.integers(len(order) // 4, 3 * len(order) // 4))]
    relabel = {**labels, middle: 1 - labels[middle]}
    # a fix acts on a pair inside one consistency group; any two labeled examples where there is none
    pairs = list(_group_pairs(scorer, order)) or [tuple(sorted(rng.choice(order, size=2, replace=False).tolist()))]
    a, b = pairs[int(rng.integers(len(pairs)))]
    fix_options = [(order, {**labels, a: ya, b: yb}) for ya, yb in ((0, 1), (1, 0))]
    return {"add": [(add_order, add_labels)], "relabel": [(order, relabel)], "fix": fix_options}


def _group_pairs(scorer: Scorer, order: list[int]):
    labeled = set(order)
    for members in scorer.consistency.groups.values():
        inside = [m for m in members if m in labeled]
        if len(inside) >= 2:
            yield inside[0], inside[1]


def compare_step_types(fast: Scorer, naive: Scorer, n: int, rng, repeats: int, run_naive: bool, progress=None,
                       naive_memo: dict | None = None):
    """Cost and max |dU| per step type. naive_memo keeps the naive reference's answers by labeled
    sets, so that another fast scorer (another kv dtype) drawn from the same seed reuses them."""
    progress = progress or (lambda done, total, what, note="": None)
    naive_memo = {} if naive_memo is None else naive_memo
    measurements, measured = repeats * 3 * (2 if run_naive else 1), 0
    progress(0, measurements, "step types measured")
    pool = list(range(len(fast.examples)))
    results = {kind: {"fast": Cost(), "naive": Cost(), "max_du": 0.0} for kind in ("add", "relabel", "fix")}
    for _ in range(repeats):
        chosen = rng.choice(pool, size=n + 1, replace=False).tolist()
        order, new_example = chosen[:n], chosen[n]
        labels = {i: int(rng.integers(2)) for i in order}
        if hasattr(fast.backend, "clear_cache"):
            fast.backend.clear_cache()
        fast.evaluate(order, labels)  # warm: the state a search holds before its next step
        for kind, candidates in step_type_candidates(labels, order, new_example, rng, fast).items():
            fast_evals, tokens, seconds = _measure(fast, candidates)
            results[kind]["fast"].add(tokens, seconds)
            fast.evaluate(order, labels)  # back to the state before this step type
            measured += 1
            progress(measured, measurements, "step types measured", f"{kind}: fast {tokens:,} tokens in {seconds:.1f} s")
            if run_naive:
                key = tuple((tuple(o), tuple(sorted(l.items()))) for o, l in candidates)
                if key not in naive_memo:
                    naive_memo[key] = _measure(naive, candidates)
                naive_evals, tokens, seconds = naive_memo[key]
                results[kind]["naive"].add(tokens, seconds)
                measured += 1
                progress(measured, measurements, "step types measured", f"{kind}: naive {tokens:,} tokens in {seconds:.1f} s")
                for f, g in zip(fast_evals, naive_evals):
                    # at the paper's alpha = 50; the inconsistency counts are equal, so /50 is nats
                    results[kind]["max_du"] = max(results[kind]["max_du"], abs(f.utility(50.0) - g.utility(50.0)))
    return results


def run_mix(fast: Scorer, prequential: Scorer, n: int, steps: int, seed: int, rng, progress=None):
    """A real search from n random labels: step-type counts, fast cost, prequential agreement."""
    order = rng.choice(len(fast.examples), size=n, replace=False).tolist()
    labels = {int(i): LabelState(label=int(rng.integers(2)), position=p) for p, i in enumerate(order)}
    # Start consistent, as a search's state is after its first fixes: otherwise the first timed
    # step spends its ConsistencyFix iterations repairing the random start at full cost.
    for a, b in fast.consistency.inconsistent_pairs({i: s.label for i, s in labels.items()}):
        options = consistent_options(fast.consistency.rule, fast.examples[a], fast.examples[b])
        labels[a].label, labels[b].label = next((o for o in options if o[0] == labels[a].label), options[0])
    config = SearchConfig(seed=seed, steps=steps)
    snapshot = SearchSnapshot(0, labels, set(), np.random.default_rng(seed).bit_generator.state, n, config.alpha, config.t0)
    search = Search(fast, config, snapshot)
    search._current_evaluation()  # the first full scoring is not a step
    counts = {"add": 0, "relabel": 0, "fix": 0, "unchanged": 0}
    cost, agree, compared = Cost(), 0, 0
    progress = progress or (lambda done, total, what, note="": None)
    progress(0, steps, "search mix steps")
    for _ in range(steps):
        before_labels = search.label_map()
        before_order = search.order()
        before = fast.backend.stats.snapshot()
        record = search.step()
        used = fast.backend.stats.since(before)
        cost.add(used.tokens_forwarded, record.seconds)
        kind = "unchanged" if record.old_label == record.proposed_label else "add" if record.old_label is None else "relabel"
        progress(cost.count, steps, "search mix steps", f"{kind}, {sum(1 for _ in record.fixes)} fixes, "
                 f"{used.tokens_forwarded:,} tokens in {record.seconds:.1f} s")
        counts[kind] += 1
        if kind == "unchanged":
            continue
        counts["fix"] += sum(1 for _ in record.fixes)
        candidate = {**before_labels, record.example: record.proposed_label}
        candidate_order = before_order + ([record.example] if record.old_label is None else [])
        for fix in record.fixes:
            if fix.applied:
                candidate[fix.pair[0]], candidate[fix.pair[1]] = fix.after
        approx_before, approx_after = prequential.evaluate_many([(before_order, before_labels), (candidate_order, candidate)])
        delta = approx_after.utility(search.alpha) - approx_before.utility(search.alpha)
        approx_accept = delta > 0 or record.draw < acceptance_probability(delta, record.temperature)
        agree += approx_accept == record.accepted
        compared += 1
    return counts, cost, (agree / compared if compared else float("nan")), compared


def _cuda_device(backend):
    """The backend's CUDA device, or None when it runs on the CPU (or has no device at all)."""
    device = getattr(backend, "device", None)
    return device if device is not None and device.type == "cuda" else None


def _device_name(backend) -> str:
    if _is_server(backend):
        return backend.info.device
    device = _cuda_device(backend)
    if device is None:
        return "cpu"
    import torch

    return f"{device} ({torch.cuda.get_device_name(device)})"


def _is_server(backend) -> bool:
    """An inference server: its 'naive' view is the same server, so there is no reference to compare."""
    return hasattr(backend, "cache_hit_rate")


def _server_summary(backend, seconds: float) -> str:
    """Prompt tokens per second through the server and its prefix-cache hit rate, where it says."""
    rate = backend.cache_hit_rate()
    cache = (f"prefix-cache hit rate {rate:.1%} of prompt tokens" if rate is not None
             else f"prefix-cache hit rate not reported by {backend.engine}")
    return (f"server: {backend.prompt_tokens:,} prompt tokens in {seconds:.1f} s of requests = "
            f"{backend.prompt_tokens / max(seconds, 1e-9):,.0f} prompt tokens/s ({backend.concurrency} in flight); {cache}")


def _store_summary(backend) -> str:
    usage = backend.cache_usage()
    if usage is None:
        return "prefix store: none (the server keeps its own cache)"
    hit_rate = backend.stats.hit_rate
    served = "" if hit_rate is None else f", {hit_rate:.0%} of prompt tokens read from it"
    return (f"prefix store ({usage.kv_dtype}): peak {usage.peak_bytes / 2**20:,.1f} MiB of a "
            f"{usage.budget_bytes / 2**20:,.0f} MiB budget, {usage.evictions} evictions{served}")


def _compare_kv_dtypes(backend, task, examples, kv_dtypes: list[str], args, naive: Scorer, naive_memo: dict) -> None:
    """The step types again, from the same seed, with the store in each kv dtype: the naive answers
    come from naive_memo, so only the fast scorer runs again."""
    print(f"\nkey/value storage dtypes (n = {args.n}, the same step types and naive reference; max |dU| in nats):")
    print(f"{'kv dtype':10s} {'add':>9s} {'relabel':>9s} {'fix':>9s} {'store peak MiB':>15s} {'fast s/step':>12s}")
    for kv_dtype in kv_dtypes:
        view = backend.with_kv_dtype(kv_dtype)
        scorer = Scorer(view, task, examples, remember=0, folds=args.icl_folds)
        with Progress() as progress:
            results = compare_step_types(scorer, naive, args.n, np.random.default_rng(args.seed), args.repeats,
                                         not args.no_naive, progress, naive_memo)
        seconds = np.mean([r["fast"].per_step()[1] for r in results.values()])
        print(f"{kv_dtype:10s} " + " ".join(f"{results[k]['max_du'] / 50:9.2e}" for k in ("add", "relabel", "fix"))
              + f" {view.cache_usage().peak_bytes / 2**20:15,.1f} {seconds:12.2f}")
        view.close()


def main(argv: list[str] | None = None) -> int:
    """`icm bench` on its own (scripts/gpu_check.sh runs it so)."""
    parser = argparse.ArgumentParser(prog="icm bench", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    apply_server_options(args)
    return run(args)


def add_parser(subparsers) -> None:
    add_arguments(subparsers.add_parser("bench", help="naive vs fast exact scorer: tokens, seconds, |dU|, memory"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--data", default="sample:sentiment_yelp")
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--n", type=int, default=64, help="labeled examples in D")
    parser.add_argument("--repeats", type=int, default=1, help="samples per step type")
    parser.add_argument("--mix-steps", type=int, default=20, help="steps of a real search for the step-type mix")
    parser.add_argument("--no-naive", action="store_true", help="skip the (slow) naive reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--icl-folds", type=int, default=0, metavar="F",
                        help="score with F in-context folds (both scorers; 0: leave-one-out), as a run's --icl-folds")
    parser.add_argument("--kv-dtypes", default="", metavar="LIST",
                        help="also measure the step types with the prefix store in each of these key/value dtypes "
                             f"(comma-separated, of {', '.join(KV_DTYPES)}) against the same naive reference: "
                             "max |dU| and the store's peak bytes per dtype")


def run(args) -> int:
    from ..core.tasks import load_task
    from ..data.datasets import load_any
    from ..runs.models import load_model

    kv_dtypes = [d for d in args.kv_dtypes.split(",") if d]
    if any(d not in KV_DTYPES for d in kv_dtypes):  # refused before the model loads
        raise SystemExit(f"icm bench: --kv-dtypes takes a comma-separated list of {', '.join(KV_DTYPES)}")
    backend = load_model(model_config(args))
    loaded = load_any(args.data, task=args.task)
    task = load_task(args.task) if args.task else loaded.task
    # remember=0: the bench scores the same sets again on purpose, to time the forwards themselves
    try:  # the setting's own check, before the model loads
        SearchConfig(icl_folds=args.icl_folds)
    except ValueError as error:
        raise SystemExit(f"icm bench: --icl-folds: {error}") from None
    fast = Scorer(backend, task, loaded.examples, remember=0, folds=args.icl_folds)
    naive = Scorer(backend.naive(), task, loaded.examples, remember=0, folds=args.icl_folds)
    prequential = Scorer(backend, task, loaded.examples, mode="prequential")
    rng = np.random.default_rng(args.seed)
    if _is_server(backend) and not args.no_naive:
        print("an inference server: no naive reference to compare (the server computes each prompt whole or from its cache)")
        args.no_naive = True
    print(f"model {backend.name} ({backend.info.dtype}, quantization {backend.info.quantization}) on "
          f"{_device_name(backend)}; task {task.name}; n = {args.n} labeled; "
          + (f"{args.icl_folds} in-context folds" if args.icl_folds else "leave-one-out prompts"))
    raw = backend.raw_throughput(1024)
    print(f"raw model throughput (one 1024-token forward): {raw:,.0f} tokens/s")

    naive_memo: dict = {}
    with Progress() as progress:
        results = compare_step_types(fast, naive, args.n, rng, args.repeats, not args.no_naive, progress, naive_memo)
    print(f"\n{'step type':10s} {'fast tok':>10s} {'fast s':>8s} {'naive tok':>10s} {'naive s':>8s} {'speedup':>8s} {'max|dU|':>9s} {'in nats':>9s}")
    for kind, r in results.items():
        ft, fs = r["fast"].per_step()
        nt, ns = r["naive"].per_step()
        print(f"{kind:10s} {ft:10.0f} {fs:8.2f} {nt:10.0f} {ns:8.2f} {ns / fs:8.1f}x {r['max_du']:9.2e} {r['max_du'] / 50:9.2e}")

    print(_store_summary(backend))
    if kv_dtypes and not _is_server(backend):
        _compare_kv_dtypes(backend, task, loaded.examples, kv_dtypes, args, naive, naive_memo)

    with Progress() as progress:
        counts, cost, agreement, compared = run_mix(fast, prequential, args.n, args.mix_steps, args.seed, rng, progress)
    fast_tokens, fast_seconds = cost.tokens / cost.count, cost.seconds / cost.count
    naive_seconds = sum(counts[k] * results[k]["naive"].per_step()[1] for k in ("add", "relabel", "fix"))
    naive_tokens = sum(counts[k] * results[k]["naive"].per_step()[0] for k in ("add", "relabel", "fix"))
    print(f"\nreal search, {cost.count} steps from n={args.n}: step types {counts}")
    print(f"fast: {fast_tokens:,.0f} tokens/step, {fast_seconds:.2f} s/step, "
          f"search throughput {cost.tokens / cost.seconds:,.0f} tokens/s = {cost.tokens / cost.seconds / raw:.0%} of raw")
    if not args.no_naive:
        naive_per_step = naive_seconds / cost.count
        print(f"naive (per-type cost x counts): {naive_tokens / cost.count:,.0f} tokens/step, {naive_per_step:.2f} s/step; "
              f"mix speedup {naive_per_step / fast_seconds:.1f}x")
    print(f"prequential (approximate) mode agrees with exact accept/reject on {agreement:.0%} of {compared} changed steps")
    if _is_server(backend):
        print(_server_summary(backend, backend.stats.seconds))
    print(f"peak memory (max RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    if _cuda_device(backend) is not None:
        import torch

        print(f"peak GPU memory (torch max allocated): {torch.cuda.max_memory_allocated(_cuda_device(backend)) / 2**20:,.0f} MiB")
    return 0
