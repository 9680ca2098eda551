"""Small datasets for engine tests, built from word lists so the fake model has a concept to find."""
from __future__ import annotations

import random
import zlib

import numpy as np

from icm_engine.backends.fake import NEGATIVE, POSITIVE, FakeLM, polarity
from icm_engine.core.tasks import Example, Task

SINGLE = Task(name="polarity", template="Review: {text}\nPositive?", fields=("text",), rule="none")
PAIRED = Task(
    name="polarity_pairs",
    template="Review: {text}\nClaim: {claim}\nTrue?",
    fields=("text", "claim"),
    rule="complementary",
    group_field="group",
)


def polarity_examples(n: int, seed: int = 0, paired: bool = False) -> tuple[list[Example], dict[int, int]]:
    """n reviews (2n claims when paired) and their gold labels, kept apart as the loaders do."""
    rng = random.Random(seed)
    examples, gold = [], {}
    for k in range(n):
        positive = k % 2 == 0
        words = rng.sample(sorted(POSITIVE if positive else NEGATIVE), 2) + ["food", "place"]
        rng.shuffle(words)
        text = " ".join(words)
        if not paired:
            gold[len(examples)] = int(positive)
            examples.append(Example(uid=f"r{k}", fields={"text": text}))
            continue
        claims = [("positive", positive), ("negative", not positive)]
        rng.shuffle(claims)
        for claim, truth in claims:
            gold[len(examples)] = int(truth)
            examples.append(Example(uid=f"r{k}-{claim[:3]}", fields={"text": text, "claim": claim}, group=f"g{k}", key=claim))
    return examples, gold


class PrefixStoreLM(FakeLM):
    """The fake model with a prefix store that serves every segment of a prompt but its last:
    what a step's tokens_reused counts. (Its forwarded count stays the fake's whole prompt.)"""

    def label_logprobs(self, queries):
        self.stats.tokens_reused += sum(self.count_tokens(s) for q in queries for s in q.segments[:-1])
        return super().label_logprobs(queries)


class PolarityStates(FakeLM):
    """The fake polarity model with hidden states at the label position: noise plus the review's
    polarity along one direction, so a head can learn what the labels say."""

    @property
    def hidden_layer_count(self) -> int:
        return 2

    def hidden_states(self, prompts, layers):
        direction = np.random.default_rng(0).normal(size=16)
        rows = [np.random.default_rng(zlib.crc32(p[-1].encode())).normal(size=16) + 3 * np.sign(polarity(p[-1])) * direction
                for p in prompts]
        return np.repeat(np.asarray(rows, dtype=np.float32)[None], len(layers), axis=0)
