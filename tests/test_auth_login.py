"""Password login, access-token claims and verification, JWKS."""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt as pyjwt
import pytest

from saas.identity.models import Membership
from saas.services import services
from tests.helpers import assert_problem, bearer


def _strip_volatile(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("request_id", "instance")}


def test_login_returns_rfc6749_token_response(api, client, app):
    signup = api.signup("acme")
    r = api.login("owner@acme.test")
    assert r.status_code == 200
    assert r.headers["Cache-Control"] == "private, no-store"
    body = r.get_json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 600
    assert body["refresh_token"] and body["access_token"]
    # an independent JWT library verifies it against the published JWKS
    jwks = client.get("/.well-known/jwks.json").get_json()
    header = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[0] + "=="))
    assert header["typ"] == "at+jwt" and header["alg"] == "RS256"
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    assert "d" not in jwk and "p" not in jwk  # public parts only
    key = pyjwt.PyJWK(jwk).key
    claims = pyjwt.decode(
        body["access_token"], key, algorithms=["RS256"], audience="saas-api", issuer="http://localhost:8000"
    )
    assert claims["sub"] == signup["user"]["id"]
    assert claims["tid"] == signup["tenant"]["id"]
    assert claims["roles"] == ["owner"] and claims["scope"] == "api"
    assert claims["exp"] - claims["iat"] == 600 and claims["jti"]
    assert client.get("/api/v1/me", headers=bearer(body["access_token"])).status_code == 200


def test_login_email_is_case_insensitive_and_tenant_optional(api):
    api.signup("acme")
    assert api.login("OWNER@Acme.TEST").status_code == 200
    assert api.login("owner@acme.test", tenant="ACME").status_code == 200


def test_wrong_email_and_wrong_password_are_identical(api):
    api.signup("acme")
    wrong_password = api.login("owner@acme.test", password="not the password")
    wrong_email = api.login("nobody@acme.test")
    a = assert_problem(wrong_password, 401, "invalid_credentials")
    b = assert_problem(wrong_email, 401, "invalid_credentials")
    assert _strip_volatile(a) == _strip_volatile(b)
    assert a["instance"] == b["instance"]
    assert wrong_password.headers["WWW-Authenticate"] == wrong_email.headers["WWW-Authenticate"]
    assert wrong_password.headers["WWW-Authenticate"].startswith("Bearer")
    # byte-identical once the request id is taken out
    raw_a = wrong_password.get_data(as_text=True).replace(a["request_id"], "RID")
    raw_b = wrong_email.get_data(as_text=True).replace(b["request_id"], "RID")
    assert raw_a == raw_b


def test_invited_user_without_password_cannot_log_in(api, client):
    signup = api.signup("acme")
    r = client.post(
        "/api/v1/members", json={"email": "new@acme.test", "role": "member"}, headers=api.auth(signup)
    )
    assert r.status_code == 201
    a = assert_problem(api.login("new@acme.test", password="anything at all"), 401, "invalid_credentials")
    b = assert_problem(api.login("ghost@acme.test", password="anything at all"), 401)
    assert _strip_volatile(a) == _strip_volatile(b)


def test_login_validation(client):
    body = assert_problem(client.post("/api/v1/auth/login", json={"email": "x"}), 422)
    assert set(body["errors"]) == {"email", "password"}


def test_multi_membership_login_needs_tenant(api, app, db_session):
    acme = api.signup("acme")
    globex = api.signup("globex", email="boss@globex.test")
    db_session.add(
        Membership(
            user_id=uuid.UUID(acme["user"]["id"]),
            tenant_id=uuid.UUID(globex["tenant"]["id"]),
            role="viewer",
            status="active",
        )
    )
    db_session.commit()
    body = assert_problem(api.login("owner@acme.test"), 422, "validation_error")
    assert "tenant" in body["errors"]
    assert "acme" in body["detail"] and "globex" in body["detail"]
    r = api.login("owner@acme.test", tenant="globex")
    assert r.status_code == 200
    claims = pyjwt.decode(r.get_json()["access_token"], options={"verify_signature": False})
    assert claims["tid"] == globex["tenant"]["id"] and claims["roles"] == ["viewer"]
    assert_problem(api.login("owner@acme.test", tenant="initech"), 403, "not_a_member")
    # the wrong password is still the same 401, whatever the tenant
    assert_problem(api.login("owner@acme.test", password="wrong password", tenant="globex"), 401)


def test_suspended_tenant_cannot_log_in_or_call(api, client, db_session):
    from saas.identity.models import Tenant

    signup = api.signup("acme")
    tenant = db_session.get(Tenant, uuid.UUID(signup["tenant"]["id"]))
    tenant.status = "suspended"
    db_session.commit()
    assert_problem(api.login("owner@acme.test"), 403, "tenant_suspended")
    assert_problem(client.get("/api/v1/contacts", headers=api.auth(signup)), 403, "tenant_suspended")


def test_login_is_audited(api, client):
    signup = api.signup("acme")
    api.login("owner@acme.test")
    events = client.get("/api/v1/audit-events?action=auth.login", headers=api.auth(signup)).get_json()
    assert len(events) == 1 and events[0]["actor"]["id"] == signup["user"]["id"]


