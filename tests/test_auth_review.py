"""Regression tests for the security review of saas/auth (issue 3): each test failed before its fix."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import event, select, update

from saas.auth import mfa
from saas.auth.models import AuthorizationCode, RefreshToken
from saas.db import utcnow
from saas.security import token_hash
from saas.services import services
from saas.settings import Settings
from tests.auth_helpers import (
    REDIRECT,
    authorize_params,
    basic_auth,
    browser_login,
    code_for,
    csrf_of,
    pkce_pair,
    query_of,
    register_client,
)
from tests.conftest import TEST_PASSWORD
from tests.helpers import mailed_invitation_token

T0 = 1_900_000_020.0


@pytest.fixture()
def clock(time_machine):
    """The process's clock frozen at T0 (TOTP steps, tokens, expiries): ``clock.shift(s)``."""
    time_machine.move_to(T0, tick=False)
    return time_machine


def _stale(app, signup: dict, role: str = "owner") -> dict:
    """A bearer header for the signup's user whose login is an hour old (no step-up)."""
    token = (
        services(app)
        .tokens.issue(
            subject=signup["user"]["id"],
            tenant_id=signup["tenant"]["id"],
            roles=[role],
            scope="api",
            client_id="saas-api",
            auth_time=int(time.time()) - 3600,
            amr=["pwd"],
        )
        .token
    )
    return {"Authorization": f"Bearer {token}"}


def _service_token(api, client, owner, role: str) -> str:
    svc = register_client(
        client,
        api.auth(owner),
        client_type="confidential",
        grant_types=["client_credentials"],
        redirect_uris=[],
        scope="api",
        role=role,
    )
    r = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic_auth(svc["client_id"], svc["client_secret"]),
    )
    assert r.status_code == 200, r.get_json()
    return r.get_json()["access_token"]


def _step_up_refused(r) -> None:
    assert r.status_code == 401, r.get_json()
    assert r.get_json()["code"] == "insufficient_user_authentication"


def _first_party(api, client, owner, **fields) -> dict:
    fields.setdefault("client_type", "public")
    return register_client(client, api.auth(owner), first_party=True, **fields)


def _exchange(client, client_id: str, code: str, verifier: str, **extra):
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "client_id": client_id,
    }
    data.update(extra)
    return client.post("/oauth/token", data={k: v for k, v in data.items() if v is not None})


# --- 1. inviting an admin or owner needs step-up -----------------------------------------------


def test_inviting_admin_needs_step_up_and_service_accounts_cannot(api, client, app):
    owner = api.signup("acme")
    stale = _stale(app, owner)
    _step_up_refused(
        client.post("/api/v1/members", json={"email": "a@acme.test", "role": "admin"}, headers=stale)
    )
    _step_up_refused(
        client.post("/api/v1/members", json={"email": "o@acme.test", "role": "owner"}, headers=stale)
    )
    # ordinary roles need no step-up
    r = client.post("/api/v1/members", json={"email": "m@acme.test", "role": "member"}, headers=stale)
    assert r.status_code == 201, r.get_json()
    # a service account with members:manage still cannot invite an admin: no person logged in
    svc = {"Authorization": f"Bearer {_service_token(api, client, owner, 'admin')}"}
    _step_up_refused(
        client.post("/api/v1/members", json={"email": "x@acme.test", "role": "admin"}, headers=svc)
    )
    fresh = client.post(
        "/api/v1/members", json={"email": "a@acme.test", "role": "admin"}, headers=api.auth(owner)
    )
    assert fresh.status_code == 201, fresh.get_json()


# --- 2. clients and tenant settings need step-up -----------------------------------------------


