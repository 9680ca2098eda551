"""Hidden states of a transformers model, for the CCS probe and the head learner: the residual
stream at each prompt's last token, in uncached right-padded batches.

HiddenStates is a mixin of model.TransformersLM, which holds the model and its text config,
`device`, `tokenizer`, the lock, the tokens (`_prompt_tokens`, `label_token_ids`), `_count`, and
(from scoring.Scoring) the deferred head's probe.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from icm_engine.backends.base import LanguageModel
from icm_engine.backends.kv_cache import common_prefix_length
from icm_engine.backends.prefix_batches import Job

from . import memory
from .device import attention_kernels


class HiddenStates:
    """hidden_layer_count, hidden_states and read_label_position of the LanguageModel interface."""

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
        self._check_layers(layers)
        prompts = [self._prompt_tokens(p) for p in prompts]
        width_of = self._text_config.hidden_size
        out = np.zeros((len(layers), len(prompts), width_of), dtype=np.float32)
        budget = memory.batch_bytes(self.device)
        element = max(2, next(self.model.parameters()).element_size())
        per_token = (count + 1) * width_of * element  # every layer's states are returned
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with self._lock, torch.inference_mode(), attention_kernels(self.device):
            begin = 0
            while begin < len(order):
                end = begin + 1  # grow the batch while the longest row's states fit the budget
                while (end < len(order) and end - begin < memory.MAX_BATCH_ROWS
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

    def _check_layers(self, layers: Sequence[int]) -> None:
        count = self.hidden_layer_count
        for layer in layers:
            if not 0 <= int(layer) <= count:
                raise ValueError(f"layer {layer} is outside 0..{count} (0: embeddings, {count}: the last block)")

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
            if not self._deferred_head_ok or not hasattr(head, "weight"):  # two forwards, as any backend does
                return LanguageModel.read_label_position(self, prompts, layers, label_words)
            if self._store is not None and prompts:
                states = self._cached_states(prompts, layers)
            else:
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

    def _cached_states(self, prompts: Sequence[tuple[str, ...]], layers: Sequence[int]) -> np.ndarray:
        """hidden_states(prompts, [*layers, last]) through the prefix store: prompts that share leading
        segments (a reading context of demonstrations before each query) forward that context once.
        Same numbers as the uncached path to float rounding (tests/test_finetune.py)."""
        self._check_layers(layers)
        tokens = [self._prompt_tokens(p) for p in prompts]
        jobs = [Job(i, t, [len(t) - 1]) for i, t in enumerate(tokens)]
        shared = min(common_prefix_length(tokens[0], t) for t in tokens)
        with torch.inference_mode(), attention_kernels(self.device):
            if shared > 1 and len(tokens) > 1:  # the context, stored once; each prompt's own tail is read and dropped
                self._forward_jobs([Job(0, tokens[0][:shared], [shared - 1])])
            # Storing every prompt would fill the store with states never asked again (1,000 prompts
            # after an 8-demonstration context: 20 GB of keys/values for Gemma 3 270M).
            read = self._forward_jobs(jobs, [int(layer) for layer in layers], keep=False)
        # each job: [1 position, len(layers) + 1, d] -> [len(layers) + 1, n, d]
        return torch.cat(read).transpose(0, 1).float().cpu().numpy()
