"""A primary of the cluster killed mid-load, through gunicorn (2 sync workers) with
``REDIS_URL=redis+cluster://...``: the tenants on the other primaries keep their limits (the
breaker is per node), the tenant on the dead primary's slots is served without limits (fail
open) and its writes get 503 (fail closed: its revocation markers cannot be read), sign-ins
whose throttle keys are on the dead primary get 503 and the others are answered, nothing else
answers 5xx, and once the replica is promoted everything is back without an operator.

This test commits for real (its own tenants in the run's database) and starts its own cluster
(one replica per primary, ``cluster-node-timeout`` 1000 ms), so killing a node leaves the
session's cluster alone. The dead primary's replica is held back
(``cluster-replica-no-failover yes``) until the outage's answers are checked, so a busy
machine cannot let the promotion overtake them; then it is let go and takes over by itself.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import requests

from saas.cache.namespace import PublicKeys, TenantKeys
from saas.limits.policies import account_subject
from saas.redis_client import make_redis
from tests import redis_servers
from tests.conftest import TEST_PASSWORD
from tests.helpers import signup_over_http
from tests.peers import gunicorn_server

SECRET = "gunicorn-test"  # tests.peers.gunicorn_server's SECRET_KEY: the HMAC of account subjects


@pytest.fixture()
def own_cluster(tmp_path):
    if not redis_servers.available():
        pytest.skip("redis-server / redis-cli not installed")
    with redis_servers.cluster(tmp_path / "nodes") as cluster:
        yield cluster


def _login_key(email: str) -> str:
    return PublicKeys.rate("login-account", "e:" + account_subject(SECRET.encode(), email))


def test_a_primary_killed_mid_load(own_cluster, database_url, tmp_path):
    topology = make_redis(own_cluster.url, 1.0)

    def port_of(key: str) -> int:
        return int(topology.get_node_from_key(key).port)

    env = {
        "RATELIMIT_ENABLED": "true",
        "RATELIMIT_PRINCIPAL_SHARE": "1.0",
        "RATELIMIT_POLICIES": "signup-ip=1000/1h,login-ip=1000/1m",
        "REDIS_BREAKER_COOLDOWN": "0.5",
    }
    (tmp_path / "gunicorn").mkdir()
    with gunicorn_server(database_url, own_cluster.url, tmp_path / "gunicorn", env=env) as server:
        base = server.base
        contacts = f"{base}/api/v1/contacts"
        ip_port = port_of(PublicKeys.rate("login-ip", "127.0.0.1"))
        # tenants until one (the victim) is on a primary that is not the client IP's, and one on
        # another primary
        tenants: dict[int, dict] = {}
        for _ in range(40):
            slug = f"cl-{uuid.uuid4().hex[:8]}"
            body = signup_over_http(base, slug, f"o@{slug}.test")
            tenants.setdefault(port_of(TenantKeys(uuid.UUID(body["tenant"]["id"])).tag), body)
            if any(p != ip_port for p in tenants) and len(tenants) >= 2:
                break
        victim = next(p for p in tenants if p != ip_port)
        other = next(p for p in tenants if p != victim)
        heads = {
            name: {"Authorization": f"Bearer {tenants[p]['token']['access_token']}"}
            for name, p in (("victim", victim), ("other", other))
        }
        # sign-in subjects whose account keys are on the victim's primary, and elsewhere
        emails: dict[bool, list[str]] = {True: [], False: []}
        for i in range(2000):
            email = f"probe-{i}@nobody.test"
            group = emails[port_of(_login_key(email)) == victim]
            if len(group) < 3:
                group.append(email)
            if all(len(g) == 3 for g in emails.values()):
                break

        samples: list[tuple[str, float, int, bool]] = []
        stop = threading.Event()

        def load(name: str) -> None:
            with requests.Session() as http:
                for _ in range(55):  # within the free plan's 60 a minute (a burst of 60, 1/s after)
                    if stop.is_set():
                        return
                    r = http.get(f"{base}/api/v1/contacts", headers=heads[name], timeout=10)
                    samples.append((name, time.monotonic(), r.status_code, "RateLimit" in r.headers))
                    time.sleep(0.2)

        threads = [threading.Thread(target=load, args=(name,)) for name in heads]
        for thread in threads:
            thread.start()
        # the outage lasts until the checks below are done: the victim's replica may not take
        # over before (then it does by itself, as any replica would)
        replica = own_cluster.replica_of(victim)
        redis_servers.cli(replica, "config", "set", "cluster-replica-no-failover", "yes")
        deadline = time.monotonic() + 20
        while sum(1 for s in samples if s[3]) < 6:  # both tenants limited as usual
            assert time.monotonic() < deadline, samples
            time.sleep(0.05)
        killed_at = time.monotonic()
        own_cluster.server(victim).kill()  # SIGKILL by PID: a crash

        while not any(s[0] == "victim" and s[1] > killed_at and not s[3] for s in samples):
            assert time.monotonic() < deadline + 10, samples
            time.sleep(0.02)
        post = requests.post(contacts, json={"name": "A"}, headers=heads["victim"], timeout=10)
        assert post.status_code == 503 and post.json()["code"] == "revocation_check_unavailable"
        assert post.headers["Retry-After"]
        post = requests.post(contacts, json={"name": "B"}, headers=heads["other"], timeout=10)
        assert post.status_code == 201 and post.headers["RateLimit"]
        for on_victim, group in emails.items():
            for email in group:
                login = requests.post(
                    f"{base}/api/v1/auth/login", json={"email": email, "password": TEST_PASSWORD}, timeout=10
                )
                if on_victim:  # fail closed: its throttle cannot be read
                    assert login.status_code == 503, login.text
                    assert login.json()["code"] == "rate_limit_unavailable" and login.headers["Retry-After"]
                else:  # its keys' primaries answer: the throttle runs, the password is checked
                    assert login.status_code == 401, login.text

        # recovery: the replica is promoted and the victim's requests are limited again
        redis_servers.cli(replica, "config", "set", "cluster-replica-no-failover", "no")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            recent = [s for s in samples if s[0] == "victim" and s[1] > killed_at]
            if len(recent) >= 3 and all(s[3] for s in recent[-3:]):
                break
            time.sleep(0.1)
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
        primaries = own_cluster.primary_ports()
        assert victim not in primaries and replica in primaries and len(primaries) == 3

        assert {s[2] for s in samples} == {200}  # reads: never a 5xx (nor a 429)
        other_samples = [s for s in samples if s[0] == "other"]
        assert other_samples and all(s[3] for s in other_samples)  # limited all along
        after = [s for s in samples if s[0] == "victim" and s[1] > killed_at]
        assert any(not s[3] for s in after)  # served without limits while its primary was down
        assert all(s[3] for s in after[-3:])  # and limited again after the failover
        for email in emails[True]:
            login = requests.post(
                f"{base}/api/v1/auth/login", json={"email": email, "password": TEST_PASSWORD}, timeout=10
            )
            assert login.status_code == 401, login.text  # the promoted replica holds its slot
        post = requests.post(contacts, json={"name": "A"}, headers=heads["victim"], timeout=10)
        assert post.status_code == 201 and post.headers["RateLimit"]
