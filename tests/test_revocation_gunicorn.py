"""Revocation through gunicorn with 2 workers: after a logout, every request with the old access
token is a 401 on every worker, within a second (here: from the first request after the logout's
answer). Run with the rate limiter on (the check rides its Lua call) and off (one ``EXISTS``).

These tests commit for real (their own tenants in the run's database, dropped at the end).
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import _redis_url
from tests.helpers import signup_over_http
from tests.peers import (
    gunicorn_server,
    log_lines,
    saas_cli,
    statuses_by_worker,
    wait_logged,
    warm_every_worker,
)


@pytest.fixture(params=["true", "false"], ids=["limiter-on", "limiter-off"])
def gunicorn(request, database_url, worker_id_str, redis_client, tmp_path):
    """(base url, access log path, environment): gunicorn, 2 sync workers, the access log naming
    the worker pid."""
    redis_client.flushdb()  # this run's own Redis database: no throttle state of earlier tests
    limiter = {"RATELIMIT_ENABLED": request.param, "RATELIMIT_PRINCIPAL_SHARE": "1.0"}
    with gunicorn_server(
        database_url, _redis_url(worker_id_str), tmp_path, env=limiter, access_log=True
    ) as server:
        yield server.base, server.access_log, server.env


def test_logout_reaches_every_worker_within_a_second(gunicorn):
    base, log, env = gunicorn
    slug = f"rv-{uuid.uuid4().hex[:8]}"
    wait_logged(log, 1)  # the readiness probe's line
    before_signup = log_lines(log)
    signup = signup_over_http(base, slug, f"o@{slug}.test", name="Rv")
    # the warm-up below may take a few hundred requests (the kernel can hand one worker most
    # connections): the enterprise plan's 6000 a minute, set as an operator does
    saas_cli(env, "tenants", "set-plan", slug, "enterprise", "--reason", "test")
    # the signup's own line is written after its answer (and after the probe's): never count it below
    wait_logged(log, before_signup + 1)
    token = signup["token"]["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Connection": "close"}

    def get(_: int) -> int:
        return requests.get(f"{base}/api/v1/contacts", headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        # warm both workers (verified-token cache, principal cache) until each served the token
        warm_every_worker(pool, get, log)

        logout = requests.post(f"{base}/api/v1/auth/logout", headers=headers, timeout=30)
        assert logout.status_code == 204, logout.text
        revoked_at = time.monotonic()
        start = log_lines(log) + 0
        statuses: list[int] = []
        while time.monotonic() - revoked_at < 1.0:
            statuses += pool.map(get, range(16))
        wait_logged(log, start + len(statuses))
        after = statuses_by_worker(log, start)
    # the logout's own log line may land after ours: drop 204 before judging
    after = {pid: s - {"204"} for pid, s in after.items()}
    assert set(statuses) == {401}, statuses
    assert len(after) == 2 and all(s == {"401"} for s in after.values()), after
