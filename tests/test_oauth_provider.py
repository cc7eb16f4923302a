"""The OAuth 2.1 / OIDC provider through the Flask test client: discovery, authorization endpoint,
token endpoint grants, revocation, introspection, userinfo, clients API."""

from __future__ import annotations

from datetime import timedelta

import jwt as pyjwt
from sqlalchemy import select, update

from saas.auth.models import AuthorizationCode, OAuthClient, RefreshToken
from saas.db import utcnow
from saas.services import services
from tests.auth_helpers import (
    REDIRECT,
    authorize_params,
    basic_auth,
    browser_login,
    code_for,
    pkce_pair,
    query_of,
    register_client,
)
from tests.helpers import mailed_invitation_token


def _exchange(client, app_client: dict, code: str, verifier: str | None, redirect_uri: str = REDIRECT):
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if verifier is not None:
        data["code_verifier"] = verifier
    headers = {}
    if app_client.get("client_secret"):
        headers = basic_auth(app_client["client_id"], app_client["client_secret"])
    else:
        data["client_id"] = app_client["client_id"]
    return client.post("/oauth/token", data=data, headers=headers)


def _setup(api, client, slug="acme", **client_fields):
    owner = api.signup(slug)
    client_fields.setdefault("client_type", "public")
    app_client = register_client(client, api.auth(owner), first_party=True, **client_fields)
    return owner, app_client


# --- discovery -----------------------------------------------------------------------------------


def test_discovery_documents_are_consistent(client):
    oidc = client.get("/.well-known/openid-configuration").get_json()
    rfc8414 = client.get("/.well-known/oauth-authorization-server").get_json()
    assert oidc == rfc8414
    assert oidc["issuer"] == "http://localhost:8000"
    assert oidc["response_types_supported"] == ["code"]
    assert oidc["code_challenge_methods_supported"] == ["S256"]
    assert set(oidc["grant_types_supported"]) == {"authorization_code", "refresh_token", "client_credentials"}
    assert "password" not in oidc["grant_types_supported"] and "implicit" not in oidc["grant_types_supported"]
    for key in (
        "authorization_endpoint",
        "token_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
        "userinfo_endpoint",
        "jwks_uri",
    ):
        assert oidc[key].startswith("http://localhost:8000/")
    assert client.get("/.well-known/jwks.json").get_json()["keys"]


# --- clients API ---------------------------------------------------------------------------------


def test_client_registration_secret_once_and_rotation(api, client, db_session):
    owner = api.signup("acme")
    h = api.auth(owner)
    created = register_client(client, h, client_type="confidential")
    assert created["client_secret"].startswith("cs_")
    row = db_session.scalars(select(OAuthClient).where(OAuthClient.client_id == created["client_id"])).one()
    assert row.secret_hash != created["client_secret"] and len(row.secret_hash) == 64
    shown = client.get(f"/api/v1/clients/{created['client_id']}", headers=h).get_json()
    assert "client_secret" not in shown
    listed = client.get("/api/v1/clients", headers=h).get_json()
    assert [c["client_id"] for c in listed] == [created["client_id"]]
    rotated = client.post(f"/api/v1/clients/{created['client_id']}/secret", headers=h)
    assert rotated.status_code == 200
    new_secret = rotated.get_json()["client_secret"]
    assert new_secret != created["client_secret"]
    # the old secret stops working, the new one works
    data = {"grant_type": "client_credentials"}
    old = client.post(
        "/oauth/token", data=data, headers=basic_auth(created["client_id"], created["client_secret"])
    )
    assert old.status_code == 401 and old.get_json()["error"] == "invalid_client"
    patched = client.patch(
        f"/api/v1/clients/{created['client_id']}", json={"grant_types": ["client_credentials"]}, headers=h
    )
    assert patched.status_code == 200, patched.get_json()
    ok = client.post("/oauth/token", data=data, headers=basic_auth(created["client_id"], new_secret))
    assert ok.status_code == 200, ok.get_json()


