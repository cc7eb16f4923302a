"""Redis calls behind a circuit breaker, with counters an exporter can read.

Every Redis call of the cache and the limiter goes through :class:`RedisGuard`:

* the client has short socket timeouts (``REDIS_TIMEOUT``, 0.25 s by default), and no retries;
* after ``threshold`` consecutive failures the breaker *opens*: for ``cooldown`` seconds no
  request touches Redis at all (callers get :class:`RedisUnavailable` at once and apply their
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


class RedisGuard:
    """The process's Redis client behind one :class:`CircuitBreaker` shared by cache and limits."""

    def __init__(self, client: Any, breaker: CircuitBreaker, counters: Counters) -> None:
        self.client = client
        self.breaker = breaker
        self.counters = counters
        self.on_recover: list[Callable[[], None]] = []

    def call(self, component: str, func: Callable[[Any], T]) -> T:
        """Run ``func(client)``.

        Raises:
            RedisUnavailable: the breaker is open, or the call failed (connection refused,
                timeout, server error); the error is logged and counted.
        """
        breaker = self.breaker
        if not breaker.allow():
            self.counters.inc("redis_short_circuited_total")
            raise RedisUnavailable("circuit open")
        was_closed = breaker.state == CircuitBreaker.CLOSED
        try:
            result = func(self.client)
        except (redis.RedisError, OSError) as exc:
            self.counters.inc("redis_errors_total")
            self.counters.inc(f'redis_errors_total{{component="{component}"}}')
            if breaker.failure():
                self.counters.inc("breaker_opened_total")
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
            breaker.success()
            for callback in list(self.on_recover):
                try:
                    callback()
                except Exception:  # pragma: no cover - best effort
                    log.exception("redis recovery callback failed")
        return result
