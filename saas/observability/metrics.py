"""Prometheus metrics (prometheus-client), multiprocess-safe under gunicorn.

With ``PROMETHEUS_MULTIPROC_DIR`` set (infra/gunicorn.conf.py sets and empties it), every
worker process writes its samples to files there and ``GET /metrics`` aggregates them
(:class:`prometheus_client.multiprocess.MultiProcessCollector`); without it (tests, ``saas
dev``) the process registry is served.

Other packages count through the small functions below (never through the metric objects, so
names and labels stay in one place): :func:`rate_limit_rejected`, :func:`cache_hit`,
:func:`cache_miss`, :func:`webhook_event`, :func:`job_processed`. Label values must come from a
small fixed set (a policy name, a route template), never from ids or user input.

Gauges that describe the database (tenants by state, tenants behind the tenant head, outbox
backlog) are computed at scrape time by :class:`DatabaseCollector`, cached for 15 s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """Count one request. ``route`` must be a URL rule template (``/api/v1/contacts/<uuid:id>``)
    or ``unmatched``, never a raw path; ``method`` is mapped by :func:`method_label`."""
    labels = (route, method_label(method), str(status))
    REQUESTS.labels(*labels).inc()
    LATENCY.labels(*labels).observe(seconds)


def rate_limit_rejected(policy: str) -> None:
    """One request refused by ``policy`` (a policy name from the limits configuration)."""
    RATE_LIMIT_REJECTIONS.labels(policy).inc()


def cache_hit(cache: str) -> None:
    CACHE.labels(cache, "hit").inc()


def cache_miss(cache: str) -> None:
    CACHE.labels(cache, "miss").inc()


def webhook_event(event_type: str, outcome: str) -> None:
    """A webhook event (e.g. Stripe ``invoice.paid``) and its outcome (processed|ignored|failed|duplicate)."""
    WEBHOOKS.labels(event_type, outcome).inc()


def job_processed(topic: str, outcome: str, seconds: float) -> None:
    JOBS.labels(topic, outcome).inc()
    JOB_LATENCY.labels(topic).observe(seconds)


class DatabaseCollector(Collector):
    """Scrape-time gauges read from the database (a few cheap aggregate queries, cached)."""

    def __init__(self, engine: Any, ttl_seconds: float = 15.0):
        self.engine = engine
        self.ttl = ttl_seconds
        self._cached: tuple[float, list[Any]] | None = None

    def collect(self) -> Iterator[Any]:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > self.ttl:
            self._cached = (now, self._read())
        yield from self._cached[1]

    def _read(self) -> list[Any]:
        from sqlalchemy import case, func, select

        from saas.ops.migrations import track_head
        from saas.outbox import OutboxMessage as M
        from saas.tenancy.models import Tenant

        tenants = GaugeMetricFamily(
            "saas_tenants", "Tenants by state (active|suspended|deleted).", labels=["state"]
        )
        behind = GaugeMetricFamily(
            "saas_tenants_behind_head", "Tenant schemas not at the tenant track's head."
        )
        outbox = GaugeMetricFamily(
            "saas_outbox_messages", "Undelivered outbox messages by state.", labels=["state"]
        )
        up = GaugeMetricFamily("saas_database_up", "1 when the metrics query reached the database.")
        try:
            head = track_head()
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
        up.add_metric([], 1)
        return [tenants, behind, outbox, up]


def render(database_collector: DatabaseCollector | None = None) -> bytes:
    """The exposition text: every process's samples in multiprocess mode, else this process's."""
    from prometheus_client import REGISTRY

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        if database_collector is not None:
            registry.register(database_collector)
        return generate_latest(registry)
    output = generate_latest(REGISTRY)
    if database_collector is not None:
        registry = CollectorRegistry()
        registry.register(database_collector)
        output += generate_latest(registry)
    return output
