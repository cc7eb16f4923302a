"""OpenTelemetry traces (saas.observability.tracing, docs/observability.md): the spans read back
from an in-memory exporter (a request continuing an incoming W3C ``traceparent``, ``tenant.id`` on
its server span, its SQL and Redis spans below it, nothing personal anywhere), one span per
outbox job, nothing imported while off, and the spans of a gunicorn server received over
OTLP/HTTP by a real receiver decoding the protobuf requests."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from saas import create_app
from saas.db import Database
from saas.observability import tracing
from saas.outbox import enqueue
from saas.services import services
from tests.conftest import TEST_PASSWORD, Api, _redis_url, rolled_back
from tests.helpers import signup_over_http
from tests.peers import ROOT, gunicorn_server

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
QUERY_SECRET = "query-secret-0123456789"


@pytest.fixture()
def traced(settings, database_url, redis_client, monkeypatch) -> Iterator[tuple[Any, Any, Any]]:
    """(app, its Tracing, the in-memory exporter): an app with tracing on whose OTLP exporter is
    an InMemorySpanExporter, on an engine of its own (psycopg's instrumentation traces the
    connections opened after it, as the app's are in production); the instrumentations are
    removed afterwards."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from sqlalchemy import create_engine

    from saas.db import _guard_search_path

    memory = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "otlp_exporter", lambda _settings: memory)
    engine = create_engine(database_url, pool_size=2)
    _guard_search_path(engine)
    app = create_app(
        settings.with_overrides(otel_endpoint="http://127.0.0.1:4318"),
        database=Database(engine),
        redis=redis_client,
    )
    app.testing = True
    tracer = tracing.of(app)
    assert tracer is not None and tracing.current() is tracer
    try:
        with rolled_back(app, engine, redis_client):
            yield app, tracer, memory
    finally:
        tracer.shutdown()
        engine.dispose()
    assert tracing.current() is None


def _spans(tracer, memory) -> list[Any]:
    tracer.provider.force_flush()
    return list(memory.get_finished_spans())


def _clear(tracer, memory) -> None:
    tracer.provider.force_flush()  # the earlier requests' spans, still in the batch
    memory.clear()


def _dump(spans) -> str:
    """Everything a span carries out of the process, as text."""
    return json.dumps(
        [
            {
                "name": s.name,
                "attributes": dict(s.attributes or {}),
                "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in s.events],
                "status": s.status.description,
            }
            for s in spans
        ],
        default=str,
    )


def test_a_request_continues_the_incoming_trace_with_tenant_and_route_and_nothing_personal(traced):
    from opentelemetry.trace import SpanKind

    app, tracer, memory = traced
    api = Api(app.test_client())
    body = api.signup("traced", email="owner.traced@example.test")
    tenant_id = body["tenant"]["id"]
    token = body["token"]["access_token"]
    created = app.test_client().post(
        "/api/v1/contacts", json={"name": "Ann", "email": "ann.person@example.test"}, headers=api.auth(body)
    )
    assert created.status_code == 201
    _clear(tracer, memory)

    r = app.test_client().get(
        f"/api/v1/contacts?q=Ann&token={QUERY_SECRET}",
        headers={**api.auth(body), "traceparent": TRACEPARENT, "User-Agent": "PersonalAgent/1.0"},
    )
    assert r.status_code == 200, r.get_json()
    spans = _spans(tracer, memory)
    server = [s for s in spans if s.kind == SpanKind.SERVER]
    assert len(server) == 1, [s.name for s in spans]
    span = server[0]
    # the incoming W3C trace context is continued: same trace id, the caller's span as parent
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_ID
    attributes = dict(span.attributes)
    assert attributes["tenant.id"] == tenant_id
    assert attributes["http.route"] == "/api/v1/contacts" and span.name == "GET /api/v1/contacts"
    assert attributes["saas.request_id"] == r.headers["X-Request-ID"]
    assert attributes["http.target"] == "/api/v1/contacts"  # the route: no query string
    for dropped in ("url.query", "net.peer.ip", "client.address", "http.user_agent", "user_agent.original"):
        assert dropped not in attributes
    # the request's SQL (SQLAlchemy's and psycopg's spans) and Redis spans are in its trace
    children = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert all(format(s.context.trace_id, "032x") == TRACE_ID for s in children)
    systems = {s.attributes.get("db.system") or s.attributes.get("db.system.name") for s in children}
    assert {"postgresql", "redis"} <= systems, systems
    scopes = {s.instrumentation_scope.name for s in children}
    assert {
        "opentelemetry.instrumentation.sqlalchemy",
        "opentelemetry.instrumentation.psycopg",
        "opentelemetry.instrumentation.redis",
    } <= scopes, scopes
    statements = [
        s.attributes.get("db.statement", "") for s in children if "sqlalchemy" in s.instrumentation_scope.name
    ]
    assert any("contacts" in statement for statement in statements)
    text = _dump(spans)
    for secret in (QUERY_SECRET, token, "ann.person@example.test", "Ann", "PersonalAgent", "127.0.0.1:"):
        assert secret not in text, secret


