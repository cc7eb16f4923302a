"""The Redis client: a real server from ``REDIS_URL``, or an in-process stand-in (fakeredis)
for a single development process when none is configured."""

from __future__ import annotations

import logging

import redis

log = logging.getLogger("saas.redis")


def make_redis(url: str | None, timeout_seconds: float = 0.25) -> redis.Redis:
    """A client with short socket timeouts: no request waits long on Redis."""
    if not url:
        import fakeredis

        log.warning("REDIS_URL is not set: using an in-process Redis stand-in (one process only)")
        return fakeredis.FakeRedis()
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
    )
