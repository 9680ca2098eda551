"""Batched runs in the studio (runs/batches.py): one thread per parent run that loads the model,
creates the batch runs and runs them one after another, each through the RunManager's own worker
for that batch run, so a batch run's pages (Live, Steer, Run) watch and steer it as any run. The
parent's labels become the union after each batch, as under `icm run --batch-size`. No streamlit here.
"""
from __future__ import annotations

import threading
import time

from .batches import ensure_batches, run_batches
from .runner import describe_error

POLL_S = 0.05  # how often the driver looks at the batch run in flight
HALT_WAIT_S = 10.0  # Resume right after Pause waits this long for the paused drive to end


class _Drive:
    """The thread that runs one parent's batches; see the module docstring."""

    def __init__(self, manager, parent_id: int) -> None:
        self.manager, self.parent_id = manager, parent_id
        self.state, self.message, self.progress = "loading", "waiting to load the model", None
        self.error: str | None = None
        self.current: int | None = None  # the batch run in flight
        self.halt: str | None = None  # "pause" or "stop", asked by the studio
        self.thread = threading.Thread(target=self._main, name=f"icm-batches-{parent_id}", daemon=True)

    def _progress(self, message: str, fraction: float | None = None) -> None:
        self.message, self.progress = message, fraction

    def _main(self) -> None:
        store = self.manager.store
        try:
            backend = self.manager.model_for(self.parent_id, self._progress)
            ensure_batches(store, self.parent_id, backend)
            self.state, self.message = "running", ""
            finished = run_batches(store, self.parent_id, self._run_one)
            self.state = "finished" if finished else store.run(self.parent_id)["status"]
        except Exception as error:  # a model that will not load, a failed batch: the parent says why
            self.state, self.error = "failed", describe_error(error)
            try:
                if store.run(self.parent_id)["status"] != "failed":
                    store.set_status(self.parent_id, "failed", error=self.error)
            except Exception:  # the store itself may be what failed; self.error still says why
                pass

    def _run_one(self, child: int, index: int, total: int) -> bool:
        """One batch run through its worker, to its end or until the studio pauses or stops it."""
        if self.halt:
            return False
        self.current = child
        self.manager.resume(child)
        asked = None
        while True:
            if self.halt and self.halt != asked:  # pass the studio's Pause or Stop on to the batch in flight
                asked = self.halt
                (self.manager.pause if asked == "pause" else self.manager.stop)(child)
            status = self.manager.status(child)
            if status.state not in ("loading", "running") and not status.busy:
                return status.state == "finished"
            time.sleep(POLL_S)


class BatchDriver:
    """The batched runs one RunManager drives, one thread each."""

    def __init__(self, manager) -> None:
        self.manager = manager
        self._drives: dict[int, _Drive] = {}
        self._lock = threading.Lock()

    def start(self, parent_id: int) -> None:
        """Run the parent's unfinished batches (again, after a pause, a stop or a restart)."""
        with self._lock:
            drive = self._drives.get(parent_id)
        if drive is not None and drive.thread.is_alive():
            if not drive.halt:
                return  # running already
            drive.thread.join(HALT_WAIT_S)  # paused or stopped a moment ago: its batch is ending
            if drive.thread.is_alive():
                raise RuntimeError(f"run {parent_id} is still pausing its batch in flight; try again in a moment")
        with self._lock:
            drive = self._drives[parent_id] = _Drive(self.manager, parent_id)
        drive.thread.start()

    def halt(self, parent_id: int, how: str) -> bool:
        """Pause or stop the batch in flight; the driver ends after it. False where none drives the parent."""
        drive = self.active(parent_id)
        if drive is None:
            return False
        drive.halt = how
        return True

    def active(self, parent_id: int) -> _Drive | None:
        with self._lock:
            drive = self._drives.get(parent_id)
        return drive if drive is not None and drive.thread.is_alive() else None

    def driving(self) -> list[int]:
        """The parents a drive runs now."""
        with self._lock:
            return [p for p, drive in self._drives.items() if drive.thread.is_alive()]

    def last(self, parent_id: int) -> _Drive | None:
        """The parent's drive, alive or ended (a failure to load is only there)."""
        with self._lock:
            return self._drives.get(parent_id)

    def shutdown(self, timeout: float) -> None:
        """Start no further batch; the manager stops the one in flight, which ends each drive."""
        with self._lock:
            drives = list(self._drives.values())
        for drive in drives:
            drive.halt = "stop"
        for drive in drives:
            drive.thread.join(timeout)
