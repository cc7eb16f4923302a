"""Sign-in throttles apply by endpoint, whatever credentials the request carries (hardening
issue, item 1), and a login lockout is audited once per lockout window."""

from __future__ import annotations

import uuid

from saas.cache import invalidate_tenant
from saas.services import services
from tests.conftest import TEST_PASSWORD, Api


def _wrong_login(client, email, headers=None, ip="10.9.0.1"):
    return client.post(
        "/api/v1/auth/login",
        json={"email": email, "password": "wrong password"},
        headers=headers or {},
        environ_base={"REMOTE_ADDR": ip},
    )


def test_a_bearer_token_does_not_lift_the_login_throttle(make_app):
    """12 wrong passwords with a valid bearer token of another account: the account's bucket
    (login-account, 10/1m) empties and the right password is then refused while throttled."""
    client = make_app().test_client()
    api = Api(client)
    api.signup("victim")
    attacker = api.auth(api.signup("attacker"))
    statuses = [
        _wrong_login(client, "owner@victim.test", attacker, ip=f"10.9.0.{i}").status_code for i in range(12)
    ]
    assert statuses == [401] * 10 + [429] * 2
    refused = client.post(
        "/api/v1/auth/login", json={"email": "owner@victim.test", "password": TEST_PASSWORD}, headers=attacker
    )
    assert refused.status_code == 429
    assert refused.get_json()["policy"] == "login-account"
    assert "access_token" not in refused.get_json()


def test_a_bearer_token_does_not_lift_the_mfa_and_signup_throttles(make_app):
    app = make_app(ratelimit_policies=("mfa-ip=3/1m", "signup-ip=2/1h"))
    client = app.test_client()
    api = Api(client)
    bearer = api.auth(api.signup("holder"))  # one signup of the 2 this IP may make
    mfa = [
        client.post("/api/v1/auth/mfa", json={"mfa_token": f"t{i}", "code": "000000"}, headers=bearer)
        for i in range(4)
    ]
    assert [r.status_code for r in mfa] == [401, 401, 401, 429]
    assert mfa[-1].get_json()["policy"] == "mfa-ip"

    def signup(slug):  # a signed-in account creating another tenant: the tenant alone
        return client.post("/api/v1/signup", json={"tenant": {"name": "X", "slug": slug}}, headers=bearer)

    assert signup("second").status_code == 201
    refused = signup("third")
    assert refused.status_code == 429 and refused.get_json()["policy"] == "signup-ip"


def test_a_sign_in_endpoint_has_the_same_policies_with_or_without_a_bearer(make_app, redis_client):
    """By endpoint: the bearer's tenant limits are neither added (nor is the login metered)."""
    client = make_app().test_client()
    api = Api(client)
    signed = api.signup("both")
    bare = _wrong_login(client, "nobody@both.test")
    with_bearer = _wrong_login(client, "nobody@both.test", api.auth(signed))
    assert bare.status_code == with_bearer.status_code == 401
    assert with_bearer.headers["RateLimit-Policy"] == bare.headers["RateLimit-Policy"]
    policy = bare.headers["RateLimit-Policy"]
    assert '"login-ip"' in policy and '"login-account"' in policy
    tenant_id = uuid.UUID(signed["tenant"]["id"])
    assert list(redis_client.scan_iter(f"{{t:{tenant_id}}}:rl:*")) == []  # no tenant limit
    assert list(redis_client.scan_iter(f"{{t:{tenant_id}}}:usage:*")) == []  # no usage counted


def _dead_tenant_token(api, db_session, slug):
    from saas.identity.models import Tenant
    from saas.ops.lifecycle import drop_tenant

    signed = api.signup(slug)
    tenant = db_session.get(Tenant, uuid.UUID(signed["tenant"]["id"]))
    drop_tenant(db_session, tenant)
    invalidate_tenant([tenant.id])
    return api.auth(signed)


