"""How many scored proposals of a stored in-context run the scorer's memory of labeled sets (the last 256,
core/scoring.py Scorer.remember) answers, counted offline from the run's steps and flips, no model.

    .venv/bin/python scripts/memory_hits.py DB RUN [RUN ...]

A proposal is answered from memory when the labeled set it proposes (demonstration order and labels) was
scored within the last 256 sets scored (ConsistencyFix options are not counted: tasks without a
consistency rule have none); the seconds are what the stored step took to score it. Runs stored
before the memory existed show what it would have spared; later ones, what it did (their step took ~0 s).
"""
import collections
import sys

import duckdb

c = duckdb.connect(sys.argv[1], read_only=True)
for run in map(int, sys.argv[2:]):
    ev = c.execute("select seq, kind, example, old_label, proposed_label, accepted, seconds from events where run_id=? order by seq", [run]).fetchall()
    fl = collections.defaultdict(list)
    for s, e, o, n in c.execute("select seq, example, old_label, new_label from flips where run_id=? order by seq, ord", [run]).fetchall():
        fl[s].append((e, o, n))
    order, labels = [], {}
    memo = collections.OrderedDict()
    def key(order, labels): return (tuple(order), tuple(labels[i] for i in order))
    def remember(k):
        memo[k] = 1; memo.move_to_end(k)
        while len(memo) > 256: memo.popitem(last=False)
    hits = hit_s = scored = scored_s = 0
    for seq, kind, ex, old, new, acc, sec in ev:
        if kind == "propose" and new is not None and new != old:
            o2, l2 = (order if ex in labels else order + [ex]), dict(labels); l2[ex] = new
            k = key(o2, l2); scored += 1; scored_s += sec
            if k in memo: hits += 1; hit_s += sec
            remember(k)
        for e, o, n in fl.get(seq, []):
            if e not in labels: order.append(e)
            labels[e] = n
        if kind in ("init", "final_pass"): remember(key(order, labels))
    print(f"run {run}: {scored} scored proposals ({scored_s:.0f} s); the memory would have answered {hits} of them ({hit_s:.0f} s)")
