"""ICM Studio: the Streamlit entry point (`icm app`, or `streamlit run app/studio.py`).

Thin on purpose: it opens the one cached RunManager for $ICM_STUDIO_DB and routes to the pages
(app/pages/*.py, each a render_*(manager) function; the first, Home, is app/pages/home.py). The
engine decides; pages only render.
"""
from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run app/studio.py` puts app/ on sys.path, not the repository root the packages live in.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from app.pages.audit import render_audit  # noqa: E402
from app.pages.compare import render_compare  # noqa: E402
from app.pages.data import render_data  # noqa: E402
from app.pages.eval import render_eval  # noqa: E402
from app.pages.export import render_export  # noqa: E402
from app.pages.home import render_home  # noqa: E402
from app.pages.live import render_live  # noqa: E402
from app.pages.run import render_run  # noqa: E402
from app.pages.steer import render_steer  # noqa: E402
from app.pages.trust import render_trust  # noqa: E402
from app.services import get_manager  # noqa: E402
from icm_engine.store.database import StoreError  # noqa: E402
from icm_engine.store.location import default_db  # noqa: E402

FAVICON = Path(__file__).resolve().parent / "static" / "favicon.png"
PAGES = [  # (title, url path, icon, renderer); the first is where the app opens
    ("Home", "home", ":material/home:", render_home),
    ("Data", "data", ":material/table:", render_data),
    ("Run", "run", ":material/play_arrow:", render_run),
    ("Live", "live", ":material/monitoring:", render_live),
    ("Audit", "audit", ":material/search:", render_audit),
    ("Trust", "trust", ":material/verified:", render_trust),
    ("Steer", "steer", ":material/tune:", render_steer),
    ("Export", "export", ":material/download:", render_export),
    ("Compare", "compare", ":material/compare_arrows:", render_compare),
    ("Eval", "eval", ":material/leaderboard:", render_eval),
]


def main() -> None:
    # a local file: an icon name makes Streamlit fetch the favicon from a font CDN, which fails offline
    st.set_page_config(page_title="ICM Studio", page_icon=str(FAVICON), layout="wide")
    try:
        manager = get_manager(default_db())
    except StoreError as error:  # e.g. `icm run` holds the file: say so; a reload tries again
        st.error(str(error))
        st.stop()
    pages = [
        st.Page(lambda render=render: render(manager), title=title, url_path=path, icon=icon, default=n == 0)
        for n, (title, path, icon, render) in enumerate(PAGES)
    ]
    page = st.navigation(pages)
    with st.sidebar:
        st.caption("ICM Studio: unsupervised label search (Internal Coherence Maximization)")
        active = manager.active_runs()
        st.caption(f"Active runs: {', '.join(f'#{r}' for r in active) if active else 'none'}")
        st.caption(f"Database: {manager.db_path}")
    page.run()


main()
