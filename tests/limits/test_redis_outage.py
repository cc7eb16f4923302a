"""Redis killed mid-run: general limits fail open (no 500s), login fails closed (503), no
request waits on the dead server repeatedly, and everything recovers by itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from saas.services import services
from tests.conftest import TEST_PASSWORD, Api
from tests.peers import free_port

REDIS_SERVER = "/usr/bin/redis-server"


def _start(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # a server keeps the host's clock, like the shared PostgreSQL and Redis, when the suite
        # runs under tests/faketime/run.sh (libfaketime also stops redis-server from starting)
        env={k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FAKETIME")},
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@pytest.fixture()
def own_redis():
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server binary not installed")
    port = free_port()
    procs = [_start(port)]
    yield port, procs
    for proc in procs:
        _stop(proc)


def test_redis_killed_mid_run(make_app, own_redis):
    port, procs = own_redis
    from saas.redis_client import make_redis

    app = make_app(
        redis=make_redis(f"redis://127.0.0.1:{port}/0", 0.25),
        redis_breaker_threshold=2,
        redis_breaker_cooldown_seconds=0.5,
    )
    client = app.test_client()
    api = Api(client)
    h = api.auth(api.signup("outage"))
    assert client.get("/api/v1/contacts", headers=h).headers.get("RateLimit")
    metrics = services(app).counters

    _stop(procs[0])  # SIGKILL by PID
    started = time.monotonic()
    statuses = []
    for _ in range(20):
        t0 = time.monotonic()
        statuses.append(client.get("/api/v1/contacts", headers=h).status_code)
        assert time.monotonic() - t0 < 1.0  # never stuck on the dead server
    assert statuses == [200] * 20  # fail open: served, no 500
    assert time.monotonic() - started < 5
    assert metrics.get("limits_fail_open_total") == 20
    assert metrics.get("breaker_opened_total") >= 1
    assert metrics.get("redis_short_circuited_total") > 0  # later requests skipped Redis entirely
    # writes fail closed: whether the token's session was revoked cannot be read
    created = client.post("/api/v1/contacts", json={"name": "Ada"}, headers=h)
    assert created.status_code == 503
    assert created.get_json()["code"] == "revocation_check_unavailable"
    assert created.headers["Retry-After"]
    assert metrics.get("revocation_fail_closed_total") == 1
    assert metrics.get("revocation_fail_open_total") == 20  # the reads above were served
    login = api.login("owner@outage.test")
    assert login.status_code == 503  # fail closed
    assert login.get_json()["code"] == "rate_limit_unavailable"
    assert login.headers["Retry-After"]
    assert metrics.get("limits_fail_closed_total") >= 1

    procs.append(_start(port))  # Redis is back, empty
    deadline = time.monotonic() + 5
    recovered = None
    while time.monotonic() < deadline:
        response = client.get("/api/v1/contacts", headers=h)
        assert response.status_code == 200
        if response.headers.get("RateLimit"):
            recovered = response
            break
        time.sleep(0.1)
    assert recovered is not None, "limits did not come back after Redis restarted"
    again = api.login("owner@outage.test", TEST_PASSWORD)
    assert again.status_code == 200, again.get_json()
    assert client.post("/api/v1/contacts", json={"name": "Ada"}, headers=h).status_code == 201


@pytest.fixture()
def hung_redis():
    """A TCP server that accepts connections and never answers (a hung Redis)."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    stop = threading.Event()
    held = []

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    for conn in held:
        conn.close()
    server.close()


def test_hung_redis_costs_at_most_a_few_timeouts(make_app, hung_redis, redis_client):
    from saas.redis_client import make_redis

    # the tenant and its token come from an app on the working Redis
    api = Api(make_app().test_client())
    h = api.auth(api.signup("hung"))
    app = make_app(
        redis=make_redis(f"redis://127.0.0.1:{hung_redis}/0", 0.1),
        redis_breaker_threshold=2,
        redis_breaker_cooldown_seconds=5,
    )
    client = app.test_client()
    durations = []
    for _ in range(15):
        t0 = time.monotonic()
        assert client.get("/api/v1/contacts", headers=h).status_code == 200
        durations.append(time.monotonic() - t0)
    assert 0.2 <= durations[0] < 1.0  # two socket timeouts of 0.1 s, then the breaker opened
    # two timeouts of 0.1 s open the breaker; after that no request touches the hung server
    assert sum(durations) < 0.3 + 2 * 0.1 + 0.05 * len(durations)
    metrics = services(app).counters
    assert metrics.get("redis_errors_total") == 2 and metrics.get("breaker_opened_total") == 1
    assert metrics.get("redis_short_circuited_total") > 0
