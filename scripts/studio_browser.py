"""Driving the studio in headless Chromium: serve it with `streamlit run`, then click through
Streamlit's DOM. Shared by the browser tests (tests/test_browser.py) and the screenshot scripts.

The tests import it as `scripts.studio_browser` (the repository root is on their path); a script
in scripts/ imports it as `studio_browser`, its neighbour. playwright is imported by the callers
that open a page.
"""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]


# -- the studio's server ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_studio(port: int, env: dict, log) -> subprocess.Popen:
    """`streamlit run app/studio.py` on port, headless; its output goes to log (a file: an unread
    pipe would block the server). The database is the one env's ICM_STUDIO_DB names."""
    return subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/studio.py", "--server.port", str(port),
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )


def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}; see its log")
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout}s")


def stop_studio(server: subprocess.Popen, timeout: float) -> None:
    """SIGTERM: streamlit stops, atexit pauses the worker and closes DuckDB; killed after timeout."""
    server.terminate()
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.kill()


# -- small helpers over Streamlit's DOM ---------------------------------------------------------

def settle(page, timeout: float = 30_000) -> None:
    """Wait until no script run is in flight (Streamlit's status widget shows while one is)."""
    page.wait_for_timeout(150)
    page.get_by_test_id("stStatusWidget").wait_for(state="hidden", timeout=timeout)


def go_to(page, title: str, drawn=None) -> float:
    """Click a page in the sidebar; seconds until its title (and `drawn`, a locator, if given) shows."""
    started = time.perf_counter()
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    heading = "ICM Studio" if title == "Home" else title  # Home's title is the studio's name
    page.get_by_role("heading", name=heading, exact=True).wait_for(timeout=30_000)
    if drawn is not None:
        drawn.wait_for(timeout=30_000)
    return time.perf_counter() - started


def choose(page, label: str, option, tries: int = 3) -> None:
    """Open a selectbox and pick an option (a name or a compiled pattern). A rerun landing between
    the two clicks redraws the box and closes its list: open it again then."""
    box = page.get_by_test_id("stSelectbox").filter(has=page.get_by_text(label, exact=True))
    name = {"name": option} if isinstance(option, re.Pattern) else {"name": option, "exact": True}
    for attempt in range(tries):
        box.click()
        try:
            page.get_by_role("option", **name).click(timeout=10_000)
            return
        except Exception:
            if attempt == tries - 1:
                raise
            settle(page)


def choose_run(page, label: str, run_id: int) -> None:
    """Pick run #run_id in a run picker (its option text ends with the run's changing state)."""
    choose(page, label, re.compile(rf"^#{run_id} "))
    settle(page)


def picked(page, label: str) -> str:
    """The option a selectbox shows: its text, or the value of its input where Streamlit draws it there."""
    box = page.get_by_test_id("stSelectbox").filter(has=page.get_by_text(label, exact=True))
    inputs = box.locator("input")
    shown = inputs.first.input_value() if inputs.count() else ""
    return shown or box.inner_text().removeprefix(label).strip()
