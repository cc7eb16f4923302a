"""Revocation through gunicorn with 2 workers: after a logout, every request with the old access
token is a 401 on every worker, within a second (here: from the first request after the logout's
answer). Run with the rate limiter on (the check rides its Lua call) and off (one ``EXISTS``).

These tests commit for real (their own tenants in the run's database, dropped at the end).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import TEST_PASSWORD, _redis_url
from tests.peers import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["true", "false"], ids=["limiter-on", "limiter-off"])
def gunicorn(request, database_url, worker_id_str, redis_client, tmp_path):
    """(base url, access log path, environment): gunicorn, 2 sync workers, the access log naming
    the worker pid."""
    redis_client.flushdb()  # this run's own Redis database: no throttle state of earlier tests
    port = free_port()
    log = tmp_path / "access.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url.replace("postgresql+psycopg://", "postgresql://"),
        "REDIS_URL": _redis_url(worker_id_str),
        "SECRET_KEY": "gunicorn-test",
        "SAAS_ENV": "production",
        "SAAS_SIGNING_KEY_PATH": str(tmp_path / "keys"),
        "SAAS_ISSUER": f"http://127.0.0.1:{port}",
        "RATELIMIT_ENABLED": request.param,
        "RATELIMIT_PRINCIPAL_SHARE": "1.0",
        "ARGON2_MEMORY_KIB": "8192",
        "ARGON2_TIME_COST": "1",
        "LOG_LEVEL": "WARNING",
        "GUNICORN_MAX_REQUESTS": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),  # emptied by gunicorn at start
    }
    (tmp_path / "keys").mkdir()
    _generate_key(tmp_path / "keys")
    stderr = (tmp_path / "stderr").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "infra/gunicorn.conf.py", "-w", "2",
         "-b", f"127.0.0.1:{port}", "--access-logfile", str(log), "--access-logformat", "%(p)s %(s)s",
         "wsgi:app"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("gunicorn did not start: " + (tmp_path / "stderr").read_text()[-2000:])
            time.sleep(0.2)
        yield base, log, env
    finally:
        proc.terminate()  # by PID: this test's own server
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        stderr.close()


def _generate_key(directory: Path) -> None:
    from saas.auth.keys import KeyStore

    KeyStore(directory, "RS256", generate=True)


def _statuses_by_worker(log: Path, skip: int) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in log.read_text().splitlines()[skip:]:
        pid, status = line.split()
        out.setdefault(pid, set()).add(status)
    return out


def _log_lines(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _wait_logged(log: Path, count: int) -> None:
    deadline = time.monotonic() + 5
    while _log_lines(log) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_logout_reaches_every_worker_within_a_second(gunicorn):
    base, log, env = gunicorn
    slug = f"rv-{uuid.uuid4().hex[:8]}"
    _wait_logged(log, 1)  # the readiness probe's line
    before_signup = _log_lines(log)
    signup = requests.post(
        f"{base}/api/v1/signup",
        json={
            "tenant": {"name": "Rv", "slug": slug},
            "owner": {"email": f"o@{slug}.test", "password": TEST_PASSWORD},
        },
        timeout=30,
    )
    assert signup.status_code == 201, signup.text
    # the warm-up below may take a few hundred requests (the kernel can hand one worker most
    # connections): the enterprise plan's 6000 a minute, set as an operator does
    subprocess.run(
        [sys.executable, "-m", "saas.cli", "tenants", "set-plan", slug, "enterprise", "--reason", "test"],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    # the signup's own line is written after its answer (and after the probe's): never count it below
    _wait_logged(log, before_signup + 1)
    token = signup.json()["token"]["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Connection": "close"}

    def get(_: int) -> int:
        return requests.get(f"{base}/api/v1/contacts", headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        # warm both workers (verified-token cache, principal cache) until each served the token,
        # counting every round (the kernel may hand one worker most connections)
        first = _log_lines(log)
        sent = 0
        for _ in range(20):
            assert set(pool.map(get, range(16))) == {200}
            sent += 16
            _wait_logged(log, first + sent)
            warm = _statuses_by_worker(log, first)
            if len(warm) == 2:
                break
        assert len(warm) == 2 and all(s == {"200"} for s in warm.values()), warm

        logout = requests.post(f"{base}/api/v1/auth/logout", headers=headers, timeout=30)
        assert logout.status_code == 204, logout.text
        revoked_at = time.monotonic()
        start = _log_lines(log) + 0
        statuses: list[int] = []
        while time.monotonic() - revoked_at < 1.0:
            statuses += pool.map(get, range(16))
        _wait_logged(log, start + len(statuses))
        after = _statuses_by_worker(log, start)
    # the logout's own log line may land after ours: drop 204 before judging
    after = {pid: s - {"204"} for pid, s in after.items()}
    assert set(statuses) == {401}, statuses
    assert len(after) == 2 and all(s == {"401"} for s in after.values()), after