def test_signup_and_login_spans_carry_no_email_password_or_token(traced):
    app, tracer, memory = traced
    api = Api(app.test_client())
    body = api.signup("tracedpw", email="secret.owner@example.test")
    login = api.login("secret.owner@example.test", tenant="tracedpw")
    assert login.status_code == 200
    spans = _spans(tracer, memory)
    assert {s.attributes.get("http.route") for s in spans} >= {"/api/v1/signup", "/api/v1/auth/login"}
    text = _dump(spans)
    for secret in ("secret.owner@example.test", TEST_PASSWORD, body["token"]["access_token"],
                   body["token"]["refresh_token"], login.get_json()["access_token"]):  # fmt: skip
        assert secret not in text


def test_an_unhandled_error_is_an_error_span_without_its_message(traced, monkeypatch):
    from opentelemetry.trace import SpanKind

    from saas.tenancy import members as members_service

    app, tracer, memory = traced
    api = Api(app.test_client())
    body = api.signup("tracederr")

    def explode(*args, **kwargs):
        raise RuntimeError("Key (email)=(leaked.person@example.test) already exists")

    monkeypatch.setattr(members_service, "list_members", explode)
    _clear(tracer, memory)
    r = app.test_client().get("/api/v1/members", headers=api.auth(body))
    assert r.status_code == 500
    spans = _spans(tracer, memory)
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    status = server.attributes.get("http.status_code", server.attributes.get("http.response.status_code"))
    assert status == 500 and server.attributes["tenant.id"] == body["tenant"]["id"]
    assert "leaked.person" not in _dump(spans)


def test_each_outbox_job_is_one_consumer_span_and_idle_polls_make_none(traced, worker_handlers):
    from opentelemetry.trace import SpanKind, StatusCode
    from sqlalchemy import text

    from saas import worker as worker_module
    from saas.worker import PermanentError, Worker

    app, tracer, memory = traced
    tenant_id = uuid.uuid4()

    def ok(job, context):
        context.session.execute(text("SELECT 1"))

    def broken(job, context):
        raise PermanentError(f"cannot mail {job.payload['email']}")

    worker_module.register("test.traced", ok)
    worker_module.register("test.broken", broken)
    db = services(app).database
    with db.transaction() as session:
        enqueue(session, "test.traced", {"email": "job.person@example.test"}, tenant_id=tenant_id)
        enqueue(session, "test.broken", {"email": "job.person@example.test"})
    _clear(tracer, memory)
    w = Worker(db, services(app).settings, services={"app": app})
    assert w.run_one() == "sent"
    assert w.run_one() == "failed"
    assert w.run_one() is None  # idle
    spans = _spans(tracer, memory)
    jobs = [s for s in spans if s.kind == SpanKind.CONSUMER]
    assert [s.name for s in jobs] == ["outbox test.traced", "outbox test.broken"]
    sent, failed = jobs
    assert sent.attributes["tenant.id"] == str(tenant_id)
    assert sent.attributes["messaging.system"] == "saas.outbox"
    assert sent.attributes["saas.job.outcome"] == "sent" and sent.attributes["saas.job.attempt"] == 1
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["error.type"] == "PermanentError"
    assert failed.attributes["saas.job.outcome"] == "failed"
    # the handler's SQL and the row's update are the job's children; the idle poll made no span
    children = [s for s in spans if s.parent is not None and s.parent.span_id == sent.context.span_id]
    assert any("SELECT 1" in str(s.attributes.get("db.statement", "")) for s in children)
    roots = [s for s in spans if s.parent is None]
    assert roots == jobs, [s.name for s in roots]
    assert "job.person@example.test" not in _dump(spans)


