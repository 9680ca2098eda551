"""Rebuild the files under artifacts/, each from the command that made it.

artifacts/README.md says which command makes which file. Heavy: the bundled Gemma 3 270M on CPU
and a headless browser, an hour or more for `all`; `--dry-run` prints the commands, runs nothing.

    PYTHONPATH=. .venv/bin/python scripts/build_artifacts.py --list
    PYTHONPATH=. .venv/bin/python scripts/build_artifacts.py --dry-run all
    PYTHONPATH=. .venv/bin/python scripts/build_artifacts.py trust-reports ccs

Targets run in the order given; `all` is every target in the order --list shows. The trust targets
read the four ICM runs of `trust-runs` from --db, which that target makes only where the file is
missing (run ids 1 to 4 must be those runs, so it never adds to a database that exists).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRUST_DB = "runs/trust15.duckdb"
SHOTS_DB = "runs/shots.duckdb"  # the screenshot script's copy: the studio opens its database for writing
BROWSER_SAMPLE = "8"  # sentences of the Yelp sample in the studio screenshots: 16 claims


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    stdout: str | None = None  # the file that keeps what it prints (a report's printed summary)
    env: dict = field(default_factory=dict)

    def shown(self) -> str:
        words = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()] + [shlex.quote(a) for a in self.argv]
        return " ".join(words) + (f" > {self.stdout}" if self.stdout else "")


@dataclass(frozen=True)
class Target:
    name: str
    says: str
    commands: tuple[Command, ...]
    outputs: tuple[str, ...]  # paths from the repository root; a folder ends with /


def icm(*words: str, stdout: str | None = None) -> Command:
    return Command((sys.executable, "-m", "icm_engine.cli", *words), stdout)


def script(name: str, *words: str, stdout: str | None = None, env: dict | None = None) -> Command:
    return Command((sys.executable, f"scripts/{name}", *words), stdout, env or {})


def targets(db: str, model_dir: str) -> list[Target]:
    """Every artifact, by the target that makes it, in the order `all` runs them."""
    runs = [("shared:sentiment", "sentiment_single", "32"), ("shared:truthfulqa", "truthfulqa", "8")]
    reports = [(1, "sentiment_run1"), (2, "truthfulqa_run2")]
    ccs_runs = [(1, "ccs_run1"), (2, "ccs_run2")]
    ccs_samples = [("64", "ccs_sentiment64"), ("400", "ccs_sentiment400")]
    trust = "artifacts/trust"
    studio_shots = ("00_home_empty", "01_data", "02_run", "03_live_early", "04_live_later", "05_audit", "06_steer",
                    "06a_run_after_final_pass", "06b_live_all_labeled", "07_export", "08_home")
    return [
        Target("trust-runs", f"four ICM runs of the bundled model into {db}: 1, 2 at seed 0; 3, 4 at seed 1 "
                             "(8 questions = 32 TruthfulQA claims)",
               tuple(icm("run", "--data", data, "--task", task, "--limit", limit, "--db", db, "--seed", seed)
                     for seed in ("0", "1") for data, task, limit in runs),
               (db,)),
        Target("trust-reports", "`icm trust` on runs 1 and 2: the HTML report, the printed summary, the baselines",
               tuple(icm("trust", "--run", str(run), "--db", db, "--out", f"{trust}/trust_{name}.html",
                         "--export-baselines", f"{trust}/baselines_{name}", stdout=f"{trust}/trust_{name}.txt")
                     for run, name in reports),
               tuple(f"{trust}/{kind}_{name}{end}" for _, name in reports
                     for kind, end in (("trust", ".html"), ("trust", ".txt"), ("baselines", "/")))),
        Target("ccs", "CCS probe, zero-shot and ICM accuracy against gold, with layer sweeps and probe seeds",
               tuple(script("ccs_accuracy.py", "--db", db, "--run", str(run), "--seeds", "1,2,3,4",
                            "--json", f"{trust}/{name}.json", stdout=f"{trust}/{name}.txt") for run, name in ccs_runs)
               + tuple(script("ccs_accuracy.py", "--data", "shared:sentiment", "--task", "sentiment_single",
                              "--limit", limit, "--seeds", "1,2,3,4", "--json", f"{trust}/{name}.json",
                              stdout=f"{trust}/{name}.txt") for limit, name in ccs_samples),
               tuple(f"{trust}/{name}{end}" for _, name in ccs_runs + ccs_samples for end in (".json", ".txt"))),
        Target("trust-shots", "the Trust page of runs 1 and 2 in headless Chromium, top and whole page",
               (Command(("cp", db, SHOTS_DB)),
                script("trust_screenshots.py", "--db", SHOTS_DB, "--runs", "1:sentiment,2:truthfulqa",
                       "--out", "artifacts/screenshots", "--port", "8611")),
               tuple(f"artifacts/screenshots/trust_{name}_{part}.png"
                     for name in ("sentiment", "truthfulqa") for part in ("top", "full"))),
        Target("studio-shots", f"the browser test's walk through the studio on {BROWSER_SAMPLE} Yelp sentences "
                               "with the bundled model (its first real-model run converts it)",
               (Command((sys.executable, "-m", "pytest", "-q", "tests/test_browser.py",
                         "-k", "test_load_run_watch_pin_and_export"),
                        env={"ICM_SCREENSHOTS": "1", "ICM_BROWSER_MODEL": model_dir,
                             "ICM_BROWSER_LIMIT": BROWSER_SAMPLE}),),
               tuple(f"artifacts/screenshots/{name}.png" for name in studio_shots)),
    ]


def bundled_model_dir() -> str:
    """Where the bundled Gemma lands once converted (a real-model `icm run` converts it)."""
    from icm_engine.runs.models import model_cache_root

    return str(model_cache_root() / "gemma3-270m")


def run(command: Command) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **command.env)
    print(f"[artifacts] {command.shown()}", file=sys.stderr, flush=True)
    if command.stdout is None:
        subprocess.run(command.argv, cwd=ROOT, env=env, check=True)
        return
    with open(ROOT / command.stdout, "w") as out:
        subprocess.run(command.argv, cwd=ROOT, env=env, check=True, stdout=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help="targets to build, or all (see --list)")
    parser.add_argument("--db", default=TRUST_DB, help=f"the trust runs' database (default {TRUST_DB})")
    parser.add_argument("--model-dir", default=None,
                        help="the model studio-shots runs: the converted bundled model by default (the studio's "
                             "model cache); '' for the browser test's tiny random model")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--list", action="store_true", help="each target, what it makes, and its files")
    args = parser.parse_args(argv)
    table = targets(args.db, bundled_model_dir() if args.model_dir is None else args.model_dir)
    by_name = {t.name: t for t in table}
    if args.list or not args.targets:
        for target in table:
            print(f"{target.name}: {target.says}")
            print("".join(f"    {path}\n" for path in target.outputs), end="")
        return 0
    names = [t.name for t in table] if args.targets == ["all"] else args.targets
    unknown = [n for n in names if n not in by_name]
    if unknown:
        parser.error(f"no target {', '.join(unknown)}; the targets: {', '.join(by_name)}, all")
    if not args.dry_run:
        (ROOT / args.db).parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = by_name[name]
        if name == "trust-runs" and (ROOT / args.db).exists():
            print(f"[artifacts] trust-runs: {args.db} exists; its runs 1 to 4 are used as they are", file=sys.stderr)
            continue
        for command in target.commands:
            if args.dry_run:
                print(command.shown())
            else:
                run(command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
