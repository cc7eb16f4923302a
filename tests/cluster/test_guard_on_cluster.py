"""The Redis guard on a real cluster: one circuit breaker per node, redis-py's cluster errors
handled as Redis errors, and a ``MOVED`` answer never taken for a dead server."""

from __future__ import annotations

import uuid

import pytest
import redis

from saas.cache.guard import CircuitBreaker, Counters, RedisGuard, RedisUnavailable
from saas.cache.namespace import TenantKeys
from saas.redis_client import make_redis


def _tenant_keys_by_node(guard: RedisGuard) -> dict[str, str]:
    """One tenant key (``{t:<uuid>}:cv``) per cluster node."""
    found: dict[str, str] = {}
    while len(found) < 3:
        key = TenantKeys(uuid.uuid4()).cache_version()
        found.setdefault(guard.node_of(key), key)
    return found


def test_one_nodes_open_breaker_leaves_the_other_nodes_served(redis_client):
    counters = Counters()
    guard = RedisGuard(redis_client, CircuitBreaker(threshold=2, cooldown=60), counters)
    keys = _tenant_keys_by_node(guard)
    dead, *alive = sorted(keys)
    breaker = guard.breaker_for(keys[dead])
    assert breaker is not guard.breaker and breaker is guard.breaker_for(keys[dead])
    breaker.failure()
    breaker.failure()  # as two failed calls to that node would
    assert breaker.is_open() and guard.any_open()
    with pytest.raises(RedisUnavailable, match="circuit open"):
        guard.call("cache", lambda r: r.get(keys[dead]), key=keys[dead])
    for node in alive:
        assert guard.call("cache", lambda r, k=keys[node]: r.set(k, "1"), key=keys[node]) is True
        assert not guard.breaker_for(keys[node]).is_open()
    assert counters.get("redis_short_circuited_total") == 1
    assert set(guard.breakers()) == {"", *keys}  # the key-less breaker and one per node seen


def test_a_cluster_client_exception_is_redis_unavailable_not_a_500(redis_client):
    """redis-py's ``RedisClusterException`` is not a ``RedisError``; the guard handles it."""
    assert not issubclass(redis.exceptions.RedisClusterException, redis.RedisError)
    guard = RedisGuard(redis_client, CircuitBreaker(threshold=5, cooldown=60), Counters())
    a, b = "{a}:x", "{b}:y"  # two slots in one MGET
    with pytest.raises(RedisUnavailable):
        guard.call("cache", lambda r: r.mget([a, b]), key=a)
    assert guard.counters.get("redis_errors_total") == 1


def test_moved_to_a_single_server_client_never_opens_the_breaker(redis_cluster):
    """A ``redis://`` client pointed at one cluster node gets ``MOVED`` for the other nodes'
    slots: the call fails (the caller's failure policy applies) but the node answered, so the
    breaker stays closed and the keys of that node's slots are still served."""
    port = redis_cluster.primary_ports()[0]
    plain = make_redis(f"redis://127.0.0.1:{port}/0", 0.5)
    guard = RedisGuard(plain, CircuitBreaker(threshold=1, cooldown=60), Counters())
    cluster = make_redis(redis_cluster.url, 0.5)
    here = next(k for k in (f"{{t:{uuid.uuid4()}}}:cv" for _ in range(1000))
                if cluster.get_node_from_key(k).port == port)  # fmt: skip
    moved = 0
    for _ in range(30):
        key = f"{{t:{uuid.uuid4()}}}:cv"
        if cluster.get_node_from_key(key).port == port:
            continue
        with pytest.raises(RedisUnavailable, match=r"^\d+ 127\.0\.0\.1:\d+$"):  # MOVED <slot> <node>
            guard.call("cache", lambda r, k=key: r.get(k), key=key)
        moved += 1
    assert moved > 5 and guard.breaker.state == CircuitBreaker.CLOSED
    assert guard.call("cache", lambda r: r.set(here, "1"), key=here) is True


def test_cluster_urls_are_read_by_the_settings_and_the_client(redis_cluster):
    from saas.settings import Settings, SettingsError

    seeds = ",".join(f"127.0.0.1:{p}" for p in redis_cluster.ports[:2])
    settings = Settings.from_env({"REDIS_URL": f"redis+cluster://{seeds}"})
    assert settings.redis_url == f"redis+cluster://{seeds}"
    client = make_redis(settings.redis_url, 0.5, settings.redis_cluster)
    assert len(client.get_primaries()) == 3  # the seeds named the whole cluster
    seed = f"redis://127.0.0.1:{redis_cluster.ports[0]}/0"
    one = Settings.from_env({"REDIS_URL": seed, "REDIS_CLUSTER": "1"})
    assert one.redis_cluster is True
    assert len(make_redis(one.redis_url, 0.5, one.redis_cluster).get_primaries()) == 3
    for bad in ("redis+cluster://", "redis+sentinel://127.0.0.1:26379", "memcached://x:1", "redis+cluster://h:port"):
        with pytest.raises(SettingsError, match="REDIS_URL"):
            Settings.from_env({"REDIS_URL": bad})
    with pytest.raises(redis.ConnectionError, match="no Redis Cluster seed answered"):
        make_redis("redis+cluster://127.0.0.1:1", 0.2)


def test_the_limiters_script_follows_a_stale_slot_map(redis_cluster):
    """The script goes straight to the node the client's slot map names; when that map is stale
    (the slot moved, a failover), the node's ``MOVED`` sends it through the cluster client, which
    follows it and corrects its map."""
    from saas.cache.namespace import PublicKeys
    from saas.limits import gcra

    client = make_redis(redis_cluster.url, 1.0)
    check = gcra.Check("p", PublicKeys.rate("p", f"stale-{uuid.uuid4()}"), 5, 60)
    slot = client.keyslot(check.key)
    right = client.nodes_manager.slots_cache[slot][0]
    wrong = next(n for n in client.get_primaries() if n.name != right.name)
    client.get_redis_connection(wrong)  # its pool exists, so the script is sent there first
    client.nodes_manager.slots_cache[slot] = [wrong]
    decisions = [gcra.run(client, [check], None) for _ in range(2)]
    assert [d.allowed for d in decisions] == [True, True]
    assert decisions[1].states[0].remaining == 3  # both counted once, on the right node
    assert client.nodes_manager.slots_cache[slot][0].name == right.name


def test_each_nodes_breaker_reaches_prometheus(make_app):
    """``saas_redis_node_breaker_open{node}`` per node, and ``saas_redis_breaker_open`` while
    any is open."""
    from saas.services import services

    app = make_app(metrics_token="cluster-scraper")
    guard = services(app).redis_guard
    keys = _tenant_keys_by_node(guard)
    for key in keys.values():
        guard.call("cache", lambda r, k=key: r.get(k), key=key)
    dead = sorted(keys)[0]
    guard.breaker_for(keys[dead]).failure()
    guard.breaker_for(keys[dead]).failure()
    scrape = app.test_client().get("/metrics", headers={"Authorization": "Bearer cluster-scraper"})
    body = scrape.get_data(as_text=True)
    assert "saas_redis_breaker_open 1.0" in body
    assert f'saas_redis_node_breaker_open{{node="{dead}"}} 1.0' in body
    for node in sorted(keys)[1:]:
        assert f'saas_redis_node_breaker_open{{node="{node}"}} 0.0' in body
