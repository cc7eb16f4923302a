"""Fixes from the review of the limits (issue 5): the client IP behind trusted proxies, limits
of 0 and unlimited overrides, the breaker's half-open probe, the Prometheus hooks."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from saas.cache.guard import CircuitBreaker, Counters, RedisGuard, RedisUnavailable
from saas.cache.namespace import PublicKeys
from saas.limits import calendar_month, gcra, usage_key
from saas.limits.gcra import Check
from saas.observability import metrics
from tests.conftest import Api
from tests.limits.test_limits_cli import _cli

# --- 1. the client IP behind a proxy -------------------------------------------------------


def _login(client, email, forwarded_for, peer="10.0.0.1"):
    return client.post(
        "/api/v1/auth/login",
        json={"email": email, "password": "wrong password"},
        environ_base={"REMOTE_ADDR": peer},
        headers={"X-Forwarded-For": forwarded_for},
    )


def test_behind_a_trusted_proxy_each_client_has_its_own_ip_limit(make_app):
    app = make_app(trusted_proxy_hops=1, ratelimit_policies=("login-ip=2/1m",))
    client = app.test_client()
    # every request arrives from the ingress (10.0.0.1); the proxy appended the client's address
    assert [_login(client, f"a{i}@x.test", "198.51.100.1").status_code for i in range(2)] == [401] * 2
    refused = _login(client, "a9@x.test", "198.51.100.1")
    assert refused.status_code == 429 and refused.get_json()["policy"] == "login-ip"
    # another client behind the same proxy is not locked out
    assert _login(client, "b@x.test", "198.51.100.2").status_code == 401
    # a client cannot pick its key by sending its own X-Forwarded-For: only the last hop counts
    spoofed = _login(client, "c@x.test", "203.0.113.50, 198.51.100.1")
    assert spoofed.status_code == 429


def test_without_trusted_proxies_forwarded_headers_are_ignored(make_app):
    app = make_app(ratelimit_policies=("login-ip=2/1m",))  # TRUSTED_PROXY_HOPS=0, the default
    client = app.test_client()
    statuses = [_login(client, f"a{i}@x.test", f"198.51.100.{i}").status_code for i in range(3)]
    assert statuses == [401, 401, 429]  # keyed by the socket peer, whatever the header says


def test_audit_records_the_forwarded_client_ip(make_app):
    app = make_app(trusted_proxy_hops=1)
    client = app.test_client()
    api = Api(client)
    h = api.auth(api.signup("proxied"))
    assert _login(client, "owner@proxied.test", "198.51.100.77").status_code == 401
    events = client.get("/api/v1/audit-events?action=auth.login_failed", headers=h).get_json()
    assert events and {e["ip"] for e in events} == {"198.51.100.77"}


def test_trusted_proxy_hops_setting():
    from werkzeug.middleware.proxy_fix import ProxyFix

    from saas.settings import Settings, SettingsError

    assert Settings.from_env({}).trusted_proxy_hops == 0
    assert Settings.from_env({"TRUSTED_PROXY_HOPS": "2"}).trusted_proxy_hops == 2
    with pytest.raises(SettingsError, match="TRUSTED_PROXY_HOPS"):
        Settings.from_env({"TRUSTED_PROXY_HOPS": "-1"})
    assert ProxyFix  # imported by create_app only when hops > 0


def test_proxy_fix_also_trusts_the_forwarded_scheme(make_app):
    from werkzeug.middleware.proxy_fix import ProxyFix

    app = make_app(trusted_proxy_hops=1)
    assert isinstance(app.wsgi_app, ProxyFix) and app.wsgi_app.x_for == 1 and app.wsgi_app.x_proto == 1
    assert not isinstance(make_app().wsgi_app, ProxyFix)


# --- 2. and 3. limits of 0, unlimited requests per minute ----------------------------------


def _override(app, settings, slug, limit):
    result = _cli(app, settings, "tenants", "set-plan", slug, "pro", "--limit", limit)
    assert result.exit_code == 0, result.output


def test_monthly_quota_of_zero_refuses_every_request(
    lapp, lapi, lclient, settings, redis_client, steady_month
):
    signed = lapi.signup("zeroquota")
    h = lapi.auth(signed)
    _override(lapp, settings, "zeroquota", "monthly_api_calls=0")
    refused = lclient.get("/api/v1/contacts", headers=h)
    assert refused.status_code == 429, refused.get_data(as_text=True)
    body = refused.get_json()
    assert body["code"] == "quota_exceeded" and body["limit"] == 0
    assert int(refused.headers["Retry-After"]) >= 1
    tenant_id = uuid.UUID(signed["tenant"]["id"])
    period = calendar_month(tenant_id, steady_month).label
    assert redis_client.get(usage_key(tenant_id, period)) in (None, b"0")  # nothing consumed


def test_unlimited_requests_per_minute_has_no_rate_checks_but_is_metered(
    lapp, lapi, lclient, settings, redis_client, steady_month
):
    signed = lapi.signup("norpm")
    h = lapi.auth(signed)
    _override(lapp, settings, "norpm", "requests_per_minute=-1")
    for _ in range(3):
        response = lclient.get("/api/v1/contacts", headers=h)
        assert response.status_code == 200
    policy = response.headers["RateLimit-Policy"]
    assert '"tenant"' not in policy and '"user"' not in policy  # not 60/min
    assert '"monthly";q=1000000' in policy
    tenant_id = uuid.UUID(signed["tenant"]["id"])
    period = calendar_month(tenant_id, steady_month).label
    assert redis_client.get(usage_key(tenant_id, period)) == b"3"
    shown = json.loads(_cli(lapp, settings, "limits", "show", "norpm", "--json").output)
    assert shown["policies"] == [] and shown["quota"]["used"] == 3


def test_zero_requests_per_minute_refuses(lapp, lapi, lclient, settings, redis_client, steady_month):
    signed = lapi.signup("zerorpm")
    h = lapi.auth(signed)
    _override(lapp, settings, "zerorpm", "requests_per_minute=0")
    refused = lclient.get("/api/v1/contacts", headers=h)
    assert refused.status_code == 429
    body = refused.get_json()
    assert body["code"] == "rate_limited" and body["policy"] in {"tenant", "user"} and body["limit"] == 0
    assert refused.headers["Retry-After"] == "60"
    assert '"tenant";q=0;w=60' in refused.headers["RateLimit-Policy"]
    tenant_id = uuid.UUID(signed["tenant"]["id"])
    period = calendar_month(tenant_id, steady_month).label
    assert redis_client.get(usage_key(tenant_id, period)) is None  # a refused request is not metered
    shown = json.loads(_cli(lapp, settings, "limits", "show", "zerorpm", "--json").output)
    assert {p["policy"]: (p["limit"], p["remaining"]) for p in shown["policies"]} == {"tenant": (0, 0)}


def test_gcra_limit_zero_is_refused_and_writes_nothing(redis_client):
    redis_client.flushdb()
    check = Check("p", PublicKeys.rate("p", "zero"), limit=0, period=60)
    decision = gcra.run(redis_client, [check], None)
    assert not decision.allowed and decision.hit is not None and decision.hit.retry_seconds == 60
    assert decision.states[0].remaining == 0
    assert not redis_client.exists(check.key)


def test_gcra_bound_is_the_documented_burst_plus_continuous_refill(redis_client):
    """docs/limits.md "Algorithm": ``limit`` at once, then one per ``period/limit``. The script's
    ``tau`` of ``limit x T`` is the textbook ``(limit - 1) x T`` (it compares after adding ``T``)."""
    redis_client.flushdb()
    # T = 1.5 s: wide enough that a loaded machine cannot let a whole interval pass unseen
    check = Check("p", PublicKeys.rate("p", "bound"), limit=4, period=6)
    assert check.tolerance_us - check.interval_us == (check.limit - 1) * check.interval_us
    assert [gcra.run(redis_client, [check], None).allowed for _ in range(5)] == [True] * 4 + [False]
    time.sleep(1.55)  # one emission interval later: exactly one more
    assert gcra.run(redis_client, [check], None).allowed
    assert not gcra.run(redis_client, [check], None).allowed


# --- 5. the breaker's half-open probe ------------------------------------------------------


def test_a_probe_raising_anything_counts_as_a_failure_and_frees_the_slot(redis_client):
    now = [0.0]
    breaker = CircuitBreaker(threshold=1, cooldown=5.0, clock=lambda: now[0])
    guard = RedisGuard(redis_client, breaker, Counters())

    def down(r):
        raise OSError("connection refused")

    def bug(r):
        raise ValueError("not a Redis error")

    with pytest.raises(RedisUnavailable):
        guard.call("cache", down)
    assert breaker.state == CircuitBreaker.OPEN
    now[0] = 6.0  # cool-down over: this call is the half-open probe
    with pytest.raises(ValueError):
        guard.call("cache", bug)
    assert breaker.state == CircuitBreaker.OPEN and breaker.opened_at == 6.0  # a failure
    with pytest.raises(RedisUnavailable, match="circuit open"):
        guard.call("cache", lambda r: r.ping())
    now[0] = 12.0  # the next probe is allowed and closes the breaker
    assert guard.call("cache", lambda r: r.ping()) is True
    assert breaker.state == CircuitBreaker.CLOSED
    # in the closed state a non-Redis error propagates and is not a Redis failure
    with pytest.raises(ValueError):
        guard.call("cache", bug)
    assert breaker.state == CircuitBreaker.CLOSED and breaker.failures == 0


# --- 6. Prometheus hooks -------------------------------------------------------------------


def _sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_refusals_and_cache_lookups_reach_prometheus(make_app):
    app = make_app(ratelimit_policies=("ip=1/1m",))
    client = app.test_client()
    before = _sample("saas_rate_limit_rejections_total", policy="ip")
    client.get("/.well-known/jwks.json")
    assert client.get("/.well-known/jwks.json").status_code == 429
    assert _sample("saas_rate_limit_rejections_total", policy="ip") == before + 1

    lapp = make_app()
    lclient = lapp.test_client()
    api = Api(lclient)
    h = api.auth(api.signup("metered"))
    misses = _sample("saas_cache_requests_total", cache="ent", result="miss")
    hits = _sample("saas_cache_requests_total", cache="ent", result="hit")
    assert lclient.get("/api/v1/contacts", headers=h).status_code == 200
    assert lclient.get("/api/v1/contacts", headers=h).status_code == 200
    assert _sample("saas_cache_requests_total", cache="ent", result="miss") >= misses + 1
    assert _sample("saas_cache_requests_total", cache="ent", result="hit") >= hits + 1


def test_a_failing_metrics_hook_never_changes_the_response(make_app, monkeypatch):
    def broken(*args):
        raise RuntimeError("metrics backend down")

    for name in ("rate_limit_rejected", "cache_hit", "cache_miss"):
        monkeypatch.setattr(metrics, name, broken)
    app = make_app(ratelimit_policies=("ip=1/1m",))
    client = app.test_client()
    client.get("/.well-known/jwks.json")
    refused = client.get("/.well-known/jwks.json")
    assert refused.status_code == 429 and refused.get_json()["code"] == "rate_limited"
    api = Api(make_app().test_client())
    h = api.auth(api.signup("brokenmetrics"))
    assert api.client.get("/api/v1/contacts", headers=h).status_code == 200