def test_client_create_edit_and_tenant_settings_need_step_up(api, client, app):
    owner = api.signup("acme")
    stale = _stale(app, owner)
    backdoor = {
        "name": "svc",
        "client_type": "confidential",
        "grant_types": ["client_credentials"],
        "redirect_uris": [],
        "role": "owner",
    }
    _step_up_refused(client.post("/api/v1/clients", json=backdoor, headers=stale))
    created = register_client(client, api.auth(owner))
    item = f"/api/v1/clients/{created['client_id']}"
    _step_up_refused(client.patch(item, json={"redirect_uris": ["https://evil.example/cb"]}, headers=stale))
    _step_up_refused(client.patch(item, json={"role": "owner"}, headers=stale))
    assert client.get(item, headers=stale).get_json()["redirect_uris"] == [REDIRECT]
    assert client.patch(item, json={"name": "Renamed"}, headers=api.auth(owner)).status_code == 200
    # tenant settings (require_mfa) need step-up; a rename does not
    _step_up_refused(client.patch("/api/v1/tenant", json={"settings": {"require_mfa": True}}, headers=stale))
    assert client.patch("/api/v1/tenant", json={"name": "Acme Inc"}, headers=stale).status_code == 200
    r = client.patch("/api/v1/tenant", json={"settings": {"require_mfa": True}}, headers=api.auth(owner))
    assert r.status_code == 200, r.get_json()


# --- 3. a grace retry never leaves two branches ------------------------------------------------


def _refresh(client, token):
    return client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token})


def test_grace_retry_leaves_a_single_branch(api, client):
    r0 = api.signup("acme")["token"]["refresh_token"]
    c1 = _refresh(client, r0).get_json()["refresh_token"]
    retry = _refresh(client, r0)
    assert retry.status_code == 200  # the client that retried gets a working token
    c2 = retry.get_json()["refresh_token"]
    # the earlier child is cut off; presenting it is reuse and ends the whole session
    r = _refresh(client, c1)
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"
    assert _refresh(client, c2).status_code == 400


def test_grace_retry_child_keeps_working(api, client):
    r0 = api.signup("acme")["token"]["refresh_token"]
    _refresh(client, r0)
    c2 = _refresh(client, r0).get_json()["refresh_token"]
    nxt = _refresh(client, c2)
    assert nxt.status_code == 200, nxt.get_json()
    assert _refresh(client, nxt.get_json()["refresh_token"]).status_code == 200


def test_grace_reuse_after_the_child_was_used_revokes_the_family(api, client, db_session):
    r0 = api.signup("acme")["token"]["refresh_token"]
    c1 = _refresh(client, r0).get_json()["refresh_token"]
    d1 = _refresh(client, c1).get_json()["refresh_token"]
    r = _refresh(client, r0)  # still inside the grace window, but the branch moved on
    assert r.status_code == 400
    assert _refresh(client, d1).status_code == 400
    db_session.expire_all()
    row = db_session.scalars(select(RefreshToken).where(RefreshToken.token_hash == token_hash(d1))).one()
    assert row.revoked_reason == "reuse_detected"


# --- 10. a used token presented after expiry is reuse -----------------------------------------


def test_used_refresh_token_after_expiry_is_still_reuse(api, client, db_session):
    r0 = api.signup("acme")["token"]["refresh_token"]
    c1 = _refresh(client, r0).get_json()["refresh_token"]
    db_session.execute(
        update(RefreshToken)
        .where(RefreshToken.token_hash == token_hash(r0))
        .values(used_at=utcnow() - timedelta(seconds=60), expires_at=utcnow() - timedelta(seconds=1))
    )
    db_session.flush()
    assert _refresh(client, r0).status_code == 400
    r = _refresh(client, c1)
    assert r.status_code == 400 and "revoked" in r.get_json()["error_description"]


# --- 4. the code's family is recorded with used_at ---------------------------------------------


def test_code_family_is_recorded_before_tokens_are_issued(api, client, db_session, monkeypatch):
    from saas.auth import service
    from saas.auth.oauth import grants as authlib_server

    owner = api.signup("acme")
    app_client = _first_party(api, client, owner)
    code, verifier = code_for(client, app_client["client_id"], "owner@acme.test")
    seen = {}
    real = service.issue_tokens

    def spy(session, **kwargs):
        row = session.scalars(
            select(AuthorizationCode).where(AuthorizationCode.code_hash == token_hash(code))
        ).one()
        seen["row_family"], seen["used_at"] = row.family_id, row.used_at
        seen["family_id"] = kwargs.get("family_id")
        return real(session, **kwargs)

    monkeypatch.setattr(authlib_server.service, "issue_tokens", spy)
    r = _exchange(client, app_client["client_id"], code, verifier, redirect_uri=REDIRECT)
    assert r.status_code == 200, r.get_json()
    assert seen["used_at"] is not None and seen["row_family"] is not None
    assert seen["family_id"] == seen["row_family"]
    refresh_row = db_session.scalars(
        select(RefreshToken).where(RefreshToken.token_hash == token_hash(r.get_json()["refresh_token"]))
    ).one()
    assert refresh_row.family_id == seen["row_family"]
    # the replay revokes exactly those tokens
    monkeypatch.setattr(authlib_server.service, "issue_tokens", real)
    assert (
        _exchange(client, app_client["client_id"], code, verifier, redirect_uri=REDIRECT).status_code == 400
    )
    again = client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": r.get_json()["refresh_token"],
            "client_id": app_client["client_id"],
        },
    )
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"


