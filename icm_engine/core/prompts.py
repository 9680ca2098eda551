"""The one prompt layout: what the model reads, for scoring, evaluation and the studio's Audit page.

A prompt is a sequence of segments: for each demonstration its query, then its label word and
the task's separator; then the target's query, which ends where the label word goes. Backends
tokenize each segment on its own (backends/base.py), so the same segments always mean the same
tokens and prompts that share leading segments can share computation. Everything that shows or
scores a prompt builds it here, so the Audit page shows exactly what the search scored.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from .tasks import Example, Task


class Prompts:
    """Prompts over one list of examples, addressed by index; each query is rendered once."""

    def __init__(self, task: Task, examples: Sequence[Example]) -> None:
        self.task, self.examples = task, examples
        self._queries: dict[int, str] = {}  # a search renders each query thousands of times

    def query(self, index: int) -> str:
        if index not in self._queries:
            self._queries[index] = self.task.render_query(self.examples[index])
        return self._queries[index]

    def answer(self, label: int) -> str:
        """What follows a demonstration's query: its label word and the separator."""
        return self.task.render_label(label)

    def segments(self, demos: Iterable[tuple[int, int]], target: int | None = None) -> tuple[str, ...]:
        """(example, label) demonstrations in order, then the target's query (none: a prefix)."""
        parts: list[str] = []
        for index, label in demos:
            parts += [self.query(index), self.answer(int(label))]
        if target is not None:
            parts.append(self.query(target))
        return tuple(parts)

    def text(self, demos: Iterable[tuple[int, int]], target: int | None = None) -> str:
        return "".join(self.segments(demos, target))


def fold_of(example: int, folds: int) -> int:
    """The in-context fold of an example (by its index, so it never changes as labels come and go)."""
    return example % folds


def demonstrations(order: Sequence[int], target: int, folds: int = 0) -> list[int]:
    """The labeled examples whose labels the prompt for `target` shows, in demonstration order.

    folds 0: every other labeled example (leave-one-out, Algorithm 1). folds F >= 2: the labeled
    examples of the other F - 1 folds, so every target of one fold reads the same prompt and a
    change to one label recomputes F - 1 prompts instead of one per labeled example
    (docs/speed.md, "In-context folds"); no prompt shows its target's own label either way."""
    if folds:
        fold = fold_of(target, folds)
        return [j for j in order if fold_of(j, folds) != fold]
    return [j for j in order if j != target]


def demo_prefix(task: Task, demos: Sequence[Example], labels: Sequence[int]) -> tuple[str, ...]:
    """The segments of `demos` labeled `labels`, for prompts whose queries come after them."""
    if len(demos) != len(labels):
        raise ValueError(f"{len(demos)} demonstrations but {len(labels)} labels")
    return Prompts(task, demos).segments(enumerate(labels))
