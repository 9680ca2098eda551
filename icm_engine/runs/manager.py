"""Runs searches in background threads for a long-lived process (the app): one Store, one worker per run.

DuckDB lets one process hold a database file read-write, so a process keeps ONE RunManager per
file and every writer goes through it. Each active run has a worker thread that alone touches its
Search: start/pause/step/stop only set what the worker should do next, and steering (pin, unpin,
exclude, include, set_params) is queued and applied by the worker between two steps, so the
caller never waits for a model call. Loaded models are cached by ModelConfig and shared between
runs; calls into a shared model are serialized and its costs are counted per run.

`status(run_id)` answers what a run is doing as a RunStatus: from its worker while one holds it,
else from the store. Readers (the studio's app/services.py) read the Store, which is thread-safe.
"""
from __future__ import annotations

import threading
import traceback
import uuid
from collections import deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass, replace
from typing import Callable

from ..backends.base import CacheUsage, LanguageModel, ModelInfo
from ..backends.shared import SharedBackend
from ..core.config import ModelConfig, RunConfig
from ..core.records import StepRecord
from ..core.search import Search
from ..store.database import INTERRUPTED, Store
from .batch_driver import BatchDriver
from .batches import is_batched, refresh_parent
from .finetune_jobs import FinetuneJobs
from .runner import BatchedRunError, advance, describe_error, is_user_error, open_search, record_steering

# progress(message, fraction or None), as models.load_model reports model conversion and loading
Progress = Callable[[str, "float | None"], None]
# (model settings, progress) -> a loaded backend; tests pass one that returns FakeLM
BackendFactory = Callable[[ModelConfig, Progress], LanguageModel]


def load_backend(config: ModelConfig, progress: Progress) -> LanguageModel:
    """The default factory: bundled name, local path or cached Hugging Face id via runs/models.py."""
    from .models import load_model  # torch and transformers load only when a model is needed

    return load_model(config, progress)


@dataclass(frozen=True)
class RunStatus:
    """What a run is doing, as the studio and scripts read it (RunManager.status)."""

    run_id: int
    name: str
    dataset_id: int
    state: str  # loading, running, paused, finished, stopped, failed, interrupted or created
    iteration: int | None  # the last committed step; None before the first
    steps: int  # the step budget
    labeled: int | None = None  # None where no worker holds the run (the store has its labels)
    message: str = ""  # model loading, in words
    progress: float | None = None  # of model loading, 0..1 where known
    error: str | None = None
    traceback: str | None = None
    steering_error: str | None = None  # why the last steering action was refused
    steps_taken: int = 0  # by this process's worker
    applying: str | None = None  # the steering action being applied now
    active: bool = False  # a worker thread holds the run
    busy: bool = False  # steering queued or being applied, or steps still wanted
    pausing: bool = False  # pause asked: it takes effect when the step in flight ends
    cache: CacheUsage | None = None  # the model's prefix store (shared by the runs on that model)
    hit_rate: float | None = None  # share of this worker's prompt tokens the store served


# The fields of RunStatus a worker keeps up to date while it holds a run.
_WORKER_FIELDS = ("state", "message", "progress", "iteration", "steps", "labeled", "error", "traceback",
                  "steering_error", "steps_taken", "applying", "cache", "hit_rate")


