"""RunManager: background workers over the store, with the fake model (no weights)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from icm_engine.backends.fake import FakeLM
from icm_engine.runs.manager import RunManager
from tests.conftest import add_polarity_dataset, fake_backend_factory, fake_run_config


class SlowFakeLM(FakeLM):
    """FakeLM that takes a little time per call, so a run is still going when the test acts."""

    def label_logprobs(self, queries):
        time.sleep(0.005)
        return super().label_logprobs(queries)


class FailingFakeLM(FakeLM):
    """FakeLM that breaks after a number of calls, like a model running out of memory mid-run."""

    def __init__(self, calls_before_failure: int) -> None:
        super().__init__(strength=6)
        self.left = calls_before_failure

    def label_logprobs(self, queries):
        self.left -= 1
        if self.left < 0:
            raise RuntimeError("simulated CUDA out of memory")
        return super().label_logprobs(queries)


def make_manager(tmp_path, backend, name="icm.duckdb"):
    calls = []

    def factory(model, progress):
        calls.append(model)
        return backend

    manager = RunManager(str(tmp_path / name), backend_factory=factory)
    manager.factory_calls = calls
    return manager


def test_the_engine_never_imports_streamlit():
    code = (
        "import importlib, pkgutil, sys, icm_engine\n"
        "for m in pkgutil.walk_packages(icm_engine.__path__, 'icm_engine.'):\n"
        "    importlib.import_module(m.name)\n"
        "assert 'icm_engine.runs.manager' in sys.modules\n"
        "print('streamlit' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_started_run_writes_every_step_to_the_store(manager):
    dataset_id = add_polarity_dataset(manager)
    run_id = manager.start_run(dataset_id, fake_run_config(steps=15), name="first")
    status = manager.wait(run_id)
    assert status.state == "finished" and status.error is None
    events = manager.store.events(run_id)
    assert list(events["iteration"].iloc[:16]) == list(range(16))  # init, then 15 proposals
    assert list(events["kind"].iloc[16:]) in ([], ["final_pass"])  # then the final pass, if anything was left
    assert events["kind"].iloc[0] == "init"
    assert manager.store.run(run_id)["status"] == "finished"
    assert len(manager.store.labels(run_id)) == status.labeled > 0


def test_model_loading_happens_in_the_worker_with_progress(tmp_path):
    release = threading.Event()

    def slow_factory(model, progress):
        progress("converting the GGUF file", 0.5)
        assert release.wait(10)
        return FakeLM(strength=6)

    manager = RunManager(str(tmp_path / "icm.duckdb"), backend_factory=slow_factory)
    try:
        started = time.perf_counter()
        run_id = manager.start_run(add_polarity_dataset(manager), fake_run_config(steps=3))
        assert time.perf_counter() - started < 1  # start_run does not wait for the model
        loading = manager.wait(run_id, until=lambda s: s.progress == 0.5)
        assert loading.state == "loading" and loading.message == "converting the GGUF file"
        assert manager.store.run(run_id)["status"] == "created"
        release.set()
        assert manager.wait(run_id).state == "finished"
    finally:
        release.set()
        manager.shutdown()


def test_runs_on_one_model_share_it_and_count_their_own_costs(tmp_path):
    backend = FakeLM(strength=6)
    manager = make_manager(tmp_path, backend)
    try:
        dataset_id = add_polarity_dataset(manager)
        first = manager.start_run(dataset_id, fake_run_config(steps=5))
        second = manager.start_run(dataset_id, fake_run_config(steps=5, seed=1))
        for run_id in (first, second):
            assert manager.wait(run_id).state == "finished"
            assert manager.status(run_id).message == ""
        assert len(manager.factory_calls) == 1  # one load, two runs
        # each run counts its own model calls even though they share the model
        costs = [manager.store.events(r)["model_calls"].sum() for r in (first, second)]
        assert all(c > 0 for c in costs) and sum(costs) == backend.stats.model_calls
    finally:
        manager.shutdown()


def test_pause_and_resume(tmp_path):
    manager = make_manager(tmp_path, SlowFakeLM(strength=6))
    try:
        run_id = manager.start_run(add_polarity_dataset(manager), fake_run_config(steps=2000))
        manager.wait(run_id, until=lambda s: (s.iteration or 0) >= 3)
        manager.pause(run_id)
        paused = manager.wait(run_id)
        assert paused.state == "paused" and manager.store.run(run_id)["status"] == "paused"
        time.sleep(0.2)
        assert manager.status(run_id).iteration == paused.iteration  # nothing moves while paused
        manager.resume(run_id)
        manager.wait(run_id, until=lambda s: s.iteration >= paused.iteration + 3)
        assert manager.store.run(run_id)["status"] == "running"
        manager.stop(run_id, timeout=10)
        assert manager.status(run_id).state == "stopped"
        assert manager.store.run(run_id)["status"] == "stopped"
    finally:
        manager.shutdown()


def test_step_n_runs_exactly_n_steps_then_pauses(manager):
    run_id = manager.start_run(add_polarity_dataset(manager), fake_run_config(steps=50), run=False)
    assert manager.wait(run_id).state == "paused"  # model loaded, nothing run
    assert len(manager.store.events(run_id)) == 0
    manager.step(run_id, 5)
    status = manager.wait(run_id)
    assert status.state == "paused" and status.iteration == 4  # iteration 0 is the initialization
    manager.step(run_id, 1)
    assert manager.wait(run_id).iteration == 5
    assert len(manager.store.events(run_id)) == 6


def test_pin_while_running_is_recorded_and_respected(tmp_path):
    manager = make_manager(tmp_path, SlowFakeLM(strength=6))
    try:
        run_id = manager.start_run(add_polarity_dataset(manager), fake_run_config(steps=400))
        manager.wait(run_id, until=lambda s: (s.iteration or 0) >= 2)
        record = manager.pin(run_id, 3, 0).result(timeout=10)
        assert manager.status(run_id).state == "running"  # steering does not stop the search
        assert record.kind == "pin"
        at = manager.wait(run_id, until=lambda s: s.iteration >= record.iteration + 10).iteration
        events = manager.store.events(run_id)
        pin = events[events["kind"] == "pin"]
        assert len(pin) == 1 and int(pin["example"].iloc[0]) == 3 and int(pin["proposed_label"].iloc[0]) == 0
        labels = manager.store.labels(run_id).set_index("example")
        assert bool(labels.loc[3, "pinned"]) and int(labels.loc[3, "label"]) == 0
        assert at > record.iteration
    finally:
        manager.shutdown()


def test_steering_a_paused_run_and_refused_steering(manager):
    run_id = manager.start_run(add_polarity_dataset(manager), fake_run_config(steps=10), run=False)
    manager.step(run_id, 2)
    manager.wait(run_id)
    manager.set_params(run_id, alpha=5.0, t0=2.0).result(timeout=5)
    manager.exclude(run_id, 1).result(timeout=5)
    with pytest.raises(ValueError, match="excluded"):
        manager.pin(run_id, 1, 1).result(timeout=5)
    status = manager.wait(run_id)
    assert status.state == "paused" and "excluded" in status.steering_error
    kinds = list(manager.store.events(run_id)["kind"])
    assert kinds[-2:] == ["set_param", "exclude"]
    snapshot = manager.store.load_snapshot(run_id)
    assert snapshot.alpha == 5.0 and snapshot.t0 == 2.0 and 1 in snapshot.excluded


def test_a_failure_in_the_worker_marks_the_run_failed_and_keeps_its_steps(tmp_path):
    manager = make_manager(tmp_path, FailingFakeLM(calls_before_failure=4))
    try:
        run_id = manager.start_run(add_polarity_dataset(manager), fake_run_config(steps=50))
        status = manager.wait(run_id)
        assert status.state == "failed" and "simulated CUDA out of memory" in status.error
        assert "RuntimeError" in status.traceback  # an unexpected error keeps its traceback for a bug report
        run = manager.store.run(run_id)
        assert run["status"] == "failed" and run["error"] == "RuntimeError: simulated CUDA out of memory"
        assert len(manager.store.events(run_id)) >= 1  # steps before the failure are kept
    finally:
        manager.shutdown()


def test_a_model_that_will_not_load_fails_the_run(manager):
    config = fake_run_config()
    config = type(config).from_dict({**config.to_dict(), "model": {"name": "broken"}})
    run_id = manager.start_run(add_polarity_dataset(manager), config)
    status = manager.wait(run_id)
    assert status.state == "failed" and "no model 'broken'" in status.error
    # bad input is answered by its message alone: no exception type, no traceback to wade through
    assert not status.error.startswith(("ValueError", "OSError")) and status.traceback is None
    assert manager.store.run(run_id)["status"] == "failed"


def test_a_run_reopens_from_the_database_in_a_new_process(tmp_path):
    path = str(tmp_path / "icm.duckdb")
    first = RunManager(path, backend_factory=fake_backend_factory)
    run_id = first.start_run(add_polarity_dataset(first), fake_run_config(steps=20), run=False)
    first.step(run_id, 6)
    assert first.wait(run_id).iteration == 5
    first.shutdown()
    second = RunManager(path, backend_factory=fake_backend_factory)
    try:
        assert second.status(run_id).state == "stopped" and not second.status(run_id).active
        second.resume(run_id)
        status = second.wait(run_id)
        assert status.state == "finished" and status.iteration == 20
        events = second.store.events(run_id)
        assert list(events[events["kind"] != "final_pass"]["iteration"]) == list(range(21))
    finally:
        second.shutdown()
