"""Real peers the tests start on loopback: free ports, the service itself under gunicorn (and
its access log read back per worker), an SMTP server (aiosmtpd) that keeps what it receives, and
Debian's Chromium for the browser tests."""

from __future__ import annotations

import email
import email.message
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_available() -> bool:
    """Debian's chromium and the playwright package (its own browser download cannot work here)."""
    if not os.path.exists(CHROMIUM):
        return False
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def stop(proc: subprocess.Popen) -> None:
    """End a process this test started, by its PID: SIGTERM, then SIGKILL after 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def saas_cli(env: Mapping[str, str], *args: str) -> None:
    """``saas <args>`` (``python -m saas.cli``) with a server's environment, as an operator runs it."""
    subprocess.run(
        [sys.executable, "-m", "saas.cli", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


@dataclass
class Gunicorn:
    """A running ``gunicorn wsgi:app`` of :func:`gunicorn_server`: its base URL, the environment
    it runs with (``SAAS_SIGNING_KEY_PATH``, ``SAAS_ISSUER``, ... for a CLI call or a token signed
    with its key), the folder of its files, its process and its stderr file; ``access_log`` is
    the access log (a line ``<worker pid> <status>`` a request) when one was asked for."""

    base: str
    env: dict[str, str]
    tmp: Path
    process: subprocess.Popen
    stderr: Path
    access_log: Path | None


@contextmanager
def gunicorn_server(
    database_url: str,
    redis_url: str,
    tmp: Path,
    *,
    workers: int = 2,
    env: Mapping[str, str] | None = None,
    issuer_host: str = "127.0.0.1",
    access_log: bool = False,
) -> Iterator[Gunicorn]:
    """This service under gunicorn (``infra/gunicorn.conf.py``, ``workers`` sync workers) on a
    free port of 127.0.0.1, committing for real to ``database_url``, for the block's duration.

    Its issuer is ``http://<issuer_host>:<port>`` (``localhost``: a WebAuthn RP id, or a second
    host whose cookies stay apart from the first's in one browser); its signing key is a fresh
    RS256 key under ``tmp/keys``; Argon2 is cheap, logs are warnings, workers are never recycled
    and the metrics live in ``tmp/metrics``; ``SAAS_ENV`` is ``production`` and
    ``RATELIMIT_ENABLED`` is left to the settings' default. ``env`` overrides or adds variables
    (a test's own secret, ``SAAS_ENV``, limiter, SMTP, ...). Waits up to 60 s for ``/healthz``,
    raising ``RuntimeError`` with the tail of stderr; ends the server by its PID."""
    from saas.auth.keys import KeyStore

    port = free_port()
    base = f"http://{issuer_host}:{port}"
    (tmp / "keys").mkdir()
    KeyStore(tmp / "keys", "RS256", generate=True)
    full_env = {
        **os.environ,
        "DATABASE_URL": database_url.replace("postgresql+psycopg://", "postgresql://", 1),
        "REDIS_URL": redis_url,
        "SECRET_KEY": "gunicorn-test",
        "SAAS_ENV": "production",
        "SAAS_SIGNING_KEY_PATH": str(tmp / "keys"),
        "SAAS_ISSUER": base,
        "ARGON2_MEMORY_KIB": "8192",
        "ARGON2_TIME_COST": "1",
        "LOG_LEVEL": "WARNING",
        "GUNICORN_MAX_REQUESTS": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),  # emptied by gunicorn at start
        **(env or {}),
    }
    log = tmp / "access.log" if access_log else None
    logging = ["--access-logfile", str(log), "--access-logformat", "%(p)s %(s)s"] if log else []
    stderr = tmp / "gunicorn.stderr"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "infra/gunicorn.conf.py", "-w", str(workers),
             "-b", f"127.0.0.1:{port}", *logging, "wsgi:app"],
            cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        outbox_start = _outbox_high_water(full_env["DATABASE_URL"])
        try:
            _wait_healthy(base, proc, stderr)
            yield Gunicorn(base, full_env, tmp, proc, stderr, log)
        finally:
            stop(proc)  # by PID: this test's own server
            _drop_outbox_after(full_env["DATABASE_URL"], outbox_start)


def _outbox_high_water(url: str) -> int | None:
    """The highest outbox id now (None: no outbox table yet). The server commits for real, so
    the mail and jobs it queued would otherwise be due in the next test's outbox."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        try:
            return int(conn.execute("SELECT coalesce(max(id), 0) FROM saas.outbox").fetchone()[0])
        except psycopg.errors.UndefinedTable:
            return None


def _drop_outbox_after(url: str, start: int | None) -> None:
    """Delete the outbox rows the server's block queued (ids above ``start``)."""
    if start is None:
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM saas.outbox WHERE id > %s", (start,))


def _wait_healthy(base: str, proc: subprocess.Popen, stderr: Path) -> None:
    import requests

    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("gunicorn did not start: " + stderr.read_text()[-2000:])
        time.sleep(0.2)


def log_lines(log: Path) -> int:
    """How many requests the access log holds so far."""
    return len(log.read_text().splitlines()) if log.exists() else 0


def wait_logged(log: Path, count: int) -> None:
    """Until the access log holds ``count`` lines (a worker writes its line after the answer), 5 s at most."""
    deadline = time.monotonic() + 5
    while log_lines(log) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def statuses_by_worker(log: Path, skip: int) -> dict[str, set[str]]:
    """``{worker pid: {status, ...}}`` of the access log's lines after the first ``skip``."""
    out: dict[str, set[str]] = {}
    for line in log.read_text().splitlines()[skip:]:
        pid, status = line.split()
        out.setdefault(pid, set()).add(status)
    return out


def warm_every_worker(pool: Any, get: Callable[[int], int], log: Path, workers: int = 2) -> None:
    """Send ``get`` 16 at a time through ``pool`` (a thread pool) until each worker has served
    it (the kernel may hand one worker most connections), every answer a 200, 20 rounds at most."""
    first = log_lines(log)
    sent = 0
    for _ in range(20):
        assert set(pool.map(get, range(16))) == {200}
        sent += 16
        wait_logged(log, first + sent)
        warm = statuses_by_worker(log, first)
        if len(warm) == workers:
            break
    assert len(warm) == workers and all(s == {"200"} for s in warm.values()), warm


#: the flags this machine's Chromium needs headless as root, without network chatter
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium, headless, through Playwright (``sync_playwright()``'s object)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


class Inbox:
    """An aiosmtpd handler keeping every message (parsed) and envelope it receives; ``url`` is
    the server's ``smtp://`` address once started by :func:`smtp_inbox`."""

    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []
        self.envelopes: list[Any] = []
        self.url = ""

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def to(self, address: str) -> list[email.message.Message]:
        return [m for m in self.messages if m["To"].lower() == address.lower()]


@contextmanager
def smtp_inbox() -> Iterator[Inbox]:
    """A real SMTP server on a free loopback port for the block's duration."""
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    inbox.url = f"smtp://127.0.0.1:{port}"
    try:
        yield inbox
    finally:
        controller.stop()