def test_public_client_has_no_secret_and_redirect_rules(api, client):
    owner = api.signup("acme")
    h = api.auth(owner)
    public = register_client(client, h, client_type="public", redirect_uris=["http://127.0.0.1:8765/cb"])
    assert "client_secret" not in public
    for bad in (
        "http://app.example.com/cb",
        "https://app.example.com/cb#frag",
        "https://*.example.com/cb",
        "javascript:alert(1)",
        "myapp:/cb",
    ):
        r = client.post("/api/v1/clients", json={"name": "x", "redirect_uris": [bad]}, headers=h)
        assert r.status_code == 422, bad
        assert "redirect_uris" in r.get_json()["errors"]
    r = client.post(
        "/api/v1/clients",
        json={"name": "x", "redirect_uris": [REDIRECT], "grant_types": ["password"]},
        headers=h,
    )
    assert r.status_code == 422
    r = client.post(f"/api/v1/clients/{public['client_id']}/secret", headers=h)
    assert r.status_code == 409


def test_clients_are_tenant_isolated(api, client):
    a = api.signup("acme")
    b = api.signup("globex")
    created = register_client(client, api.auth(a))
    assert client.get(f"/api/v1/clients/{created['client_id']}", headers=api.auth(b)).status_code == 404
    assert client.delete(f"/api/v1/clients/{created['client_id']}", headers=api.auth(b)).status_code == 404
    assert client.get("/api/v1/clients", headers=api.auth(b)).get_json() == []


# --- authorization endpoint ---------------------------------------------------------------------


def test_unknown_client_or_redirect_is_an_error_page_never_a_redirect(api, client):
    _owner, app_client = _setup(api, client)
    _v, challenge = pkce_pair()
    r = client.get("/oauth/authorize", query_string=authorize_params("c_unknown", challenge))
    assert r.status_code == 400 and "Location" not in r.headers
    assert "text/html" in r.content_type
    r = client.get(
        "/oauth/authorize",
        query_string=authorize_params(
            app_client["client_id"], challenge, redirect_uri="https://evil.example/cb"
        ),
    )
    assert r.status_code == 400 and "Location" not in r.headers
    # prefix or suffix variants do not match either (exact comparison)
    r = client.get(
        "/oauth/authorize",
        query_string=authorize_params(app_client["client_id"], challenge, redirect_uri=REDIRECT + "/../x"),
    )
    assert r.status_code == 400 and "Location" not in r.headers
    assert r.headers["X-Frame-Options"] == "DENY"


def test_pkce_is_required_and_s256_only(api, client):
    _owner, app_client = _setup(api, client)
    _v, challenge = pkce_pair()
    cases = {
        "missing": {"code_challenge": None, "code_challenge_method": None},
        "plain": {"code_challenge_method": "plain"},
        "no method": {"code_challenge_method": None},
        "short": {"code_challenge": "abc"},
    }
    for name, extra in cases.items():
        r = client.get(
            "/oauth/authorize", query_string=authorize_params(app_client["client_id"], challenge, **extra)
        )
        assert r.status_code == 302, name
        params = query_of(r.headers["Location"])
        assert params["error"] == "invalid_request", name
        assert params["state"] == "st-123" and params["iss"] == "http://localhost:8000"
    r = client.get(
        "/oauth/authorize",
        query_string=authorize_params(app_client["client_id"], challenge, response_type="token"),
    )
    assert query_of(r.headers["Location"])["error"] == "unsupported_response_type"


def test_code_flow_tokens_and_id_token(api, client, app):
    owner, app_client = _setup(api, client)
    code, verifier = code_for(client, app_client["client_id"], "owner@acme.test")
    r = _exchange(client, app_client, code, verifier)
    assert r.status_code == 200, r.get_json()
    assert r.headers["Cache-Control"] == "no-store"
    body = r.get_json()
    assert {"access_token", "refresh_token", "id_token", "expires_in"} <= set(body)
    header = pyjwt.get_unverified_header(body["access_token"])
    assert header["typ"] == "at+jwt"
    claims = services(app).tokens.verify(body["access_token"])
    assert claims["client_id"] == app_client["client_id"]
    assert claims["tid"] == owner["tenant"]["id"] and claims["amr"] == ["pwd"]
    assert claims["acr"] == "urn:saas:acr:pwd" and isinstance(claims["auth_time"], int)
    id_claims = pyjwt.decode(body["id_token"], options={"verify_signature": False})
    assert id_claims["aud"] == app_client["client_id"] and id_claims["nonce"] == "n-456"
    assert id_claims["at_hash"] and id_claims["email"] == "owner@acme.test"
    info = client.get("/oauth/userinfo", headers=api.auth(body["access_token"]))
    assert info.status_code == 200 and info.get_json()["sub"] == claims["sub"]
    assert info.get_json()["email"] == "owner@acme.test"
    # the token works on the API
    assert client.get("/api/v1/me", headers=api.auth(body["access_token"])).status_code == 200


