"""OpenTelemetry traces, exported over OTLP/HTTP, on only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

Off (the variable unset), nothing here imports OpenTelemetry: no SDK, no instrumentation, no
hook, no wrapper; :func:`job_span` is a ``nullcontext``. On, :func:`init_app` installs:

- the official instrumentations (opentelemetry-python-contrib): Flask's (the server span of each
  request, the incoming W3C ``traceparent`` continued: Trace Context, W3C Recommendation,
  section 3.2; the propagators are the SDK's defaults, ``OTEL_PROPAGATORS``), psycopg's and
  Redis's, process-wide (:data:`INSTRUMENTATIONS`), and SQLAlchemy's on the app's engine
  (:func:`instrument_engine`, called by ``saas.observability.init_app``);
- ``tenant.id`` (the principal's tenant, or the tenant a hosted page resolved) and
  ``saas.request_id`` on the server span, whose name and ``http.route`` are the URL rule template;
  the trace id in ``g.trace_id``, carried by the request's log line and a Sentry event;
- one span per outbox job in ``saas worker`` (:func:`job_span`, kind CONSUMER);
- one ``TracerProvider`` whose only processor is :func:`scrubbing_processor`'s: every span,
  whichever library made it, is scrubbed before any exporter sees it (below).

What a span never carries (docs/observability.md): the query string (``url.query`` dropped;
``http.target``, ``url.path``, ``http.url`` and ``url.full`` become the route template, so ids
and tokens in paths go too), the client's address and port and its user agent (personal data),
SQL or command parameters (psycopg's ``capture_parameters`` and sqlcommenter stay off; Redis's
instrumentation records ``COMMAND ? ?``), exception messages and stack traces (they can quote
a row, e.g. a unique violation's ``Key (email)=(...)``; the exception type is kept, Sentry has
the rest, scrubbed) and a status description. ``db.statement`` is kept: statements are
parameterised (placeholders, never values).

Celery's instrumentation (``CeleryInstrumentor``) is in :data:`INSTRUMENTATIONS` too: ``saas
worker`` runs its tasks in threads of its own process, so the process-wide install covers them
(a prefork pool would need it again in each child, Celery's ``worker_process_init``).

Settings: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the collector's OTLP/HTTP base URL; spans go to
``<it>/v1/traces``, OTLP specification "OTLP/HTTP Request"), ``OTEL_SERVICE_NAME``. The SDK
reads the other standard variables itself (``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_EXPORTER_OTLP_TIMEOUT``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``, ``OTEL_PROPAGATORS``).
"""

from __future__ import annotations

import contextlib
import importlib
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g

from saas.settings import Settings

if TYPE_CHECKING:  # never imported at run time unless tracing is on
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

EXTENSION = "saas.tracing"

#: the process-wide instrumentations: (module, class, keyword arguments of ``instrument``).
#: Celery's, when jobs move there: ("opentelemetry.instrumentation.celery", "CeleryInstrumentor", {})
INSTRUMENTATIONS: list[tuple[str, str, dict[str, Any]]] = [
    # no SQL parameters (the default, said again), no sqlcommenter comments in the SQL
    ("opentelemetry.instrumentation.psycopg", "PsycopgInstrumentor",
     {"capture_parameters": False, "enable_commenter": False}),
    ("opentelemetry.instrumentation.redis", "RedisInstrumentor", {}),
    # a span per Celery task published and run, the W3C context carried in the task's headers
    # (saas worker's pool is threads: instrumenting this process covers its tasks)
    ("opentelemetry.instrumentation.celery", "CeleryInstrumentor", {}),
]  # fmt: skip

#: requests never traced (probes and the scraper, every few seconds; regular expressions
#: searched in the URL, the instrumentation's ``excluded_urls``)
EXCLUDED_URLS = "/healthz,/readyz,/metrics"

#: attributes dropped from every span: the client's address, port and user agent (personal
#: data), the query string, the end user, and SQL parameters should anything record them
DROPPED_ATTRIBUTES = frozenset({
    "net.peer.ip", "net.peer.port", "net.sock.peer.addr", "net.sock.peer.port",
    "client.address", "client.port", "network.peer.address", "network.peer.port", "http.client_ip",
    "http.user_agent", "user_agent.original", "user_agent.synthetic.type",
    "url.query", "enduser.id", "enduser.role", "enduser.scope", "db.statement.parameters",
})  # fmt: skip
#: of a server span, the client's host name too (of a client span it is the database's)
_DROPPED_SERVER = frozenset({"net.peer.name"})
_DROPPED_PREFIXES = ("db.query.parameter.", "enduser.", "http.request.header.", "http.response.header.")
#: attributes that hold a path or a URL: replaced by the route template (the query never survives)
_PATH_ATTRIBUTES = ("http.target", "url.path")
_URL_ATTRIBUTES = ("http.url", "url.full")
#: of an exception event, only these survive (the message and the stack trace can quote data)
_EXCEPTION_KEPT = ("exception.type", "exception.escaped")
#: the longest attribute value kept (a statement creating a tenant schema is long)
MAX_ATTRIBUTE_LENGTH = 4096

