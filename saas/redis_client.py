"""The Redis client: one server, a Redis Cluster, or a Sentinel-managed primary, from
``REDIS_URL``; or an in-process stand-in (fakeredis) for a single development process when none
is configured.

Accepted URLs (docs/scaling.md, "Redis"):

======================================================  =========================================
``redis://[user:pass@]host:port/db``, ``rediss://...``,  one server (``redis.Redis.from_url``);
``unix:///path.sock?db=0``                               with ``REDIS_CLUSTER=1`` the ``redis://``
                                                         / ``rediss://`` URL is a cluster's seed
``redis+cluster://[user:pass@]host:port[,host:port...]`` a Redis Cluster (``redis.cluster.
``rediss+cluster://...`` (TLS)                            RedisCluster``); the hosts are seeds
``redis+sentinel://[user:pass@]host:port[,host:port...]  the primary of ``service`` as the
/service[/db]``, ``rediss+sentinel://...`` (TLS to the   Sentinels name it (``redis.sentinel.
data nodes); query ``sentinel_password=`` when the       Sentinel.master_for``): a failover is
Sentinels need one                                       followed on the next connection
======================================================  =========================================

Every client has the same short socket timeouts (``REDIS_TIMEOUT``) and retries a failed
command once, at once (a stale pooled connection; redis-py's default is 10 retries with backoff):
no request waits long on Redis. A cluster client's retry follows a reload of the slot map
(``CLUSTER SLOTS``), so a command sent to a primary that has just been replaced reaches its
successor; a Sentinel client's next connection asks the Sentinels (one attempt each) for the
primary. A dead node still fails fast, and :class:`saas.cache.guard.RedisGuard` opens its
circuit breaker.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger("saas.redis")

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
#: every ``REDIS_URL`` scheme :func:`make_redis` accepts
SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES, *SENTINEL_SCHEMES)


def make_redis(url: str | None, timeout_seconds: float = 0.25, cluster: bool = False) -> Any:
    """The client of ``url`` (see the module's table); ``cluster`` (``REDIS_CLUSTER``) reads a
    ``redis://`` or ``rediss://`` URL as a cluster's seed node.

    Returns a :class:`redis.Redis` (one server, or a Sentinel-managed primary) or a
    :class:`redis.cluster.RedisCluster`; it connects lazily, except a cluster client, which
    loads the slot map from a seed at once.

    A cluster's URL path (a database number) is ignored: a cluster has database 0 only.

    Raises:
        ValueError: a malformed cluster or Sentinel URL (no host, no service name).
        redis.ConnectionError: no cluster seed answered (``no Redis Cluster seed answered``).
    """
    if not url:
        import fakeredis

        log.warning("REDIS_URL is not set: using an in-process Redis stand-in (one process only)")
        return fakeredis.FakeRedis()
    scheme = url.partition(":")[0].lower()
    timeouts = {"socket_timeout": timeout_seconds, "socket_connect_timeout": timeout_seconds}
    if scheme in CLUSTER_SCHEMES or (cluster and scheme in ("redis", "rediss")):
        return _cluster(url, scheme, timeouts)
    if scheme in SENTINEL_SCHEMES:
        return _sentinel(url, scheme, timeouts)
    return redis.Redis.from_url(url, health_check_interval=30, retry=_retry(), **timeouts)


def check_url(url: str) -> str:
    """``url`` when :func:`make_redis` can use it (``REDIS_URL``'s converter, no I/O).

    Raises:
        ValueError: another scheme, a cluster or Sentinel URL without hosts, a Sentinel URL
            without its service name.
    """
    scheme = url.partition(":")[0].lower()
    if scheme not in SCHEMES:
        raise ValueError(f"expected a URL with scheme {' or '.join(SCHEMES)}")
    if scheme in CLUSTER_SCHEMES:
        _hosts(url)
    elif scheme in SENTINEL_SCHEMES:
        _service(*_hosts(url)[:1])
    return url


def _retry(retries: int = 1) -> Retry:
    """``retries`` immediate retries (redis-py 8 retries a failed command 10 times with up to 1 s
    of backoff by default: a dead Redis would hold each call for seconds)."""
    return Retry(NoBackoff(), retries)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster client (keys of one call must share a slot)."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def _hosts(url: str) -> tuple[Any, list[tuple[str, int]]]:
    """``(urlsplit result, [(host, port), ...])`` of a URL whose netloc lists several hosts."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            host, port = port, ""
        if not host:
            raise ValueError("expected host:port[,host:port...]")
        try:
            hosts.append((host.strip("[]"), int(port) if port else 6379))
        except ValueError:
            raise ValueError(f"expected host:port, got {item.strip()!r}") from None
    return parts, hosts


def _service(parts: Any) -> tuple[str, int]:
    """The Sentinel URL's ``(service name, db)`` from its path ``/service[/db]``."""
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("expected the Sentinel service name as the path: redis+sentinel://host:port/mymaster")
    return unquote(path[0]), int(path[1]) if len(path) > 1 else 0


def _credentials(parts: Any) -> dict[str, str]:
    out = {}
    if parts.username:
        out["username"] = unquote(parts.username)
    if parts.password:
        out["password"] = unquote(parts.password)
    return out


def _cluster(url: str, scheme: str, timeouts: dict[str, float]) -> Any:
    from redis.cluster import ClusterNode, RedisCluster
    from redis.exceptions import RedisClusterException

    parts, hosts = _hosts(url)
    try:
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in hosts],
            # one retry, at once, after the slot map is reloaded: a replaced primary's successor
            # answers it; a dead node costs two fast failures, then its breaker opens
            retry=_retry(),
            # a primary lost without a successor leaves the other primaries' slots served
            require_full_coverage=False,
            ssl=scheme.startswith("rediss"),
            **_credentials(parts),
            **timeouts,
        )
    except RedisClusterException as exc:  # not a RedisError: say it as one (one line at start)
        seeds = ",".join(f"{h}:{p}" for h, p in hosts)
        raise redis.ConnectionError(f"no Redis Cluster seed answered ({seeds}): {exc}") from exc


def _sentinel(url: str, scheme: str, timeouts: dict[str, float]) -> redis.Redis:
    from redis.sentinel import Sentinel

    parts, hosts = _hosts(url)
    service, db = _service(parts)
    query = parse_qs(parts.query)
    # one attempt per Sentinel: the next one is asked at once
    sentinel_kwargs: dict[str, Any] = {**timeouts, "retry": _retry(0)}
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"][0]
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **timeouts)
    return sentinel.master_for(
        service,
        db=db,
        ssl=scheme.startswith("rediss"),
        health_check_interval=30,
        retry=_retry(),
        **_credentials(parts),
        **timeouts,
    )