def test_a_deleted_tenants_token_is_limited_per_ip_and_refused(make_app, db_session):
    """A token whose tenant no longer exists is no principal for the limiter: the IP limit
    applies, and the view answers 401."""
    app = make_app(ratelimit_policies=("ip=3/1m",))
    client = app.test_client()
    dead = _dead_tenant_token(Api(client), db_session, "gone")
    responses = [client.get("/api/v1/contacts", headers=dead) for _ in range(4)]
    assert [r.status_code for r in responses] == [401, 401, 401, 429]
    assert responses[0].get_json()["detail"] == "The access token's tenant no longer exists."
    assert '"ip";q=3' in responses[0].headers["RateLimit-Policy"]
    assert responses[-1].get_json()["policy"] == "ip"


def test_a_deleted_tenants_token_does_not_lift_the_login_throttle(make_app, db_session):
    app = make_app(ratelimit_policies=("login-account=3/1m",))
    client = app.test_client()
    api = Api(client)
    api.signup("target")
    dead = _dead_tenant_token(api, db_session, "ghost")
    statuses = [_wrong_login(client, "owner@target.test", dead).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]


# --- auth.login_throttled ------------------------------------------------------------------------


def _member_of_two_tenants(api, db_session):
    """The owner of ``home`` who is also a member of ``other``; tokens of both owners."""
    from saas.identity.models import Membership

    home, other = api.signup("home"), api.signup("other")
    db_session.add(
        Membership(
            user_id=uuid.UUID(home["user"]["id"]), tenant_id=uuid.UUID(other["tenant"]["id"]), role="member"
        )
    )
    db_session.flush()
    return api.auth(home), api.auth(other)


def _throttled_events(client, headers):
    r = client.get("/api/v1/audit-events?action=auth.login_throttled", headers=headers)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _lockout_keys(app, email):
    from saas.cache.namespace import PublicKeys
    from saas.limits import policies

    subject = "e:" + policies.account_subject(services(app).limiter.secret, email)
    key = PublicKeys.rate("login-account", subject)
    return key, policies.lockout_marker(key)


def test_a_login_lockout_is_audited_once_per_window_in_every_tenant(make_app, db_session, redis_client):
    app = make_app(ratelimit_policies=("login-account=10/1h",))  # no refill while the test runs
    client = app.test_client()
    api = Api(client)
    home, other = _member_of_two_tenants(api, db_session)
    email = "owner@home.test"
    brute = {"User-Agent": "brute/1"}
    statuses = [_wrong_login(client, email, brute, ip=f"10.8.0.{i}").status_code for i in range(30)]
    assert statuses == [401] * 10 + [429] * 20
    for headers in (home, other):
        events = _throttled_events(client, headers)
        assert len(events) == 1, events
        event = events[0]
        assert event["target"]["type"] == "user" and event["ip"] == "10.8.0.10"
        assert event["user_agent"] == "brute/1"
        assert event["data"]["policy"] == "login-account" and event["data"]["window"] == 3600
    # the marker lives as long as the policy's window
    throttle, marker = _lockout_keys(app, email)
    assert 3500 < redis_client.ttl(marker) <= 3600
    # the window passes: the bucket refills and the marker expires (moved on by deleting them,
    # the GCRA runs on the Redis server's clock); the next lockout is a new event
    redis_client.delete(throttle, marker)
    statuses = [_wrong_login(client, email).status_code for _ in range(12)]
    assert statuses == [401] * 10 + [429] * 2
    for headers in (home, other):
        assert len(_throttled_events(client, headers)) == 2


def test_a_throttled_unknown_email_is_audited_nowhere(make_app, db_session):
    app = make_app(ratelimit_policies=("login-account=2/1m",))
    client = app.test_client()
    api = Api(client)
    h = api.auth(api.signup("bystander"))
    assert [_wrong_login(client, "nobody@nowhere.test").status_code for _ in range(3)] == [401, 401, 429]
    assert _throttled_events(client, h) == []


