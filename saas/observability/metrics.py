"""Prometheus metrics (prometheus-client), multiprocess-safe under gunicorn.

With ``PROMETHEUS_MULTIPROC_DIR`` set (infra/gunicorn.conf.py sets and empties it), every
worker process writes its samples to files there and ``GET /metrics`` aggregates them
(:class:`prometheus_client.multiprocess.MultiProcessCollector`); without it (tests, ``saas
dev``) the process registry is served.

Other packages count through the small functions below (never through the metric objects, so
names and labels stay in one place): :func:`rate_limit_rejected`, :func:`cache_hit`,
:func:`cache_miss`, :func:`webhook_event`, :func:`job_processed`. Label values must come from a
small fixed set (a policy name, a route template), never from ids or user input.

The memos of :mod:`saas.memo` are exported as ``saas_memo_hits_total``, ``saas_memo_misses_total``,
``saas_memo_evictions_total`` and ``saas_memo_entries`` (label ``memo``), published by
:func:`publish_memos`.

Gauges that describe the database (tenants by state, tenants behind the tenant head, the outbox
backlog by state and the age of its oldest pending message: the job queue's depth and lag) are
computed at scrape time by :class:`DatabaseCollector`, cached for 15 s.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from saas.memo import Memo, registered
from saas.services import services

REQUESTS = Counter(
    "saas_http_requests_total",
    "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "saas_http_request_duration_seconds",
    "HTTP request latency by route template, method and status.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RATE_LIMIT_REJECTIONS = Counter(
    "saas_rate_limit_rejections_total", "Requests refused by a rate-limit policy.", ["policy"]
)
CACHE = Counter(
    "saas_cache_requests_total", "Cache lookups by cache name and result (hit|miss).", ["cache", "result"]
)
WEBHOOKS = Counter("saas_webhook_events_total", "Webhook events by type and outcome.", ["type", "outcome"])
JOBS = Counter("saas_jobs_total", "Outbox messages handled by topic and outcome (sent|retry|failed).",
               ["topic", "outcome"])  # fmt: skip
JOB_LATENCY = Histogram("saas_job_duration_seconds", "Time to handle one outbox message.", ["topic"])
MEMO_HITS = Counter(
    "saas_memo_hits_total", "Memo lookups that found their key, by memo (docs/scaling.md).", ["memo"]
)
MEMO_MISSES = Counter(
    "saas_memo_misses_total", "Memo lookups that did not find their key, by memo.", ["memo"]
)
MEMO_EVICTIONS = Counter(
    "saas_memo_evictions_total", "Entries a full memo dropped (least recently used first), by memo.", ["memo"]
)
MEMO_ENTRIES = Gauge(
    "saas_memo_entries", "Entries kept, by memo (summed over the live workers).", ["memo"],
    multiprocess_mode="livesum",
)  # fmt: skip


def _never_raises(fn: Callable[..., None]) -> Callable[..., None]:
    """Counting must never break what is counted (a request, a webhook, a delivery): a failure
    (a missing ``PROMETHEUS_MULTIPROC_DIR``, a full disk) is logged and dropped."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            import logging

            logging.getLogger("saas.metrics").warning("cannot record metric %s", fn.__name__, exc_info=True)

    return wrapper


def ensure_multiproc_dir() -> str | None:
    """Create ``PROMETHEUS_MULTIPROC_DIR`` when it is set and missing (gunicorn's ``on_starting``
    creates it for the app; ``saas worker`` and other processes call this at start): without
    it every metric update raises FileNotFoundError. Returns the directory, or None when unset
    or when it cannot be created (logged; metric updates then fail and callers ignore that)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        import logging

        logging.getLogger("saas.metrics").warning("cannot create PROMETHEUS_MULTIPROC_DIR %s", path)
        return None
    return path


#: the ``method`` label's values: anything else (``PROPFIND``, garbage) counts as ``OTHER``, so a
#: client cannot create label values (a new time series per invented method)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """``method`` when it is one of :data:`HTTP_METHODS`, else ``"OTHER"``."""
    return method if method in HTTP_METHODS else "OTHER"


def _child(metric: Any, labels: tuple[str, ...]) -> Any:
    """``metric.labels(*labels)``, looked up once per label set (prometheus-client takes a lock
    and builds a key on every ``labels`` call; label sets are few and fixed by design)."""
    key = (metric, labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN.put(key, metric.labels(*labels))
    return child


#: (metric, label values) -> the metric's child; ``labels()`` returns the same child every time
_CHILDREN: Memo[tuple[Any, tuple[str, ...]], Any] = Memo("observability.metric_children", maxsize=10_000)


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """Count one request. ``route`` must be a URL rule template (``/api/v1/contacts/<uuid:id>``)
    or ``unmatched``, never a raw path; ``method`` is mapped by :func:`method_label`. At most
    every :data:`MEMO_PUBLISH_SECONDS` it also publishes the memos' counts."""
    labels = (route, method_label(method), str(status))
    _child(REQUESTS, labels).inc()
    _child(LATENCY, labels).observe(seconds)
    if time.monotonic() >= _memo_next_publish:
        publish_memos()