_active: Tracing | None = None


def scrub_attributes(attributes: Mapping[str, Any] | None, *, server: bool = False) -> dict[str, Any]:
    """The attributes a span may carry out of the process (see the module docstring).

    A path or URL attribute becomes the span's ``http.route`` (the URL rule template, e.g.
    ``/api/v1/contacts/<uuid:contact_id>``), or the path without its query when there is no route
    (a 404), scheme and host kept for a URL but never credentials."""
    attributes = dict(attributes or {})
    route = attributes.get("http.route")
    dropped = DROPPED_ATTRIBUTES | _DROPPED_SERVER if server else DROPPED_ATTRIBUTES
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if key in dropped or key.startswith(_DROPPED_PREFIXES):
            continue
        if key in _PATH_ATTRIBUTES:
            value = route if route else str(value).split("?", 1)[0]
        elif key in _URL_ATTRIBUTES:
            value = _url_without_query(str(value), route)
        out[key] = value
    return out


def _url_without_query(url: str, route: str | None) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{route or parts.path}"


def _scrubbed_span(span: ReadableSpan) -> ReadableSpan:
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.trace import SpanKind, Status

    server = span.kind == SpanKind.SERVER
    events = []
    for event in span.events:
        attributes = dict(event.attributes or {})
        if event.name == "exception":
            attributes = {k: v for k, v in attributes.items() if k in _EXCEPTION_KEPT}
        else:
            attributes = scrub_attributes(attributes, server=server)
        events.append(Event(event.name, attributes, event.timestamp))
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=scrub_attributes(span.attributes, server=server),
        events=events,
        links=span.links,
        kind=span.kind,
        status=Status(span.status.status_code),  # no description: it quotes the exception
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def scrubbing_processor(inner: SpanProcessor) -> SpanProcessor:
    """A span processor handing ``inner`` (the exporting processors) a scrubbed copy of every
    ended span (:func:`scrub_attributes`; events and status as the module docstring says)."""
    return _scrubbing_processor_class()(inner)


_processor_class: list[type] = []  # the class, made once (it subclasses the SDK's, imported lazily)


def _scrubbing_processor_class() -> type:
    if _processor_class:
        return _processor_class[0]
    from opentelemetry.sdk.trace import SpanProcessor

    class ScrubbingProcessor(SpanProcessor):
        """Hands ``inner`` (the exporting processors) a scrubbed copy of every ended span."""

        def __init__(self, inner: SpanProcessor) -> None:
            self.inner = inner

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            self.inner.on_start(span, parent_context=parent_context)

        def on_end(self, span: ReadableSpan) -> None:
            self.inner.on_end(_scrubbed_span(span))

        def shutdown(self) -> None:
            self.inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return self.inner.force_flush(timeout_millis)

    _processor_class.append(ScrubbingProcessor)
    return ScrubbingProcessor


