"""The CLI's writes and the served app: atomic exports, clear refusals, localhost by default."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from icm_engine import cli
from icm_engine.cli import app, options
from icm_engine.store.database import Store

ROOT = Path(__file__).resolve().parent.parent


def test_an_interrupted_export_leaves_the_old_file_whole(tmp_path, monkeypatch):
    out = tmp_path / "labels.csv"
    out.write_bytes(b"old,good,file\n")

    def killed(*args):
        raise KeyboardInterrupt  # as if the process were stopped between writing and renaming

    monkeypatch.setattr(options.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        options.write_atomically(out, b"new contents\n" * 1000)
    assert out.read_bytes() == b"old,good,file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]  # no temporary left behind
    monkeypatch.undo()
    options.write_atomically(out, b"new\n")
    assert out.read_bytes() == b"new\n"


def test_an_export_is_readable_as_any_new_file_is_not_private_like_a_temporary(tmp_path):
    umask = os.umask(0o022)
    try:
        options.write_atomically(tmp_path / "labels.csv", b"a\n")
    finally:
        os.umask(umask)
    assert (tmp_path / "labels.csv").stat().st_mode & 0o777 == 0o644  # mkstemp alone gave 0600


def test_export_to_a_folder_is_refused_in_one_line(tmp_path, capsys):
    db = tmp_path / "icm.duckdb"
    from icm_engine.store.database import Store

    Store(str(db)).close()
    assert cli.main(["export", "--run", "1", "--db", str(db), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"icm export: --out {tmp_path} is a folder; name a file in it " \
                                              f"(e.g. {tmp_path / 'labels.csv'})"


def _listening(port: int) -> list[str]:
    """Local addresses listening on `port`, from /proc (IPv4 and IPv6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from /proc")
def test_the_app_serves_localhost_only_when_started_outside_the_checkout(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    entry = app.ENTRY
    env = dict(os.environ, ICM_STUDIO_DB=str(tmp_path / "icm.duckdb"))
    # cwd outside the checkout: the repo's .streamlit/config.toml does not apply, as for an installed package
    studio = subprocess.Popen(app.app_command(entry, "localhost", port), cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not _listening(port) and time.time() < deadline and studio.poll() is None:
            time.sleep(0.5)
        addresses = _listening(port)
        assert addresses, "the app did not start listening"
        loopback = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1
        assert set(addresses) <= loopback, addresses
    finally:
        studio.terminate()
        studio.wait(timeout=30)


@pytest.mark.skipif(os.name != "posix" or not Path("/proc/net/tcp").exists(), reason="signals; reads /proc")
def test_stopping_icm_app_with_sigterm_stops_the_server_and_frees_the_database(tmp_path):
    """`icm app` started streamlit as a child: a SIGTERM to it left the server running, holding
    the database's write lock, so every later `icm` command on that file was refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    db = tmp_path / "icm.duckdb"
    studio = subprocess.Popen([sys.executable, "-m", "icm_engine.cli", "app", "--db", str(db), "--port", str(port)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not _listening(port) and time.time() < deadline and studio.poll() is None:
            time.sleep(0.5)
        assert _listening(port), "the app did not start listening"
        studio.send_signal(signal.SIGTERM)
        studio.wait(timeout=30)
        deadline = time.time() + 10
        while _listening(port) and time.time() < deadline:
            time.sleep(0.2)
        assert not _listening(port), "the server outlived `icm app`"
    finally:
        if studio.poll() is None:
            studio.kill()
    with Store(str(db)) as store:  # the write lock is free
        assert store.runs() is not None


def test_serving_beyond_localhost_warns(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(app, "serve", lambda command, env, cwd: calls.append(command) or 0)
    assert cli.main(["app", "--host", "0.0.0.0", "--port", "9999"]) == 0
    assert "there is no login" in capsys.readouterr().err
    assert calls[0][calls[0].index("--server.address") + 1] == "0.0.0.0"
    assert cli.main(["app"]) == 0
    assert calls[1][calls[1].index("--server.address") + 1] == "localhost" and not capsys.readouterr().err
