"""Progress for long commands: a bar on a terminal, plain lines in a log, never silence.

The engine reports progress as calls progress(done, total, what) (the learners' TrainProgress
convention) and messages as log(text); a command hands it a Progress and stays out of the way.
On a terminal each `what` gets a tqdm bar with its rate and ETA (the previous stage's bar closes
when a new one starts; a `keep` stage, such as a whole evaluation's, stays at the top). Where
stderr is a file or a pipe (CI, nohup, `> log`), carriage-return bars would turn into one long
smeared line, so each stage prints a line when it starts, at most every `every` seconds while it
runs, and when it ends: "what: done/total (pct%), elapsed, ETA".
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

LINE_EVERY_SECONDS = float(os.environ.get("ICM_PROGRESS_EVERY", "10"))


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """progress(done, total, what) and log(text) for one command; close() when it ends."""

    def __init__(self, stream: TextIO | None = None, bars: bool | None = None, keep: tuple[str, ...] = (),
                 every: float = LINE_EVERY_SECONDS) -> None:
        self.stream = stream or sys.stderr
        self.bars = self.stream.isatty() if bars is None else bars
        self.keep, self.every = tuple(keep), every
        self._stages: dict[str, dict] = {}  # what -> {"started", "printed", "bar", "done", "total"}

    # the callback the engine calls ------------------------------------------------------------
    def __call__(self, done: int, total: int, what: str, note: str = "") -> None:
        now = time.perf_counter()
        if what in self.keep:  # the outer stage moves when a job has ended: its inner stage has too
            self._close_transient(except_for=what)
        stage = self._stages.get(what)
        if stage is None:
            self._close_transient(except_for=what)
            stage = self._stages[what] = {"started": now, "printed": 0.0, "bar": None, "done": 0, "total": total,
                                          "note": ""}
            if self.bars:
                from tqdm import tqdm

                position = self.keep.index(what) if what in self.keep else len(self.keep)
                stage["bar"] = tqdm(total=total, desc=what, dynamic_ncols=True, file=self.stream, position=position,
                                    leave=what in self.keep)
        stage["done"], stage["total"], stage["note"] = done, total, note
        if stage["bar"] is not None:
            bar = stage["bar"]
            bar.total = total
            bar.update(done - bar.n)
            if note:
                bar.set_postfix_str(note, refresh=False)
            bar.refresh()
        elif not stage["printed"] or done >= total or now - stage["printed"] >= self.every or what in self.keep:
            self._line(what, stage, now)  # a kept stage is coarse (an evaluation's jobs): each step is news
        if done >= total and what not in self.keep:
            self._finish(what)

    @contextmanager
    def ticking(self, what: str, count: Callable[[], int], unit: str) -> Iterator[None]:
        """For one long call that reports nothing itself (a final pass): every few seconds, how long
        it has run and count() so far (tokens forwarded), as an open-ended bar or a line."""
        stop = threading.Event()
        started, first = time.perf_counter(), count()
        bar = None
        if self.bars:
            from tqdm import tqdm

            bar = tqdm(desc=what, unit=f" {unit}", dynamic_ncols=True, file=self.stream)

        def tick() -> None:
            while not stop.wait(1.0 if bar is not None else self.every):
                done = count() - first
                if bar is not None:
                    bar.update(done - bar.n)
                else:
                    print(f"[progress] {what}: {done:,} {unit}, {_clock(time.perf_counter() - started)} elapsed",
                          file=self.stream, flush=True)

        if bar is None:
            print(f"[progress] {what}: started", file=self.stream, flush=True)
        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            done = count() - first
            if bar is not None:
                bar.update(done - bar.n)
                bar.close()
            else:
                print(f"[progress] {what}: done, {done:,} {unit} in {_clock(time.perf_counter() - started)}",
                      file=self.stream, flush=True)

    def log(self, text: str) -> None:
        """A message between the bars (tqdm.write keeps them whole) or a plain line."""
        if self.bars and any(s["bar"] is not None for s in self._stages.values()):
            from tqdm import tqdm

            tqdm.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        for what in list(self._stages):
            self._finish(what)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------
    def _line(self, what: str, stage: dict, now: float) -> None:
        done, total = stage["done"], stage["total"]
        elapsed = now - stage["started"]
        share = done / total if total else 1.0
        text = f"[progress] {what}: {done}/{total} ({share:.0%}), {_clock(elapsed)} elapsed"
        if 0 < done < total:
            text += f", ETA {_clock(elapsed / done * (total - done))}"
        if stage["note"]:
            text += f" ({stage['note']})"
        print(text, file=self.stream, flush=True)
        stage["printed"] = now

    def _finish(self, what: str) -> None:
        stage = self._stages.pop(what, None)
        if stage is None:
            return
        if stage["bar"] is not None:
            stage["bar"].close()
        elif stage["done"] < stage["total"] and stage["printed"]:  # stopped early (a search's own rule): say where
            self._line(what, stage, time.perf_counter())

    def _close_transient(self, except_for: str) -> None:
        for what in [w for w in self._stages if w not in self.keep and w != except_for]:
            self._finish(what)