class _Worker:
    """The thread that owns one run's Search; see the module docstring."""

    def __init__(self, manager: "RunManager", run_id: int, model: ModelConfig, steps_total: int,
                 parent_id: int | None = None) -> None:
        self.manager, self.run_id, self.model = manager, run_id, model
        self.parent_id = parent_id  # a batch run's parent, whose labels follow this run's
        self._cond = threading.Condition()
        self._budget: int | None = 0  # steps still wanted: None = to the end, 0 = wait
        self._stopping = False
        self._steering: deque[tuple[Future, str, tuple]] = deque()
        self.now = {"state": "loading", "message": "waiting to load the model", "progress": None,
                    "iteration": None, "steps": steps_total, "labeled": 0, "error": None,
                    "traceback": None, "steering_error": None, "steps_taken": 0, "applying": None,
                    "cache": None, "hit_rate": None}
        self.thread = threading.Thread(target=self._main, name=f"icm-run-{run_id}", daemon=True)

    # -- called from any thread ------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def want(self, budget: int | None) -> None:
        with self._cond:
            self._budget = budget
            self._cond.notify()

    def steer(self, method: str, args: tuple) -> Future:
        future: Future = Future()
        with self._cond:
            if self._stopping or not self.alive:
                future.set_exception(RuntimeError(f"run {self.run_id} is not active"))
                return future
            self._steering.append((future, method, args))
            self._cond.notify()
        return future

    def stop(self) -> None:
        with self._cond:
            self._stopping, self._budget = True, 0
            self._cond.notify()

    # -- the worker thread -----------------------------------------------------------------
    def _set(self, **changes) -> None:
        self.now.update(changes)  # one dict update: readers see old or new values, never a torn write

    def _progress(self, message: str, fraction: float | None = None) -> None:
        self._set(message=message, progress=fraction)

    def _main(self) -> None:
        store = self.manager.store
        try:
            backend = self.manager._backend_for(self.model, self._progress)
            search = open_search(store, self.run_id, backend, progress=self._prepare_progress)
        except Exception as error:  # a model that will not load fails the run, not the app
            self._fail(error)
            return
        self._after_open(search, backend)
        while True:
            with self._cond:
                while self._budget == 0 and not self._steering and not self._stopping:
                    self._cond.wait()
            self._apply_steering(search)
            if self._stopping:
                break
            if self._budget == 0:
                continue
            self._set(state="running", message="")
            try:
                advance(store, self.run_id, search, should_stop=self._should_pause,
                        on_step=lambda record: self._on_step(search, record))
            except Exception as error:  # advance has already marked the run failed in the store
                self._fail(error)
                return
            with self._cond:
                if search.done:
                    self._budget = 0
            self._set(state="finished" if search.done else "paused")
            self._refresh_parent()
        # a finished run stays finished: stopping its worker ends nothing the search had left to do
        final = "finished" if search.done else "stopped"
        store.set_status(self.run_id, final)
        self._set(state=final, message="")
        self._reject_pending("the run was stopped")

    def _prepare_progress(self, done: int, total: int, what: str) -> None:
        """A scalable run reads every example's hidden states before its first step."""
        self._progress(f"{what}: {done} of {total} examples", done / max(total, 1))

    def _after_open(self, search: Search, backend: LanguageModel) -> None:
        self.backend = backend  # this run's handle: its stats count this run's calls only
        self.manager._record_model(self.run_id, backend)
        self._set(state="finished" if search.done else "paused", message="", progress=None,
                  iteration=search.iteration, labeled=len(search.labels))

    def _should_pause(self) -> bool:
        with self._cond:
            return self._stopping or self._budget == 0

    def _on_step(self, search: Search, record: StepRecord) -> None:
        with self._cond:
            if self._budget:  # None (to the end) and 0 (pause asked) stay as they are
                self._budget -= 1
        backend = self.backend
        self._set(iteration=search.iteration, labeled=len(search.labels),
                  steps_taken=self.now["steps_taken"] + 1, cache=backend.cache_usage(), hit_rate=backend.stats.hit_rate)
        self._apply_steering(search)  # between two steps: the only moment the Search is not in use

    def _apply_steering(self, search: Search) -> None:
        while True:
            with self._cond:
                if not self._steering:
                    return
                future, method, args = self._steering.popleft()
                # Until it is applied the run counts as busy, so pages keep refreshing through a
                # steering action that takes a while (the final pass asks the model).
                self._set(applying=method)
            try:
                record = getattr(search, method)(*args)
                record_steering(self.manager.store, self.run_id, search, record)
            except Exception as error:  # a refused action (e.g. pin an excluded example) is the caller's error
                self._set(steering_error=f"{method}{args}: {error}", applying=None)
                future.set_exception(error)
                continue
            self._set(labeled=len(search.labels), iteration=search.iteration, steps=search.config.steps,
                      steering_error=None, applying=None)
            if self.now["state"] in ("paused", "finished"):
                state = "finished" if search.done else "paused"  # a final pass finishes a run, an extension reopens it
                if state != self.now["state"]:
                    self.manager.store.set_status(self.run_id, state)
                    self._set(state=state)
            self._refresh_parent()
            future.set_result(record)

    def _refresh_parent(self) -> None:
        """A batch run's labels moved: its parent's labels follow (runs/batches.refresh_parent)."""
        if self.parent_id is not None:
            refresh_parent(self.manager.store, self.run_id)

    def _fail(self, error: Exception) -> None:
        message = describe_error(error)
        try:
            run = self.manager.store.run(self.run_id)
            if run["status"] != "failed":  # advance marks its own failures; loading ones land here
                self.manager.store.set_status(self.run_id, "failed", error=message)
        except Exception:  # the store itself may be what failed; the status below still says why
            pass
        # a traceback helps only with a bug; for bad input the message is the whole answer
        self._set(state="failed", error=message, message="",
                  traceback=None if is_user_error(error) else traceback.format_exc())
        self._reject_pending(f"the run failed: {message}")

    def _reject_pending(self, why: str) -> None:
        with self._cond:
            pending, self._steering = list(self._steering), deque()
        for future, _, _ in pending:
            future.set_exception(RuntimeError(why))


