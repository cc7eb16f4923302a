"""A tenant-namespaced cache on Redis, with per-tenant invalidation and stampede protection.

Every entry belongs to a tenant: the API takes the tenant's UUID and builds the key itself
(:class:`saas.cache.namespace.TenantKeys`), so no caller can read or write another tenant's
entry by forgetting a prefix.

Invalidation is by version: each tenant has a counter ``{t:<id>}:cv``; every entry is stored as
``[version, value]`` and is a hit only while its version equals the counter. Bumping the counter
(:meth:`TenantCache.invalidate`) makes every entry of the tenant stale in one command. A missing
counter (first use, eviction, ``FLUSHDB``) is initialised to a random 48-bit number, and a read
that finds no counter is a miss, so an old entry can never match a recycled version.

Reads of several entries of a tenant cost one round trip (``MGET`` of the counter and the
entries: they share the tenant's hash tag, so this holds on a Redis Cluster too).

An optional in-process layer (``CACHE_LOCAL_TTL`` seconds, 0 disables) keeps the hottest
entries for a bounded time: a change made by another process is seen after at most that long;
a change made by this process drops the tenant's local entries at once.

Stampede protection (:meth:`TenantCache.get_or_set` with ``lock=True``): on a miss one caller
takes a short lock (``SET NX PX``) and recomputes; the others wait up to ``lock_wait`` seconds
for its result, then compute themselves (a lock never blocks for long).

When Redis is unavailable the cache answers "miss" and stores nothing: callers compute from the
database, which is correct and only slower.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from saas.cache.guard import RedisGuard, RedisUnavailable
from saas.cache.namespace import TenantKeys
from saas.memo import Memo

log = logging.getLogger("saas.cache")
MISS: Any = object()

#: every live cache (one per app); ORM change hooks invalidate through all of them
_LIVE: weakref.WeakSet[TenantCache] = weakref.WeakSet()


_metrics: Any = None


def _load_metrics() -> Any:
    global _metrics
    from saas.observability import metrics

    _metrics = metrics
    return metrics


def _observe(hits: Iterable[str], misses: Iterable[str]) -> None:
    """Count lookups in ``saas_cache_requests_total`` (:mod:`saas.observability.metrics`), labelled
    by the entry name up to its first ``:`` (``tenant``, ``ent``, ``m``: never an id). A metrics
    failure never affects the lookup."""
    try:
        metrics = _metrics or _load_metrics()
        hit, miss = getattr(metrics, "cache_hit", None), getattr(metrics, "cache_miss", None)
        if hit is not None:
            for name in hits:
                hit(name.partition(":")[0])
        if miss is not None:
            for name in misses:
                miss(name.partition(":")[0])
    except Exception:
        log.warning("cache metrics failed", exc_info=True)


class LocalLayer:
    """Bounded in-process entries: ``{tenant: {name: (expires_at, version, value)}}``, in the
    memo ``cache.local_entries``.

    ``max_tenants`` bounds memory (least recently used tenants are dropped first). Not a pure
    memo: an entry is served for at most ``ttl`` seconds, and a change made by this process
    drops its tenant at once (:meth:`drop`).
    """

    def __init__(self, ttl: float, max_tenants: int = 4096, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.max_tenants = max_tenants
        self.clock = clock
        self._data: Memo[uuid.UUID, dict[str, tuple[float, Any, Any]]] = Memo(
            "cache.local_entries", max_tenants
        )
        self._lock = threading.Lock()

    def get(self, tenant_id: uuid.UUID, names: Sequence[str]) -> dict[str, Any] | None:
        """All of ``names`` when each is fresh locally; else None."""
        if self.ttl <= 0:
            return None
        entries = self._data.get(tenant_id)
        if not entries:
            return None
        now = self.clock()
        out = {}
        for name in names:
            entry = entries.get(name)
            if entry is None or entry[0] < now:
                return None
            out[name] = entry[2]
        return out

    def put(self, tenant_id: uuid.UUID, version: Any, values: dict[str, Any]) -> None:
        if self.ttl <= 0 or not values:
            return
        expires = self.clock() + self.ttl
        with self._lock:
            entries = self._data.peek(tenant_id)
            if entries is None:
                entries = {}
            for name, value in values.items():
                entries[name] = (expires, version, value)
            self._data.put(tenant_id, entries)  # now the most recently used

    def drop(self, tenant_id: uuid.UUID) -> None:
        with self._lock:  # after a put in progress, never in the middle of it
            self._data.pop(tenant_id)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class TenantCache:
    """The cache API. Values are JSON-serialisable; ``ttl`` in seconds.

    Args:
        guard: the Redis client behind the circuit breaker.
        ttl: default lifetime of an entry (a safety net; invalidation is by version).
        local_ttl: lifetime of the in-process copy (0 disables the local layer).
    """

    def __init__(self, guard: RedisGuard, ttl: float = 300.0, local_ttl: float = 0.5) -> None:
        self.guard = guard
        self.ttl = ttl
        self.local = LocalLayer(local_ttl)
        self.lock_ttl = 2.0
        self.lock_wait = 0.25
        self._pending: set[uuid.UUID] = set()
        self._pending_lock = threading.Lock()
        guard.on_recover.append(self._flush_pending)
        _LIVE.add(self)

    # --- reads -----------------------------------------------------------------------------

    def get_many(
        self, tenant_id: uuid.UUID, names: Sequence[str], local: bool = True, create_version: bool = True
    ) -> tuple[dict[str, Any], Any]:
        """Entries ``names`` of the tenant: ``({name: value or MISS}, version)`` in one round trip.

        ``version`` is None when Redis is unavailable or the tenant has no counter yet (then
        nothing is cached and :meth:`set_many` stores nothing). A missing counter is created
        unless ``create_version`` is false (a lookup whose tenant id is not yet proved, as an
        API key's: a forged one must leave nothing in Redis).
        """
        if local:
            hit = self.local.get(tenant_id, names)
            if hit is not None:
                self.guard.counters.inc("cache_hits_total", len(names))
                _observe(names, ())
                return hit, None
        keys = TenantKeys(tenant_id)
        try:
            raw = self.guard.call(
                "cache", lambda r: r.mget([keys.cache_version(), *map(keys.cache, names)]), key=keys.tag
            )
        except RedisUnavailable:
            return dict.fromkeys(names, MISS), None
        version = raw[0]
        if version is None and create_version:
            version = self._init_version(keys)
        out: dict[str, Any] = {}
        hits: dict[str, Any] = {}
        for name, blob in zip(names, raw[1:], strict=True):
            value = MISS
            if blob is not None and version is not None:
                try:
                    stored_version, stored = json.loads(blob)
                except (ValueError, TypeError):
                    stored_version, stored = None, None
                if stored_version is not None and str(stored_version) == _text(version):
                    value = stored
                    hits[name] = stored
            out[name] = value
        counters = self.guard.counters
        if hits:
            counters.inc("cache_hits_total", len(hits))
        if len(hits) < len(names):
            counters.inc("cache_misses_total", len(names) - len(hits))
        _observe(hits, [name for name in names if name not in hits])
        if local and hits:
            self.local.put(tenant_id, version, hits)
        return out, version

    def get(self, tenant_id: uuid.UUID, name: str) -> Any:
        """One entry, or :data:`MISS`."""
        return self.get_many(tenant_id, [name])[0][name]

    def _init_version(self, keys: TenantKeys) -> Any:
        start = str(secrets.randbits(48))
        try:
            self.guard.call("cache", lambda r: r.set(keys.cache_version(), start, nx=True), key=keys.tag)
            return self.guard.call("cache", lambda r: r.get(keys.cache_version()), key=keys.tag)
        except RedisUnavailable:
            return None

    # --- writes ----------------------------------------------------------------------------

    def set_many(
        self, tenant_id: uuid.UUID, version: Any, values: dict[str, Any], ttl: float | None = None
    ) -> None:
        """Store ``values`` as computed under ``version`` (from :meth:`get_many`).

        If the tenant was invalidated in between, the entries carry the old version and are
        never served: a racing writer cannot resurrect stale data.
        """
        if version is None or not values:
            return
        keys = TenantKeys(tenant_id)
        ms = int((ttl or self.ttl) * 1000)
        v = _text(version)
        try:
            blobs = {name: json.dumps([v, value], separators=(",", ":")) for name, value in values.items()}
        except (TypeError, ValueError) as exc:  # not JSON: served uncached rather than altered
            log.warning("cache entries %s of a tenant are not JSON-serialisable: %s", sorted(values), exc)
            return

        def write(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            for name, blob in blobs.items():
                pipe.set(keys.cache(name), blob, px=ms)
            pipe.execute()

        with contextlib.suppress(RedisUnavailable):
            self.guard.call("cache", write, key=keys.tag)
        # not copied to the local layer: only a read that saw the current version may be

    def get_or_set(
        self,
        tenant_id: uuid.UUID,
        name: str,
        compute: Callable[[], Any],
        ttl: float | None = None,
        lock: bool = False,
    ) -> Any:
        """The entry, computed by ``compute()`` on a miss and stored.

        With ``lock=True`` only one process recomputes a missing entry at a time (a lock of
        ``lock_ttl`` seconds); the others wait at most ``lock_wait`` seconds for its result.
        """
        values, version = self.get_many(tenant_id, [name])
        value = values[name]
        if value is not MISS:
            return value
        token = None
        if lock and version is not None:
            keys = TenantKeys(tenant_id)
            lock_key = keys.cache(name) + ":lock"
            token = secrets.token_hex(8)
            ms = int(self.lock_ttl * 1000)
            try:
                got = self.guard.call("cache", lambda r: r.set(lock_key, token, nx=True, px=ms), key=lock_key)
            except RedisUnavailable:
                got = True
            if not got:
                token = None
                deadline = time.monotonic() + self.lock_wait
                while time.monotonic() < deadline:
                    time.sleep(0.01)
                    waited, _ = self.get_many(tenant_id, [name], local=False)
                    if waited[name] is not MISS:
                        return waited[name]
        try:
            value = compute()
            self.set_many(tenant_id, version, {name: value}, ttl)
        finally:
            if token is not None:
                self._release(TenantKeys(tenant_id).cache(name) + ":lock", token)
        return value

    def _release(self, lock_key: str, token: str) -> None:
        def release(r: Any) -> None:
            if r.get(lock_key) == token.encode():
                r.delete(lock_key)

        with contextlib.suppress(RedisUnavailable):
            self.guard.call("cache", release, key=lock_key)

    # --- invalidation ----------------------------------------------------------------------

    def invalidate(self, tenant_id: uuid.UUID) -> None:
        """Make every entry of the tenant stale (here at once, elsewhere within ``local_ttl``).

        If Redis is unavailable the bump is retried when it comes back.
        """
        self.local.drop(tenant_id)
        if not self._bump(tenant_id):
            with self._pending_lock:
                if len(self._pending) < 100_000:
                    self._pending.add(tenant_id)

    def _bump(self, tenant_id: uuid.UUID) -> bool:
        keys = TenantKeys(tenant_id)

        def bump(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            pipe.set(keys.cache_version(), str(secrets.randbits(48)), nx=True)
            pipe.incr(keys.cache_version())
            pipe.execute()

        try:
            self.guard.call("cache", bump, key=keys.tag)
            return True
        except RedisUnavailable:
            return False

    def _flush_pending(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, set()
        for tenant_id in pending:
            if not self._bump(tenant_id):
                with self._pending_lock:
                    self._pending.add(tenant_id)


def invalidate_tenant(tenant_ids: Iterable[uuid.UUID]) -> None:
    """Invalidate the tenants' entries in every cache of this process (all apps).

    Call it after a change the ORM hooks cannot see (a Core ``UPDATE``, an outside system).
    Changes to watched models through the ORM (:func:`saas.auth.principals.watch_model`) invalidate by
    themselves.
    """
    ids = {t for t in tenant_ids if isinstance(t, uuid.UUID)}
    for cache in list(_LIVE):
        for tenant_id in ids:
            cache.invalidate(tenant_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
