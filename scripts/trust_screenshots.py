"""Screenshots of the studio's Trust page for stored runs, in headless Chromium.

Starts the studio on --db (a copy is fine: the studio opens the file for writing), opens Trust for
each run, waits until the report is drawn (the model loads once and is asked about every example;
minutes on CPU), and saves the whole page, plus its top, as PNGs.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python scripts/trust_screenshots.py --db runs/shots.duckdb \\
        --runs 1:sentiment,2:truthfulqa --out artifacts/screenshots
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from studio_browser import (  # scripts/ is on the path of a script run from it
    CHROMIUM, CHROMIUM_ARGS, ROOT, choose_run, free_port, go_to, settle, start_studio, stop_studio, wait_healthy,
)


def small_png(path: Path) -> None:
    """Re-save with a 256-colour palette: the studio's flat UI loses nothing visible, the file ~4x less."""
    from PIL import Image

    Image.open(path).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def whole_page(page, path: Path, width: int = 1400) -> None:
    """Streamlit scrolls inside its own container: grow the window to the content, then shoot."""
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": width, "height": min(int(height) + 80, 16000)})
    page.wait_for_timeout(800)
    page.screenshot(path=path)
    page.set_viewport_size({"width": width, "height": 1000})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--runs", required=True, help="RUN:NAME,... e.g. 1:sentiment,2:truthfulqa")
    parser.add_argument("--out", default="artifacts/screenshots")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--wait", type=float, default=1200, help="seconds to wait for each report")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()
    env = dict(os.environ, ICM_STUDIO_DB=str(Path(args.db).resolve()), PYTHONPATH=str(ROOT))
    log = open(Path(tempfile.gettempdir()) / "trust_screenshots_server.log", "w")
    server = start_studio(port, env, log)
    url = f"http://localhost:{port}"
    try:
        wait_healthy(url, server, timeout=120)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.get_by_role("heading", name="ICM Studio", exact=True).wait_for()
            go_to(page, "Trust")
            for item in args.runs.split(","):
                run_id, name = item.split(":")
                choose_run(page, "Run", int(run_id))
                page.get_by_text(f"Run #{run_id} is").wait_for(timeout=60_000)
                # drawn: no spinner, no element left over from the previous run (Streamlit marks those
                # stale), and the last section's download button is there
                page.wait_for_function("""() => !document.body.innerText.includes('Checking the labels')
                    && !document.body.innerText.includes('Loading gemma')
                    && !document.querySelector('[data-stale="true"]')""", timeout=args.wait * 1000, polling=1000)
                page.get_by_role("button", name="Download this report (HTML)").wait_for(timeout=args.wait * 1000)
                settle(page, timeout=args.wait * 1000)
                page.wait_for_timeout(1500)
                page.screenshot(path=out / f"trust_{name}_top.png")
                whole_page(page, out / f"trust_{name}_full.png")
                for part in ("top", "full"):
                    small_png(out / f"trust_{name}_{part}.png")
                print(f"saved {out}/trust_{name}_top.png and trust_{name}_full.png")
            browser.close()
    finally:
        stop_studio(server, timeout=30)
        log.close()


if __name__ == "__main__":
    main()
