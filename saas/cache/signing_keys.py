"""Signing keys and JWKS kept fresh across processes, with a bound on staleness.

Tokens are verified against the in-memory :class:`saas.auth.keys.KeyStore` (no I/O on the hot
path). Two things make a rotation visible everywhere within a second:

* ``publish_rotation(app)`` (called by whoever rotates keys, e.g. ``saas keys rotate``) bumps
  ``{platform}:keys:version``; every process compares it with the version it loaded at most
  once per ``check_interval`` seconds and reloads its keys when it changed;
* a token whose ``kid`` is unknown makes the process reload its key files (at most once per
  ``check_interval``), so a new key verifies even while Redis is down.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flask import Flask

from saas.cache.guard import RedisGuard, RedisUnavailable
from saas.cache.namespace import PLATFORM_KEYS_VERSION

log = logging.getLogger("saas.cache.keys")


class KeyWatcher:
    """Reloads the key store when the published key version changes or a ``kid`` is unknown."""

    def __init__(self, keys: Any, guard: RedisGuard, check_interval: float = 0.5) -> None:
        self.keys = keys
        self.guard = guard
        self.check_interval = check_interval
        self._version: bytes | None = None
        self._next_check = 0.0
        self._next_disk_reload = 0.0
        self._lock = threading.Lock()
        self._find = keys.find
        keys.find = self.find  # the TokenService asks the store; we answer through the watcher

    def maybe_check(self) -> None:
        """Compare the published version (one GET at most every ``check_interval`` seconds)."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.check_interval
        try:
            version = self.guard.call("cache", lambda r: r.get(PLATFORM_KEYS_VERSION))
        except RedisUnavailable:
            return
        if self._version is None:
            self._version = version or b""
            return
        if (version or b"") != self._version:
            self._version = version or b""
            self.reload("published rotation")

    def find(self, kid: str) -> Any:
        key = self._find(kid)
        if key is None and time.monotonic() >= self._next_disk_reload:
            self._next_disk_reload = time.monotonic() + self.check_interval
            self.reload(f"unknown kid {kid[:16]!r}")
            key = self._find(kid)
        return key

    def reload(self, reason: str) -> None:
        with self._lock:
            try:
                self.keys.reload()
                log.info("signing keys reloaded (%s)", reason)
            except Exception:
                log.exception("signing keys reload failed (%s); keeping the current keys", reason)


def publish_rotation(app: Flask) -> None:
    """Tell every process to reload its signing keys (call after adding or retiring a key)."""
    watcher: KeyWatcher | None = app.extensions.get("saas.key_watcher")
    guard: RedisGuard = app.extensions["saas.redis_guard"]
    if watcher is not None:
        watcher.reload("local rotation")
    try:
        guard.call("cache", lambda r: r.incr(PLATFORM_KEYS_VERSION))
    except RedisUnavailable:
        log.warning("could not publish the key rotation; other processes see it on an unknown kid")