def test_failed_code_redemption_still_consumes_the_code(api, client):
    owner = api.signup("acme")
    app_client = _first_party(api, client, owner)
    code, verifier = code_for(client, app_client["client_id"], "owner@acme.test")
    wrong = _exchange(client, app_client["client_id"], code, "x" * 43, redirect_uri=REDIRECT)
    assert wrong.status_code == 400
    again = _exchange(client, app_client["client_id"], code, verifier, redirect_uri=REDIRECT)
    assert again.status_code == 400 and "already used" in again.get_json()["error_description"]


# --- 5. no unauthenticated 5xx ----------------------------------------------------------------


def test_fuzz_auth_endpoints_never_answer_5xx(api, client, clock):
    owner = api.signup("acme")
    app_client = _first_party(api, client, owner)
    confidential = register_client(client, api.auth(owner), client_type="confidential")
    _v, challenge = pkce_pair()
    weird = ["é", "\u0663\u0661\u0662\u0663\u0664\u0665", "\x00", "a\x00b", "\ud7ff", "💥" * 3, "%00"]
    answers = []

    def check(response, what):
        answers.append((what, response.status_code))
        assert response.status_code < 500, (what, response.get_data(as_text=True)[:300])

    for value in weird:
        check(
            client.get(
                "/oauth/authorize",
                query_string=authorize_params(
                    app_client["client_id"], challenge, redirect_uri=REDIRECT + value
                ),
            ),
            ("authorize redirect_uri", value),
        )
        for grant in ("authorization_code", "refresh_token", "client_credentials"):
            form = {
                "grant_type": grant,
                "code": value,
                "refresh_token": value,
                "redirect_uri": REDIRECT + value,
                "code_verifier": value,
                "client_id": value,
                "scope": value,
            }
            check(client.post("/oauth/token", data=form), ("token form", grant, value))
            check(
                client.post(
                    "/oauth/token",
                    data={"grant_type": grant, "code": "c", "redirect_uri": REDIRECT + value},
                    headers=basic_auth(confidential["client_id"] + value, value),
                ),
                ("token basic", grant, value),
            )
        check(
            client.post(
                "/oauth/token",
                data={"grant_type": "authorization_code", "code": "c", "redirect_uri": REDIRECT + value},
                headers=basic_auth(confidential["client_id"], confidential["client_secret"]),
            ),
            ("token redirect_uri", value),
        )
        for path in ("/oauth/revoke", "/oauth/introspect"):
            check(
                client.post(
                    path, data={"token": value}, headers=basic_auth(confidential["client_id"] + value, value)
                ),
                (path, value),
            )
        # hosted pages: a pending request, then odd csrf tokens, emails, passwords
        client.get("/oauth/authorize", query_string=authorize_params(app_client["client_id"], challenge))
        page = client.get("/oauth/login").get_data(as_text=True)
        check(
            client.post("/oauth/login", data={"email": "a@b.c", "password": "p", "csrf_token": value}),
            ("csrf", value),
        )
        check(
            client.post(
                "/oauth/login",
                data={"email": f"owner{value}@acme.test", "password": value, "csrf_token": csrf_of(page)},
            ),
            ("hosted email", value),
        )
    # MFA codes in other scripts' digits (str.isdigit() is True for them)
    h = api.auth(owner)
    secret = client.post("/api/v1/me/mfa/totp", headers=h).get_json()["secret"]
    arabic = "\u0661\u0662\u0663\u0664\u0665\u0666"
    r = client.post("/api/v1/me/mfa/totp/confirm", json={"code": arabic}, headers=h)
    check(r, "confirm arabic digits")
    assert r.status_code == 401
    assert (
        client.post(
            "/api/v1/me/mfa/totp/confirm",
            json={"code": mfa.totp_at(secret, int(time.time() // 30))},
            headers=h,
        ).status_code
        == 200
    )
    ticket = api.login("owner@acme.test").get_json()["mfa_token"]
    for code in (arabic, "\uff11\uff12\uff13\uff14\uff15\uff16", "12345\x00", "abc\x00defgh"):
        check(client.post("/api/v1/auth/mfa", json={"mfa_token": ticket, "code": code}), ("mfa", code))
    assert all(status < 500 for _what, status in answers) and len(answers) > 50


def test_nul_in_oauth_form_is_an_oauth_error(client):
    r = client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": "a\x00b"})
    assert r.status_code == 400
    body = r.get_json()
    assert body["error"] == "invalid_request" and "refresh_token" in body["errors"]


# --- 6. failed logins: the same statements for known and unknown emails ------------------------


def test_failed_login_runs_the_same_statements_for_unknown_emails(api, client, engine):
    api.signup("acme")
    count = {"n": 0}

    def counter(*_args, **_kwargs):
        count["n"] += 1

    def statements(email: str) -> int:
        count["n"] = 0
        event.listen(engine, "before_cursor_execute", counter)
        try:
            r = api.login(email, password="wrong password here")
        finally:
            event.remove(engine, "before_cursor_execute", counter)
        assert r.status_code == 401 and r.get_json()["code"] == "invalid_credentials"
        return count["n"]

    known, unknown = statements("owner@acme.test"), statements("nobody@acme.test")
    assert known == unknown and known > 0


# --- 7. MFA enrolment needs step-up; disabling respects every tenant ---------------------------


def test_bearer_mfa_enrollment_needs_step_up(api, client, app, clock):
    owner = api.signup("acme")
    stale = _stale(app, owner)
    _step_up_refused(client.post("/api/v1/me/mfa/totp", headers=stale))
    assert client.post("/api/v1/me/mfa/totp", headers=api.auth(owner)).status_code == 201
    _step_up_refused(client.post("/api/v1/me/mfa/totp/confirm", json={"code": "123456"}, headers=stale))


def test_disabling_mfa_checks_require_mfa_in_every_membership(api, client, clock):
    acme = api.signup("acme")
    globex = api.signup("globex")
    invite = client.post(
        "/api/v1/members", json={"email": "owner@acme.test", "role": "member"}, headers=api.auth(globex)
    )
    assert invite.status_code == 201, invite.get_json()
    accepted = client.post(  # an existing account accepts signed in, with its own token
        "/api/v1/invitations/accept",
        json={"token": mailed_invitation_token(client.application, "owner@acme.test")},
        headers=api.auth(acme),
    )
    assert accepted.status_code == 200, accepted.get_json()
    h = api.auth(acme)
    secret = client.post("/api/v1/me/mfa/totp", headers=h).get_json()["secret"]
    step = int(time.time() // 30)
    assert (
        client.post(
            "/api/v1/me/mfa/totp/confirm", json={"code": mfa.totp_at(secret, step)}, headers=h
        ).status_code
        == 200
    )
    r = client.patch("/api/v1/tenant", json={"settings": {"require_mfa": True}}, headers=api.auth(globex))
    assert r.status_code == 200, r.get_json()
    ticket = api.login("owner@acme.test", tenant="acme").get_json()["mfa_token"]
    strong = client.post(
        "/api/v1/auth/mfa", json={"mfa_token": ticket, "code": mfa.totp_at(secret, step + 1)}
    )
    assert strong.status_code == 200, strong.get_json()
    clock.shift(60)
    r = client.delete(
        "/api/v1/me/mfa/totp",
        json={"password": TEST_PASSWORD, "code": mfa.totp_at(secret, step + 2)},
        headers=api.auth(strong.get_json()["access_token"]),
    )
    assert r.status_code == 422, r.get_json()
    assert "globex" in r.get_json()["detail"]


# --- 8. the hosted pending login expires -------------------------------------------------------


def test_hosted_pending_mfa_login_expires(api, client, app, clock):
    owner = api.signup("acme")
    app_client = _first_party(api, client, owner)
    h = api.auth(owner)
    secret = client.post("/api/v1/me/mfa/totp", headers=h).get_json()["secret"]
    step = int(time.time() // 30)
    client.post("/api/v1/me/mfa/totp/confirm", json={"code": mfa.totp_at(secret, step)}, headers=h)
    _v, challenge = pkce_pair()
    r = browser_login(client, app_client["client_id"], "owner@acme.test", challenge)
    assert r.headers["Location"].endswith("/oauth/mfa")
    html = client.get("/oauth/mfa").get_data(as_text=True)
    ttl = services(app).settings.mfa_token_ttl_seconds
    clock.shift(ttl + 5)
    r = client.post("/oauth/mfa", data={"code": mfa.totp_at(secret, step + 1), "csrf_token": csrf_of(html)})
    assert r.status_code == 302 and r.headers["Location"].endswith("/oauth/login")


# --- 9. service-account tokens claim no user authentication ------------------------------------


def test_service_account_token_has_no_amr_acr_auth_time(api, client, app):
    owner = api.signup("acme")
    claims = services(app).tokens.verify(_service_token(api, client, owner, "viewer"))
    assert not {"amr", "acr", "auth_time"} & set(claims)
    r = client.post("/oauth/introspect", data={"token": "x"})
    assert r.status_code == 401


# --- 11. the issuer has one spelling ----------------------------------------------------------


def test_issuer_trailing_slash_is_normalised():
    assert Settings(issuer="https://id.example.com/").issuer == "https://id.example.com"
    assert Settings().with_overrides(issuer="https://id.example.com//").issuer == "https://id.example.com"
    assert Settings.from_env({"SAAS_ISSUER": "https://id.example.com/"}).issuer == "https://id.example.com"


def test_discovery_token_and_redirect_iss_agree(api, client, app):
    owner = api.signup("acme")
    app_client = _first_party(api, client, owner)
    issuer = client.get("/.well-known/openid-configuration").get_json()["issuer"]
    verifier, challenge = pkce_pair()
    r = browser_login(client, app_client["client_id"], "owner@acme.test", challenge)
    params = query_of(r.headers["Location"])
    assert params["iss"] == issuer
    tokens = _exchange(
        client, app_client["client_id"], params["code"], verifier, redirect_uri=REDIRECT
    ).get_json()
    assert services(app).tokens.verify(tokens["access_token"])["iss"] == issuer


# --- 12. prompt=none never shows a page; omitted redirect_uri ------------------------------------


def test_prompt_none_never_shows_the_enrollment_page(api, client, app):
    owner = api.signup("acme")
    app_client = _first_party(api, client, owner)
    r = client.patch("/api/v1/tenant", json={"settings": {"require_mfa": True}}, headers=api.auth(owner))
    assert r.status_code == 200
    _v, challenge = pkce_pair()
    r = browser_login(client, app_client["client_id"], "owner@acme.test", challenge)
    assert r.headers["Location"].endswith("/oauth/mfa/enroll")
    r = client.get(
        "/oauth/authorize", query_string=authorize_params(app_client["client_id"], challenge, prompt="none")
    )
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT)
    params = query_of(r.headers["Location"])
    assert params["error"] == "interaction_required" and params["state"] == "st-123"


def test_omitted_redirect_uri_is_not_demanded_at_the_token_endpoint(api, client):
    owner = api.signup("acme")
    app_client = _first_party(api, client, owner)
    code, verifier = code_for(client, app_client["client_id"], "owner@acme.test", redirect_uri=None)
    r = _exchange(client, app_client["client_id"], code, verifier)
    assert r.status_code == 200, r.get_json()
    # one that is sent must still be a registered one
    code, verifier = code_for(client, app_client["client_id"], "owner@acme.test", redirect_uri=None)
    bad = _exchange(client, app_client["client_id"], code, verifier, redirect_uri="https://evil.example/cb")
    assert bad.status_code == 400 and bad.get_json()["error"] == "invalid_grant"
    code, verifier = code_for(client, app_client["client_id"], "owner@acme.test", redirect_uri=None)
    ok = _exchange(client, app_client["client_id"], code, verifier, redirect_uri=REDIRECT)
    assert ok.status_code == 200
