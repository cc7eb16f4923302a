"""Revocation reaches access tokens at once: logout, ``DELETE /api/v1/me/sessions/{id}``, an
admin's revocation, refresh-token reuse, a deleted client, and a client's changed role.

Each case runs twice: on the suite's app (rate limiter off: the check is its own ``EXISTS``) and
on an app with the limiter on (the check rides the limiter's Lua call)."""

from __future__ import annotations

import socket
import time

import pytest

from saas import create_app
from saas.auth.tokens import LEEWAY_SECONDS
from saas.db import Database
from saas.services import services
from tests.auth_helpers import REDIRECT, basic_auth, client_credentials_token, code_for, register_client
from tests.conftest import Api
from tests.helpers import mailed_invitation_token


@pytest.fixture(params=["limiter-off", "limiter-on"])
def http(request, app, settings, engine, redis_client, connection):
    """The test client of the suite's app, or of an app with the rate limiter on."""
    if request.param == "limiter-off":
        return app.test_client()
    limited = create_app(
        settings.with_overrides(ratelimit_enabled=True, ratelimit_principal_share=1.0),
        database=Database(engine),
        redis=redis_client,
    )
    limited.testing = True
    services(limited).database.bind = connection
    return limited.test_client()


def _refused(response) -> bool:
    return response.status_code == 401 and response.get_json()["code"] == "session_revoked"


def test_logout_ends_the_sessions_access_tokens(http):
    api = Api(http)
    owner = api.signup("acme")
    other = api.login("owner@acme.test").get_json()
    h = api.auth(owner)
    assert http.get("/api/v1/contacts", headers=h).status_code == 200
    assert http.post("/api/v1/auth/logout", headers=h).status_code == 204
    assert _refused(http.get("/api/v1/contacts", headers=h))
    assert _refused(http.post("/api/v1/contacts", json={"name": "x"}, headers=h))
    assert _refused(http.get("/api/v1/me", headers=h))
    # another session of the same user is untouched
    assert http.get("/api/v1/contacts", headers=api.auth(other)).status_code == 200


def test_deleting_one_of_my_sessions_ends_its_access_tokens(http):
    api = Api(http)
    owner = api.signup("acme")
    second = api.login("owner@acme.test").get_json()
    mine = http.get("/api/v1/me/sessions", headers=api.auth(owner)).get_json()
    target = next(s for s in mine if not s["current"])
    assert http.delete(f"/api/v1/me/sessions/{target['id']}", headers=api.auth(owner)).status_code == 204
    assert _refused(http.get("/api/v1/contacts", headers=api.auth(second)))
    assert http.get("/api/v1/contacts", headers=api.auth(owner)).status_code == 200


def test_admin_revocation_ends_every_access_token_of_the_member(http):
    api = Api(http)
    owner = api.signup("acme")
    invite = http.post(
        "/api/v1/members", json={"email": "bob@acme.test", "role": "member"}, headers=api.auth(owner)
    )
    assert invite.status_code == 201, invite.get_json()
    accepted = http.post(
        "/api/v1/invitations/accept",
        json={
            "token": mailed_invitation_token(http.application, "bob@acme.test"),
            "password": "a long enough passphrase",
        },
    ).get_json()
    bob = accepted["token"]
    bob2 = api.login("bob@acme.test", "a long enough passphrase").get_json()
    for token in (bob, bob2):
        assert http.get("/api/v1/contacts", headers=api.auth(token)).status_code == 200
    revoked = http.delete(f"/api/v1/members/{accepted['user']['id']}/sessions", headers=api.auth(owner))
    assert revoked.status_code == 200 and revoked.get_json()["revoked"] == 2
    for token in (bob, bob2):
        assert _refused(http.get("/api/v1/contacts", headers=api.auth(token)))
    assert http.get("/api/v1/contacts", headers=api.auth(owner)).status_code == 200
    events = http.get("/api/v1/audit-events?action=auth.sessions_revoked", headers=api.auth(owner))
    assert len(events.get_json()) == 1