def test_code_reuse_is_rejected_and_revokes_issued_tokens(api, client, db_session):
    _owner, app_client = _setup(api, client)
    code, verifier = code_for(client, app_client["client_id"], "owner@acme.test")
    first = _exchange(client, app_client, code, verifier)
    assert first.status_code == 200
    again = _exchange(client, app_client, code, verifier)
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"
    refresh = client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": first.get_json()["refresh_token"],
            "client_id": app_client["client_id"],
        },
    )
    assert refresh.status_code == 400 and refresh.get_json()["error"] == "invalid_grant"


def test_code_bound_to_verifier_redirect_client_and_expiry(api, client, db_session):
    owner, app_client = _setup(api, client)
    other = register_client(client, api.auth(owner), first_party=True, client_type="public")
    # PKCE mismatch
    code, _verifier = code_for(client, app_client["client_id"], "owner@acme.test")
    wrong = _exchange(client, app_client, code, pkce_pair()[0])
    assert wrong.status_code == 400 and wrong.get_json()["error"] == "invalid_grant"
    # missing verifier
    code, _verifier = code_for(client, app_client["client_id"], "owner@acme.test")
    missing = _exchange(client, app_client, code, None)
    assert missing.status_code == 400 and missing.get_json()["error"] == "invalid_request"
    # other redirect URI
    code, verifier = code_for(client, app_client["client_id"], "owner@acme.test")
    r = _exchange(client, app_client, code, verifier, redirect_uri="https://app.example.com/other")
    assert r.get_json()["error"] == "invalid_grant"
    # another client
    code, verifier = code_for(client, app_client["client_id"], "owner@acme.test")
    r = _exchange(client, other, code, verifier)
    assert r.get_json()["error"] == "invalid_grant"
    # expired (60 s max)
    code, verifier = code_for(client, app_client["client_id"], "owner@acme.test")
    row = db_session.scalars(
        select(AuthorizationCode)
        .where(AuthorizationCode.client_id == app_client["client_id"])
        .order_by(AuthorizationCode.created_at.desc())
    ).first()
    assert (row.expires_at - row.created_at) <= timedelta(seconds=60)
    db_session.execute(
        update(AuthorizationCode)
        .where(AuthorizationCode.id == row.id)
        .values(expires_at=utcnow() - timedelta(seconds=1))
    )
    db_session.flush()
    r = _exchange(client, app_client, code, verifier)
    assert r.get_json()["error"] == "invalid_grant"


def test_confidential_client_must_authenticate(api, client):
    _owner, app_client = _setup(api, client, client_type="confidential")
    code, verifier = code_for(client, app_client["client_id"], "owner@acme.test")
    r = client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "client_id": app_client["client_id"],
        },
    )
    assert r.status_code == 401 and r.get_json()["error"] == "invalid_client"
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    ok = _exchange(client, app_client, code, verifier)
    assert ok.status_code == 200, ok.get_json()


def test_unsupported_grants(api, client):
    for grant in ("password", "implicit", "urn:ietf:params:oauth:grant-type:device_code"):
        r = client.post("/oauth/token", data={"grant_type": grant, "username": "a", "password": "b"})
        assert r.status_code == 400 and r.get_json()["error"] == "unsupported_grant_type"


# --- refresh -------------------------------------------------------------------------------------


def test_refresh_rotation_reuse_and_grace(api, client, db_session, app):
    _owner, app_client = _setup(api, client)
    code, verifier = code_for(client, app_client["client_id"], "owner@acme.test")
    first = _exchange(client, app_client, code, verifier).get_json()

    def refresh(token):
        return client.post(
            "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": token,
                "client_id": app_client["client_id"],
            },
        )

    second = refresh(first["refresh_token"])
    assert second.status_code == 200
    rotated = second.get_json()["refresh_token"]
    assert rotated != first["refresh_token"]
    # a concurrent retry inside the grace window gets one more child, no more
    retry = refresh(first["refresh_token"])
    assert retry.status_code == 200
    third = refresh(first["refresh_token"])
    assert third.status_code == 400 and third.get_json()["error"] == "invalid_grant"
    # the family is revoked: the rotated token dies too
    assert refresh(rotated).status_code == 400