def test_a_hosted_login_lockout_is_audited_too(make_app):
    app = make_app(ratelimit_policies=("login-account=2/1m",))
    client = app.test_client()
    api = Api(client)
    h = api.auth(api.signup("hosted"))
    form = {"email": "owner@hosted.test", "password": "wrong"}
    statuses = [client.post("/oauth/login", data=form).status_code for _ in range(4)]
    assert statuses[-2:] == [429, 429]
    assert [e["data"]["policy"] for e in _throttled_events(client, h)] == ["login-account"]


def test_a_failing_lockout_audit_never_changes_the_429(make_app, monkeypatch):
    from saas.auth import service

    def broken(*args, **kwargs):
        raise RuntimeError("database down")

    monkeypatch.setattr(service, "audit_login_throttled", broken)
    client = make_app(ratelimit_policies=("login-account=1/1m",)).test_client()
    statuses = [_wrong_login(client, "someone@x.test").status_code for _ in range(3)]
    assert statuses == [401, 429, 429]


def test_disabling_mfa_checks_a_password_so_it_is_throttled_by_the_bearers_account(make_app, time_machine):
    """``DELETE /api/v1/me/mfa/totp`` checks a password and a code: the login and MFA pairs
    apply, keyed by the bearer's subject (its body names no account)."""
    from tests.test_mfa import T0, _code, _enroll

    time_machine.move_to(T0, tick=False)
    clock = time_machine
    client = make_app(ratelimit_policies=("login-account=3/1m",)).test_client()
    api = Api(client)
    signed = api.signup("disabler")
    secret, _ = _enroll(client, api.auth(signed), clock)
    token = api.login("owner@disabler.test").get_json()["mfa_token"]
    strong = client.post("/api/v1/auth/mfa", json={"mfa_token": token, "code": _code(secret, clock, 1)})
    assert strong.status_code == 200, strong.get_json()
    h = api.auth(strong.get_json())
    body = {"password": "not the password", "code": "000000"}
    answers = [client.delete("/api/v1/me/mfa/totp", json=body, headers=h) for _ in range(4)]
    assert [r.status_code for r in answers] == [401, 401, 401, 429]
    assert answers[-1].get_json()["policy"] == "login-account"
    assert '"mfa-account"' in answers[0].headers["RateLimit-Policy"]
    # the lockout of the bearer's account is audited like a login's
    events = client.get("/api/v1/audit-events?action=auth.login_throttled", headers=h).get_json()
    assert [e["target"]["id"] for e in events] == [signed["user"]["id"]]


def test_every_sign_in_endpoint_reports_only_its_sign_in_policies_with_a_bearer(make_app):
    from saas.limits.policies import AUTH_ENDPOINTS

    client = make_app().test_client()
    api = Api(client)
    bearer = api.auth(api.signup("every"))
    for (method, path), groups in AUTH_ENDPOINTS.items():
        if path.startswith("/oauth/"):
            r = client.open(path, method=method, data={"x": "1"}, headers=bearer)
        else:
            r = client.open(path, method=method, json={}, headers=bearer)
        assert r.status_code != 500, (path, r.get_data(as_text=True))
        names = [item.split(";")[0].strip().strip('"') for item in r.headers["RateLimit-Policy"].split(",")]
        assert {n.rsplit("-", 1)[0] for n in names} == set(groups), (method, path, names)


def test_identity_providers_answers_get_the_sign_in_throttles(make_app):
    """The SSO and social callbacks sign people in: login-ip applies to each, a path with an id
    (the SAML ACS) by its URL rule."""
    app = make_app(ratelimit_policies=("login-ip=3/1m",))
    client = app.test_client()
    for method, path in (
        ("GET", "/sso/oidc/callback?state=nope&code=x"),
        ("POST", f"/sso/saml/{uuid.uuid4()}/acs"),
        ("GET", "/oauth/sso/complete?ticket=nope"),
        ("GET", "/oauth/social/nobody/callback?state=nope"),
    ):
        ip = f"10.8.{len(path)}.1"
        env = {"REMOTE_ADDR": ip}
        statuses = [client.open(path, method=method, environ_base=env).status_code for _ in range(4)]
        assert 429 not in statuses[:3] and statuses[3] == 429, (path, statuses)