def test_scrub_attributes_keeps_the_route_and_drops_the_query_and_the_client():
    scrubbed = tracing.scrub_attributes(
        {
            "http.route": "/account/reset",
            "http.target": "/account/reset?token=abc",
            "url.full": "https://user:pw@example.test:8443/account/reset?token=abc",
            "url.query": "token=abc",
            "client.address": "203.0.113.9",
            "net.peer.name": "db.internal",
            "db.statement.parameters": "('x@y.test',)",
            "http.request.header.authorization": ("Bearer x",),
            "db.statement": "SELECT 1",
        }
    )
    assert scrubbed == {
        "http.route": "/account/reset",
        "http.target": "/account/reset",
        "url.full": "https://example.test:8443/account/reset",
        "net.peer.name": "db.internal",  # a client span's peer is the database
        "db.statement": "SELECT 1",
    }
    assert "net.peer.name" not in tracing.scrub_attributes({"net.peer.name": "client.example"}, server=True)
    assert tracing.scrub_attributes({"http.target": "/x/1?token=abc"}) == {"http.target": "/x/1"}


def test_off_imports_no_opentelemetry_and_no_sentry(database_url, worker_id_str, tmp_path):
    """Without ``OTEL_EXPORTER_OTLP_ENDPOINT`` and ``SENTRY_DSN``: an app built and serving a
    request has imported no tracing SDK, no exporter, no instrumentation and no ``sentry_sdk``,
    and wrapped nothing (zero cost). (redis-py 8 imports OpenTelemetry's API and metrics SDK by
    itself when they are installed, for its own metrics, off unless configured: not ours.)"""
    code = f"""
import sys
OURS = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "opentelemetry.instrumentation",
        "opentelemetry.propagate", "sentry_sdk", "saas.observability.sentry")
from pathlib import Path
from saas import create_app
from saas.settings import Settings
app = create_app(Settings(env="test", database_url={database_url!r}, redis_url={_redis_url(worker_id_str)!r},
                          secret_key="x", var_dir=Path({str(tmp_path)!r}), ratelimit_enabled=False))
assert app.test_client().get("/healthz").status_code == 200
assert app.test_client().get("/api/v1/contacts").status_code == 401
import psycopg, redis
loaded = sorted(m for m in sys.modules if m.startswith(OURS))
print(loaded)
assert not loaded, loaded
assert not hasattr(psycopg.connect, "__wrapped__") and not hasattr(redis.Redis.execute_command, "__wrapped__")
assert "opentelemetry" not in type(app.wsgi_app).__module__ and "saas.tracing" not in app.extensions
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("[]")


# --- through gunicorn, to a real OTLP/HTTP receiver ---------------------------------------------


class OtlpReceiver:
    """An OTLP/HTTP receiver on a free loopback port: ``POST /v1/traces`` bodies
    (``ExportTraceServiceRequest``, protobuf, gzip or not) decoded and kept as spans."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        receiver = self
        self.spans: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    receiver.paths.append(self.path)
                    for resource_spans in request.resource_spans:
                        service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                        for scope_spans in resource_spans.scope_spans:
                            for span in scope_spans.spans:
                                receiver.spans.append({
                                    "service": service.get("service.name"),
                                    "scope": scope_spans.scope.name,
                                    "name": span.name,
                                    "kind": span.kind,
                                    "trace_id": span.trace_id.hex(),
                                    "parent_span_id": span.parent_span_id.hex(),
                                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                                })  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, predicate, seconds: float = 30.0) -> list[dict[str, Any]]:
        """The spans once one satisfies ``predicate`` (the exporter sends in batches)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self.lock:
                if any(predicate(s) for s in self.spans):
                    return list(self.spans)
            time.sleep(0.1)
        raise AssertionError(f"no such span received: {[s['name'] for s in self.spans]}")


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def test_gunicorn_exports_the_request_spans_over_otlp_http(
    database_url, worker_id_str, redis_client, tmp_path, forget_committed
):
    redis_client.flushdb()
    with OtlpReceiver() as receiver, gunicorn_server(
        database_url,
        _redis_url(worker_id_str),
        tmp_path,
        workers=1,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "saas-under-test",
             "OTEL_BSP_SCHEDULE_DELAY": "100", "RATELIMIT_ENABLED": "false"},
    ) as server:  # fmt: skip
        slug = f"otel-{uuid.uuid4().hex[:8]}"
        body = signup_over_http(server.base, slug, f"owner@{slug}.test")
        forget_committed.add(body["tenant"]["id"])
        r = requests.get(
            f"{server.base}/api/v1/contacts",
            params={"token": QUERY_SECRET},
            headers={"Authorization": f"Bearer {body['token']['access_token']}", "traceparent": TRACEPARENT},
            timeout=10,
        )
        assert r.status_code == 200
        spans = receiver.wait_for(lambda s: s["trace_id"] == TRACE_ID and s["kind"] == 2)  # SERVER
    assert set(receiver.paths) == {"/v1/traces"}
    server_span = next(s for s in spans if s["trace_id"] == TRACE_ID and s["kind"] == 2)
    assert server_span["service"] == "saas-under-test"
    assert server_span["parent_span_id"] == PARENT_ID
    assert server_span["attributes"]["tenant.id"] == body["tenant"]["id"]
    assert server_span["attributes"]["http.route"] == "/api/v1/contacts"
    text = json.dumps(spans)
    assert QUERY_SECRET not in text and body["token"]["access_token"] not in text
    assert f"owner@{slug}.test" not in text
    assert not any(s["attributes"].get("http.route") == "/healthz" for s in spans)  # probes are not traced


def test_settings_read_the_endpoint_and_the_service_name():
    from saas.settings import Settings, SettingsError

    s = Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SERVICE_NAME": "a"})
    assert s.otel_endpoint == "http://collector:4318" and s.otel_service_name == "a"
    default = Settings.from_env({})
    assert default.otel_endpoint is None and default.otel_service_name == "saas-backend"
    with pytest.raises(SettingsError, match=r"^OTEL_EXPORTER_OTLP_ENDPOINT: expected a URL"):
        Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"})


def test_the_request_log_line_carries_the_trace_id(traced):
    import io
    import logging

    from saas.observability.logging import configure

    app, _tracer, _memory = traced
    api = Api(app.test_client())
    body = api.signup("tracedlog")
    stream = io.StringIO()
    level = logging.getLogger().level
    configure("INFO", "json", stream)
    try:
        r = app.test_client().get("/api/v1/contacts", headers={**api.auth(body), "traceparent": TRACEPARENT})
    finally:
        configure(logging.getLevelName(level), "json")
    assert r.status_code == 200
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines() if '"request"' in x]
    assert line["trace_id"] == TRACE_ID and line["route"] == "/api/v1/contacts"


def test_a_celery_task_is_traced_with_the_outbox_job_inside_it(traced, worker_handlers):
    """Celery's instrumentation is on with the others: the relay's publish and the worker's run
    are spans (the W3C context in the task's headers), and the outbox job's span is a child of
    the run's."""
    from saas import worker as worker_module
    from saas.worker.engine import in_process_worker, make_celery, publisher
    from saas.worker.relay import Relay

    app, tracer, memory = traced
    worker_module.register("test.celery_traced", lambda job, context: None)
    db = services(app).database
    with db.transaction() as session:
        enqueue(session, "test.celery_traced", {})
    celery = make_celery(services(app).settings, lambda: app, broker="memory://",
                         queue=f"saas-test-{uuid.uuid4().hex}")  # fmt: skip
    _clear(tracer, memory)
    with in_process_worker(celery):
        assert Relay(db, publisher(celery)).relay_once() >= 1
        deadline = time.monotonic() + 30
        while True:
            spans = _spans(tracer, memory)
            jobs = [s for s in spans if s.name == "outbox test.celery_traced"]
            if jobs:
                break
            assert time.monotonic() < deadline, _dump(spans)
            time.sleep(0.05)
    runs = [s for s in spans if s.name.startswith("run/") and "saas.outbox.deliver" in s.name]
    assert runs, [s.name for s in spans]
    assert jobs[0].parent is not None and jobs[0].parent.span_id == runs[0].context.span_id
    assert any(s.name.startswith("apply_async/") for s in spans)
