"""Observability: a JSON log line per request, Prometheus metrics at ``/metrics``.

``/metrics`` answers only a scraper that sends ``Authorization: Bearer <METRICS_TOKEN>``
(RFC 6750 section 2.1; compared in constant time): 401 without it or with another token, 404
while ``METRICS_TOKEN`` is unset (the endpoint is off).

The request log carries: ``request_id`` (the incoming ``X-Request-ID`` when well formed, see
``saas._init_request_id``), ``method``, ``route`` (the URL rule template, not the path, so ids
and tokens in paths never appear), ``status``, ``duration_ms``, ``tenant_id``, ``user_id`` or
``client_id``, ``remote_addr``, and ``trace_id`` while tracing is on. Never headers, bodies or
query strings.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING  # not `import logging`: the name is this package's module

from flask import Flask, Response, g, request

from saas.observability import logging as _logging
from saas.observability import metrics
from saas.observability.logging import configure as configure_logging
from saas.observability.logging import get_logger
from saas.services import services
from saas.settings import Settings

__all__ = ["configure_logging", "init_app", "init_sentry", "init_tracing", "metrics"]

_log = get_logger("saas.request")


def _route() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"


def init_tracing(app: Flask, settings: Settings) -> None:
    """OpenTelemetry traces when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set
    (:mod:`saas.observability.tracing`); nothing is imported otherwise."""
    if settings.otel_endpoint:
        from saas.observability import tracing

        tracing.init_app(app, settings)


def init_sentry(app: Flask, settings: Settings) -> None:
    """Sentry when ``SENTRY_DSN`` is set (:mod:`saas.observability.sentry`); ``sentry_sdk`` is
    not imported otherwise."""
    if settings.sentry_dsn:
        from saas.observability import sentry

        sentry.init_app(app, settings)


def init_app(app: Flask) -> None:
    """Register the request timer, the request log and ``GET /metrics`` (``create_app`` has
    already called :func:`configure_logging` and :func:`init_tracing`)."""
    metrics.ensure_multiproc_dir()
    tracer = app.extensions.get("saas.tracing")
    if tracer is not None:  # SQLAlchemy's spans on the app's engine
        tracer.instrument_engine(services(app).database.engine)
    db_collector = metrics.DatabaseCollector(services(app).database.engine)
    guard_collector = metrics.GuardCollector(app)

    @app.before_request
    def _start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _log_request(response: Response) -> Response:
        started = g.get("request_started")
        seconds = time.perf_counter() - started if started else 0.0
        route = _route()
        if route != "/metrics":
            try:  # a metrics failure (a missing multiprocess dir) must never fail the request
                metrics.observe_request(route, request.method, response.status_code, seconds)
            except Exception:
                _log.warning("cannot record request metrics", exc_info=True)
        log = _logging.request_log()
        level = WARNING if response.status_code >= 500 else INFO
        if not log.is_enabled_for(level):
            return response
        principal = g.get("principal")
        fields = {
            "request_id": g.get("request_id"),
            "method": metrics.method_label(request.method),
            "route": route,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 2),
            "remote_addr": request.remote_addr,
        }
        if principal is not None:
            fields["tenant_id"] = str(principal.tenant_id) if principal.tenant_id else None
            if principal.user_id is not None:
                fields["user_id"] = str(principal.user_id)
            elif principal.client_id:
                fields["client_id"] = principal.client_id
        elif g.get("log_tenant_id"):
            fields["tenant_id"] = str(g.log_tenant_id)
        trace_id = g.get("trace_id")  # tracing on only (saas.observability.tracing)
        if trace_id:
            fields["trace_id"] = trace_id
        log.log(level, "request", **fields)
        return response

    @app.get("/metrics")
    def _metrics() -> Response:
        check_scraper(services().settings.metrics_token)
        body = metrics.render(db_collector, guard_collector)
        return Response(body, mimetype="text/plain; version=0.0.4", headers={"Cache-Control": "no-store"})


def check_scraper(token: str | None) -> None:
    """Admit the request only with ``Authorization: Bearer <token>`` (RFC 6750 section 2.1).

    Raises:
        NotFound: (werkzeug's) ``token`` is unset: the endpoint is off (404, as for any unknown path).
        Unauthorized: no bearer credential, or another one (401 with a ``Bearer`` challenge,
            RFC 6750 section 3). The comparison takes the same time wherever the two differ.
    """
    from werkzeug.exceptions import NotFound

    from saas.errors import Unauthorized
    from saas.http import request_header
    from saas.security import same_string

    if not token:
        raise NotFound()  # the same problem as any unknown path
    scheme, _, presented = request_header("Authorization").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized("Send 'Authorization: Bearer <METRICS_TOKEN>'.", error=None)
    if not same_string(presented.strip(), token):
        raise Unauthorized("The metrics token is not valid.")
