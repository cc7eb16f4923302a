"""Transport security headers: ``Strict-Transport-Security`` (RFC 6797) on responses that came
over https, directly or through a trusted proxy, and never because a client said so."""

from __future__ import annotations

import pytest

from saas import HSTS, create_app
from saas.db import Database
from tests.test_revocation_gunicorn import gunicorn  # noqa: F401 - the fixture: gunicorn, 2 workers

PATHS = ("/healthz", "/api/v1/me", "/no-such-path", "/openapi.json", "/.well-known/openid-configuration")


def test_https_responses_carry_hsts(client):
    for path in PATHS:
        r = client.get(path, base_url="https://api.example.test")
        assert r.headers.get("Strict-Transport-Security") == HSTS, path
    assert HSTS == "max-age=63072000; includeSubDomains"


def test_plain_http_never_sends_hsts(client):
    """RFC 6797 section 7.2: a host must not send it over plain http (and a client's own
    X-Forwarded-Proto means nothing without a trusted proxy)."""
    for path in PATHS:
        assert "Strict-Transport-Security" not in client.get(path).headers, path
        r = client.get(path, headers={"X-Forwarded-Proto": "https"})
        assert "Strict-Transport-Security" not in r.headers, path


@pytest.fixture()
def proxied(settings, engine, redis_client, connection):
    """The app behind one trusted proxy (``TRUSTED_PROXY_HOPS=1``), on the test's transaction."""
    application = create_app(
        settings.with_overrides(trusted_proxy_hops=1), database=Database(connection), redis=redis_client
    )
    application.testing = True
    return application.test_client()


def test_https_at_a_trusted_proxy_sends_hsts(proxied):
    r = proxied.get("/healthz", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"})
    assert r.headers.get("Strict-Transport-Security") == HSTS
    # plain http at the proxy: the proxy appends "http" after whatever the client sent
    spoofed = proxied.get("/healthz", headers={"X-Forwarded-Proto": "https, http"})
    assert "Strict-Transport-Security" not in spoofed.headers
    assert "Strict-Transport-Security" not in proxied.get("/healthz").headers


def test_gunicorn_never_takes_https_from_a_clients_header(gunicorn):  # noqa: F811 - the imported fixture
    """Through gunicorn with ``TRUSTED_PROXY_HOPS=0``: a loopback client's own
    ``X-Forwarded-Proto: https`` (a peer in gunicorn's ``forwarded_allow_ips``) turns on no
    HSTS; the scheme comes from the socket or from ProxyFix alone."""
    import requests

    base, _log, _env = gunicorn
    spoofed = {"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "on"}
    r = requests.get(f"{base}/healthz", headers=spoofed, timeout=30)
    assert r.status_code == 200
    assert "Strict-Transport-Security" not in r.headers
