"""LoRA on the base model, trained by TRL's SFTTrainer on prompt/completion pairs (peft adapters on
every linear layer, target_modules "all-linear"; the paper's LoRA settings by default: rank 16,
lr 5e-5, 3 epochs).

Each example is handed to TRL already tokenized exactly as the scorer reads it: BOS + the query's
tokens, then the label word's first token as the completion (completion_mask marks it, so the loss
is on the label alone). The trained adapter is merged into a copy of the weights and scored by the
same TransformersLM code as the in-context search, so a fine-tuned model and a prompt are read at
the same position the same way. The backend's own weights are never touched: training works on a
deep copy.
"""
from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..backends.base import LabelQuery, ModelInfo
from ..core.config import LearnerConfig
from ..core.scoring import normalize
from ..core.tasks import Example, Task
from .base import Learner, Prepared, Trained, TrainProgress, check_labels

PREDICT_BATCH = 64
SCORER_CACHE_MB = 512


class LoraLearner(Learner):
    kind = "lora"

    def __init__(self, backend, task: Task, config: LearnerConfig = LearnerConfig()) -> None:
        super().__init__(task)
        if not hasattr(backend, "model") or not hasattr(backend, "tokenizer"):
            raise ValueError(f"LoRA needs the model's weights in this process; {backend.name} has none here "
                             "(an inference server): fine-tune with the head learner, or load the model locally")
        self.backend, self.config = backend, config

    def prepare(self, examples: Sequence[Example], progress: TrainProgress | None = None,
                context: Sequence[tuple[str, int]] | None = None) -> Prepared:  # trains on bare queries: no context
        return Prepared(list(examples), self.prompts(examples))

    def zero_shot(self, prepared: Prepared) -> np.ndarray:
        return _label_logprobs(self.backend, self.task, prepared.prompts)

    def _tokens(self, prompt: str, label: int) -> tuple[list[int], list[int]]:
        ids = self._encode(prompt)
        answer = self.backend.label_token_ids(self.task.label_words)[label]
        return ids + [answer], [0] * len(ids) + [1]

    def _encode(self, prompt: str) -> list[int]:
        """BOS + the prompt as one segment: the tokens TransformersLM scores for it."""
        bos = self.backend.tokenizer.bos_token_id
        return ([] if bos is None else [int(bos)]) + [int(t) for t in self.backend.tokenizer(
            prompt, add_special_tokens=False)["input_ids"]]

    def fit(self, prepared: Prepared, indices: Sequence[int], labels: Sequence[int],
            progress: TrainProgress | None = None, seed: int = 0) -> "TrainedLora":
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import TrainerCallback
        from trl import SFTConfig, SFTTrainer

        indices, labels = check_labels(indices, labels)
        rows = [self._tokens(prepared.prompts[i], int(y)) for i, y in zip(indices, labels)]
        dataset = Dataset.from_list([{"input_ids": ids, "completion_mask": mask} for ids, mask in rows])
        curve: list[float] = []

        class Report(TrainerCallback):  # the loss of every step, and progress for the caller's bar
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    curve.append(float(logs["loss"]))
                    if progress is not None:
                        progress(state.global_step, state.max_steps, f"loss {logs['loss']:.4f}")

        model = copy.deepcopy(self.backend.model).train()
        scratch = tempfile.mkdtemp(prefix="icm-lora-")  # the trainer wants a folder; nothing is saved there
        args = SFTConfig(
            output_dir=scratch, gradient_checkpointing=False, num_train_epochs=self.config.epochs,
            per_device_train_batch_size=self.config.batch_size, learning_rate=self.config.learning_rate,
            logging_steps=1, save_strategy="no", report_to="none", seed=seed, data_seed=seed,
            completion_only_loss=True, max_length=None, use_cpu=self.backend.device.type == "cpu",
            disable_tqdm=progress is not None, dataloader_num_workers=0, bf16=False, fp16=False,
        )
        peft_config = LoraConfig(r=self.config.lora_rank, lora_alpha=self.config.lora_alpha,
                                 target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=self.backend.tokenizer,
                             peft_config=peft_config, callbacks=[Report()])
        if progress is not None:  # the caller draws progress; the trainer's own printing of every log goes
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        started = time.perf_counter()
        try:
            trainer.train()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return TrainedLora(self, trainer.model, curve, time.perf_counter() - started)

    def load(self, folder: Path, meta: dict[str, Any]) -> "TrainedLora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(copy.deepcopy(self.backend.model), str(folder / "adapter"))
        return TrainedLora(self, model, list(meta.get("loss_curve", [])), 0.0)


class TrainedLora(Trained):
    kind = "lora"

    def __init__(self, learner: LoraLearner, peft_model, loss_curve: list[float], seconds: float) -> None:
        from ..backends.transformers_backend import TransformersLM

        self.learner, self.peft_model, self.loss_curve, self.seconds = learner, peft_model.eval(), loss_curve, seconds
        merged = copy.deepcopy(peft_model).merge_and_unload().eval()
        base = learner.backend
        info = ModelInfo(name=f"{base.name}+lora", revision=base.revision, device=base.info.device,
                         dtype=base.info.dtype, quantization=base.info.quantization)
        # the batched, cached scorer of the search (a small store: prompts here share little but BOS)
        self.scorer = TransformersLM(merged, base.tokenizer, info, max_context=base.context_window,
                                     cache_budget_mb=SCORER_CACHE_MB)

    def label_logprobs(self, prepared: Prepared, indices: Sequence[int]) -> np.ndarray:
        return _label_logprobs(self.scorer, self.learner.task, [prepared.prompts[i] for i in indices])

    def save(self, folder: Path) -> None:
        self.peft_model.save_pretrained(str(folder / "adapter"))
        (folder / "lora.json").write_text(json.dumps({"base": self.learner.backend.name}))


def _label_logprobs(backend, task: Task, prompts: Sequence[str]) -> np.ndarray:
    rows = [backend.label_logprobs([LabelQuery((p,), task.label_words) for p in prompts[start:start + PREDICT_BATCH]])
            for start in range(0, len(prompts), PREDICT_BATCH)]
    return normalize(np.concatenate(rows), "none") if rows else np.zeros((0, 2))
