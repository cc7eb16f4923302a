"""An embedded PostgreSQL (the ``pgserver`` package) for running without a configured server.

Data lives under ``<var_dir>/pgdata``; the server stops when the process that started it exits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger("saas.embedded")

_server = None


def _prune_dead_handles(pgdata: Path) -> None:
    """Forget handles of processes that died without cleaning up (killed with SIGKILL), so the
    last live process still stops the server on exit."""
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    try:
        pids = json.loads(handles.read_text())
    except ValueError:
        pids = []
    alive = []
    for pid in pids:
        try:
            os.kill(int(pid), 0)
            alive.append(pid)
        except (OSError, ValueError):
            continue
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into a normal exit so pgserver's exit hook stops the server."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))


def embedded_database_url(var_dir: Path) -> str:
    """Start (or reuse) the embedded server and return a ``postgresql://`` URL to database ``saas``."""
    global _server
    import pgserver

    var_dir.mkdir(parents=True, exist_ok=True)
    if _server is None:
        _prune_dead_handles(var_dir / "pgdata")
        _server = pgserver.get_server(str((var_dir / "pgdata").resolve()), cleanup_mode="stop")
        _stop_on_sigterm()
        log.info("embedded PostgreSQL running in %s", var_dir / "pgdata")
    exists = _server.psql("SELECT 1 FROM pg_database WHERE datname = 'saas';")
    if "(1 row)" not in exists:
        _server.psql("CREATE DATABASE saas;")
    return _server.get_uri(database="saas")
