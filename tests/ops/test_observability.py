"""Request logs (fields, and no secret ever logged), /metrics (single and multiprocess),
/healthz and /readyz."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from saas.observability import metrics
from saas.observability.logging import configure, redact
from saas.services import services
from tests.helpers import mailed_invitation_token, replace_services

METRICS_TOKEN = "scrape-token-0123456789abcdef"
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}


@pytest.fixture(autouse=True)
def metrics_token(app, monkeypatch):
    """The shared app with ``METRICS_TOKEN`` set, as in production (the endpoint is off without)."""
    settings = services(app).settings
    replace_services(monkeypatch, app, settings=settings.with_overrides(metrics_token=METRICS_TOKEN))


@pytest.fixture()
def log_lines():
    """Every line the process logs (the root handler's and the request log's), parsed."""
    stream = io.StringIO()
    root = logging.getLogger()
    old = root.level
    configure("DEBUG", "json", stream)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    finally:
        configure(logging.getLevelName(old), "json")


def test_request_logs_carry_context_and_never_secrets(api, client, log_lines):
    password = "correct horse battery staple"
    acme = api.signup("acme")
    refresh_token = acme["token"]["refresh_token"]
    r = api.login("owner@acme.test", password=password)
    assert r.status_code == 200
    access = r.get_json()["access_token"]
    r2 = client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token})
    assert r2.status_code == 200, r2.get_json()
    new_refresh = r2.get_json()["refresh_token"]
    client.post("/api/v1/members", json={"email": "l@acme.test", "role": "member"}, headers=api.auth(access))
    invite_token = mailed_invitation_token(client.application, "l@acme.test")
    assert api.login("owner@acme.test", password="wrong password here").status_code == 401
    me = client.get("/api/v1/me", headers={**api.auth(access), "X-Request-ID": "trace-abc.123"})
    assert me.headers["X-Request-ID"] == "trace-abc.123"

    lines = log_lines()
    raw = "\n".join(json.dumps(line) for line in lines)
    for secret in (password, refresh_token, new_refresh, access, invite_token, acme["token"]["access_token"]):
        assert secret not in raw
    requests = [line for line in lines if line.get("event") == "request"]
    assert {line["route"] for line in requests} >= {
        "/api/v1/signup",
        "/api/v1/auth/login",
        "/oauth/token",
        "/api/v1/me",
    }
    me_line = next(line for line in requests if line["request_id"] == "trace-abc.123")
    assert me_line["route"] == "/api/v1/me" and me_line["status"] == 200 and me_line["method"] == "GET"
    assert me_line["tenant_id"] == acme["tenant"]["id"] and me_line["user_id"]
    assert isinstance(me_line["duration_ms"], float) and me_line["level"] == "info" and me_line["timestamp"]
    assert any(line["status"] == 401 for line in requests)


def test_request_log_level_keeps_only_server_errors_at_warning(api, client, monkeypatch):
    from saas.tenancy import members as members_service

    stream = io.StringIO()
    configure("WARNING", "json", stream)
    try:
        h = api.auth(api.signup("acme"))
        assert client.get("/api/v1/me", headers=h).status_code == 200

        def explode(*args, **kwargs):
            raise RuntimeError("boom")

        monkeypatch.setattr(members_service, "list_members", explode)
        assert client.get("/api/v1/members", headers={**h, "X-Request-ID": "req-500"}).status_code == 500
    finally:
        configure("INFO", "json")
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    requests = [line for line in lines if line.get("event") == "request"]
    assert [(r["route"], r["status"], r["level"]) for r in requests] == [("/api/v1/members", 500, "warning")]
    assert requests[0]["request_id"] == "req-500" and requests[0]["logger"] == "saas.request"


def test_redact_drops_secret_keys_and_masks_tokens():
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl"
    event = redact(
        None,
        "info",
        {
            "event": f"got {jwt}",
            "password": "hunter22",
            "nested": {"refresh_token": "abc", "ok": [f"Bearer {jwt}"]},
            "Authorization": "Basic dXNlcjpwYXNz",
            "count": 3,
        },
    )
    text = json.dumps(event)
    assert "hunter22" not in text and jwt not in text and "abc" not in text and "dXNlcjpwYXNz" not in text
    assert event["count"] == 3 and event["nested"]["refresh_token"] == "[redacted]"


def test_metrics_endpoint(client, api, db_session):
    acme = api.signup("acme")
    client.get("/api/v1/me", headers=api.auth(acme))
    client.get("/api/v1/contacts/not-a-uuid", headers=api.auth(acme))
    metrics.rate_limit_rejected("tenant_rpm")
    metrics.cache_hit("entitlements")
    metrics.cache_miss("entitlements")
    metrics.webhook_event("invoice.paid", "processed")
    r = client.get("/metrics", headers=SCRAPER)
    assert r.status_code == 200 and r.mimetype == "text/plain"
    body = r.get_data(as_text=True)
    assert 'saas_http_requests_total{method="GET",route="/api/v1/me",status="200"}' in body
    assert (
        'saas_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/api/v1/me",status="200"}'
        in body
    )
    assert 'saas_rate_limit_rejections_total{policy="tenant_rpm"}' in body
    assert 'saas_cache_requests_total{cache="entitlements",result="hit"}' in body
    assert 'saas_webhook_events_total{outcome="processed",type="invoice.paid"}' in body
    assert "saas_tenants_behind_head" in body and 'saas_tenants{state="active"}' in body
    assert "saas_database_up 1.0" in body
    assert "not-a-uuid" not in body  # route templates, never raw paths


def test_metrics_answer_only_the_scraper_with_the_token(client):
    """/metrics is on the public port: only ``Authorization: Bearer <METRICS_TOKEN>`` reads it."""
    assert client.get("/metrics", headers=SCRAPER).status_code == 200
    refused = [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {METRICS_TOKEN[:-1]}"},  # a prefix
        {"Authorization": f"Bearer {METRICS_TOKEN}x"},
        {"Authorization": f"Basic {METRICS_TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer caf\u00e9"},  # non-ASCII: 401, never a 500
    ]
    for headers in refused:
        r = client.get("/metrics", headers=headers)
        assert r.status_code == 401, headers
        assert r.mimetype == "application/problem+json" and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert "saas_http_requests_total" not in r.get_data(as_text=True)
    assert 'error="invalid_token"' in client.get("/metrics", headers=refused[1]).headers["WWW-Authenticate"]


def test_metrics_are_off_while_no_token_is_set(app, client, monkeypatch):
    settings = services(app).settings
    replace_services(monkeypatch, app, settings=settings.with_overrides(metrics_token=None))
    for headers in ({}, SCRAPER, {"Authorization": "Bearer "}):
        r = client.get("/metrics", headers=headers)
        assert r.status_code == 404 and r.mimetype == "application/problem+json", headers
        unknown = client.get("/no-such-path").get_json()
        assert {k: v for k, v in r.get_json().items() if k not in ("instance", "request_id")} == {
            k: v for k, v in unknown.items() if k not in ("instance", "request_id")
        }


def test_metrics_token_is_read_from_the_environment():
    from saas.settings import Settings

    assert Settings.from_env({"METRICS_TOKEN": "abc"}).metrics_token == "abc"
    assert Settings.from_env({}).metrics_token is None
    assert Settings.from_env({"METRICS_TOKEN": ""}).metrics_token is None


def test_multiprocess_mode_aggregates_every_process(tmp_path):
    script = (
        "from saas.observability import metrics\n"
        "import sys\n"
        "if sys.argv[1] == 'inc':\n"
        "    metrics.rate_limit_rejected('p')\n"
        "else:\n"
        "    sys.stdout.write(metrics.render().decode())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script, "inc"], env=env, check=True)
    out = subprocess.run(
        [sys.executable, "-c", script, "show"], env=env, check=True, capture_output=True, text=True
    )
    assert 'saas_rate_limit_rejections_total{policy="p"} 2.0' in out.stdout


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and set(ready.get_json()["checks"]) >= {"database", "redis"}


def test_webhook_receive_counts_events_by_type_and_outcome(monkeypatch):
    from prometheus_client import REGISTRY

    from saas.billing import webhooks

    def value(outcome: str) -> float:
        return (
            REGISTRY.get_sample_value(
                "saas_webhook_events_total", {"type": "invoice.paid", "outcome": outcome}
            )
            or 0.0
        )

    before_ok, before_failed = value("processed"), value("failed")
    monkeypatch.setattr(webhooks, "_run", lambda *a, **k: webhooks.Outcome("evt_1", "processed"))
    webhooks.receive(None, None, {"id": "evt_1", "type": "invoice.paid"})

    def boom(*a, **k):
        raise webhooks.WebhookProcessingFailed("x")

    monkeypatch.setattr(webhooks, "_run", boom)
    with pytest.raises(webhooks.WebhookProcessingFailed):
        webhooks.receive(None, None, {"id": "evt_2", "type": "invoice.paid"})
    assert value("processed") == before_ok + 1 and value("failed") == before_failed + 1


def test_method_label_is_a_fixed_set_and_route_never_the_raw_path(client, api):
    """Review defect: the ``method`` label was the raw method (a client could mint series)."""
    acme = api.signup("acme")
    for method in ("PROPFIND", "XYZZY-1", "get"):
        client.open(f"/api/v1/contacts/{method}-id", method=method, headers=api.auth(acme))
    client.get("/no/such/path/abc123")
    body = client.get("/metrics", headers=SCRAPER).get_data(as_text=True)
    methods = {
        line.split('method="', 1)[1].split('"', 1)[0]
        for line in body.splitlines()
        if line.startswith("saas_http_requests_total{")
    }
    assert methods <= metrics.HTTP_METHODS | {"OTHER"} and "OTHER" in methods
    assert "PROPFIND" not in body and "XYZZY" not in body and "abc123" not in body
    assert "-id" not in body  # the path segment never becomes a label value


def test_gunicorn_child_exit_removes_the_dead_workers_live_files(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    namespace: dict = {}
    from pathlib import Path

    source = (Path(__file__).resolve().parents[2] / "infra" / "gunicorn.conf.py").read_text()
    exec(compile(source, "gunicorn.conf.py", "exec"), namespace)  # noqa: S102
    (tmp_path / "gauge_livesum_4242.db").write_bytes(b"")
    (tmp_path / "gauge_liveall_4242.db").write_bytes(b"")
    (tmp_path / "gauge_livesum_4343.db").write_bytes(b"")

    class _Worker:
        pid = 4242

    namespace["child_exit"](None, _Worker())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gauge_livesum_4343.db"]


def test_readyz_optional_redis_decides_by_the_database_alone(settings, engine, connection):
    """Review defect: the readiness probe answered 503 in a Redis outage, removing every pod
    (while limits and caches fail open). ``?optional=redis`` reports Redis, decides by the DB."""
    import socket

    from saas import create_app
    from saas.db import Database
    from saas.redis_client import make_redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # nothing listens here once closed
    app = create_app(
        settings, database=Database(engine), redis=make_redis(f"redis://127.0.0.1:{dead_port}/0", 0.1)
    )
    app.testing = True
    http = app.test_client()
    strict = http.get("/readyz")
    assert strict.status_code == 503 and strict.get_json()["checks"]["redis"]["ok"] is False
    relaxed = http.get("/readyz?optional=redis")
    assert relaxed.status_code == 200, relaxed.get_json()
    body = relaxed.get_json()
    assert body["status"] == "ready" and body["checks"]["database"]["ok"] is True
    assert body["checks"]["redis"] == {**body["checks"]["redis"], "ok": False, "optional": True}
    bad = http.get("/readyz?optional=database")
    assert bad.status_code == 422 and bad.mimetype == "application/problem+json"
    services(app).database.dispose()


def test_limiter_and_breaker_counters_are_exported(app, client):
    counters = services(app).counters
    counters.inc('rate_limited_total{policy="tenant_rpm"}', 2)
    counters.inc("rate_limited_total", 2)
    counters.inc("limits_fail_open_total", 3)
    counters.inc("breaker_opened_total")
    counters.inc('redis_errors_total{component="limits"}')
    counters.inc("redis_errors_total")
    body = client.get("/metrics", headers=SCRAPER).get_data(as_text=True)
    assert 'saas_rate_limited_total{policy="tenant_rpm"} 2.0' in body
    assert "saas_rate_limited_total 2.0" not in body  # only the labelled series: sum() stays right
    assert "saas_limits_fail_open_total 3.0" in body and "saas_breaker_opened_total 1.0" in body
    assert 'saas_redis_errors_total{component="limits"} 1.0' in body
    assert "# TYPE saas_limits_fail_open_total counter" in body
    assert "saas_redis_breaker_open 0.0" in body
    breaker = services(app).redis_guard.breaker
    breaker.failure()
    breaker.failure()
    try:
        assert "saas_redis_breaker_open 1.0" in client.get("/metrics", headers=SCRAPER).get_data(as_text=True)
    finally:
        breaker.success()  # the shared app's breaker: later tests' writes would fail closed


def test_a_metrics_failure_never_fails_a_request(client, monkeypatch):
    def broken(*args, **kwargs):
        raise FileNotFoundError("/tmp/saas-metrics/counter_1.db")

    monkeypatch.setattr(metrics, "observe_request", broken)
    assert client.get("/healthz").status_code == 200


def test_counting_functions_never_raise(monkeypatch):
    class Broken:
        def labels(self, *args):
            raise FileNotFoundError("/tmp/saas-metrics/counter_1.db")

    for name in ("WEBHOOKS", "RATE_LIMIT_REJECTIONS", "CACHE", "JOBS"):
        monkeypatch.setattr(metrics, name, Broken())
    metrics.webhook_event("invoice.paid", "processed")
    metrics.rate_limit_rejected("tenant_rpm")
    metrics.cache_hit("entitlements")
    metrics.job_processed("mail.invitation", "sent", 0.1)