def otlp_exporter(settings: Settings) -> SpanExporter:
    """The OTLP/HTTP (protobuf) exporter to ``<OTEL_EXPORTER_OTLP_ENDPOINT>/v1/traces``."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=f"{(settings.otel_endpoint or '').rstrip('/')}/v1/traces")


class Tracing:
    """Tracing of one process: the provider, its tracer and what was instrumented (undone by
    :meth:`shutdown`). ``add_exporter`` sends every (scrubbed) span to one more exporter."""

    def __init__(self, settings: Settings, exporter: SpanExporter) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import SpanLimits, SynchronousMultiSpanProcessor, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self._exporting = SynchronousMultiSpanProcessor()
        self._exporting.add_span_processor(BatchSpanProcessor(exporter))
        self.provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": settings.otel_service_name}),
            span_limits=SpanLimits(max_attribute_length=MAX_ATTRIBUTE_LENGTH),
            shutdown_on_exit=True,
        )
        self.provider.add_span_processor(scrubbing_processor(self._exporting))
        self.tracer = self.provider.get_tracer("saas")
        self._instrumented: list[Any] = []
        self._engine_instrumented = False

    def add_exporter(self, exporter: SpanExporter, *, batch: bool = True) -> None:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        processor: SpanProcessor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self._exporting.add_span_processor(processor)

    def instrument(self, module: str, name: str, **kwargs: Any) -> None:
        """Install one instrumentation (``opentelemetry.instrumentation.<lib>``'s instrumentor)
        with this provider; a second call for one already installed does nothing."""
        instrumentor = getattr(importlib.import_module(module), name)()
        if instrumentor.is_instrumented_by_opentelemetry:
            return
        instrumentor.instrument(tracer_provider=self.provider, **kwargs)
        if instrumentor.is_instrumented_by_opentelemetry:  # refused on a dependency conflict (logged)
            self._instrumented.append(instrumentor)

    def instrument_engine(self, engine: Any) -> None:
        if self._engine_instrumented:
            return
        # skip_dep_check: the instrumentation declares "sqlalchemy < 2.1" while it works on 2.1's
        # unchanged event API (engine events before/after_cursor_execute); the tests prove it
        self.instrument("opentelemetry.instrumentation.sqlalchemy", "SQLAlchemyInstrumentor",
                        engine=engine, enable_commenter=False, skip_dep_check=True)  # fmt: skip
        self._engine_instrumented = True

    def shutdown(self) -> None:
        """Flush and stop the exporters, remove the process-wide instrumentations (tests)."""
        global _active
        for instrumentor in reversed(self._instrumented):
            instrumentor.uninstrument()
        self._instrumented.clear()
        self.provider.shutdown()
        if _active is self:
            _active = None


def init_app(app: Flask, settings: Settings) -> Tracing | None:
    """Turn tracing on for ``app`` when ``settings.otel_endpoint`` is set (else return None and
    import nothing). Call it before any other ``before_request`` hook is registered: the
    request's server span must be current for every span of the request (``create_app`` does)."""
    global _active
    if not settings.otel_endpoint:
        return None
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    tracing = Tracing(settings, otlp_exporter(settings))
    for module, name, kwargs in INSTRUMENTATIONS:
        tracing.instrument(module, name, **kwargs)
    FlaskInstrumentor.instrument_app(
        app, tracer_provider=tracing.provider, excluded_urls=EXCLUDED_URLS, enable_commenter=False
    )
    app.before_request(_remember_trace_id)  # after the instrumentation's: its span is current
    app.after_request(_tag_server_span)
    app.extensions[EXTENSION] = tracing
    _active = tracing
    return tracing


def of(app: Flask) -> Tracing | None:
    """The tracing of ``app``, or None when it is off."""
    return app.extensions.get(EXTENSION)


def current() -> Tracing | None:
    """The tracing of this process (the last app that turned it on), or None when it is off."""
    return _active


def _remember_trace_id() -> None:
    """``g.trace_id``: the request's trace id (32 hex digits), which the request's log line and
    a Sentry event carry, so a log line, an error and a trace find each other."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        g.trace_id = format(context.trace_id, "032x")


def _tag_server_span(response: Response) -> Response:
    """``tenant.id`` and ``saas.request_id`` on the server span (after authentication ran)."""
    from opentelemetry import trace

    span = trace.get_current_span()
    if not span.is_recording():
        return response
    principal = g.get("principal")
    tenant_id = getattr(principal, "tenant_id", None) or g.get("log_tenant_id")
    if tenant_id:
        span.set_attribute("tenant.id", str(tenant_id))
    request_id = g.get("request_id")
    if request_id:
        span.set_attribute("saas.request_id", request_id)
    return response


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """No span for what runs inside (the worker's idle polls); nothing when tracing is off."""
    if _active is None:
        yield
        return
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield


class JobSpan:
    """The span of one outbox poll: named and kept only once :meth:`begin` says which job it
    handles; a poll that found none leaves it unended, so it is never exported."""

    def __init__(self, span: Any) -> None:
        self.span = span
        self.begun = False

    def begin(self, topic: str, job_id: int, tenant_id: uuid.UUID | None, attempt: int) -> None:
        """Name the span ``outbox <topic>`` and give it the job's attributes: ``messaging.system``
        ``saas.outbox``, ``messaging.operation`` ``process``, ``messaging.destination.name`` (the
        topic), ``messaging.message.id``, ``saas.job.attempt``, ``tenant.id``. Never the payload."""
        self.span.update_name(f"outbox {topic}")
        self.span.set_attributes({
            "messaging.system": "saas.outbox",
            "messaging.operation": "process",
            "messaging.destination.name": topic,
            "messaging.message.id": str(job_id),
            "saas.job.attempt": attempt,
        })  # fmt: skip
        if tenant_id:
            self.span.set_attribute("tenant.id", str(tenant_id))
        self.begun = True

    def outcome(self, outcome: str, exc: BaseException | None = None) -> None:
        """``saas.job.outcome``; a failed or retried job's span has status ERROR and ``error.type``
        (the exception's class: its message can quote the payload; the row's ``last_error`` has it)."""
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute("saas.job.outcome", outcome)
        if exc is not None:
            self.span.set_attribute("error.type", type(exc).__name__)
            self.span.set_status(Status(StatusCode.ERROR))


@contextlib.contextmanager
def job_span() -> Iterator[JobSpan | None]:
    """A CONSUMER span, current for the block, around one poll of the outbox (``saas worker``):
    the job's SQL, Redis and HTTP spans are its children, its commit included. Yields None when
    tracing is off."""
    tracing = _active
    if tracing is None:
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    handle = JobSpan(tracing.tracer.start_span("outbox", kind=SpanKind.CONSUMER))
    with trace.use_span(
        handle.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    ):
        try:
            yield handle
        finally:
            if handle.begun:
                handle.span.end()