class RunManager:
    """Owns the process's Store and the workers of its active runs. Thread-safe; no streamlit here."""

    def __init__(self, db_path: str = ":memory:", backend_factory: BackendFactory | None = None,
                 store: Store | None = None) -> None:
        self.db_path = str(db_path)
        self.store = store if store is not None else Store(self.db_path)
        self.key = uuid.uuid4().hex  # distinguishes managers in caches (two ":memory:" stores are different)
        self._factory = backend_factory or load_backend
        self._lock = threading.Lock()  # guards _workers
        self._load_lock = threading.Lock()  # one model load at a time: loads are memory-hungry
        self._backends: dict[ModelConfig, tuple[LanguageModel, threading.Lock]] = {}
        self._workers: dict[int, _Worker] = {}
        self._closed = False
        self.finetunes = FinetuneJobs(self)  # fine-tunes started from the studio
        self.batches = BatchDriver(self)  # batched runs (config.search.batch_size), one batch at a time

    # -- data ------------------------------------------------------------------------------
    def add_dataset(self, dataset, progress: Callable[[float], None] | None = None) -> int:
        """Store a LoadedDataset (data/base.py) in one transaction: all of it or nothing."""
        return self.store.add_dataset(dataset.name, dataset.task.to_dict(), dataset.examples, dataset.gold,
                                      source=dataset.source, progress=progress)

    # -- lifecycle -------------------------------------------------------------------------
    def start_run(self, dataset_id: int, config: RunConfig, name: str = "", run: bool = True) -> int:
        """Create a run and its worker; the model loads in the worker. run=False: load, then wait."""
        provisional = asdict(ModelInfo(name=config.model.name, device=config.model.device, dtype=config.model.dtype,
                                       quantization=config.model.quantization, extra={"loaded": False}))
        run_id = self.store.create_run(dataset_id, config.to_dict(), provisional, name=name)
        if config.search.batch_size:  # its batch runs are created once the model can count tokens
            if run:
                self.batches.start(run_id)
            return run_id
        self._worker(run_id, budget=None if run else 0)
        return run_id

    def resume(self, run_id: int) -> None:
        """Run to the end of the step budget, reopening the run from the database if needed; a
        batched run: its unfinished batch runs, one after another."""
        if self._is_batched(run_id):
            self.batches.start(run_id)
            return
        self._worker(run_id, budget=None)

    def step(self, run_id: int, n: int = 1) -> None:
        """Run exactly n more steps, then pause (replaces whatever the run was asked to do)."""
        if n < 1:
            raise ValueError("n must be at least 1")
        self._worker(run_id, budget=n)

    def pause(self, run_id: int) -> None:
        if self.batches.halt(run_id, "pause"):  # a batched run: its batch in flight
            return
        worker = self._active(run_id)
        if worker is not None:
            worker.want(0)

    def stop(self, run_id: int, timeout: float | None = None) -> None:
        """Finish the step in flight, mark the run stopped and end its worker (resume reopens it)."""
        if self.batches.halt(run_id, "stop"):  # a batched run: its batch in flight, and with it the parent
            return
        worker = self._active(run_id)
        if worker is not None:
            worker.stop()
            if timeout:
                worker.thread.join(timeout)
        elif self.store.run(run_id)["status"] in ("running", INTERRUPTED):  # left so by a killed process
            self.store.set_status(run_id, "stopped")

    def wait(self, run_id: int, timeout: float = 30.0, until: Callable[[RunStatus], bool] | None = None) -> RunStatus:
        """Block until the run is idle (or `until(status)` holds); for tests and scripts."""
        import time

        until = until or (lambda s: s.state not in ("loading", "running") and not s.busy)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(run_id)
            if until(status):
                return status
            time.sleep(0.01)
        raise TimeoutError(f"run {run_id} still {self.status(run_id).state} after {timeout}s")

    def shutdown(self, timeout: float = 10.0) -> None:
        """Pause every run at its next step boundary, end the workers and close the store (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers.values())
        self.batches.shutdown(timeout)  # each drive stops its batch in flight and marks its parent
        for worker in workers:
            worker.want(0)
            worker.stop()
        for worker in workers:
            worker.thread.join(timeout)
        for backend, _ in self._backends.values():
            backend.close()
        self.store.close()

    # -- steering: queued to the worker, applied between steps, recorded as events ----------
    def pin(self, run_id: int, example: int, label: int) -> Future:
        return self._steer(run_id, "pin", int(example), int(label))

    def unpin(self, run_id: int, example: int) -> Future:
        return self._steer(run_id, "unpin", int(example))

    def exclude(self, run_id: int, example: int) -> Future:
        return self._steer(run_id, "exclude", int(example))

    def include(self, run_id: int, example: int) -> Future:
        return self._steer(run_id, "include", int(example))

    def set_params(self, run_id: int, alpha: float | None = None, t0: float | None = None) -> Future:
        return self._steer(run_id, "set_params", alpha, t0)

    def finalize(self, run_id: int) -> Future:
        """The final pass now: label what the search left, given its labeled set (a model call, in the worker)."""
        return self._steer(run_id, "final_pass")

    def extend(self, run_id: int, steps: int) -> Future:
        """Exactly `steps` more iterations, then pause (or finish): for a run its own rule had
        finished, past that rule; for a paused one, like stepping (it resumed to the end before,
        which is not what "N more steps" says)."""
        future = self._steer(run_id, "extend", int(steps))
        self.step(run_id, int(steps))
        return future

    def _steer(self, run_id: int, method: str, *args) -> Future:
        # A run without a worker gets one (paused): only its worker may touch its Search.
        return self._worker(run_id, budget=0).steer(method, args)

    # -- state -------------------------------------------------------------------------------
    def status(self, run_id: int) -> RunStatus:
        """What the run is doing: from its worker while one holds it (or has just failed or
        stopped), else from the store."""
        run = self.store.run(run_id)
        if is_batched(run["config"]):
            return self._batched_status(run)
        worker = self._workers.get(run_id)
        about = {"run_id": run_id, "name": run["name"], "dataset_id": run["dataset_id"]}
        if worker is not None and (worker.alive or worker.now["state"] in ("failed", "stopped")):
            now = dict(worker.now)
            status = RunStatus(
                **about, **{k: now[k] for k in _WORKER_FIELDS}, active=worker.alive,
                busy=bool(worker._steering) or bool(now["applying"]) or (worker.alive and worker._budget != 0),
                # Pause takes effect at the end of the step in flight, which on a real model takes seconds.
                pausing=worker.alive and worker._budget == 0 and now["state"] == "running")
        else:
            # "running" in the file with no worker here: the process that ran it was killed mid-run
            state = "interrupted" if run["status"] == "running" else run["status"]
            status = RunStatus(**about, state=state, iteration=run["last_iteration"],
                               steps=run["config"]["search"]["steps"], error=run["error"])
        if status.iteration is None:
            status = replace(status, iteration=run["last_iteration"])
        return status

    def _batched_status(self, run: dict) -> RunStatus:
        """A batched run's status: its drive's while one runs it (the batch in flight has its own), else the store's."""
        run_id = int(run["run_id"])
        about = {"run_id": run_id, "name": run["name"], "dataset_id": run["dataset_id"],
                 "iteration": None, "steps": run["config"]["search"]["steps"]}  # per batch: runs/batches.batch_table
        drive = self.batches.last(run_id)
        if drive is not None and (drive.thread.is_alive() or drive.state == "failed"):
            alive = drive.thread.is_alive()
            return RunStatus(**about, state=drive.state, message=drive.message, progress=drive.progress,
                             error=drive.error or run["error"], active=alive, busy=alive, pausing=alive and drive.halt == "pause")
        state = INTERRUPTED if run["status"] == "running" else run["status"]
        return RunStatus(**about, state=state, error=run["error"])

    def active_runs(self) -> list[int]:
        """Runs working now: loading, searching or applying a steering action (a finished or
        paused run keeps an idle worker, which is not activity)."""
        with self._lock:
            alive = sorted(r for r, w in self._workers.items() if w.alive)
        alive = sorted(alive + self.batches.driving())
        working = []
        for run_id in alive:
            status = self.status(run_id)
            if status.state in ("loading", "running") or status.busy:
                working.append(run_id)
        return working

    # -- internals -------------------------------------------------------------------------
    def _active(self, run_id: int) -> _Worker | None:
        with self._lock:
            worker = self._workers.get(run_id)
        return worker if worker is not None and worker.alive else None

    def _worker(self, run_id: int, budget: int | None) -> _Worker:
        with self._lock:
            worker = self._workers.get(run_id)
            if worker is None or not worker.alive:
                run = self.store.run(run_id)  # KeyError for an unknown run, before any thread starts
                config = RunConfig.from_dict(run["config"])
                if config.search.batch_size:
                    raise BatchedRunError(f"run {run_id} is a batched run: resume, pause or stop it; step, steer or "
                                     "extend one of its batch runs")
                parent = run["parent_run_id"]
                worker = _Worker(self, run_id, config.model, config.search.steps, None if parent is None else int(parent))
                worker.now["iteration"] = run["last_iteration"]
                self._workers[run_id] = worker
                worker.want(budget)
                worker.thread.start()
                return worker
        if budget != 0:  # steering alone must not wake a paused run
            worker.want(budget)
        return worker

    def _is_batched(self, run_id: int) -> bool:
        return is_batched(self.store.run(run_id)["config"])

    def model_for(self, run_id: int, progress: Progress | None = None) -> SharedBackend:
        """The model of a run's stored settings, shared with its worker (loaded once per process):
        for readers that ask the model something beside the search, like the trust checks."""
        model = RunConfig.from_dict(self.store.run(run_id)["config"]).model
        return self._backend_for(model, progress or (lambda message, fraction=None: None))

    def _backend_for(self, model: ModelConfig, progress: Progress) -> SharedBackend:
        progress(f"loading model {model.name}", None)
        with self._load_lock:
            if model not in self._backends:
                self._backends[model] = (self._factory(model, progress), threading.Lock())
            backend, lock = self._backends[model]
        progress(f"model {model.name} ready", 1.0)
        return SharedBackend(backend, lock)

    def _record_model(self, run_id: int, backend: SharedBackend) -> None:
        # The run was created before its model loaded, with the requested settings; record what
        # loading resolved (device, dtype, revision) for provenance.
        self.store.set_run_model(run_id, asdict(backend.info))
