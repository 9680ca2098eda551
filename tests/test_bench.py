"""`icm bench` end to end on a tiny model: it prints every figure the speed issue asks for."""
from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bench_prints_costs_ratios_differences_memory_and_throughput(tmp_path, capsys):
    from icm_engine.cli import bench
    from tests.tiny_model import build_tiny_model_dir

    model = build_tiny_model_dir(tmp_path / "tiny")
    assert bench.main(["--model", str(model), "--device", "cpu", "--n", "6", "--mix-steps", "4",
                       "--kv-dtypes", "compute,int8"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"raw model throughput .*: [\d,]+ tokens/s", out)
    for kind in ("add", "relabel", "fix"):
        row = re.search(rf"^{kind}\s+(\d+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)x\s+(\S+)\s+(\S+)$", out, re.M)
        assert row, f"no {kind} row in:\n{out}"
        fast_tokens, naive_tokens, max_du = int(row.group(1)), int(row.group(3)), float(row.group(6))
        assert fast_tokens < naive_tokens  # the cache saves work on every step type
        assert max_du <= 1e-3 and float(row.group(7)) == pytest.approx(max_du / 50, rel=0.01)
    assert "search throughput" in out and "mix speedup" in out and "peak memory" in out
    assert re.search(r"prequential .* agrees with exact accept/reject on \d+%", out)
    assert re.search(r"prefix store \(compute\): peak [\d.,]+ MiB of a [\d,]+ MiB budget, \d+ evictions, \d+% of prompt tokens read from it", out)
    peaks = {}
    for kv_dtype in ("compute", "int8"):  # the same steps against the same naive answers, per storage dtype
        row = re.search(rf"^{kv_dtype}\s+(\S+)\s+(\S+)\s+(\S+)\s+([\d.,]+)\s+([\d.]+)$", out, re.M)
        assert row, f"no {kv_dtype} row in:\n{out}"
        assert max(float(row.group(k)) for k in (1, 2, 3)) <= (1e-5 if kv_dtype == "compute" else 1e-2)
        peaks[kv_dtype] = float(row.group(4).replace(",", ""))
    assert peaks["int8"] < 0.5 * peaks["compute"]
    with pytest.raises(SystemExit, match="--kv-dtypes"):
        bench.main(["--model", str(model), "--device", "cpu", "--kv-dtypes", "fp8"])