# --- access token verification -----------------------------------------------------------------


@pytest.fixture()
def owner(api):
    return api.signup("acme")


def _tamper(token: str, **changes) -> str:
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    new = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{new}.{sig}"


def test_missing_token_is_401_with_bearer_challenge(client):
    r = client.get("/api/v1/contacts")
    assert_problem(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer not.a.jwt", "Bearer abc", "Token xyz"],
)
def test_malformed_authorization_is_401(client, header):
    r = client.get("/api/v1/contacts", headers={"Authorization": header})
    assert_problem(r, 401)
    assert r.headers["WWW-Authenticate"].startswith("Bearer ")
    assert "error=" in r.headers["WWW-Authenticate"]


def test_tampered_expired_and_foreign_tokens_are_401(app, client, owner):
    token = owner["token"]["access_token"]
    tampered = _tamper(token, tid=str(uuid.uuid4()))
    r = client.get("/api/v1/contacts", headers=bearer(tampered))
    assert_problem(r, 401)
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    tokens = services(app).tokens
    expired = tokens.issue(
        subject=owner["user"]["id"],
        tenant_id=owner["tenant"]["id"],
        roles=["owner"],
        scope="api",
        client_id="saas-api",
        extra={"exp": int(time.time()) - 120},
    ).token
    assert "expired" in assert_problem(client.get("/api/v1/me", headers=bearer(expired)), 401)["detail"]
    other_aud = tokens.issue(
        subject=owner["user"]["id"],
        tenant_id=owner["tenant"]["id"],
        roles=["owner"],
        scope="api",
        client_id="saas-api",
        extra={"aud": "someone-else"},
    ).token
    assert_problem(client.get("/api/v1/me", headers=bearer(other_aud)), 401)
    other_iss = tokens.issue(
        subject=owner["user"]["id"],
        tenant_id=owner["tenant"]["id"],
        roles=["owner"],
        scope="api",
        client_id="saas-api",
        extra={"iss": "https://evil.test"},
    ).token
    assert_problem(client.get("/api/v1/me", headers=bearer(other_iss)), 401)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256(header: dict, claims: dict, secret: bytes) -> str:
    import hashlib
    import hmac

    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(sig)


def test_alg_none_and_hs256_confusion_are_refused(app, client, owner):
    claims = pyjwt.decode(owner["token"]["access_token"], options={"verify_signature": False})
    none_token = pyjwt.encode(claims, None, algorithm="none", headers={"typ": "at+jwt"})
    assert_problem(client.get("/api/v1/me", headers=bearer(none_token)), 401)
    # HS256 signed with the public key's PEM (the classic key-confusion attack)
    kid = services(app).keys.active.kid
    public_pem = services(app).keys.active.key.as_pem(private=False)
    hs = _hs256({"typ": "at+jwt", "alg": "HS256", "kid": kid}, claims, public_pem)
    assert_problem(client.get("/api/v1/me", headers=bearer(hs)), 401)


def test_access_token_of_removed_member_is_refused(api, client, app):
    from tests.helpers import role_headers

    owner = api.signup("acme")
    user, h = role_headers(app, owner["tenant"]["id"], "member")
    assert client.get("/api/v1/me", headers=h).status_code == 200
    r = client.delete(f"/api/v1/members/{user.id}", headers=api.auth(owner))
    assert r.status_code == 204
    assert_problem(client.get("/api/v1/me", headers=h), 401)


def test_jwks(client):
    r = client.get("/.well-known/jwks.json")
    assert r.status_code == 200
    keys = r.get_json()["keys"]
    assert keys and all(k["use"] == "sig" and k["kid"] and k["kty"] == "RSA" for k in keys)
    assert all("d" not in k for k in keys)


@pytest.mark.parametrize(
    "header",
    [b'{"alg":"RS256","typ":1}', b'{"alg":"RS256","typ":null}', b"[" * 5000 + b"]" * 5000],
)
def test_hostile_token_headers_are_401_not_500(client, header):
    token = _b64(header) + ".e30.c2ln"
    assert_problem(client.get("/api/v1/me", headers=bearer(token)), 401)


def test_junk_bearer_does_not_break_health_or_docs(client):
    junk = {"Authorization": "Bearer junk"}
    assert client.get("/healthz", headers=junk).status_code == 200
    assert client.get("/openapi.json", headers=junk).status_code == 200


def test_locked_account_tokens_stop_at_once(api, client, db_session):
    """An operator lock (``saas users lock``) ends the account's live access tokens at the next
    request, although the principal was cached: the cached snapshot carries the account status."""
    from sqlalchemy import update

    from saas.cache import invalidate_tenant
    from saas.identity.models import User

    acme = api.signup("acme")
    h = api.auth(acme)
    assert client.get("/api/v1/me", headers=h).status_code == 200  # cached now
    db_session.execute(update(User).where(User.id == uuid.UUID(acme["user"]["id"])).values(status="locked"))
    db_session.flush()
    invalidate_tenant([uuid.UUID(acme["tenant"]["id"])])  # what the lock command's commit does
    assert_problem(client.get("/api/v1/me", headers=h), 401)
