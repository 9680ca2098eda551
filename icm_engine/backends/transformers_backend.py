"""A LanguageModel over a transformers causal LM, exact and fast for ICM's leave-one-out prompts.

Two modes share the same weights:
- fast (default): a prefix key/value store (kv_cache.PrefixKVStore) lets each prompt forward only
  the tokens after its longest prefix already computed; prompts of a batch run in lexicographic
  token order, which is a depth-first walk of their prefix tree, so every shared prefix is
  forwarded once. The vocabulary projection is deferred and done for all prompts of a batch in a
  few matrix products, because on CPU one 262k-row projection (Gemma 3) costs as much as
  forwarding dozens of tokens.
- naive (`TransformersLM.naive()`): the reference; one independent forward of the model's own
  causal-LM head per prompt, no cache, no batching.

Both return log P(first token of each label word) normalized over the whole vocabulary.
Sliding-window layers (Gemma 3) stay exact in fast mode: the store keeps every layer's full
keys/values and the model is handed a cache of plain full layers, so the model builds its own
sliding-window mask from absolute positions exactly as in an uncached forward.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Sequence

import numpy as np
import torch

from icm_engine.backends.base import BackendStats, LabelQuery, LanguageModel, ModelInfo
from icm_engine.backends.kv_cache import LayerKV, PrefixKVStore
from icm_engine.backends.prefix_batches import (
    Job, batch_cache, chunk_spans, plan_waves, sliding_windows, split_batches,
)

# Default prefix-store budget on CPU: this share of the memory the system has free, at most
# CPU_CACHE_BUDGET_CAP_MB. A fixed 4 GB thrashed at n=64 demos on Gemma 3 270M (fp32 keys/values
# take ~37 KB a token, so one leave-one-out state is ~5 GB and a step needs two).
CPU_CACHE_BUDGET_FRACTION = 0.5
CPU_CACHE_BUDGET_CAP_MB = 12 * 1024
CPU_CACHE_BUDGET_FLOOR_MB = 1024
# The budget is set at load time, but other processes (a second search, the studio) may claim
# memory later: when the system's available memory falls under this, the store evicts what is
# missing after each batch, so it shrinks before the kernel kills a process. It keeps at least a
# quarter of its budget: freed blocks do not always show up as available memory again, and a
# store that emptied itself batch after batch would recompute every prompt from scratch.
CPU_LOW_MEMORY_MB = 2048
CPU_PRESSURE_KEEP_FRACTION = 0.25
CACHE_BUDGET_ENV = "ICM_KV_CACHE_MB"  # an explicit budget in MB, for every TransformersLM of the process
GPU_CACHE_BUDGET_FRACTION = 0.5  # default on CUDA: this share of the memory free after loading
# Padded key/value buffer of one batched forward: big enough to fill the matrix units with rows,
# small enough to stay in memory next to the prefix store.
CPU_BATCH_BYTES = 1 << 30
GPU_BATCH_BYTES = 4 << 30
MAX_BATCH_ROWS = 64
_HEAD_CHUNK_ROWS = 32  # rows per vocabulary projection: 32 x 262k logits in float32 is 34 MB
_MAX_TOKENIZED_SEGMENTS = 200_000  # bound on the per-segment tokenization memo


class TransformersLM(LanguageModel):
    """Scores label words with a loaded transformers causal LM; see the module docstring."""

    def __init__(
        self,
        model,
        tokenizer,
        info: ModelInfo,
        max_context: int | None = None,
        cache_budget_mb: float | None = None,
        prefix_cache: bool = True,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = info
        self.name = info.name
        self.revision = info.revision
        self.stats = BackendStats()
        self._max_context = max_context
        self._text_config = model.config.get_text_config()
        self._bos_id = tokenizer.bos_token_id
        self._segment_tokens: dict[str, tuple[int, ...]] = {}
        self._label_token_ids: dict[tuple[str, ...], tuple[int, ...]] = {}
        self._lock = threading.RLock()  # one forward at a time: the store and stats are shared state
        self._deferred_head_ok: bool | None = None  # decided by a probe on first fast use
        self._windows = sliding_windows(self._text_config)
        if prefix_cache:
            if cache_budget_mb is None and os.environ.get(CACHE_BUDGET_ENV):
                cache_budget_mb = float(os.environ[CACHE_BUDGET_ENV])
            if cache_budget_mb is None:
                budget_bytes = _default_budget_bytes(self.device)
            else:
                budget_bytes = cache_budget_mb * 2**20
            self._store: PrefixKVStore | None = PrefixKVStore(int(budget_bytes))
        else:
            self._store = None

    # ----- public interface -----

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def uses_prefix_cache(self) -> bool:
        return self._store is not None

    @property
    def cache_store(self) -> PrefixKVStore | None:
        """The prefix store (None in naive mode); exposed for inspection and tests."""
        return self._store

    @property
    def context_window(self) -> int:
        model_limit = getattr(self._text_config, "max_position_embeddings", None) or 2**31
        return min(model_limit, self._max_context) if self._max_context else model_limit

    def naive(self) -> "TransformersLM":
        """The reference scorer on the same weights: one uncached forward per query. It keeps
        its own stats, so a comparison can report both costs."""
        return TransformersLM(self.model, self.tokenizer, self.info, self._max_context, prefix_cache=False)

    def clear_cache(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.clear()

    def close(self) -> None:
        self.clear_cache()
        self._segment_tokens.clear()

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize_segment(text))

    def label_logprobs(self, queries: Sequence[LabelQuery]) -> np.ndarray:
        if not queries:
            return np.zeros((0, 0), dtype=np.float64)
        n_labels = len(queries[0].label_words)
        label_ids = []
        for query in queries:
            if len(query.label_words) != n_labels:
                raise ValueError("all queries of one batch must have the same number of label words")
            label_ids.append(self.label_token_ids(query.label_words))
        prompts = [self._prompt_tokens(query.segments) for query in queries]
        with self._lock, torch.inference_mode(), self._attention_kernels():
            if self._store is None:  # reduce each row at once: stacked 262k-wide logits get large
                rows = [self._label_logprobs_from_logits(self._naive_logits(tokens, [len(tokens) - 1]), [ids])
                        for tokens, ids in zip(prompts, label_ids)]
                return np.concatenate(rows)
            if self._deferred_head_ok is None:
                self._deferred_head_ok = self._probe_deferred_head()
            if self._deferred_head_ok:
                jobs = [Job(i, tokens, [len(tokens) - 1]) for i, tokens in enumerate(prompts)]
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
            return np.zeros((0, len(label_ids)), dtype=np.float64)
        with self._lock, torch.inference_mode(), self._attention_kernels():
            if self._store is None:
                logits = self._naive_logits(tokens, positions)
                return self._label_logprobs_from_logits(logits, [label_ids] * len(positions))
            rows = self._cached_rows(tokens, positions)
            if not self._deferred_head_ok:
                return self._label_logprobs_from_logits(rows, [label_ids] * len(positions))
            return self._label_logprobs_from_hidden(rows, [label_ids] * len(positions))

    def label_token_ids(self, label_words: tuple[str, ...]) -> tuple[int, ...]:
        """First token of each label word; raises ValueError when two words share it."""
        label_words = tuple(label_words)
        if label_words in self._label_token_ids:
            return self._label_token_ids[label_words]
        if not label_words:
            raise ValueError("at least one label word is needed")
        ids = []
        for word in label_words:
            tokens = self._tokenize_segment(word)
            if not tokens:
                raise ValueError(f"label word {word!r} tokenizes to nothing")
            ids.append(tokens[0])
        if len(set(ids)) != len(ids):
            shown = ", ".join(
                f"{word!r} -> {self.tokenizer.convert_ids_to_tokens(i)!r}" for word, i in zip(label_words, ids)
            )
            raise ValueError(
                f"label words must start with different tokens, but their first tokens collide: {shown}. "
                "Pick label words that differ in their first token (e.g. ' True' / ' False', with the space)."
            )
        self._label_token_ids[label_words] = tuple(ids)
        return tuple(ids)

    def raw_throughput(self, n_tokens: int = 1024) -> float:
        """Tokens per second of one uncached forward over n_tokens random tokens (a benchmark;
        not counted in stats)."""
        n_tokens = max(2, min(n_tokens, self.context_window))
        generator = torch.Generator().manual_seed(0)
        vocab = self._text_config.vocab_size
        ids = torch.randint(min(100, vocab - 1), vocab, (1, n_tokens), generator=generator).to(self.device)
        # A GPU forward of a small model lasts milliseconds: warm up at full length (kernel choice,
        # allocator) and take the best of several. On CPU one forward lasts seconds; once is enough.
        on_gpu = self.device.type == "cuda"
        with self._lock, torch.inference_mode(), self._attention_kernels():
            self.model.base_model(input_ids=ids if on_gpu else ids[:, :8], use_cache=False)
            self._synchronize()
            best = float("inf")
            for _ in range(5 if on_gpu else 1):
                start = time.perf_counter()
                self.model.base_model(input_ids=ids, use_cache=False)
                self._synchronize()
                best = min(best, time.perf_counter() - start)
            return n_tokens / best

    @property
    def hidden_layer_count(self) -> int:
        return int(self._text_config.num_hidden_layers)

    def hidden_states(self, prompts: Sequence[tuple[str, ...]], layers: Sequence[int]) -> np.ndarray:
        """Residual stream at each prompt's last token after each block in `layers` (0: embeddings;
        the last block's entry is after the final norm, as transformers returns it), float32
        [len(layers), len(prompts), d]. Uncached right-padded batches of similar lengths: a right
        pad never changes the positions before it in a causal model, so each row equals its own
        unpadded forward (to float rounding)."""
        layers = [int(layer) for layer in layers]
        count = self.hidden_layer_count
        for layer in layers:
            if not 0 <= layer <= count:
                raise ValueError(f"layer {layer} is outside 0..{count} (0: embeddings, {count}: the last block)")
        prompts = [self._prompt_tokens(p) for p in prompts]
        width_of = self._text_config.hidden_size
        out = np.zeros((len(layers), len(prompts), width_of), dtype=np.float32)
        budget = GPU_BATCH_BYTES if self.device.type == "cuda" else CPU_BATCH_BYTES
        element = max(2, next(self.model.parameters()).element_size())
        per_token = (count + 1) * width_of * element  # every layer's states are returned
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with self._lock, torch.inference_mode(), self._attention_kernels():
            begin = 0
            while begin < len(order):
                end = begin + 1  # grow the batch while the longest row's states fit the budget
                while (end < len(order) and end - begin < MAX_BATCH_ROWS
                       and (end + 1 - begin) * len(prompts[order[end]]) * per_token <= budget):
                    end += 1
                rows = order[begin:end]
                width = max(len(prompts[i]) for i in rows)
                ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for row, i in enumerate(rows):
                    ids[row, : len(prompts[i])] = torch.as_tensor(prompts[i])
                    mask[row, : len(prompts[i])] = 1
                start = time.perf_counter()
                states = self.model.base_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                               output_hidden_states=True, use_cache=False).hidden_states
                last = torch.as_tensor([len(prompts[i]) - 1 for i in rows], device=self.device)
                picked = torch.arange(len(rows), device=self.device)
                for k, layer in enumerate(layers):
                    out[k, rows] = states[layer][picked, last].float().cpu().numpy()
                self._count(sum(len(prompts[i]) for i in rows), start)
                begin = end
        return out

    def read_label_position(self, prompts: Sequence[tuple[str, ...]], layers: Sequence[int],
                            label_words: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """hidden_states and the label words' logits from the same forward: the last block's state (after
        the final norm) times the head's rows for the label tokens (softcapped as the model does). The
        vocabulary normalizer is left out (it cancels in the log-odds): on CPU projecting 1,000 prompts
        onto Gemma 3's 262k-token vocabulary costs more than the forward itself."""
        count = self.hidden_layer_count
        with self._lock:
            if self._deferred_head_ok is None:
                self._deferred_head_ok = self._probe_deferred_head()
            head = self.model.get_output_embeddings()
            if not self._deferred_head_ok or not hasattr(head, "weight"):
                return super().read_label_position(prompts, layers, label_words)
            states = self.hidden_states(prompts, [*layers, count])
            ids = torch.as_tensor(self.label_token_ids(tuple(label_words)), device=self.device)
            with torch.inference_mode():
                rows = head.weight[ids].float()
                final = torch.from_numpy(states[-1]).to(self.device)
                logits = final @ rows.T + (head.bias[ids].float() if getattr(head, "bias", None) is not None else 0.0)
                softcap = getattr(self._text_config, "final_logit_softcapping", None)
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
        return states[:-1], logits.double().cpu().numpy()

    # ----- tokens -----

    @property
    def _bos_length(self) -> int:
        return 0 if self._bos_id is None else 1

    def _tokenize_segment(self, text: str) -> tuple[int, ...]:
        tokens = self._segment_tokens.get(text)
        if tokens is None:
            tokens = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(self._segment_tokens) >= _MAX_TOKENIZED_SEGMENTS:
                self._segment_tokens.clear()
            self._segment_tokens[text] = tokens
        return tokens

    def _prompt_tokens(self, segments: Sequence[str]) -> np.ndarray:
        """BOS + each segment tokenized on its own; checked against the context window."""
        pieces = [] if self._bos_id is None else [self._bos_id]
        for segment in segments:
            pieces.extend(self._tokenize_segment(segment))
        if not pieces:
            raise ValueError("the prompt is empty (no BOS token and no segment tokens)")
        if len(pieces) > self.context_window:
            raise ValueError(
                f"prompt of {len(pieces)} tokens exceeds the context window of {self.context_window} tokens"
            )
        return np.asarray(pieces, dtype=np.int64)

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
        self._count(len(tokens) - reused, start)
        self._store.put(tokens, tuple((layer.keys, layer.values) for layer in cache.layers))
        return rows

    def _forward_jobs(self, jobs: list[Job]) -> list[torch.Tensor]:
        """Final hidden states at each job's positions, [len(positions), d] per job (by job.index),
        forwarding only what the store lacks, many jobs per forward (see prefix_batches)."""
        results: list[torch.Tensor | None] = [None] * len(jobs)
        max_bytes = GPU_BATCH_BYTES if self.device.type == "cuda" else CPU_BATCH_BYTES
        for wave in plan_waves(jobs, self._store, self._kv_bytes_per_token):
            fetched = [self._store.longest_prefix(job.tokens, limit=job.reuse_limit) for job in wave]
            reused = [n for _, n in fetched]
            for batch in split_batches(wave, reused, self._kv_bytes_per_token, max_bytes, MAX_BATCH_ROWS):
                self._forward_batch([wave[k] for k in batch], [fetched[k] for k in batch], results)
        return results

    def _forward_batch(self, jobs: list[Job], fetched: list, results: list) -> None:
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
            )
            for row, (job, n) in enumerate(zip(jobs, reused)):
                for k, position in enumerate(job.positions):
                    if first <= position - n < end:
                        read[row][k] = out.last_hidden_state[row, position - n - first]
        for row, (job, n, new) in enumerate(zip(jobs, reused, new_lengths)):
            results[job.index] = torch.stack(read[row])
            span = slice(past_length - n, past_length + new)
            self._store.put(job.tokens, tuple((layer.keys[row : row + 1, :, span], layer.values[row : row + 1, :, span])
                                              for layer in cache.layers))
        self._count(sum(new_lengths), start)
        if self.device.type == "cpu":
            self._relieve_memory_pressure()

    def _relieve_memory_pressure(self) -> None:
        available = _available_memory_bytes()
        missing = CPU_LOW_MEMORY_MB * 2**20 - available
        if available > 0 and missing > 0:
            self._store.release(missing, keep_bytes=int(CPU_PRESSURE_KEEP_FRACTION * self._store.budget_bytes))

    @property
    def _kv_bytes_per_token(self) -> int:
        """Bytes of keys and values one token takes over all layers (for sizing batches)."""
        config = self._text_config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        element = next(self.model.parameters()).element_size()
        element = element if element >= 2 else 2  # quantized weights: keys/values are still 16-bit
        return 2 * config.num_hidden_layers * heads * head_dim * element

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
            with torch.inference_mode(), self._attention_kernels():
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

    def _count(self, n_tokens: int, start: float) -> None:
        self._synchronize()
        self.stats.model_calls += 1
        self.stats.tokens_forwarded += n_tokens
        self.stats.seconds += time.perf_counter() - start

    def _attention_kernels(self):
        """On CUDA, every attention kernel but PyTorch's memory-efficient one.

        Measured on an H200 (torch 2.11, tests/test_cuda.py): with the memory-efficient SDPA kernel,
        a tiny Gemma 3's cached scores differed from the uncached ones by up to 0.08 nats in
        float32, under masks with a sliding window; with the math, flash or cuDNN kernels they
        agreed to 1e-6, as on CPU. Exactness is this backend's promise, so that kernel is out.
        """
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _default_budget_bytes(device: torch.device) -> int:
    """Half the GPU memory still free (a 70B model's keys/values take ~320 KB per token, so a fixed
    few GB would evict a 32-demo leave-one-out batch); on CPU a share of the free memory, capped."""
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return int(GPU_CACHE_BUDGET_FRACTION * free_bytes)
    free_bytes = _available_memory_bytes()
    budget = min(CPU_CACHE_BUDGET_FRACTION * free_bytes, CPU_CACHE_BUDGET_CAP_MB * 2**20)
    return int(max(budget, CPU_CACHE_BUDGET_FLOOR_MB * 2**20))


def _available_memory_bytes() -> int:
    """MemAvailable (free plus reclaimable page cache) on Linux, else free pages, else 0."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: the caller's floor
        return 0


def _full_layer_cache(past: tuple[LayerKV, ...] | None):
    """A DynamicCache of plain (full-attention) layers, seeded with past states.

    Built without the model config on purpose: from a config, transformers gives sliding-window
    layers a cache that keeps only the last window-1 tokens, which we could not store and slice.
    With full layers the model still applies its sliding window, through the mask it builds from
    config.sliding_window and absolute positions, so the attention is exactly that of an uncached
    forward. The seeded tensors are views into the store; the layers' updates concatenate into
    new tensors and never write into them.
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