def test_refresh_reuse_after_grace_revokes_family(api, client, db_session):
    _owner, app_client = _setup(api, client)
    code, verifier = code_for(client, app_client["client_id"], "owner@acme.test")
    first = _exchange(client, app_client, code, verifier).get_json()
    data = {"grant_type": "refresh_token", "client_id": app_client["client_id"]}
    rotated = client.post("/oauth/token", data={**data, "refresh_token": first["refresh_token"]}).get_json()
    db_session.execute(
        update(RefreshToken)
        .where(RefreshToken.used_at.is_not(None))
        .values(used_at=utcnow() - timedelta(seconds=60))
    )
    db_session.flush()
    reused = client.post("/oauth/token", data={**data, "refresh_token": first["refresh_token"]})
    assert reused.status_code == 400
    assert (
        client.post("/oauth/token", data={**data, "refresh_token": rotated["refresh_token"]}).status_code
        == 400
    )


def test_refresh_absolute_lifetime_cap(api, client, db_session):
    _owner, app_client = _setup(api, client)
    code, verifier = code_for(client, app_client["client_id"], "owner@acme.test")
    first = _exchange(client, app_client, code, verifier).get_json()
    db_session.execute(
        update(RefreshToken)
        .where(RefreshToken.client_id == app_client["client_id"])
        .values(family_expires_at=utcnow() - timedelta(seconds=1))
    )
    db_session.flush()
    r = client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": app_client["client_id"],
        },
    )
    assert r.status_code == 400 and "expired" in r.get_json()["error_description"]


def test_registered_client_refresh_token_needs_that_client(api, client):
    owner, app_client = _setup(api, client)
    other = register_client(client, api.auth(owner), first_party=True, client_type="public")
    code, verifier = code_for(client, app_client["client_id"], "owner@acme.test")
    first = _exchange(client, app_client, code, verifier).get_json()
    anonymous = client.post(
        "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    )
    assert anonymous.status_code == 401
    foreign = client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": other["client_id"],
        },
    )
    assert foreign.status_code == 400


def test_first_party_login_refresh_still_works(api, client):
    api.signup("acme")
    tokens = api.login("owner@acme.test").get_json()
    r = client.post(
        "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["refresh_token"] != tokens["refresh_token"]


# --- client credentials, introspection, revocation ----------------------------------------------


def _service_client(api, client, headers, **fields):
    return register_client(
        client,
        headers,
        client_type="confidential",
        grant_types=["client_credentials"],
        redirect_uris=[],
        scope="api",
        role="viewer",
        **fields,
    )


def test_client_credentials_service_account(api, client, app):
    owner = api.signup("acme")
    svc = _service_client(api, client, api.auth(owner))
    r = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic_auth(svc["client_id"], svc["client_secret"]),
    )
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert "refresh_token" not in body
    claims = services(app).tokens.verify(body["access_token"])
    assert (
        claims["sub"] == svc["client_id"]
        and claims["tid"] == owner["tenant"]["id"]
        and claims["roles"] == ["viewer"]
    )
    h = api.auth(body["access_token"])
    assert client.get("/api/v1/contacts", headers=h).status_code == 200
    assert client.post("/api/v1/contacts", json={"name": "x"}, headers=h).status_code == 403
    # public clients cannot; a wrong secret cannot
    bad = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic_auth(svc["client_id"], "cs_wrong"),
    )
    assert bad.status_code == 401
    scope = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "openid"},
        headers=basic_auth(svc["client_id"], svc["client_secret"]),
    )
    assert scope.status_code == 400 and scope.get_json()["error"] == "invalid_scope"


