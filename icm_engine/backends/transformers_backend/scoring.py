"""Label log-probs from a transformers model: the naive reference and the prefix-cached fast path.

Scoring is a mixin of model.TransformersLM, which holds the state it works on: the model and
its text config, `device`, `stats`, the prefix store `_store` (None in naive mode), the lock,
the sliding windows `_windows`, the tokens (`_prompt_tokens`, `label_token_ids`) and `_count`.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from icm_engine.backends.base import LabelQuery, empty_label_rows
from icm_engine.backends.kv_cache import LayerKV
from icm_engine.backends.prefix_batches import Job, batch_cache, chunk_spans, plan_waves, split_batches

from . import memory
from .device import attention_kernels

_HEAD_CHUNK_ROWS = 32  # rows per vocabulary projection: 32 x 262k logits in float32 is 34 MB


class Scoring:
    """label_logprobs and sequence_label_logprobs, and the forwards behind them."""

    _deferred_head_ok: bool | None  # decided by a probe on first fast use

    def label_logprobs(self, queries: Sequence[LabelQuery]) -> np.ndarray:
        if not queries:
            return empty_label_rows()
        n_labels = len(queries[0].label_words)
        label_ids = []
        for query in queries:
            if len(query.label_words) != n_labels:
                raise ValueError("all queries of one batch must have the same number of label words")
            label_ids.append(self.label_token_ids(query.label_words))
        prompts = [self._prompt_tokens(query.segments) for query in queries]
        with self._lock, torch.inference_mode(), attention_kernels(self.device):
            if self._store is None:  # reduce each row at once: stacked 262k-wide logits get large
                rows = [self._label_logprobs_from_logits(self._naive_logits(tokens, [len(tokens) - 1]), [ids])
                        for tokens, ids in zip(prompts, label_ids)]
                return np.concatenate(rows)
            if self._deferred_head_ok is None:
                self._deferred_head_ok = self._probe_deferred_head()
            if self._deferred_head_ok:
                jobs = [Job(i, tokens, [len(tokens) - 1], self._demonstrations_length(query, tokens))
                        for i, (query, tokens) in enumerate(zip(queries, prompts))]
                return self._label_logprobs_from_hidden(torch.cat(self._forward_jobs(jobs)), label_ids)
            # Lexicographic order = depth-first order of the prompts' prefix tree: each prompt
            # then finds in the store everything it shares with the prompts before it.
            rows = [None] * len(prompts)
            for i in sorted(range(len(prompts)), key=lambda i: tuple(prompts[i])):
                # rows are full logits here: reduce each at once
                rows[i] = self._label_logprobs_from_logits(self._cached_rows(prompts[i], [len(prompts[i]) - 1]), [label_ids[i]])
            return np.concatenate(rows)

    def sequence_label_logprobs(
        self, segments: tuple[str, ...], read_after: Sequence[int], label_words: tuple[str, ...]
    ) -> np.ndarray:
        """Label log-probs [len(read_after), n_labels] read after segment k, for each k in
        read_after, all from one forward over BOS + all segments (the 'prequential' scorer:
        each reading sees only the segments before it)."""
        label_ids = self.label_token_ids(label_words)
        tokens = self._prompt_tokens(segments)
        segment_ends = np.cumsum([len(self._tokenize_segment(s)) for s in segments]) + self._bos_length
        positions = []
        for k in read_after:
            if not 0 <= k < len(segments):
                raise ValueError(f"read_after index {k} is outside 0..{len(segments) - 1}")
            position = int(segment_ends[k]) - 1  # the token whose output predicts what follows segment k
            if position < 0:
                raise ValueError(f"nothing precedes the reading after segment {k} (no BOS, empty segments)")
            positions.append(position)
        if not positions:
            return empty_label_rows(len(label_ids))
        with self._lock, torch.inference_mode(), attention_kernels(self.device):
            if self._store is None:
                logits = self._naive_logits(tokens, positions)
                return self._label_logprobs_from_logits(logits, [label_ids] * len(positions))
            rows = self._cached_rows(tokens, positions)
            if not self._deferred_head_ok:
                return self._label_logprobs_from_logits(rows, [label_ids] * len(positions))
            return self._label_logprobs_from_hidden(rows, [label_ids] * len(positions))

    # ----- forwards -----

    def _naive_logits(self, tokens: np.ndarray, positions: list[int]) -> torch.Tensor:
        """Reference: the model's own causal-LM forward, logits [len(positions), vocab]."""
        start = time.perf_counter()
        ids = torch.as_tensor(tokens, device=self.device)[None]
        keep = torch.as_tensor(positions, device=self.device)
        logits = self.model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits[0]
        self._count(len(tokens), start)
        return logits

    def _cached_rows(self, tokens: np.ndarray, positions: list[int]) -> torch.Tensor:
        """Forward only what the store lacks; return rows [len(positions), d] for the outputs at
        positions: final hidden states when the head is deferred, else logits."""
        if self._deferred_head_ok is None:
            self._deferred_head_ok = self._probe_deferred_head()
        # Reuse at most up to the first position read: its output must be computed here.
        past, reused = self._store.longest_prefix(tokens, limit=min(positions))
        start = time.perf_counter()
        cache = _full_layer_cache(past)
        ids = torch.as_tensor(tokens[reused:], device=self.device)[None]
        position_ids = torch.arange(reused, len(tokens), device=self.device)[None]
        keep = torch.as_tensor([p - reused for p in positions], device=self.device)
        if self._deferred_head_ok:
            out = self.model.base_model(input_ids=ids, position_ids=position_ids, cache=cache, use_cache=True)
            rows = out.last_hidden_state[0, keep]
        else:
            out = self.model(
                input_ids=ids, position_ids=position_ids, cache=cache, use_cache=True, logits_to_keep=keep
            )
            rows = out.logits[0]
        self._count(len(tokens) - reused, start, reused)
        self._store.put(tokens, tuple((layer.keys, layer.values) for layer in cache.layers))
        return rows

    def _forward_jobs(self, jobs: list[Job], layers: Sequence[int] = (), keep: bool = True) -> list[torch.Tensor]:
        """Final hidden states at each job's positions, [len(positions), d] per job (by job.index),
        forwarding only what the store lacks, many jobs per forward (see prefix_batches). With
        `layers`: [len(positions), len(layers) + 1, d], the outputs of those blocks (0: embeddings)
        and then the final hidden state. keep=False: the jobs' own states are not stored (prompts
        read once, whose shared prefix the caller stored first)."""
        results: list[torch.Tensor | None] = [None] * len(jobs)
        max_bytes = memory.batch_bytes(self.device)
        bytes_per_token = memory.kv_bytes_per_token(self.model)
        for wave in plan_waves(jobs, self._store, memory.kv_bytes_per_token(self.model, self._store.kv_dtype)):
            fetched = [self._store.longest_prefix(job.tokens, limit=job.reuse_limit) for job in wave]
            reused = [n for _, n in fetched]
            for batch in split_batches(wave, reused, bytes_per_token, max_bytes, memory.MAX_BATCH_ROWS):
                self._forward_batch([wave[k] for k in batch], [fetched[k] for k in batch], results, layers, keep)
        return results

    def _forward_batch(self, jobs: list[Job], fetched: list, results: list, layers: Sequence[int] = (),
                       keep: bool = True) -> None:
        """One forward of several jobs, each continuing its own stored prefix; stores each row."""
        start = time.perf_counter()
        reused = [n for _, n in fetched]
        past_length = max(reused)
        new_lengths = [len(job.tokens) - n for job, n in zip(jobs, reused)]
        width = max(new_lengths)
        ids = torch.zeros((len(jobs), width), dtype=torch.long)
        position_ids = torch.zeros((len(jobs), width), dtype=torch.long)
        attention_mask = torch.zeros((len(jobs), past_length + width), dtype=torch.long)
        for row, (job, n) in enumerate(zip(jobs, reused)):
            ids[row, : len(job.tokens) - n] = torch.as_tensor(job.tokens[n:])
            position_ids[row] = torch.arange(n, n + width)  # right padding continues the positions
            attention_mask[row, past_length - n :] = 1  # left padding of the past stays masked
        cache = batch_cache([past for past, _ in fetched], past_length, self._windows, width)
        ids, position_ids, attention_mask = ids.to(self.device), position_ids.to(self.device), attention_mask.to(self.device)
        read: list[list[torch.Tensor | None]] = [[None] * len(job.positions) for job in jobs]
        for first, end in chunk_spans(width, self._windows):
            out = self.model.base_model(
                input_ids=ids[:, first:end], position_ids=position_ids[:, first:end],
                attention_mask=attention_mask[:, : past_length + end], cache=cache, use_cache=True,
                output_hidden_states=bool(layers),
            )
            for row, (job, n) in enumerate(zip(jobs, reused)):
                for k, position in enumerate(job.positions):
                    if first <= position - n < end:
                        at = position - n - first
                        final = out.last_hidden_state[row, at]
                        read[row][k] = (torch.stack([*(out.hidden_states[layer][row, at] for layer in layers), final])
                                        if layers else final)
        for row, job in enumerate(jobs):
            results[job.index] = torch.stack(read[row])
        kept = [(row, job.kept_tokens) for row, job in enumerate(jobs) if keep and len(job.kept_tokens) > 1]
        # Rows keeping the same tokens are stored once (put refreshes the entry that covers them);
        # when most rows are such (the queries of one in-context fold share one prompt), the few
        # stored rows are copied so that the batch buffer is freed (a view would hold all of it).
        copy = len({tokens.tobytes() for _, tokens in kept}) * 2 < len(jobs)
        for row, tokens in kept:
            span = slice(past_length - reused[row], past_length - reused[row] + len(tokens))
            self._store.put(tokens, tuple((layer.keys[row : row + 1, :, span], layer.values[row : row + 1, :, span])
                                          for layer in cache.layers), copy=copy)
        self._count(sum(new_lengths), start, sum(reused))
        if self.device.type == "cpu":
            memory.relieve_memory_pressure(self._store)

    def _demonstrations_length(self, query: LabelQuery, tokens: np.ndarray) -> int:
        """Tokens of a label prompt before its last segment (the query): what later prompts share."""
        return len(tokens) - len(self._tokenize_segment(query.segments[-1])) if query.segments else len(tokens)

    # ----- the vocabulary projection -----

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's vocabulary projection for final hidden states [n, d] -> logits [n, vocab],
        including final logit softcapping where the config has it (Gemma 2/3)."""
        logits = self.model.get_output_embeddings()(hidden)
        softcap = getattr(self._text_config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    def _probe_deferred_head(self) -> bool:
        """Whether base model + _head reproduce the model's own logits. Architectures with extra
        logit scaling we don't know of fail this and fall back to the model's full forward."""
        ids = torch.as_tensor(self._prompt_tokens(["The answer is"]), device=self.device)[None]
        try:
            with torch.inference_mode(), attention_kernels(self.device):
                reference = self.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1].float()
                hidden = self.model.base_model(input_ids=ids, use_cache=False).last_hidden_state[:, -1]
                ours = self._head(hidden)[0].float()
        except Exception:  # a base model with another calling convention: use the full model instead
            return False
        tolerance = 1e-3 * float(reference.abs().max()) + 1e-5
        return bool((reference - ours).abs().max() <= tolerance)

    def _label_logprobs_from_hidden(self, hidden: torch.Tensor, label_ids: list[tuple[int, ...]]) -> np.ndarray:
        """The deferred head: final hidden states [n, d] of a whole batch, projected in chunks."""
        start = time.perf_counter()
        parts = []
        for begin in range(0, len(hidden), _HEAD_CHUNK_ROWS):
            chunk = slice(begin, begin + _HEAD_CHUNK_ROWS)
            parts.append(self._label_logprobs_from_logits(self._head(hidden[chunk]), label_ids[chunk]))
        self.stats.seconds += time.perf_counter() - start
        return np.concatenate(parts)

    @staticmethod
    def _label_logprobs_from_logits(logits: torch.Tensor, label_ids: list[tuple[int, ...]]) -> np.ndarray:
        """log-softmax over the whole vocabulary, in float64, read at each row's label ids."""
        logits = logits.double()
        log_normalizer = torch.logsumexp(logits, dim=-1, keepdim=True)
        index = torch.as_tensor(label_ids, device=logits.device)
        return (logits.gather(1, index) - log_normalizer).cpu().numpy()


def _full_layer_cache(past: Sequence[LayerKV] | None):
    """A DynamicCache of plain (full-attention) layers, seeded with past states.

    Built without the model config on purpose: from a config, transformers gives sliding-window
    layers a cache that keeps only the last window-1 tokens, which we could not store and slice.
    With full layers the model still applies its sliding window, through the mask it builds from
    config.sliding_window and absolute positions, so the attention is exactly that of an uncached
    forward. The seeded tensors are views into the store (or copies unpacked from its storage
    dtype); the layers' updates concatenate into new tensors and never write into them.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    if past is not None:
        for keys, values in past:
            layer = DynamicLayer()
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
            cache.layers.append(layer)
    return cache
