"""The commands' progress (cli/progress.py): lines in a log, a bar on a terminal, never silence."""
from __future__ import annotations

import io
import time

from icm_engine.cli.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_in_a_log_each_stage_says_where_it_starts_how_far_it_is_with_an_eta_and_where_it_ends():
    log = io.StringIO()
    progress = Progress(stream=log, every=0.0)
    for done in range(0, 5):
        progress(done, 4, "search 'icm': labeled", f"step {done}")
    lines = log.getvalue().splitlines()
    assert lines[0] == "[progress] search 'icm': labeled: 0/4 (0%), 0s elapsed (step 0)"
    assert "1/4 (25%)" in lines[1] and "ETA" in lines[1]
    assert lines[-1].startswith("[progress] search 'icm': labeled: 4/4 (100%)") and "ETA" not in lines[-1]


def test_in_a_log_lines_are_rate_limited_but_start_and_end_always_print():
    log = io.StringIO()
    progress = Progress(stream=log, every=3600.0)
    for done in range(0, 101):
        progress(done, 100, "test icm (seed 0)")
    assert [line.split(":")[1].split(" (")[0].strip() for line in log.getvalue().splitlines()] == ["0/100", "100/100"]


def test_a_stage_that_stops_short_says_where_when_the_next_begins_and_a_kept_stage_prints_every_job():
    log = io.StringIO()
    progress = Progress(stream=log, keep=("evaluation",), every=3600.0)
    progress(0, 3, "evaluation")
    progress(0, 10, "search 'icm': labeled")
    progress(7, 10, "search 'icm': labeled")  # rate-limited, then the search moves on
    progress(1, 3, "evaluation")
    progress(0, 12, "search 'icm': quiet steps")
    progress.close()
    lines = log.getvalue().splitlines()
    assert lines[2].startswith("[progress] search 'icm': labeled: 7/10 (70%)")  # where it stopped
    assert lines[3].startswith("[progress] evaluation: 1/3 (33%)")


def test_on_a_terminal_it_draws_bars_and_messages_do_not_break_them(capsys):
    terminal = Terminal()
    with Progress(stream=terminal) as progress:
        progress(0, 2, "training steps")
        progress.log("a message between bars")
        progress(2, 2, "training steps", "loss 0.1000")
    drawn = terminal.getvalue()
    assert "training steps" in drawn and "2/2" in drawn and "\r" in drawn and "[progress]" not in drawn
    assert "a message between bars" in capsys.readouterr().out


def test_a_long_silent_call_ticks_with_elapsed_time_and_its_count():
    log = io.StringIO()
    counted = iter(range(0, 10_000, 100))
    with Progress(stream=log, every=0.05).ticking("final pass over 40 examples", lambda: next(counted), "tokens"):
        time.sleep(0.3)
    lines = log.getvalue().splitlines()
    assert lines[0] == "[progress] final pass over 40 examples: started"
    assert any("tokens" in line and "elapsed" in line for line in lines[1:-1])
    assert lines[-1].startswith("[progress] final pass over 40 examples: done, ")
