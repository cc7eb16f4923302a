"""Log lines: JSON in production, lines for a person under ``saas dev`` (structlog's console
renderer), in colour only on a terminal; a library's own colour codes never reach either
(saas.observability.logging, saas.cli.dev)."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from saas.observability.logging import configure, get_logger, request_log
from tests.conftest import _redis_url
from tests.peers import ROOT, free_port

ESC = "\x1b["
#: how the Werkzeug development server writes its request line (green status, ANSI codes)
WERKZEUG_LINE = '127.0.0.1 - - [03/Dec/2026 10:00:00] "\x1b[32mGET /healthz HTTP/1.1\x1b[0m" 200 -'


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture()
def restore_logging():
    root = logging.getLogger()
    level = root.level
    yield
    configure(logging.getLevelName(level), "json")


def _log_some(stream) -> str:
    logging.getLogger("werkzeug").info(WERKZEUG_LINE)
    get_logger("saas.test").info("tenant created", tenant_id="t-1", password="hunter2-secret")
    request_log().info("request", route="/api/v1/contacts", status=200, duration_ms=1.5)
    return stream.getvalue()


def test_json_in_production_without_any_colour_code(restore_logging):
    stream = io.StringIO()
    configure("INFO", "json", stream)
    lines = [json.loads(line) for line in _log_some(stream).splitlines()]
    assert [line["event"] for line in lines] == [
        '127.0.0.1 - - [03/Dec/2026 10:00:00] "GET /healthz HTTP/1.1" 200 -',
        "tenant created",
        "request",
    ]
    assert lines[1]["password"] == "[redacted]" and lines[1]["tenant_id"] == "t-1"
    assert ESC not in stream.getvalue() and "\\u001b" not in stream.getvalue()


def test_console_lines_are_plain_off_a_terminal(restore_logging):
    stream = io.StringIO()
    configure("INFO", "console", stream)
    out = _log_some(stream)
    assert ESC not in out
    lines = out.splitlines()
    assert len(lines) == 3
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    werkzeug = r"^\d{4}-\d\d-\d\dT\S+Z \[info\s*\] 127\.0\.0\.1 .*\"GET /healthz HTTP/1\.1\" 200"
    assert re.match(werkzeug, lines[0]), lines[0]
    assert "tenant created" in lines[1] and "tenant_id=t-1" in lines[1] and "password=[redacted]" in lines[1]
    assert "hunter2-secret" not in out
    assert "request" in lines[2] and "route=/api/v1/contacts" in lines[2] and "status=200" in lines[2]


def test_console_lines_are_coloured_on_a_terminal(restore_logging):
    stream = Terminal()
    configure("INFO", "console", stream)
    out = _log_some(stream)
    assert ESC in out
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert "tenant_id=t-1" in plain and "route=/api/v1/contacts" in plain
    assert '"GET /healthz HTTP/1.1"' in plain  # Werkzeug's own codes gone, ours added


def test_console_tracebacks_never_print_the_frames_locals(restore_logging):
    stream = Terminal()
    configure("INFO", "console", stream)
    password = f"local-{uuid.uuid4().hex}"  # a local the traceback must not show (not in the source)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("saas.errors").exception("unhandled error")
    assert password not in stream.getvalue() and "RuntimeError" in stream.getvalue()
    assert len(password) > 6


@pytest.fixture()
def dev_database(database_url):
    """A database of its own for ``saas dev`` (it migrates and delivers the outbox)."""
    server = make_url(database_url)
    name = f"saas_dev_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _run_dev(dev_database: str, redis_url: str, var: Path, *, terminal: bool) -> str:
    """``saas dev`` on a free port, its stderr a pipe or a pseudo-terminal; one request once it
    serves; returns what it wrote to stderr, after it was stopped by its PID."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": dev_database.replace("postgresql+psycopg://", "postgresql://", 1),
        "REDIS_URL": redis_url,
        "SAAS_VAR_DIR": str(var),
        "ARGON2_MEMORY_KIB": "8192",
        "ARGON2_TIME_COST": "1",
    }
    for name in ("SAAS_ENV", "LOG_FORMAT", "SMTP_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "SENTRY_DSN"):
        env.pop(name, None)
    if terminal:
        master, slave = pty.openpty()
        err: int = slave
    else:
        err_path = var / "dev.stderr"
        err = os.open(err_path, os.O_WRONLY | os.O_CREAT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "saas.cli", "dev", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(err)
    chunks: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if terminal:
                while select.select([master], [], [], 0)[0]:
                    chunks.append(os.read(master, 65536))
            try:
                url = f"http://127.0.0.1:{port}/api/v1/contacts?token=dev-query-token"
                if requests.get(url, timeout=1).status_code == 401:
                    break
            except requests.RequestException:
                time.sleep(0.2)
            assert proc.poll() is None, "saas dev exited"
        else:
            raise AssertionError("saas dev did not serve")
        time.sleep(0.3)  # the request's line is written after the answer
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if terminal:
        while select.select([master], [], [], 0.2)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        return b"".join(chunks).decode(errors="replace")
    return err_path.read_text()


def test_saas_dev_writes_plain_lines_to_a_pipe(dev_database, worker_id_str, tmp_path):
    out = _run_dev(dev_database, _redis_url(worker_id_str), tmp_path, terminal=False)
    assert ESC not in out
    request_lines = [line for line in out.splitlines() if "route=/api/v1/contacts" in line]
    assert request_lines, out[-2000:]
    assert "status=401" in request_lines[0] and "[info" in request_lines[0]
    assert not any(line.lstrip().startswith("{") for line in out.splitlines()), out[-2000:]
    assert "dev-query-token" not in out  # Werkzeug's request line (the full path) is off


def test_saas_dev_colours_its_lines_on_a_terminal(dev_database, worker_id_str, tmp_path):
    out = _run_dev(dev_database, _redis_url(worker_id_str), tmp_path, terminal=True)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    request_lines = [line for line in plain.splitlines() if "route=/api/v1/contacts" in line]
    assert request_lines, plain[-2000:]
    assert ESC in out
    assert "dev-query-token" not in out