def test_introspection_sees_only_own_tenant(api, client):
    a_owner, a_app = _setup(api, client, "acme")
    b_owner = api.signup("globex")
    # resource servers: only they learn anything from introspection (RFC 7662 section 4)
    a_svc = _service_client(api, client, api.auth(a_owner), resource_server=True)
    b_svc = _service_client(api, client, api.auth(b_owner), resource_server=True)
    code, verifier = code_for(client, a_app["client_id"], "owner@acme.test")
    tokens = _exchange(client, a_app, code, verifier).get_json()
    for token in (tokens["access_token"], tokens["refresh_token"]):
        mine = client.post(
            "/oauth/introspect",
            data={"token": token},
            headers=basic_auth(a_svc["client_id"], a_svc["client_secret"]),
        ).get_json()
        assert mine["active"] is True and mine["tid"] == a_owner["tenant"]["id"]
        theirs = client.post(
            "/oauth/introspect",
            data={"token": token},
            headers=basic_auth(b_svc["client_id"], b_svc["client_secret"]),
        ).get_json()
        assert theirs == {"active": False}
    # public clients and anonymous callers may not introspect
    assert (
        client.post(
            "/oauth/introspect", data={"token": tokens["access_token"], "client_id": a_app["client_id"]}
        ).status_code
        == 401
    )
    assert client.post("/oauth/introspect", data={"token": tokens["access_token"]}).status_code == 401


def test_revocation(api, client):
    owner, app_client = _setup(api, client)
    svc = _service_client(api, client, api.auth(owner))
    code, verifier = code_for(client, app_client["client_id"], "owner@acme.test")
    tokens = _exchange(client, app_client, code, verifier).get_json()
    # another client cannot revoke it (silently ignored)
    r = client.post(
        "/oauth/revoke",
        data={"token": tokens["refresh_token"]},
        headers=basic_auth(svc["client_id"], svc["client_secret"]),
    )
    assert r.status_code == 200
    data = {"grant_type": "refresh_token", "client_id": app_client["client_id"]}
    r = client.post(
        "/oauth/revoke", data={"token": tokens["refresh_token"], "client_id": app_client["client_id"]}
    )
    assert r.status_code == 200
    assert (
        client.post("/oauth/token", data={**data, "refresh_token": tokens["refresh_token"]}).status_code
        == 400
    )
    introspected = client.post(
        "/oauth/introspect",
        data={"token": tokens["access_token"]},
        headers=basic_auth(svc["client_id"], svc["client_secret"]),
    ).get_json()
    assert introspected == {"active": False}
    assert (
        client.post(
            "/oauth/revoke", data={"token": "nonsense", "client_id": app_client["client_id"]}
        ).status_code
        == 200
    )


# --- hosted pages --------------------------------------------------------------------------------


def test_login_page_wrong_password_and_csrf(api, client):
    _owner, app_client = _setup(api, client)
    _v, challenge = pkce_pair()
    r = browser_login(
        client, app_client["client_id"], "owner@acme.test", challenge, password="wrong password!"
    )
    assert r.status_code == 401 and "incorrect" in r.get_data(as_text=True)
    unknown = browser_login(client, app_client["client_id"], "nobody@acme.test", challenge)
    assert unknown.status_code == 401
    assert unknown.get_data(as_text=True).count("incorrect") == r.get_data(as_text=True).count("incorrect")
    forged = client.post(
        "/oauth/login", data={"email": "owner@acme.test", "password": "x", "csrf_token": "forged"}
    )
    assert forged.status_code == 400


def test_consent_page(api, client, db_session):
    owner = api.signup("acme")
    third = register_client(client, api.auth(owner), first_party=False)
    _verifier, challenge = pkce_pair()
    r = browser_login(client, third["client_id"], "owner@acme.test", challenge)
    assert r.status_code == 302 and r.headers["Location"].endswith("/oauth/consent")
    page = client.get("/oauth/consent")
    assert page.status_code == 200 and "Test app" in page.get_data(as_text=True)
    from tests.auth_helpers import csrf_of

    deny = client.post(
        "/oauth/consent", data={"decision": "deny", "csrf_token": csrf_of(page.get_data(as_text=True))}
    )
    assert query_of(deny.headers["Location"])["error"] == "access_denied"
    # again, allow; a later request skips the consent page
    r = client.get("/oauth/authorize", query_string=authorize_params(third["client_id"], challenge))
    assert r.headers["Location"].endswith("/oauth/consent")
    page = client.get("/oauth/consent")
    allow = client.post(
        "/oauth/consent", data={"decision": "allow", "csrf_token": csrf_of(page.get_data(as_text=True))}
    )
    assert "code" in query_of(allow.headers["Location"])
    r = client.get("/oauth/authorize", query_string=authorize_params(third["client_id"], challenge))
    assert "code" in query_of(r.headers["Location"])


