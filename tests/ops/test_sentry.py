"""Sentry error reports (saas.observability.sentry, docs/observability.md): an unhandled error in
a view is captured with its tenant and request id tags and without any secret or personal
data, once with a capture transport in the process and once from gunicorn to a local HTTP
server standing as the DSN's Sentry (the SDK's real HTTP transport, envelopes decoded)."""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from sentry_sdk.transport import Transport
from sqlalchemy import create_engine
from sqlalchemy import text as sql

from saas.db import schema_name_for
from saas.observability import sentry
from tests.conftest import TEST_PASSWORD, _redis_url
from tests.helpers import signup_over_http
from tests.peers import gunicorn_server

QUERY_SECRET = "query-secret-0123456789"
COOKIE_SECRET = "cookie-secret-0123456789"
CLIENT_SECRET = "client-secret-0123456789"


class CaptureTransport(Transport):
    """A sentry-sdk transport keeping the events instead of sending them (the SDK's documented
    ``transport`` option: a ``Transport`` subclass)."""

    events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Any) -> None:
        for item in envelope.items:
            if item.type == "event":
                CaptureTransport.events.append(item.payload.json)


@pytest.fixture()
def captured(app, settings) -> Iterator[list[dict[str, Any]]]:
    """The shared app reporting to Sentry through :class:`CaptureTransport`; Sentry off again after."""
    import sentry_sdk

    CaptureTransport.events = []
    sentry.init_app(app, settings.with_overrides(sentry_dsn="http://public@127.0.0.1:9/1"),
                    transport=CaptureTransport)  # fmt: skip
    try:
        yield CaptureTransport.events
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init()  # no DSN: off
        app.extensions.pop("saas.sentry", None)


def _text(event: dict[str, Any]) -> str:
    return json.dumps(event, default=str)


def test_an_unhandled_error_in_a_view_is_captured_with_tags_and_without_secrets(
    captured, api, client, monkeypatch
):
    from saas.tenancy import members as members_service

    owner = api.signup("sentried", email="owner.sentried@example.test")
    token = owner["token"]["access_token"]

    def explode(*args, **kwargs):
        raise RuntimeError("cannot list for owner.sentried@example.test, token " + token)

    monkeypatch.setattr(members_service, "list_members", explode)
    r = client.get(
        f"/api/v1/members?token={QUERY_SECRET}",
        headers={**api.auth(owner), "X-Request-ID": "req-sentry-1", "Cookie": f"session={COOKIE_SECRET}"},
    )
    assert r.status_code == 500
    assert len(captured) == 1, captured
    event = captured[0]
    assert event["tags"]["tenant_id"] == owner["tenant"]["id"]
    assert event["tags"]["request_id"] == "req-sentry-1"
    assert event["transaction"] == "/api/v1/members"  # the URL rule, never the path
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"
    assert event["request"]["url"].endswith("/api/v1/members")
    assert "query_string" not in event["request"] and "cookies" not in event["request"]
    headers = {k.lower() for k in event["request"].get("headers", {})}
    assert not headers & {"authorization", "cookie"}
    text = _text(event)
    for secret in (token, QUERY_SECRET, COOKIE_SECRET, "owner.sentried@example.test"):
        assert secret not in text, secret
    assert "[email]" in text  # the address in the message was masked, the message kept
    import sentry_sdk

    client = sentry_sdk.get_client()
    assert not client.should_send_default_pii() and not client.options["include_local_variables"]


def test_bodies_lose_passwords_tokens_secrets_and_emails(captured, client, monkeypatch):
    from saas.auth import service

    def explode(*args, **kwargs):
        raise RuntimeError("login backend down")

    monkeypatch.setattr(service, "login", explode)
    body = {"email": "someone.private@example.test", "password": TEST_PASSWORD, "tenant": "acme"}
    r = client.post("/api/v1/auth/login", json=body, headers={"X-Request-ID": "req-sentry-2"})
    assert r.status_code == 500
    assert len(captured) == 1
    event = captured[0]
    assert event["tags"]["request_id"] == "req-sentry-2" and "tenant_id" not in event["tags"]
    data = event["request"]["data"]
    assert data["password"] == "[redacted]" and data["tenant"] == "acme"
    assert data["email"] == "[email]"
    text = _text(event)
    assert TEST_PASSWORD not in text and "someone.private" not in text


def test_scrub_event_drops_every_secret_shape():
    event = sentry.before_send(
        {
            "request": {
                "url": "https://x.test/oauth/token?code=abc",
                "query_string": "code=abc",
                "cookies": {"s": "v"},
                "headers": {"Authorization": "Basic abcdefgh12345", "Cookie": "s=v", "Accept": "*/*"},
                "data": {"client_secret": CLIENT_SECRET, "refresh_token": "rt", "nested": [{"secret": "x"}]},
            },
            "user": {"id": "u1", "email": "a@b.test", "ip_address": "203.0.113.9"},
            "extra": {"note": "Bearer abcdefghijklmnop", "jwt": "x"},
            "breadcrumbs": {"values": [{"message": "mail to c@d.test"}]},
        }
    )
    assert event["request"] == {
        "url": "https://x.test/oauth/token",
        "headers": {"Accept": "*/*"},
        "data": {
            "client_secret": "[redacted]",
            "refresh_token": "[redacted]",
            "nested": [{"secret": "[redacted]"}],
        },
    }
    assert event["user"] == {"id": "u1"}
    assert event["extra"]["note"] == "Bearer [redacted]"
    assert event["breadcrumbs"]["values"][0]["message"] == "mail to [email]"
    assert CLIENT_SECRET not in _text(event)