def test_deleted_clients_tokens_stop(http):
    api = Api(http)
    owner = api.signup("acme")
    h = api.auth(owner)
    svc = register_client(
        http, h, client_type="confidential", grant_types=["client_credentials"], redirect_uris=[],
        scope="api", role="viewer",
    )  # fmt: skip
    web = register_client(http, h, client_type="public", first_party=True)
    service_token = client_credentials_token(http, svc)
    code, verifier = code_for(http, web["client_id"], "owner@acme.test")
    user_token = http.post(
        "/oauth/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
              "code_verifier": verifier, "client_id": web["client_id"]},
    ).get_json()["access_token"]  # fmt: skip
    for token in (service_token, user_token):
        assert http.get("/api/v1/contacts", headers=api.auth(token)).status_code == 200
    for c in (svc, web):
        assert http.delete(f"/api/v1/clients/{c['client_id']}", headers=h).status_code == 204
    for token in (service_token, user_token):
        assert _refused(http.get("/api/v1/contacts", headers=api.auth(token)))


def test_service_accounts_role_is_the_clients_current_one(http):
    api = Api(http)
    owner = api.signup("acme")
    h = api.auth(owner)
    svc = register_client(
        http, h, client_type="confidential", grant_types=["client_credentials"], redirect_uris=[],
        scope="api", role="member",
    )  # fmt: skip
    sh = api.auth(client_credentials_token(http, svc))
    assert http.post("/api/v1/contacts", json={"name": "a"}, headers=sh).status_code == 201
    changed = http.patch(f"/api/v1/clients/{svc['client_id']}", json={"role": "viewer"}, headers=h)
    assert changed.status_code == 200
    # the token still says "member"; the client is a viewer now
    refused = http.post("/api/v1/contacts", json={"name": "b"}, headers=sh)
    assert refused.status_code == 403 and refused.get_json()["code"] == "permission_denied"
    assert http.get("/api/v1/contacts", headers=sh).status_code == 200


def test_markers_are_tenant_scoped_and_expire_with_the_tokens(http, app, redis_client, settings):
    api = Api(http)
    owner = api.signup("acme")
    claims = services(app).tokens.verify(owner["token"]["access_token"])
    assert http.post("/api/v1/auth/logout", headers=api.auth(owner)).status_code == 204
    key = f"{{t:{owner['tenant']['id']}}}:rv:s:{claims['sid']}"
    assert redis_client.exists(key)
    ttl = redis_client.ttl(key)
    assert settings.access_token_ttl_seconds < ttl <= settings.access_token_ttl_seconds + LEEWAY_SECONDS + 1
    assert list(redis_client.scan_iter("*:rv:*")) == [key.encode()]  # nothing outside the tenant's slot


def test_a_rolled_back_revocation_writes_no_marker(app, db_session, api, redis_client):
    from sqlalchemy import select

    from saas.auth import service
    from saas.auth.models import RefreshToken

    api.signup("acme")
    family = db_session.scalars(select(RefreshToken.family_id)).first()
    service.revoke_family(db_session, family, "logout")
    db_session.rollback()
    assert list(redis_client.scan_iter("*:rv:*")) == []


def test_markers_written_while_redis_was_down_follow_when_it_answers(redis_client, settings):
    from saas.auth.revocation import RevocationStore
    from saas.cache.guard import CircuitBreaker, Counters, RedisGuard
    from saas.redis_client import make_redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # nothing listens here once closed
    dead = make_redis(f"redis://127.0.0.1:{dead_port}/0", 0.1)
    guard = RedisGuard(dead, CircuitBreaker(5, 1.0), Counters())
    store = RevocationStore(guard, settings.access_token_ttl_seconds + LEEWAY_SECONDS)
    redis_client.flushdb()
    key = "{t:00000000-0000-4000-8000-000000000001}:rv:s:abc"
    assert store.publish({key: time.time() + 60}) is False
    assert not redis_client.exists(key)
    guard.client = redis_client  # Redis answers again: its first answer replays what waited
    store.any_exists((key,))
    assert redis_client.exists(key) and 0 < redis_client.ttl(key) <= 60


def test_introspection_reports_a_deleted_clients_token_inactive(http):
    api = Api(http)
    owner = api.signup("acme")
    h = api.auth(owner)
    fields = dict(
        client_type="confidential", grant_types=["client_credentials"], redirect_uris=[], scope="api"
    )
    svc = register_client(http, h, role="viewer", **fields)
    checker = register_client(http, h, name="Resource server", resource_server=True, **fields)
    token = client_credentials_token(http, svc)

    def introspect() -> dict:
        r = http.post(
            "/oauth/introspect",
            data={"token": token},
            headers=basic_auth(checker["client_id"], checker["client_secret"]),
        )
        return r.get_json()

    assert introspect()["active"] is True
    assert http.delete(f"/api/v1/clients/{svc['client_id']}", headers=h).status_code == 204
    assert introspect() == {"active": False}