def test_ops_revoke_all_sessions_and_me_sessions(api, client):
    owner = api.signup("acme")
    login1 = api.login("owner@acme.test").get_json()
    api.login("owner@acme.test")
    h = api.auth(login1["access_token"])
    sessions = client.get("/api/v1/me/sessions", headers=h).get_json()
    assert len(sessions) == 3  # signup + two logins
    assert sum(s["current"] for s in sessions) == 1
    current = next(s for s in sessions if s["current"])
    other = next(s for s in sessions if not s["current"])
    assert client.delete(f"/api/v1/me/sessions/{other['id']}", headers=h).status_code == 204
    assert len(client.get("/api/v1/me/sessions", headers=h).get_json()) == 2
    assert client.post("/api/v1/auth/logout", headers=h).status_code == 204
    # the logged-out session's access token stops at once; a new login carries on
    assert client.get("/api/v1/me/sessions", headers=h).status_code == 401
    h = api.auth(api.login("owner@acme.test").get_json()["access_token"])
    ids = [s["id"] for s in client.get("/api/v1/me/sessions", headers=h).get_json()]
    assert current["id"] not in ids
    r = client.post(
        "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": login1["refresh_token"]}
    )
    assert r.status_code == 400
    revoked = client.delete(f"/api/v1/members/{owner['user']['id']}/sessions", headers=h)
    assert revoked.status_code == 200 and revoked.get_json()["revoked"] >= 1
    assert client.get("/api/v1/me/sessions", headers=h).status_code == 401  # its own session too
    h = api.auth(api.login("owner@acme.test").get_json()["access_token"])
    assert [s["current"] for s in client.get("/api/v1/me/sessions", headers=h).get_json()] == [True]


def test_tenant_picker_for_platform_client(api, client, db_session, app):
    from tests.auth_helpers import csrf_of

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
    platform = OAuthClient(
        client_id="c_platform_console",
        tenant_id=None,
        name="Console",
        client_type="public",
        redirect_uris=[REDIRECT],
        grant_types=["authorization_code", "refresh_token"],
        scope="openid profile email api",
        first_party=True,
    )
    db_session.add(platform)
    db_session.flush()
    verifier, challenge = pkce_pair()
    r = browser_login(client, platform.client_id, "owner@acme.test", challenge)
    assert r.status_code == 302 and r.headers["Location"].endswith("/oauth/tenant")
    page = client.get("/oauth/tenant")
    html = page.get_data(as_text=True)
    assert "acme" in html and "globex" in html
    foreign = client.post("/oauth/tenant", data={"tenant": "initech", "csrf_token": csrf_of(html)})
    assert foreign.status_code == 403
    chosen = client.post("/oauth/tenant", data={"tenant": "globex", "csrf_token": csrf_of(html)})
    assert chosen.status_code == 302, chosen.get_data(as_text=True)
    code = query_of(chosen.headers["Location"])["code"]
    tokens = _exchange(client, {"client_id": platform.client_id}, code, verifier).get_json()
    claims = services(app).tokens.verify(tokens["access_token"])
    assert claims["tid"] == globex["tenant"]["id"] and claims["roles"] == ["member"]