# --- through gunicorn, to a local HTTP server as the DSN's Sentry --------------------------------


class SentryServer:
    """A local HTTP server standing as Sentry: ``POST /api/<project>/envelope/`` bodies (gzip,
    deflate or plain envelopes: a header line, then item header and payload lines) decoded."""

    def __init__(self) -> None:
        received = self
        self.events: list[dict[str, Any]] = []
        self.auth: list[str] = []
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    raw = gzip.decompress(raw)
                elif encoding == "deflate":
                    raw = zlib.decompress(raw)
                elif encoding == "br":
                    import brotli  # only when the SDK found it installed

                    raw = brotli.decompress(raw)
                lines = raw.split(b"\n")
                with received.lock:
                    received.auth.append(self.headers.get("X-Sentry-Auth", ""))
                    for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                        if json.loads(header).get("type") == "event":
                            received.events.append(json.loads(payload))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.dsn = f"http://publickey@127.0.0.1:{self.server.server_address[1]}/42"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SentryServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for_event(self, seconds: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self.lock:
                if self.events:
                    return self.events[0]
            time.sleep(0.1)
        raise AssertionError("no event reached the Sentry server")


def test_gunicorn_reports_an_unhandled_error_to_the_dsn(
    database_url, worker_id_str, redis_client, tmp_path, forget_committed
):
    """A tenant's ``contacts`` table dropped behind the service's back: listing them is an
    unhandled ``UndefinedTable`` in the view, a 500 to the client and one event to Sentry."""
    redis_client.flushdb()
    with SentryServer() as sentry_server, gunicorn_server(
        database_url, _redis_url(worker_id_str), tmp_path, workers=1,
        env={"SENTRY_DSN": sentry_server.dsn, "SENTRY_ENVIRONMENT": "ci", "RATELIMIT_ENABLED": "false"},
    ) as server:  # fmt: skip
        slug = f"sentry-{uuid.uuid4().hex[:8]}"
        email = f"owner@{slug}.test"
        body = signup_over_http(server.base, slug, email)
        forget_committed.add(body["tenant"]["id"])
        token = body["token"]["access_token"]
        engine = create_engine(database_url)
        with engine.begin() as conn:
            schema = schema_name_for(uuid.UUID(body["tenant"]["id"]))
            conn.execute(sql(f'DROP TABLE "{schema}".contacts CASCADE'))
        engine.dispose()
        r = requests.get(
            f"{server.base}/api/v1/contacts",
            params={"token": QUERY_SECRET},
            headers={"Authorization": f"Bearer {token}", "X-Request-ID": "req-gunicorn-1",
                     "Cookie": f"session={COOKIE_SECRET}"},
            timeout=10,
        )  # fmt: skip
        assert r.status_code == 500 and r.headers["X-Request-ID"] == "req-gunicorn-1"
        event = sentry_server.wait_for_event()
    assert sentry_server.auth and "sentry_key=publickey" in sentry_server.auth[0]
    assert event["environment"] == "ci"
    assert event["tags"]["tenant_id"] == body["tenant"]["id"]
    assert event["tags"]["request_id"] == "req-gunicorn-1"
    assert event["transaction"] == "/api/v1/contacts"
    assert any(v["type"] == "UndefinedTable" for v in event["exception"]["values"])
    text = json.dumps(event)
    for secret in (token, QUERY_SECRET, COOKIE_SECRET, email, TEST_PASSWORD):
        assert secret not in text, secret


def test_settings_read_the_dsn_and_environment():
    from saas.settings import Settings, SettingsError

    s = Settings.from_env({"SENTRY_DSN": "https://k@o1.ingest.sentry.io/2", "SENTRY_ENVIRONMENT": "staging"})
    assert s.sentry_dsn == "https://k@o1.ingest.sentry.io/2" and s.sentry_environment == "staging"
    assert Settings.from_env({}).sentry_dsn is None
    with pytest.raises(SettingsError, match=r"^SENTRY_DSN: .*\*\*\*@"):
        Settings.from_env({"SENTRY_DSN": "ftp://secretkey@host/1"})


def test_the_trace_id_is_a_tag_while_tracing_is_on(app):
    from flask import g

    with app.test_request_context("/api/v1/contacts"):
        g.request_id, g.trace_id = "req-3", "ab" * 16  # as tracing's before_request sets it
        event = sentry.before_send({"tags": {"kept": "yes"}})
    assert event["tags"] == {"kept": "yes", "request_id": "req-3", "trace_id": "ab" * 16}
