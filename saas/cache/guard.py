"""Redis calls behind a circuit breaker, with counters an exporter can read.

Every Redis call of the cache and the limiter goes through :class:`RedisGuard`:

* the client has short socket timeouts (``REDIS_TIMEOUT``, 0.25 s by default), and one
  immediate retry (:mod:`saas.redis_client`);
* one breaker guards a single server or a Sentinel-managed primary; on a Redis Cluster each
  node has its own, chosen by the call's key (:class:`RedisGuard`);
* after ``threshold`` consecutive failures the breaker *opens*: for ``cooldown`` seconds no
  request touches Redis (that node) at all (callers get :class:`RedisUnavailable` at once and apply their
  failure policy), so a dead or hung Redis costs at most ``threshold`` timeouts per process;
* after the cool-down one request probes Redis (*half-open*); success closes the breaker,
  failure opens it for another cool-down. Any exception from the probe is a failure (the
  probe slot is always freed). Recovery needs no operator.

Counters (``services(app).counters``, a :class:`Counters`): ``redis_errors_total``,
``redis_short_circuited_total``, ``breaker_opened_total``, ``limits_fail_open_total``,
``limits_fail_closed_total``, ``rate_limited_total``, ``quota_exceeded_total``,
``cache_hits_total``, ``cache_misses_total``. The ops exporter reads :meth:`Counters.snapshot`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

log = logging.getLogger("saas.redis")
T = TypeVar("T")


class RedisUnavailable(RuntimeError):
    """Redis failed or the breaker is open; the caller applies its failure policy."""


class Counters:
    """Monotonic counters (thread-safe). Keys are metric names, optionally with a label suffix
    in Prometheus style, e.g. ``rate_limited_total{policy="tenant"}``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def inc(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def get(self, name: str) -> int:
        return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter: ``{name: value}``."""
        with self._lock:
            return dict(self._values)


class CircuitBreaker:
    """Closed -> open after ``threshold`` consecutive failures; half-open after ``cooldown``
    seconds (one probe at a time); closed again on the first success."""

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(
        self, threshold: int = 2, cooldown: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = max(1, threshold)
        self.cooldown = cooldown
        self.clock = clock
        self.state = self.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._probing = False
        self._lock = threading.Lock()

    def is_open(self) -> bool:
        """True while calls are refused (open and the cool-down not over); does not probe."""
        return self.state == self.OPEN and self.clock() - self.opened_at < self.cooldown

    def allow(self) -> bool:
        """Whether a call may go to Redis now."""
        if self.state == self.CLOSED:
            return True
        with self._lock:
            if self.state == self.OPEN and self.clock() - self.opened_at >= self.cooldown:
                self.state = self.HALF_OPEN
                self._probing = False
            if self.state == self.HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return False

    def success(self) -> None:
        if self.state == self.CLOSED and self.failures == 0:
            return
        with self._lock:
            if self.state != self.CLOSED:
                log.warning("redis reachable again: circuit breaker closed")
            self.state = self.CLOSED
            self.failures = 0
            self._probing = False

    def failure(self) -> bool:
        """Record a failure; returns True when this failure opened the breaker."""
        with self._lock:
            self.failures += 1
            self._probing = False
            if self.state == self.HALF_OPEN or self.failures >= self.threshold:
                opened = self.state != self.OPEN
                self.state = self.OPEN
                self.opened_at = self.clock()
                return opened
            return False


#: server errors that say the node is not serving (loading, busy, a replica, a cluster without
#: this slot's primary): failures of the node, like a refused or timed-out connection. Other
#: server errors (a wrong type, ``MOVED`` to a client that is not a cluster client, a script
#: error) prove the node answers: the call fails, the breaker is not moved.
_NODE_DOWN_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterException,
    OSError,
)
_CALL_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)


class RedisGuard:
    """The process's Redis client behind circuit breakers shared by cache, limits and revocation.

    One breaker (:attr:`breaker`) guards a single server or a Sentinel-managed primary. On a
    Redis Cluster each primary has its own breaker, chosen by the call's ``key`` (the node that
    serves the key's slot, read from the client's slot map): a dead primary short-circuits only
    the calls for its slots, so limits, quotas and the cache of tenants whose slots are on the
    other primaries go on as before. After a failover the slot map (reloaded by the client on
    the first failed call) names the promoted replica, whose breaker is closed: the slots are
    served again at the next probe. Calls without a key (a ``SCAN`` over the cluster) use
    :attr:`breaker`.
    """

    def __init__(self, client: Any, breaker: CircuitBreaker, counters: Counters) -> None:
        from saas.redis_client import is_cluster

        self.client = client
        self.breaker = breaker
        self.counters = counters
        self.on_recover: list[Callable[[], None]] = []
        #: a Redis Cluster client: one breaker per node, the keys of one call in one slot
        self.clustered = is_cluster(client)
        self._nodes: dict[str, CircuitBreaker] = {}
        self._nodes_lock = threading.Lock()

    def node_of(self, key: str | bytes | None) -> str | None:
        """The ``host:port`` of the cluster node serving ``key``'s slot (None: not a cluster,
        no key, or a slot the client's map does not cover)."""
        if not self.clustered or key is None:
            return None
        try:
            return str(self.client.get_node_from_key(key).name)
        except redis.exceptions.RedisClusterException:
            return None

    def breaker_for(self, key: str | bytes | None = None) -> CircuitBreaker:
        """The breaker of the node serving ``key`` (:attr:`breaker` off a cluster or without a
        key)."""
        node = self.node_of(key)
        if node is None:
            return self.breaker
        found = self._nodes.get(node)
        if found is None:
            with self._nodes_lock:
                found = self._nodes.get(node)
                if found is None:
                    base = self.breaker
                    found = self._nodes[node] = CircuitBreaker(base.threshold, base.cooldown, base.clock)
        return found

    def breakers(self) -> dict[str, CircuitBreaker]:
        """Every breaker by node (``""``: :attr:`breaker`), for metrics and ``saas doctor``."""
        return {"": self.breaker, **dict(self._nodes)}

    def any_open(self) -> bool:
        """Whether a breaker refuses calls now (one node's is enough)."""
        return any(b.is_open() for b in self.breakers().values())

    def call(self, component: str, func: Callable[[Any], T], key: str | bytes | None = None) -> T:
        """Run ``func(client)`` behind the breaker of ``key``'s node (see the class).

        ``key`` is one key of the call (every key of one call shares its slot on a cluster:
        the ``{t:<tenant uuid>}`` tags of :mod:`saas.cache.namespace`).

        Raises:
            RedisUnavailable: the breaker is open, or the call failed (connection refused,
                timeout, server error, redis-py's ``RedisClusterException``); the error is
                logged and counted.
        """
        breaker = self.breaker_for(key)
        if not breaker.allow():
            self.counters.inc("redis_short_circuited_total")
            raise RedisUnavailable("circuit open")
        was_closed = breaker.state == CircuitBreaker.CLOSED
        try:
            result = func(self.client)
        except _CALL_ERRORS as exc:
            self.counters.inc("redis_errors_total")
            self.counters.inc(f'redis_errors_total{{component="{component}"}}')
            if not isinstance(exc, _NODE_DOWN_ERRORS):
                if isinstance(exc, redis.exceptions.AskError) and not self.clustered:
                    log.error("redis answered %s: REDIS_URL names a cluster node; use redis+cluster://", exc)
                else:
                    log.warning("redis error in %s: %s", component, exc)
                if not was_closed:
                    self._recovered(breaker)  # it answered: the node is up
                raise RedisUnavailable(str(exc)) from exc
            if breaker.failure():
                self.counters.inc("breaker_opened_total")
                if self.clustered:  # "any": the breaker of key-less calls (a SCAN of every node)
                    node = self.node_of(key) or "any"
                    self.counters.inc(f'breaker_opened_total{{node="{node}"}}')
                log.error("redis unavailable (%s: %s): circuit breaker open", component, exc)
            else:
                log.warning("redis error in %s: %s", component, exc)
            raise RedisUnavailable(str(exc)) from exc
        except BaseException as exc:
            if not was_closed:
                # a half-open probe that raised anything else (a bug, a decode error, a worker
                # timeout) is a failure too: it frees the probe slot and opens the breaker for
                # another cool-down, instead of leaving the slot taken and every call refused
                self.counters.inc("redis_errors_total")
                self.counters.inc(f'redis_errors_total{{component="{component}"}}')
                breaker.failure()
                log.error("redis probe in %s raised %s: circuit breaker open", component, type(exc).__name__)
            raise
        if not was_closed or breaker.failures:
            self._recovered(breaker)
        return result

    def _recovered(self, breaker: CircuitBreaker) -> None:
        breaker.success()
        for callback in list(self.on_recover):
            try:
                callback()
            except Exception:  # pragma: no cover - best effort
                log.exception("redis recovery callback failed")