def test_hosted_enrollment_when_tenant_requires_mfa(api, client, app, monkeypatch):
    from saas.auth import mfa
    from tests.auth_helpers import csrf_of

    owner, app_client = _setup(api, client)
    assert (
        client.patch(
            "/api/v1/tenant", json={"settings": {"require_mfa": True}}, headers=api.auth(owner)
        ).status_code
        == 200
    )
    verifier, challenge = pkce_pair()
    r = browser_login(client, app_client["client_id"], "owner@acme.test", challenge)
    assert r.status_code == 302 and r.headers["Location"].endswith("/oauth/mfa/enroll")
    page = client.get("/oauth/mfa/enroll")
    html = page.get_data(as_text=True)
    assert 'src="data:image/svg+xml' in html
    import re

    secret = re.search(r'<code id="secret">([A-Z2-7]+)</code>', html).group(1)
    code = mfa.totp_at(secret, int(mfa._clock() // 30))
    shown = client.post("/oauth/mfa/enroll", data={"code": code, "csrf_token": csrf_of(html)})
    assert shown.status_code == 200 and shown.get_data(as_text=True).count("<code>") == 10
    done = client.post("/oauth/mfa/enroll/done", data={"csrf_token": csrf_of(html)})
    assert done.status_code == 302
    code = query_of(done.headers["Location"])["code"]
    tokens = _exchange(client, app_client, code, verifier).get_json()
    assert services(app).tokens.verify(tokens["access_token"])["amr"] == ["pwd", "otp"]


def test_openapi_document_lists_auth_endpoints(client):
    spec = client.get("/openapi.json").get_json()
    for path in (
        "/api/v1/clients",
        "/api/v1/clients/{client_id}/secret",
        "/api/v1/me/mfa/totp",
        "/api/v1/auth/mfa",
        "/api/v1/me/sessions",
        "/oauth/token",
        "/oauth/introspect",
    ):
        assert path in spec["paths"], path


def test_prompt_max_age_and_cookie_flags(api, client):
    _owner, app_client = _setup(api, client)
    _v, challenge = pkce_pair()
    r = client.get(
        "/oauth/authorize", query_string=authorize_params(app_client["client_id"], challenge, prompt="none")
    )
    assert query_of(r.headers["Location"])["error"] == "login_required"
    code_for(client, app_client["client_id"], "owner@acme.test")
    cookie = client.get_cookie("saas_auth", path="/oauth")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    # signed in: prompt=none now succeeds silently, max_age=0 forces a new login
    r = client.get(
        "/oauth/authorize", query_string=authorize_params(app_client["client_id"], challenge, prompt="none")
    )
    assert "code" in query_of(r.headers["Location"])
    import time

    time.sleep(1.1)
    r = client.get(
        "/oauth/authorize", query_string=authorize_params(app_client["client_id"], challenge, max_age="0")
    )
    assert r.headers["Location"].endswith("/oauth/login")
    r = client.get(
        "/oauth/authorize", query_string=authorize_params(app_client["client_id"], challenge, scope="admin")
    )
    assert query_of(r.headers["Location"])["error"] == "invalid_scope"


def test_userinfo_needs_openid_scope(api, client):
    owner = api.signup("acme")
    r = client.get("/oauth/userinfo", headers=api.auth(owner))
    assert r.status_code == 403 and "insufficient_scope" in r.headers["WWW-Authenticate"]
    assert client.get("/oauth/userinfo").status_code == 401


def test_token_endpoint_is_authlib_and_never_accepts_plain_pkce(api, client, app, db_session):
    from saas.auth.oauth import server as authlib_server
    from saas.auth.oauth.grants import S256CodeChallenge
    from saas.auth.oauth.server import Server

    assert isinstance(authlib_server.server(app), Server)
    assert S256CodeChallenge.SUPPORTED_CODE_CHALLENGE_METHOD == ["S256"]
    _owner, app_client = _setup(api, client)
    code, _verifier = code_for(client, app_client["client_id"], "owner@acme.test")
    row = db_session.scalars(
        select(AuthorizationCode).where(AuthorizationCode.client_id == app_client["client_id"])
    ).one()
    # a row claiming "plain" (never issued by us) is still verified as S256: verifier == challenge fails
    plain = "p" * 43
    db_session.execute(
        update(AuthorizationCode)
        .where(AuthorizationCode.id == row.id)
        .values(code_challenge=plain, code_challenge_method="plain")
    )
    db_session.flush()
    r = _exchange(client, app_client, code, plain)
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"
    r = client.post("/oauth/token", data={"client_id": app_client["client_id"]})
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_request"


def test_hosted_login_is_audited_once(api, client):
    owner, app_client = _setup(api, client)
    code_for(client, app_client["client_id"], "owner@acme.test")
    code_for(client, app_client["client_id"], "owner@acme.test")  # SSO: no second login
    events = client.get(
        "/api/v1/audit-events", headers=api.auth(owner), query_string={"action": "auth.login"}
    )
    hosted = [e for e in events.get_json() if e["data"].get("via") == "hosted"]
    assert len(hosted) == 1 and hosted[0]["data"]["client_id"] == app_client["client_id"]


def test_cors_for_browser_clients(client):
    pre = client.options(
        "/oauth/token",
        headers={
            "Origin": "https://spa.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert pre.status_code == 200 and pre.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in pre.headers
    r = client.get("/.well-known/openid-configuration", headers={"Origin": "https://spa.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    hosted = client.get("/oauth/authorize", headers={"Origin": "https://spa.example"})
    assert "Access-Control-Allow-Origin" not in hosted.headers