#: how often a worker adds its memos' counts to the ``saas_memo_*`` metrics while it serves
#: requests (and at every scrape it answers): the memos count in plain integers, so a lookup
#: costs no metrics write, and under gunicorn every worker's counts still reach the pod's totals
MEMO_PUBLISH_SECONDS = 10.0
_memo_next_publish = 0.0
_memo_publish_lock = threading.Lock()


@_never_raises
def publish_memos() -> None:
    """Add every memo's hits, misses and evictions since the previous call to
    ``saas_memo_hits_total``, ``saas_memo_misses_total`` and ``saas_memo_evictions_total``
    (label ``memo``: the memo's name, one of a fixed set) and set ``saas_memo_entries``. Memos of
    the same name (one per app) are summed."""
    global _memo_next_publish
    with _memo_publish_lock:
        _memo_next_publish = time.monotonic() + MEMO_PUBLISH_SECONDS
        for name, memos in registered().items():
            hits = misses = evictions = size = 0
            for memo in memos:
                h, m, e = memo.unreported()
                hits, misses, evictions, size = hits + h, misses + m, evictions + e, size + len(memo)
            MEMO_HITS.labels(name).inc(hits)
            MEMO_MISSES.labels(name).inc(misses)
            MEMO_EVICTIONS.labels(name).inc(evictions)
            MEMO_ENTRIES.labels(name).set(size)


@_never_raises
def rate_limit_rejected(policy: str) -> None:
    """One request refused by ``policy`` (a policy name from the limits configuration)."""
    RATE_LIMIT_REJECTIONS.labels(policy).inc()


@_never_raises
def cache_hit(cache: str, count: int = 1) -> None:
    _child(CACHE, (cache, "hit")).inc(count)


@_never_raises
def cache_miss(cache: str, count: int = 1) -> None:
    _child(CACHE, (cache, "miss")).inc(count)


@_never_raises
def webhook_event(event_type: str, outcome: str) -> None:
    """A webhook event (e.g. Stripe ``invoice.paid``) and its outcome (processed|ignored|failed|duplicate)."""
    WEBHOOKS.labels(event_type, outcome).inc()


@_never_raises
def job_processed(topic: str, outcome: str, seconds: float) -> None:
    JOBS.labels(topic, outcome).inc()
    JOB_LATENCY.labels(topic).observe(seconds)


class DatabaseCollector(Collector):
    """Scrape-time gauges read from the database (a few cheap aggregate queries, cached)."""

    def __init__(self, engine: Any, ttl_seconds: float = 15.0, clock: Callable[[], Any] | None = None):
        from saas.db import utcnow

        self.engine = engine
        self.ttl = ttl_seconds
        self.clock = clock or utcnow
        self._cached: tuple[float, list[Any]] | None = None

    def collect(self) -> Iterator[Any]:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > self.ttl:
            self._cached = (now, self._read())
        yield from self._cached[1]

    def _read(self) -> list[Any]:
        from sqlalchemy import case, func, select

        from saas.identity.models import Tenant
        from saas.migrate import tenant_head_revision
        from saas.outbox import OutboxMessage as M

        tenants = GaugeMetricFamily(
            "saas_tenants", "Tenants by state (active|suspended|deleted).", labels=["state"]
        )
        behind = GaugeMetricFamily(
            "saas_tenants_behind_head", "Tenant schemas not at the tenant track's head."
        )
        outbox = GaugeMetricFamily(
            "saas_outbox_messages", "Undelivered outbox messages by state.", labels=["state"]
        )
        oldest = GaugeMetricFamily(
            "saas_outbox_oldest_pending_age_seconds",
            "Age of the oldest undelivered, not dead outbox message (0 when none): the queue's lag.",
        )
        up = GaugeMetricFamily("saas_database_up", "1 when the metrics query reached the database.")
        try:
            head = tenant_head_revision()
            state = case((Tenant.deleted_at.is_not(None), "deleted"), else_=Tenant.status)
            with self.engine.connect() as conn:
                counts = dict(conn.execute(select(state, func.count()).group_by(state)).all())
                n_behind = conn.scalar(
                    select(func.count()).where(
                        (Tenant.schema_version != head) | Tenant.schema_version.is_(None)
                    )
                )
                failed = case((M.failed_at.is_not(None), "failed"), else_="pending")
                backlog = dict(
                    conn.execute(
                        select(failed, func.count()).where(M.sent_at.is_(None)).group_by(failed)
                    ).all()
                )
                first = conn.scalar(
                    select(func.min(M.created_at)).where(M.sent_at.is_(None), M.failed_at.is_(None))
                )
        except Exception:
            import logging

            logging.getLogger("saas.metrics").warning("metrics query failed", exc_info=True)
            up.add_metric([], 0)
            return [up]
        for name in ("active", "suspended", "deleted"):
            tenants.add_metric([name], counts.get(name, 0))
        behind.add_metric([], n_behind or 0)
        for name in ("pending", "failed"):
            outbox.add_metric([name], backlog.get(name, 0))
        oldest.add_metric([], max(0.0, (self.clock() - first).total_seconds()) if first is not None else 0.0)
        up.add_metric([], 1)
        return [tenants, behind, outbox, oldest, up]


