"""artifacts/ is output: scripts/build_artifacts.py knows the command behind each built file, and
artifacts/README.md names every file there, built or recorded by hand, so none is tracked unexplained."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from scripts.build_artifacts import main, targets

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "artifacts" / "README.md").read_text()


def test_the_readme_names_every_file_a_target_builds():
    for target in targets("runs/trust15.duckdb", "model"):
        assert f"## {target.name}:" in README
        for path in target.outputs:
            assert Path(path).name.rstrip("/") in README, f"{target.name} builds {path}; artifacts/README.md does not say"


def test_every_tracked_artifact_is_explained():
    try:
        listed = subprocess.run(["git", "ls-files", "artifacts"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    built = {path for target in targets("runs/trust15.duckdb", "model") for path in target.outputs}
    for path in listed.stdout.split():
        if path == "artifacts/README.md" or path in built or any(path.startswith(b) for b in built if b.endswith("/")):
            continue
        assert f"`{Path(path).stem}`" in README, f"{path} is tracked, but no target builds it and the README does not name it"


def test_a_dry_run_prints_each_command_and_runs_none(tmp_path, capsys):
    assert main(["--dry-run", "--db", str(tmp_path / "trust.duckdb"), "--model-dir", "", "all"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == sum(len(t.commands) for t in targets("db", ""))
    assert not (tmp_path / "trust.duckdb").exists()
    assert any("ccs_accuracy.py" in line and line.endswith("> artifacts/trust/ccs_sentiment400.txt") for line in printed)
    with pytest.raises(SystemExit):
        main(["--dry-run", "no-such-target"])
