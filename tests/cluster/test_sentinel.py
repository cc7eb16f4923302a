"""``REDIS_URL=redis+sentinel://...``: a primary with its replica, three real Sentinels
(``redis-server --sentinel``); the app follows a failover by itself.

The primary is killed: reads fail open and sign-in fails closed while no primary answers, the
Sentinels promote the replica (``down-after-milliseconds`` 500), and the app's next connection
asks them for the primary: the limits are back on the promoted replica without a restart.
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from saas.redis_client import make_redis
from saas.services import services
from saas.settings import Settings
from tests import redis_servers
from tests.conftest import TEST_PASSWORD, Api


@pytest.fixture()
def sentinels(tmp_path):
    if not redis_servers.available():
        pytest.skip("redis-server / redis-cli not installed")
    with redis_servers.sentinel_set(tmp_path) as found:
        yield found


def test_failover_is_followed(make_app, sentinels):
    settings = Settings.from_env({"REDIS_URL": sentinels.url})
    client = make_redis(settings.redis_url, 0.25)
    assert isinstance(client, redis.Redis) and sentinels.master_port() == sentinels.primary.port
    app = make_app(redis=client, redis_breaker_threshold=2, redis_breaker_cooldown_seconds=0.3)
    http = app.test_client()
    api = Api(http)
    owner = api.signup("sentinel")
    h = api.auth(owner)
    assert http.get("/api/v1/contacts", headers=h).headers.get("RateLimit")
    tenant_key = f"{{t:{uuid.UUID(owner['tenant']['id'])}}}:rl:tenant"
    primary = redis.Redis(port=sentinels.primary.port, socket_timeout=1)
    assert primary.exists(tenant_key)  # the limiter writes to the primary the Sentinels name

    sentinels.primary.kill()  # SIGKILL by PID
    deadline = time.monotonic() + 10
    while True:  # until the breaker is open: requests are served without limits
        response = http.get("/api/v1/contacts", headers=h)
        assert response.status_code == 200
        if not response.headers.get("RateLimit"):
            break
        assert time.monotonic() < deadline, "the dead primary was never noticed"
    login = api.login("owner@sentinel.test")
    assert login.status_code == 503 and login.get_json()["code"] == "rate_limit_unavailable"

    deadline = time.monotonic() + 20
    while not http.get("/api/v1/contacts", headers=h).headers.get("RateLimit"):
        assert time.monotonic() < deadline, "the app did not follow the failover"
        time.sleep(0.1)
    assert sentinels.master_port() == sentinels.replica.port  # the replica was promoted
    promoted = redis.Redis(port=sentinels.replica.port, socket_timeout=1)
    assert promoted.info("replication")["role"] == "master"
    assert promoted.exists(tenant_key)  # the limits live on the new primary
    assert api.login("owner@sentinel.test", TEST_PASSWORD).status_code == 200
    assert http.post("/api/v1/contacts", json={"name": "Ada"}, headers=h).status_code == 201
    assert services(app).counters.get("breaker_opened_total") >= 1
