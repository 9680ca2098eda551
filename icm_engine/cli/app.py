"""`icm app`: start the Streamlit studio on a database, on this machine only unless told otherwise."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..store.location import DB_ENV
from .options import add_db_option

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
UPLOAD_LIMIT_MB = 200  # larger tables load through `icm run --data PATH`
ENTRY = Path(__file__).resolve().parents[2] / "app" / "studio.py"


def add_parser(subparsers) -> None:
    app = subparsers.add_parser("app", help="start the Streamlit studio")
    add_db_option(app)
    app.add_argument("--port", type=int, default=8501)
    app.add_argument("--host", default="localhost",
                     help="address to serve on (default localhost: this machine only). The studio has no "
                          "login and can start model runs and write the database: serve it wider only on a "
                          "network you trust")


def run(args) -> int:
    env = dict(os.environ, **{DB_ENV: str(Path(args.db).resolve())})
    if args.host not in LOCAL_HOSTS:
        print(f"warning: serving ICM Studio on {args.host}:{args.port}: anyone who can reach it can start runs "
              f"and change the database (there is no login)", file=sys.stderr)
    return serve(app_command(ENTRY, args.host, args.port), env, str(ENTRY.parent.parent))


def serve(command: list[str], env: dict, cwd: str) -> int:
    """Run the server. On POSIX `icm app` becomes the server rather than its parent: a stop signal
    sent to it (a service manager's SIGTERM, a kill) then stops the server itself, which holds the
    database's write lock; a child left running would lock every later command out of the file."""
    if os.name == "posix":
        os.chdir(cwd)
        os.execve(command[0], command, env)
    return subprocess.call(command, env=env, cwd=cwd)


def app_command(entry: Path, host: str, port: int) -> list[str]:
    """The streamlit command line. The safety settings are passed here, not only in the checkout's
    .streamlit/config.toml, which Streamlit reads only when started from the checkout: an installed
    package would otherwise serve on every interface."""
    return [sys.executable, "-m", "streamlit", "run", str(entry), "--server.address", host, "--server.port", str(port),
            "--server.maxUploadSize", str(UPLOAD_LIMIT_MB), "--server.headless", "true",
            "--browser.gatherUsageStats", "false"]
