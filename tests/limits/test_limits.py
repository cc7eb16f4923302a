"""Rate limits and quotas: GCRA exact at the boundary, all policies in one call, headers,
tenant isolation, several app instances sharing one limit, the monthly quota period."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from saas.cache.namespace import PublicKeys, TenantKeys
from saas.http import client_ip
from saas.limits import calendar_month, gcra, usage_key
from saas.limits.gcra import Check, Quota
from saas.limits.policies import Rate, parse_policies
from saas.services import services
from tests.conftest import Api
from tests.helpers import redis_now


def test_gcra_exact_at_the_boundary(redis_client):
    redis_client.flushdb()
    check = Check("p", PublicKeys.rate("p", "x"), limit=5, period=60)
    remaining = []
    for _ in range(5):
        decision = gcra.run(redis_client, [check], None)
        assert decision.allowed
        remaining.append(decision.states[0].remaining)
    assert remaining == [4, 3, 2, 1, 0]
    denied = gcra.run(redis_client, [check], None)
    assert not denied.allowed and denied.reason == "rate_limited"
    assert denied.hit is not None and denied.hit.check.policy == "p"
    assert 11 <= denied.hit.retry_seconds <= 12  # one emission interval: 60 s / 5
    # a refused request consumes nothing: the state is what it was after the 5th request
    assert redis_client.pttl(check.key) > 59_000


def test_all_policies_in_one_call_refused_request_consumes_nothing(redis_client):
    redis_client.flushdb()
    loose = Check("loose", PublicKeys.rate("loose", "x"), limit=100, period=60)
    tight = Check("tight", PublicKeys.rate("tight", "x"), limit=2, period=60)
    for _ in range(2):
        assert gcra.run(redis_client, [loose, tight], None).allowed
    refused = gcra.run(redis_client, [loose, tight], None)
    assert not refused.allowed and refused.hit.check.policy == "tight"
    peek = gcra.run(redis_client, [loose], None, cost=0, peek=True)
    assert peek.states[0].remaining == 98  # the refused request did not count on `loose`


def test_noscript_fallback(redis_client):
    redis_client.flushdb()
    redis_client.script_flush()
    check = Check("p", PublicKeys.rate("p", "y"), limit=1, period=60)
    assert gcra.run(redis_client, [check], None).allowed
    assert redis_client.script_exists(gcra.SHA) == [True]


def test_quota_counts_and_stops(redis_client):
    redis_client.flushdb()
    tenant = uuid.uuid4()
    expire_at = int(redis_now(redis_client).timestamp()) + 86400  # EXPIREAT is on the Redis clock
    quota = Quota("monthly", usage_key(tenant, "2026-11"), 3, "2026-11", 30 * 86400, 2e9, expire_at)
    check = Check("tenant", TenantKeys(tenant).rate("tenant"), 100, 60)
    used = [gcra.run(redis_client, [check], quota).quota_used for _ in range(3)]
    assert used == [1, 2, 3]
    over = gcra.run(redis_client, [check], quota)
    assert not over.allowed and over.reason == "quota_exceeded"
    assert redis_client.get(f"{{t:{tenant}}}:usage:2026-11") == b"3"


def test_key_builder_refuses_tenantless_keys():
    with pytest.raises(TypeError):
        TenantKeys("acme")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TenantKeys(None)  # type: ignore[arg-type]
    tid = uuid.uuid4()
    assert TenantKeys(tid).rate("user", "u1").startswith("{t:" + str(tid) + "}:")


def test_rate_parsing_and_ip_subjects():
    assert Rate.parse("30/1m") == Rate(30, 60)
    assert Rate.parse("10/h") == Rate(10, 3600)
    with pytest.raises(ValueError):
        Rate.parse("0/1m")
    with pytest.raises(ValueError):
        parse_policies(["nope=1/1m"])
    assert parse_policies(["login-ip=5/30s"])["login-ip"] == Rate(5, 30)
    assert client_ip("2001:db8::1") == client_ip("2001:db8::ffff") == "2001:db8::/64"
    assert client_ip("::ffff:10.0.0.1") == "10.0.0.1"


def test_calendar_month_period():
    p = calendar_month(uuid.uuid4(), datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert p.label == "2026-12" and p.end == datetime(2027, 1, 1, tzinfo=UTC)


# --- HTTP ---------------------------------------------------------------------------------------


def _contacts(client, headers):
    return client.get("/api/v1/contacts", headers=headers)


def _consume(redis_client, check: Check, n: int) -> None:
    """Use ``n`` requests of a policy directly (fast, so no refill happens meanwhile: the HTTP
    requests that follow land exactly on the boundary whatever the machine's speed)."""
    for _ in range(n):
        assert gcra.run(redis_client, [check], None).allowed


def _ids(signed):
    return uuid.UUID(signed["tenant"]["id"]), uuid.UUID(signed["user"]["id"])


def test_user_limit_exact_with_headers(lapi, lclient, redis_client):
    signed = lapi.signup("acme")  # free plan: 60/min per tenant, 30/min per user
    h = lapi.auth(signed)
    tenant_id, user_id = _ids(signed)
    first = _contacts(lclient, h)
    assert first.status_code == 200
    policy = first.headers["RateLimit-Policy"]
    assert '"tenant";q=60;w=60' in policy and '"user";q=30;w=60' in policy
    assert re.search(r'"monthly";q=10000;w=\d+', policy)
    assert '"tenant";r=59;t=1' in first.headers["RateLimit"]
    assert '"user";r=29;t=2' in first.headers["RateLimit"]
    assert first.headers["X-RateLimit-Limit"] == "30"
    assert first.headers["X-RateLimit-Remaining"] == "29"
    assert int(first.headers["X-RateLimit-Reset"]) > redis_now(redis_client).timestamp()  # GCRA's clock
    _consume(redis_client, Check("user", TenantKeys(tenant_id).rate("user", user_id.hex), 30, 60), 28)
    last = _contacts(lclient, h)
    assert last.status_code == 200 and last.headers["X-RateLimit-Remaining"] == "0"
    refused = _contacts(lclient, h)
    assert refused.status_code == 429
    body = refused.get_json()
    assert body["code"] == "rate_limited" and body["policy"] == "user" and body["limit"] == 30
    assert refused.mimetype == "application/problem+json"
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    assert '"user";r=0' in refused.headers["RateLimit"]


def test_tenant_limit_and_tenant_b_unaffected(make_app, redis_client):
    app = make_app(ratelimit_principal_share=1.0)
    client = app.test_client()
    api = Api(client)
    signed_a = api.signup("tenant-a")
    a = api.auth(signed_a)
    b = api.auth(api.signup("tenant-b"))
    tenant_a, _ = _ids(signed_a)
    _consume(redis_client, Check("tenant", TenantKeys(tenant_a).rate("tenant"), 60, 60), 59)
    assert _contacts(client, a).status_code == 200  # the 60th
    refused = _contacts(client, a)
    assert refused.status_code == 429 and refused.get_json()["policy"] == "tenant"
    # tenant B has its own allowance, untouched by A's
    ok = _contacts(client, b)
    assert ok.status_code == 200
    assert '"tenant";r=59' in ok.headers["RateLimit"]


def test_two_app_instances_share_one_limit(make_app, redis_client):
    one, two = make_app(), make_app()
    api = Api(one.test_client())
    signed = api.signup("shared")
    h = api.auth(signed)
    tenant_id, user_id = _ids(signed)
    _consume(redis_client, Check("user", TenantKeys(tenant_id).rate("user", user_id.hex), 30, 60), 20)
    clients = [one.test_client(), two.test_client()]
    statuses = [_contacts(clients[i % 2], h).status_code for i in range(11)]
    assert statuses == [200] * 10 + [429]


def test_quota_exceeded_then_reset_at_period_boundary(lapp, lapi, lclient, redis_client, time_machine):
    # the Redis server's current month: its counters expire (EXPIREAT, on the Redis clock) 62 days
    # after it ends, so a hard-coded month would vanish at once some day
    period = calendar_month(uuid.uuid4(), redis_now(redis_client))
    following = calendar_month(uuid.uuid4(), period.end)
    time_machine.move_to(period.end - timedelta(seconds=1), tick=False)
    signed = lapi.signup("quota")
    h = lapi.auth(signed)
    tenant_id = uuid.UUID(signed["tenant"]["id"])
    redis_client.set(usage_key(tenant_id, period.label), 9999)
    assert _contacts(lclient, h).status_code == 200  # the 10,000th call
    over = _contacts(lclient, h)
    assert over.status_code == 429
    body = over.get_json()
    assert body["code"] == "quota_exceeded" and body["reset"] == f"{period.end:%Y-%m-%dT%H:%M:%SZ}"
    assert int(over.headers["Retry-After"]) >= 1
    time_machine.move_to(period.end + timedelta(seconds=1), tick=False)
    again = _contacts(lclient, h)
    assert again.status_code == 200
    assert redis_client.get(usage_key(tenant_id, following.label)) == b"1"
    assert redis_client.get(usage_key(tenant_id, period.label)) == b"10000"
    assert redis_client.ttl(usage_key(tenant_id, following.label)) > 60 * 86400


def test_login_throttled_per_account_across_ips_and_per_ip(make_app):
    app = make_app(ratelimit_policies=("login-account=3/1m", "login-ip=5/1m"))
    client = app.test_client()
    Api(client).signup("logins")

    def login(email, ip):
        return client.post(
            "/api/v1/auth/login",
            json={"email": email, "password": "wrong password"},
            environ_base={"REMOTE_ADDR": ip},
        )

    assert [login("owner@logins.test", f"10.0.0.{i}").status_code for i in range(3)] == [401] * 3
    refused = login("OWNER@Logins.test ", "10.0.0.9")  # normalised email, another IP
    assert refused.status_code == 429 and refused.get_json()["policy"] == "login-account"
    # per IP: other accounts from one address
    statuses = [login(f"x{i}@login.test", "10.1.1.1").status_code for i in range(6)]
    assert statuses == [401] * 5 + [429]
    assert login("y@login.test", "10.1.1.1").get_json()["policy"] == "login-ip"


def test_token_endpoint_throttled_per_client(make_app):
    app = make_app(ratelimit_policies=("token-client=2/1m",))
    client = app.test_client()
    form = {"grant_type": "refresh_token", "refresh_token": "nope", "client_id": "cli"}
    first = [client.post("/oauth/token", data=form).status_code for _ in range(2)]
    assert 429 not in first and all(400 <= code < 500 for code in first)  # the grant's own error
    refused = client.post("/oauth/token", data={**form, "refresh_token": "other"})
    assert refused.status_code == 429 and refused.get_json()["policy"] == "token-client"


def test_unauthenticated_routes_limited_per_ip_and_health_exempt(make_app):
    app = make_app(ratelimit_policies=("ip=2/1m",))
    client = app.test_client()
    assert client.get("/.well-known/jwks.json").status_code == 200
    assert client.get("/.well-known/jwks.json").status_code == 200
    assert client.get("/.well-known/jwks.json").status_code == 429
    assert client.get("/healthz").status_code == 200


def test_unlimited_plan_is_counted_for_metering(lapi, lclient, db_session, redis_client, steady_month):
    from saas.identity.models import Tenant

    signed = lapi.signup("unlimited")
    h = lapi.auth(signed)
    tenant_id, _ = _ids(signed)
    tenant = db_session.get(Tenant, tenant_id)
    tenant.plan = "enterprise"  # monthly_api_calls = -1: unlimited
    db_session.flush()  # the plan change invalidates the cached entitlements
    response = _contacts(lclient, h)
    assert response.status_code == 200
    assert '"tenant";q=6000;w=60' in response.headers["RateLimit-Policy"]
    assert "monthly" not in response.headers["RateLimit-Policy"]
    period = calendar_month(tenant_id, steady_month).label
    assert redis_client.get(usage_key(tenant_id, period)) == b"1"


def test_settings_from_env():
    from saas.settings import Settings, SettingsError

    s = Settings.from_env(
        {
            "RATELIMIT_POLICIES": "login-ip=5/1m, ip=10/1s",
            "RATELIMIT_PRINCIPAL_SHARE": "0.25",
            "RATELIMIT_FAIL_CLOSED": "login,mfa",
            "CACHE_LOCAL_TTL": "0",
            "DB_POOL_PRE_PING": "false",
        }
    )
    assert s.ratelimit_policies == ("login-ip=5/1m", "ip=10/1s")
    assert s.ratelimit_principal_share == 0.25 and s.ratelimit_fail_closed == ("login", "mfa")
    assert s.cache_local_ttl_seconds == 0 and s.db_pool_pre_ping is False
    with pytest.raises(SettingsError, match="RATELIMIT_PRINCIPAL_SHARE"):
        Settings.from_env({"RATELIMIT_PRINCIPAL_SHARE": "2"})
    with pytest.raises(SettingsError, match="REDIS_BREAKER_COOLDOWN"):
        Settings.from_env({"REDIS_BREAKER_COOLDOWN": "-1"})


def test_bad_policy_override_stops_start_up(make_app):
    from saas.settings import SettingsError

    with pytest.raises(SettingsError, match="RATELIMIT_POLICIES: unknown policy 'nope'"):
        make_app(ratelimit_policies=("nope=1/1m",))


def test_hosted_login_form_is_throttled_per_account(make_app):
    app = make_app(ratelimit_policies=("login-account=2/1m",))
    client = app.test_client()
    form = {"email": "someone@example.test", "password": "wrong"}
    first = [client.post("/oauth/login", data=form).status_code for _ in range(2)]
    assert 429 not in first
    refused = client.post("/oauth/login", data={**form, "email": "SOMEONE@example.test"})
    assert refused.status_code == 429 and refused.get_json()["policy"] == "login-account"


def test_forged_bearer_tokens_count_against_the_ip_limit(make_app):
    """A bad token is answered 401 only after the limiter has counted the request per IP, so
    forging tokens (each costing a signature check) is throttled like any anonymous caller."""
    app = make_app(ratelimit_policies=("ip=3/1m",))
    client = app.test_client()
    forged = {"Authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"}
    statuses = [client.get("/api/v1/contacts", headers=forged).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    r = client.get("/api/v1/contacts", headers=forged)
    assert r.get_json()["code"] == "rate_limited" and "Retry-After" in r.headers


def test_kept_plans_follow_a_new_period_function(lapp, lapi, lclient, steady_month):
    """The limiter keeps each principal's plan for its billing period; a new ``period_for``
    (billing's periods) is used from the next request on."""
    from saas.limits import Period

    h = lapi.auth(lapi.signup("periods"))
    limiter = services(lapp).limiter
    month = calendar_month(uuid.uuid4(), steady_month)
    month_seconds = int((month.end - month.start).total_seconds())  # 28 to 31 days
    assert _contacts(lclient, h).headers["RateLimit-Policy"].endswith(f"w={month_seconds}")
    original = limiter.period_for
    start, end = steady_month - timedelta(days=5), steady_month + timedelta(days=30)  # 35 days
    limiter.period_for = lambda tenant_id, now, entitlements: Period(f"{start:%Y-%m-%d}", start, end)
    try:
        r = _contacts(lclient, h)
        assert r.status_code == 200
        assert '"monthly";q=' in r.headers["RateLimit-Policy"]
        assert f"w={int((end - start).total_seconds())}" in r.headers["RateLimit-Policy"]
    finally:
        limiter.period_for = original
