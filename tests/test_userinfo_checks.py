"""OIDC UserInfo checks what every API request checks (``/api/v1/me``): a locked account, a
suspended tenant, a removed membership or a revoked session gets no claims, but a 401 with the
RFC 6750 ``invalid_token`` challenge (OIDC Core section 5.3.3)."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from saas.identity.models import Membership, Tenant, User
from tests.auth_helpers import code_flow_tokens, register_client
from tests.helpers import assert_problem, bearer, token_for


def _openid_token(app, owner: dict) -> dict[str, str]:
    return bearer(token_for(app, owner["user"]["id"], owner["tenant"]["id"], "owner", "openid email api"))


def _assert_invalid_token(response) -> None:
    assert_problem(response, 401)
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert "sub" not in response.get_json()


def test_userinfo_refuses_a_locked_account(api, app, client, db_session):
    owner = api.signup("acme")
    h = _openid_token(app, owner)
    assert client.get("/oauth/userinfo", headers=h).get_json()["sub"] == owner["user"]["id"]
    user = db_session.get(User, uuid.UUID(owner["user"]["id"]))
    user.status = "locked"
    # as `saas users lock` does: the tenant's cached principals see the new status at once
    db_session.info.setdefault("saas.cache.touched", set()).add(uuid.UUID(owner["tenant"]["id"]))
    db_session.commit()
    assert_problem(client.get("/api/v1/me", headers=h), 401)
    for method in (client.get, client.post):
        _assert_invalid_token(method("/oauth/userinfo", headers=h))


def test_userinfo_refuses_a_suspended_tenant(api, app, client, db_session):
    owner = api.signup("acme")
    h = _openid_token(app, owner)
    assert client.get("/oauth/userinfo", headers=h).status_code == 200
    tenant = db_session.get(Tenant, uuid.UUID(owner["tenant"]["id"]))
    tenant.status = "suspended"
    db_session.commit()
    assert_problem(client.get("/api/v1/me", headers=h), 403, "tenant_suspended")
    r = client.get("/oauth/userinfo", headers=h)
    _assert_invalid_token(r)
    assert r.get_json()["code"] == "tenant_suspended"


def test_userinfo_refuses_a_removed_membership(api, app, client, db_session):
    owner = api.signup("acme")
    h = _openid_token(app, owner)
    membership = db_session.scalars(
        select(Membership).where(Membership.user_id == uuid.UUID(owner["user"]["id"]))
    ).one()
    db_session.delete(membership)
    db_session.commit()
    assert_problem(client.get("/api/v1/me", headers=h), 401)
    _assert_invalid_token(client.get("/oauth/userinfo", headers=h))


def test_userinfo_answers_a_revoked_session_as_me_does(api, client):
    """Whatever the API answers for a revoked session's access token, UserInfo answers too: both
    resolve the caller through the same principal check."""
    owner = api.signup("acme")
    app_client = register_client(client, api.auth(owner), first_party=True, client_type="public")
    tokens = code_flow_tokens(client, app_client, "owner@acme.test")
    h = bearer(tokens["access_token"])
    assert client.get("/oauth/userinfo", headers=h).status_code == 200
    r = client.post(
        "/oauth/revoke", data={"token": tokens["refresh_token"], "client_id": app_client["client_id"]}
    )
    assert r.status_code == 200
    me = client.get("/api/v1/me", headers=h)
    info = client.get("/oauth/userinfo", headers=h)
    assert info.status_code == me.status_code
    if me.status_code == 401:
        _assert_invalid_token(info)


def test_userinfo_without_a_token_or_with_a_bad_one_is_401(client):
    r = client.get("/oauth/userinfo")
    assert_problem(r, 401)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    _assert_invalid_token(client.get("/oauth/userinfo", headers=bearer("not.a.token")))
