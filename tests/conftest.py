"""Shared fixtures: a RunManager on a temporary DuckDB with the fake model, and a small dataset in it."""
from __future__ import annotations

import pytest

from icm_engine.backends.fake import FakeLM
from icm_engine.core.config import ModelConfig, RunConfig, SearchConfig
from icm_engine.runs.manager import RunManager
from tests.fakes import PAIRED, SINGLE, polarity_examples


def fake_backend_factory(model: ModelConfig, progress):
    """Model name "fake" is FakeLM; "broken" fails to load, for failure paths; anything else is refused."""
    progress("building the fake model", 0.5)
    if model.name == "fake":
        return FakeLM(strength=6)
    raise ValueError(f"test factory has no model {model.name!r}")  # as load_model answers an unknown name


def fake_run_config(steps: int = 30, **search) -> RunConfig:
    search = {"k_init": 4, "seed": 0, **search}
    return RunConfig(task="polarity", dataset="test", search=SearchConfig(steps=steps, **search),
                     model=ModelConfig(name="fake"))


def add_polarity_dataset(manager: RunManager, n: int = 12, paired: bool = False) -> int:
    examples, gold = polarity_examples(n, seed=1, paired=paired)
    task = PAIRED if paired else SINGLE
    return manager.store.add_dataset(task.name, task.to_dict(), examples, gold, source="tests.fakes")


@pytest.fixture
def one_torch_thread(request):
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the threads'
    spin-waits made each forward some 20x slower; tests marked `bundled` keep torch's default."""
    import torch

    if request.node.get_closest_marker("bundled"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def manager(tmp_path):
    manager = RunManager(str(tmp_path / "icm.duckdb"), backend_factory=fake_backend_factory)
    yield manager
    manager.shutdown()