#: ``name{label="value",...}`` keys of :class:`saas.cache.guard.Counters`
_COUNTER_KEY = re.compile(r"^([a-zA-Z_][a-zA-Z0-9_]*)(?:\{(.*)\})?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class GuardCollector(Collector):
    """The limiter's and cache's Redis counters (:class:`saas.cache.guard.Counters`, read-only)
    and the circuit breaker's state, at scrape time.

    Each counter ``<name>[{labels}]`` becomes ``saas_<name>`` (a Prometheus counter):
    ``saas_redis_errors_total{component}``, ``saas_redis_short_circuited_total``,
    ``saas_breaker_opened_total``, ``saas_limits_fail_open_total``,
    ``saas_limits_fail_closed_total``, ``saas_rate_limited_total{policy}``,
    ``saas_quota_exceeded_total``, ``saas_cache_hits_total``, ``saas_cache_misses_total``. When a
    counter is kept both bare and with labels, only the labelled series are exported (their sum
    is the bare one; mixing both would double-count in ``sum()``). ``saas_redis_breaker_open``
    is 1 while the breaker refuses calls.

    The values are the answering process's: under gunicorn each worker has its own breaker and
    counters (see docs/operations.md, "Metrics").
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        counters = services(self.app).counters
        samples: dict[str, list[tuple[dict[str, str], int]]] = {}
        for key, value in sorted((counters.snapshot() if counters is not None else {}).items()):
            match = _COUNTER_KEY.match(key)
            if match is None:
                continue
            labels = dict(_LABEL.findall(match.group(2) or ""))
            samples.setdefault(match.group(1), []).append((labels, value))
        for name, values in samples.items():
            labelled = [v for v in values if v[0]]
            chosen = labelled or values
            names = sorted({k for labels, _ in chosen for k in labels})
            family = CounterMetricFamily(
                f"saas_{name.removesuffix('_total')}", f"Redis guard counter {name}.", labels=names
            )
            for labels, value in chosen:
                family.add_metric([labels.get(k, "") for k in names], value)
            yield family
        guard = services(self.app).redis_guard
        if guard is not None:
            state = GaugeMetricFamily(
                "saas_redis_breaker_open", "1 while a Redis circuit breaker (of any cluster node) is open."
            )
            state.add_metric([], 1 if guard.any_open() else 0)
            yield state
            nodes = {node: b for node, b in guard.breakers().items() if node}
            if nodes:  # a Redis Cluster: one breaker per node
                per_node = GaugeMetricFamily(
                    "saas_redis_node_breaker_open", "1 while the node's Redis circuit breaker is open.",
                    labels=["node"],
                )
                for node, breaker in sorted(nodes.items()):
                    per_node.add_metric([node], 1 if breaker.is_open() else 0)
                yield per_node


def render(*collectors: Collector | None) -> bytes:
    """The exposition text: every process's samples in multiprocess mode, else this process's,
    followed by the scrape-time ``collectors`` (:class:`DatabaseCollector`,
    :class:`GuardCollector`)."""
    from prometheus_client import REGISTRY

    publish_memos()
    extra = CollectorRegistry()
    for collector in collectors:
        if collector is not None:
            extra.register(collector)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry) + generate_latest(extra)
    return generate_latest(REGISTRY) + generate_latest(extra)
