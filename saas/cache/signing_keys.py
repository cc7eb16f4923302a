"""Signing keys and JWKS kept fresh across processes, with a bound on staleness.

Tokens are verified against the in-memory :class:`saas.auth.keys.KeyStore` (no I/O on the hot
path). The store reloads its key files by itself when a token names an unknown ``kid`` (at most
once a second) and otherwise polls its directory every 10 s. This module makes a rotation
visible everywhere within a second: ``saas keys rotate`` calls :func:`announce_rotation`, which
bumps ``{platform}:keys:version``; every process compares it with the version it last saw at
most every ``check_interval`` (0.5 s) and reloads its keys when it changed, so the new active
key signs and the JWKS publishes it at once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flask import Flask

from saas.cache.guard import RedisGuard, RedisUnavailable
from saas.cache.namespace import PLATFORM_KEYS_VERSION
from saas.services import services

log = logging.getLogger("saas.cache.keys")


class KeyWatcher:
    """Reloads the key store when the published key version changes."""

    def __init__(self, keys: Any, guard: RedisGuard, check_interval: float = 0.5) -> None:
        self.keys = keys
        self.guard = guard
        self.check_interval = check_interval
        self._version: bytes | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()

    def maybe_check(self) -> None:
        """Compare the published version (one GET at most every ``check_interval`` seconds)."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.check_interval
        try:
            version = self.guard.call(
                "cache", lambda r: r.get(PLATFORM_KEYS_VERSION), key=PLATFORM_KEYS_VERSION
            )
        except RedisUnavailable:
            return
        if (version or b"") != self._version:
            first = self._version is None
            self._version = version or b""
            if not first or version:  # the first look reloads too: a rotation may predate us
                self.reload("published rotation")

    def reload(self, reason: str) -> None:
        with self._lock:
            try:
                self.keys.reload()
                log.info("signing keys reloaded (%s)", reason)
            except Exception:
                log.exception("signing keys reload failed (%s); keeping the current keys", reason)


def publish_rotation(app: Flask) -> None:
    """Tell every process to reload its signing keys (call after adding or retiring a key)."""
    watcher: KeyWatcher | None = services(app).key_watcher
    guard: RedisGuard = services(app).redis_guard
    if watcher is not None:
        watcher.reload("local rotation")
    try:
        guard.call("cache", lambda r: r.incr(PLATFORM_KEYS_VERSION), key=PLATFORM_KEYS_VERSION)
    except RedisUnavailable:
        log.warning("could not publish the key rotation; other processes see it on an unknown kid")


def announce_rotation(settings: Any) -> None:
    """Bump the published key version from a process without an app (the CLI): every worker
    reloads its keys within ``check_interval``. Redis unavailable: logged; workers still find
    the new key on an unknown ``kid`` or their next directory poll."""
    if not settings.redis_url:
        return
    from saas.redis_client import make_redis

    try:
        client = make_redis(settings.redis_url, settings.redis_timeout_seconds, settings.redis_cluster)
        client.incr(PLATFORM_KEYS_VERSION)
    except Exception as exc:
        log.warning("could not publish the key rotation: %s", exc)
