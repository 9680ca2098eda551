"""Fine-tunes started from the studio (the Export page): each in a background thread, with progress,
an ETA and the loss so far that a page can poll; the result lands beside the database like
`icm finetune`'s. No streamlit here."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ..core.config import LearnerConfig
from .finetune import finetune, run_labels


@dataclass
class FinetuneJob:
    run_id: int
    config: LearnerConfig
    state: str = "loading"  # loading, preparing, training, finished, failed
    done: int = 0
    total: int = 0
    message: str = ""
    started: float = field(default_factory=time.monotonic)
    stage_started: float = field(default_factory=time.monotonic)
    losses: list[float] = field(default_factory=list)
    result: dict | None = None  # provenance of the saved model
    error: str | None = None

    @property
    def eta_seconds(self) -> float | None:
        """Remaining seconds of the stage in flight, from its pace so far."""
        if not self.done or not self.total or self.done >= self.total:
            return None
        return (time.monotonic() - self.stage_started) / self.done * (self.total - self.done)


class FinetuneJobs:
    """The fine-tunes of one RunManager's database, one thread each."""

    def __init__(self, manager) -> None:
        self.manager = manager
        self._jobs: list[FinetuneJob] = []
        self._lock = threading.Lock()

    def start(self, run_id: int, config: LearnerConfig) -> int:
        """Start fine-tuning on run `run_id`'s labels; returns the job's number."""
        source = run_labels(self.manager.store, run_id)  # no labels yet: refused here, at once
        job = FinetuneJob(run_id, config)
        with self._lock:
            self._jobs.append(job)
            number = len(self._jobs) - 1
        threading.Thread(target=self._run, args=(job, source), name=f"finetune-{run_id}", daemon=True).start()
        return number

    def job(self, number: int) -> FinetuneJob:
        with self._lock:
            return self._jobs[number]

    def _run(self, job: FinetuneJob, source) -> None:
        def progress(done: int, total: int, message: str) -> None:
            stage = "preparing" if message.startswith("reading") else "training"
            if stage != job.state:
                job.state, job.stage_started = stage, time.monotonic()
            job.done, job.total, job.message = done, total, message
            if stage == "training" and message.startswith("loss "):
                job.losses.append(float(message.split()[1]))

        try:
            backend = self.manager.model_for(job.run_id)
            job.result = finetune(self.manager.db_path, source, backend, job.config, progress=progress)
            job.state = "finished"
        except Exception as error:  # shown on the page; the studio keeps running
            job.state, job.error = "failed", f"{type(error).__name__}: {error}"
