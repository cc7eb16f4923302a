"""Per-tenant SSO with OpenID Connect (docs/auth.md, "Per-tenant SSO"): the connections API, the
OIDC protocol against a scriptable OpenID Provider served over real HTTP on loopback (its ID
tokens signed with joserfc, so each check of OpenID Connect Core section 3.1.3.7 can be failed on
purpose), home realm discovery on the hosted page, just-in-time membership and role_mapping, the
hand-off to the hosted session, and require_sso with break-glass owners.

The end-to-end sign-in through a second instance of this service as the provider, in Chromium, is
``tests/test_sso_e2e.py``.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import select
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from saas.auth.sso import oidc
from saas.auth.sso.connections import SECRET_INFO, client_secret
from saas.db import utcnow
from saas.identity.models import ExternalIdentity, Membership, SsoConnection, User, VerifiedDomain
from saas.security import seal, unseal
from saas.services import services
from tests.auth_helpers import (
    REDIRECT,
    csrf_of,
    email_step,
    login_request,
    query_of,
    redeem_code,
    register_client,
)
from tests.conftest import TEST_PASSWORD
from tests.helpers import add_member, assert_problem, give_plan, role_headers
from tests.peers import free_port

CLIENT_ID = "sp-client"
CLIENT_SECRET = "idp-secret-value-1234567890"


class FakeProvider:
    """A scriptable OpenID Provider: discovery, JWKS, token and UserInfo endpoints over HTTP.
    ``claims`` overrides the next ID tokens' claims (None removes one); ``sign_key`` signs them."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})
        self.published = [self.key]
        self.sign_key = self.key
        self.reset()
        self.server = make_server("127.0.0.1", 0, self.wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def reset(self) -> None:
        self.claims: dict[str, Any] = {}
        self.discovery: dict[str, Any] = {}
        self.nonce: str | None = None
        self.subject = "idp-user-1"
        self.email = "alice@corp.test"
        self.token_requests: list[dict[str, Any]] = []
        self.hits: dict[str, int] = {"discovery": 0, "jwks": 0, "userinfo": 0}
        self.token_error: str | None = None

    def fresh(self) -> None:
        """A test's start: :meth:`reset`, signing with its own key (the one it publishes), and the
        relying party's memos of discovery documents and JWKS emptied."""
        self.reset()
        self.sign_key = self.key
        self.published = [self.key]
        for memo in (oidc._discovery, oidc._jwks):
            for key in list(memo._data):
                memo._data.pop(key, None)

    def id_token(self) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": self.subject,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": self.nonce,
            "email": self.email,
            "name": "Alice",
            "groups": ["engineering"],
            "amr": ["pwd"],
        }
        claims.update(self.claims)
        claims = {k: v for k, v in claims.items() if v is not None}
        header = {"alg": "RS256", "kid": self.sign_key.kid}
        return jwt.encode(header, claims, self.sign_key)

    def wsgi(self, environ, start_response):
        req = Request(environ)
        path = req.path
        if path == "/.well-known/openid-configuration":
            self.hits["discovery"] += 1
            body = {
                "issuer": self.url,
                "authorization_endpoint": self.url + "/authorize",
                "token_endpoint": self.url + "/token",
                "jwks_uri": self.url + "/jwks",
                "userinfo_endpoint": self.url + "/userinfo",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                **self.discovery,
            }
            response = Response_json(body)
        elif path == "/jwks":
            self.hits["jwks"] += 1
            response = Response_json({"keys": [k.as_dict(private=False) for k in self.published]})
        elif path == "/token":
            self.token_requests.append({"form": req.form.to_dict(), "auth": req.headers.get("Authorization")})
            if self.token_error:
                response = Response_json({"error": self.token_error}, 400)
            else:
                response = Response_json(
                    {"access_token": "at-1", "token_type": "Bearer", "id_token": self.id_token()}
                )
        elif path == "/userinfo":
            self.hits["userinfo"] += 1
            response = Response_json({"sub": self.subject, "email": self.email})
        else:
            response = Response("not found", 404)
        return response(environ, start_response)


def Response_json(body: Any, status: int = 200) -> Response:
    import json

    return Response(json.dumps(body), status, content_type="application/json")


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    idp = FakeProvider()
    idp.thread.start()
    yield idp
    idp.server.shutdown()


@pytest.fixture()
def idp(provider) -> FakeProvider:
    provider.fresh()
    return provider


# --- helpers ---------------------------------------------------------------------------------------


def _tenant(api, db_session, slug: str, *, plan: str = "enterprise", domain: str | None = "corp.test"):
    body = api.signup(slug)
    if plan:
        give_plan(db_session, body["tenant"]["id"], plan)
    if domain:
        db_session.add(
            VerifiedDomain(
                tenant_id=uuid.UUID(body["tenant"]["id"]), domain=domain, token="t" * 20, verified_at=utcnow()
            )
        )
        db_session.flush()
    return body, api.auth(body)


def _connection_body(idp: FakeProvider, **extra) -> dict[str, Any]:
    body = {
        "type": "oidc",
        "name": "Corp IdP",
        "issuer": idp.url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "domains": ["corp.test"],
        "default_role": "member",
        "role_mapping": {"engineering": "admin", "dept=sales": "viewer"},
    }
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


def _create(client, h, idp, **extra) -> dict[str, Any]:
    r = client.post("/api/v1/sso/connections", json=_connection_body(idp, **extra), headers=h)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def _events(client, h, action: str) -> list[dict]:
    r = client.get(f"/api/v1/audit-events?action={action}", headers=h)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _start(client, h, email: str = "alice@corp.test") -> tuple[dict[str, str], str]:
    """Through the hosted pages up to the redirect to the IdP: (its query, the PKCE verifier of
    the SP's own client)."""
    app_client = register_client(client, h, client_type="public", first_party=True)
    verifier, r = login_request(client, app_client["client_id"])
    assert r.status_code == 302 and r.headers["Location"].endswith("/oauth/login"), r.get_data(as_text=True)
    r = email_step(client, email)
    assert r.status_code == 302, r.get_data(as_text=True)
    return query_of(r.headers["Location"]), app_client["client_id"] + " " + verifier


def _callback(client, idp: FakeProvider, query: dict[str, str], **params):
    idp.nonce = query["nonce"] if idp.nonce is None else idp.nonce
    return client.get(oidc.CALLBACK_PATH, query_string={"state": query["state"], "code": "code-1", **params})


def _finish(client, response) -> dict[str, str]:
    """Follow the hand-off: ``/oauth/sso/complete`` then the redirect to the client."""
    assert response.status_code == 302, response.get_data(as_text=True)
    assert response.headers["Location"].startswith("/oauth/sso/complete?ticket="), response.headers[
        "Location"
    ]
    r = client.get(response.headers["Location"])
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT), r.get_data(as_text=True)
    return query_of(r.headers["Location"])


def _redeem(client, client_and_verifier: str, code: str) -> dict[str, Any]:
    client_id, verifier = client_and_verifier.split(" ")
    return redeem_code(client, client_id, verifier, code)


def _member(db_session, tenant_id, email: str) -> Membership | None:
    return db_session.scalars(
        select(Membership)
        .join(User, User.id == Membership.user_id)
        .where(Membership.tenant_id == uuid.UUID(str(tenant_id)), User.email == email)
    ).first()


# --- the connections API ------------------------------------------------------------------------


def test_crud_seals_the_secret_never_returns_it_and_audits(client, api, db_session, app, idp):
    _body, h = _tenant(api, db_session, "sso-crud")
    created = _create(client, h, idp)
    assert created["type"] == "oidc" and created["has_client_secret"] is True
    assert created["config"]["issuer"] == idp.url and created["config"]["client_id"] == CLIENT_ID
    assert created["config"]["redirect_uri"] == "http://localhost:8000/sso/oidc/callback"
    assert created["config"]["token_endpoint_auth_method"] == "client_secret_basic"
    assert created["domains"] == ["corp.test"] and created["default_role"] == "member"
    row = db_session.get(SsoConnection, uuid.UUID(created["id"]))
    assert CLIENT_SECRET not in (row.secret_encrypted or "") and row.secret_encrypted.startswith("v1:")
    with app.app_context():
        assert client_secret(row) == CLIENT_SECRET
        with pytest.raises(Exception):  # noqa: B017 - AES-GCM's InvalidTag: another row's id as AAD
            unseal(row.secret_encrypted, uuid.uuid4().bytes, info=SECRET_INFO)
    listed = client.get("/api/v1/sso/connections", headers=h)
    one = client.get(f"/api/v1/sso/connections/{created['id']}", headers=h)
    for r in (listed, one):
        assert r.status_code == 200 and CLIENT_SECRET not in r.get_data(as_text=True)
        assert '"client_secret"' not in r.get_data(as_text=True)  # no such member
    r = client.patch(
        f"/api/v1/sso/connections/{created['id']}",
        json={"name": "Renamed", "client_secret": "a-new-secret-value"},
        headers=h,
    )
    assert r.status_code == 200 and r.get_json()["name"] == "Renamed", r.get_json()
    assert "a-new-secret-value" not in r.get_data(as_text=True)
    db_session.expire_all()
    with app.app_context():
        assert client_secret(db_session.get(SsoConnection, uuid.UUID(created["id"]))) == "a-new-secret-value"
    assert client.delete(f"/api/v1/sso/connections/{created['id']}", headers=h).status_code == 204
    assert client.get(f"/api/v1/sso/connections/{created['id']}", headers=h).status_code == 404
    [made] = _events(client, h, "sso.connection_created")
    assert made["data"]["has_client_secret"] is True and CLIENT_SECRET not in str(made)
    [changed] = _events(client, h, "sso.connection_updated")
    assert changed["data"]["name"] == {"from": "Corp IdP", "to": "Renamed"}
    assert changed["data"]["secret_changed"] is True and "a-new-secret-value" not in str(changed)
    assert len(_events(client, h, "sso.connection_deleted")) == 1


@pytest.mark.parametrize(
    ("extra", "status", "code", "field"),
    [
        ({"issuer": "not a url"}, 422, "validation_error", "issuer"),
        ({"issuer": "http://idp.example.com"}, 422, "validation_error", "issuer"),  # https only
        ({"domains": ["elsewhere.test"]}, 422, "validation_error", "domains"),
        ({"default_role": "emperor"}, 422, "validation_error", "default_role"),
        ({"role_mapping": {"engineering": "emperor"}}, 422, "validation_error", "role_mapping"),
        ({"type": "kerberos"}, 422, "validation_error", "type"),
        ({"client_id": None}, 422, "validation_error", "client_id"),
    ],
)
def test_create_refuses_bad_fields_and_stores_nothing(
    client, api, db_session, idp, extra, status, code, field
):
    _body, h = _tenant(api, db_session, f"sso-bad-{field.replace('_', '-')}-{uuid.uuid4().hex[:4]}")
    r = client.post("/api/v1/sso/connections", json=_connection_body(idp, **extra), headers=h)
    problem = assert_problem(r, status, code)
    assert field in problem["errors"], problem
    assert client.get("/api/v1/sso/connections", headers=h).get_json() == []
    assert _events(client, h, "sso.connection_created") == []


def test_unreachable_or_lying_discovery_is_refused(client, api, db_session, idp):
    _body, h = _tenant(api, db_session, "sso-disc")
    closed = f"http://127.0.0.1:{free_port()}"
    r = client.post("/api/v1/sso/connections", json=_connection_body(idp, issuer=closed), headers=h)
    assert_problem(r, 502, "sso_provider_unreachable")
    idp.discovery = {"issuer": "https://evil.example"}  # OIDC Discovery 4.3: must equal
    r = client.post("/api/v1/sso/connections", json=_connection_body(idp), headers=h)
    assert "evil.example" in assert_problem(r, 422, "sso_metadata_invalid")["detail"]
    idp.discovery = {"code_challenge_methods_supported": ["plain"]}
    assert_problem(client.post("/api/v1/sso/connections", json=_connection_body(idp), headers=h), 422)
    assert client.get("/api/v1/sso/connections", headers=h).get_json() == []


def test_another_tenants_connection_is_404_and_unchanged(client, api, db_session, idp):
    _a, ha = _tenant(api, db_session, "sso-iso-a")
    _b, hb = _tenant(api, db_session, "sso-iso-b", domain=None)
    conn = _create(client, ha, idp)
    path = f"/api/v1/sso/connections/{conn['id']}"
    assert_problem(client.get(path, headers=hb), 404)
    assert_problem(client.patch(path, json={"name": "mine"}, headers=hb), 404)
    assert_problem(client.delete(path, headers=hb), 404)
    assert client.get(path, headers=ha).get_json()["name"] == "Corp IdP"
    assert client.get("/api/v1/sso/connections", headers=hb).get_json() == []


def test_plan_permission_and_step_up_gate_the_api(client, api, db_session, app, idp):
    _free, hf = _tenant(api, db_session, "sso-free", plan="", domain=None)
    problem = assert_problem(client.get("/api/v1/sso/connections", headers=hf), 402, "entitlement_required")
    assert problem["feature"] == "sso"
    body, h = _tenant(api, db_session, "sso-gates")
    _member, hm = role_headers(app, body["tenant"]["id"], "member")
    assert_problem(client.get("/api/v1/sso/connections", headers=hm), 403)
    admin = add_member(app, body["tenant"]["id"], "admin")
    stale = services(app).tokens.issue(
        subject=str(admin.id),
        tenant_id=body["tenant"]["id"],
        roles=["admin"],
        scope="api",
        client_id="saas-api",
        auth_time=int(time.time()) - 3600,  # a login older than the step-up window (RFC 9470)
    )
    ha = {"Authorization": f"Bearer {stale.token}"}
    assert client.get("/api/v1/sso/connections", headers=ha).status_code == 200
    r = client.post("/api/v1/sso/connections", json=_connection_body(idp), headers=ha)
    assert_problem(r, 401, "insufficient_user_authentication")
    conn = _create(client, h, idp)
    for method in ("PATCH", "DELETE"):
        r = client.open(
            f"/api/v1/sso/connections/{conn['id']}", method=method, json={"name": "x"}, headers=ha
        )
        assert_problem(r, 401, "insufficient_user_authentication")
    assert [c["name"] for c in client.get("/api/v1/sso/connections", headers=h).get_json()] == ["Corp IdP"]


# --- signing in ----------------------------------------------------------------------------------


def test_sso_sign_in_creates_a_jit_member_with_mapped_role_and_working_tokens(client, api, db_session, idp):
    body, h = _tenant(api, db_session, "sso-jit")
    _create(client, h, idp)
    query, client_and_verifier = _start(client, h)
    assert query["client_id"] == CLIENT_ID and query["code_challenge_method"] == "S256"
    assert query["redirect_uri"] == "http://localhost:8000/sso/oidc/callback"
    assert query["login_hint"] == "alice@corp.test" and len(query["state"]) >= 43 and query["nonce"]
    assert "openid" in query["scope"].split()
    code = _finish(client, _callback(client, idp, query))["code"]
    # the token request: the code, the PKCE verifier of the challenge, HTTP Basic client auth
    [sent] = idp.token_requests
    verifier = sent["form"]["code_verifier"]
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert digest == query["code_challenge"] and sent["form"]["code"] == "code-1"
    expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert sent["auth"] == f"Basic {expected}" and "client_secret" not in sent["form"]
    tokens = _redeem(client, client_and_verifier, code)
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200, me.get_json()
    membership = _member(db_session, body["tenant"]["id"], "alice@corp.test")
    assert membership is not None and membership.status == "active"
    assert membership.role == "admin"  # role_mapping: engineering -> admin, above default member
    user = db_session.get(User, membership.user_id)
    assert user.email_verified_at is not None and user.password_hash is None
    link = db_session.scalars(select(ExternalIdentity).where(ExternalIdentity.user_id == user.id)).one()
    assert link.provider.startswith("sso:") and link.subject == "idp-user-1"
    [login] = _events(client, h, "sso.login")
    assert login["actor"]["id"] == str(user.id) and login["data"]["new_account"] is True
    assert "sso" in login["data"]["amr"]
    [provisioned] = _events(client, h, "member.provisioned")
    assert provisioned["data"]["source"] == link.provider


def test_role_mapping_follows_the_idp_on_every_sign_in(client, api, db_session, idp):
    body, h = _tenant(api, db_session, "sso-roles")
    _create(client, h, idp)
    idp.claims = {"groups": ["nobody"], "dept": "sales"}
    query, _ = _start(client, h)
    _finish(client, _callback(client, idp, query))
    assert _member(db_session, body["tenant"]["id"], "alice@corp.test").role == "viewer"  # dept=sales
    idp.claims, idp.nonce = {"groups": []}, None
    query, _ = _start(client, h)
    _finish(client, _callback(client, idp, query))
    db_session.expire_all()
    assert _member(db_session, body["tenant"]["id"], "alice@corp.test").role == "member"  # default_role
    assert len(_events(client, h, "member.role_changed")) == 2


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"nonce": "another-nonce"}, "id_token_nonce"),
        ({"aud": "someone-else"}, "id_token_audience"),
        ({"aud": [CLIENT_ID, "other"], "azp": "other"}, "id_token_azp"),
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 3700}, "id_token_expired"),
        ({"iss": "https://impostor.example"}, "id_token_issuer"),
        ({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 7200}, "id_token_iat"),
        ({"email_verified": False}, "email_unverified_at_idp"),
    ],
)
def test_bad_id_tokens_end_on_an_error_page_audited_and_change_nothing(
    client, api, db_session, idp, claims, reason
):
    body, h = _tenant(api, db_session, f"sso-tok-{reason.replace('_', '-')}")
    _create(client, h, idp)
    idp.claims = claims
    query, _ = _start(client, h)
    r = _callback(client, idp, query)
    assert r.status_code in (400, 403) and r.mimetype == "text/html", r.get_data(as_text=True)
    assert "Single sign-on failed" in r.get_data(as_text=True)
    assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Cache-Control"] == "no-store"
    assert _member(db_session, body["tenant"]["id"], "alice@corp.test") is None
    assert db_session.scalars(select(ExternalIdentity)).all() == []
    [failed] = _events(client, h, "sso.login_failed")
    assert failed["data"]["reason"] == reason


def test_a_token_signed_by_an_unpublished_key_is_refused(client, api, db_session, idp):
    body, h = _tenant(api, db_session, "sso-forged")
    _create(client, h, idp)
    idp.sign_key = RSAKey.generate_key(2048, parameters={"kid": "k1"})  # the same kid, another key
    query, _ = _start(client, h)
    r = _callback(client, idp, query)
    assert r.status_code == 400 and "signature" in r.get_data(as_text=True)
    assert _events(client, h, "sso.login_failed")[0]["data"]["reason"] == "id_token_signature"
    assert _member(db_session, body["tenant"]["id"], "alice@corp.test") is None


def test_discovery_and_jwks_are_cached_and_an_unknown_kid_refetches(client, api, db_session, idp):
    _body, h = _tenant(api, db_session, "sso-cache")
    _create(client, h, idp)  # the create fetched discovery afresh
    query, _ = _start(client, h)
    _finish(client, _callback(client, idp, query))
    assert idp.hits["discovery"] == 1 and idp.hits["jwks"] == 1
    rotated = RSAKey.generate_key(2048, parameters={"kid": "k2", "use": "sig", "alg": "RS256"})
    idp.published, idp.sign_key, idp.nonce = [idp.key, rotated], rotated, None
    time.sleep(0.01)
    query, _ = _start(client, h)
    oidc._jwks._data[idp.url + "/jwks"] = (oidc._jwks._data[idp.url + "/jwks"][0], time.monotonic() - 11)
    _finish(client, _callback(client, idp, query))
    assert idp.hits["discovery"] == 1 and idp.hits["jwks"] == 2  # the unknown kid fetched it again


def test_replayed_state_and_idp_errors_end_on_error_pages(client, api, db_session, idp):
    _body, h = _tenant(api, db_session, "sso-replay")
    _create(client, h, idp)
    query, _ = _start(client, h)
    first = _callback(client, idp, query)
    assert first.status_code == 302
    again = _callback(client, idp, query)
    assert again.status_code == 400 and "already used" in again.get_data(as_text=True)
    assert len(idp.token_requests) == 1  # the replay never reached the IdP
    query, _ = _start(client, h)
    r = client.get(
        oidc.CALLBACK_PATH,
        query_string={"state": query["state"], "error": "access_denied", "error_description": "<b>no</b>"},
    )
    assert r.status_code == 400 and "access_denied" in r.get_data(as_text=True)
    assert "<b>" not in r.get_data(as_text=True)  # escaped
    assert _events(client, h, "sso.login_failed")[0]["data"] == {
        "reason": "idp_error",
        "error": "access_denied",
    }
    query, _ = _start(client, h)
    idp.token_error = "invalid_grant"
    r = _callback(client, idp, query)
    assert r.status_code == 400 and "invalid_grant" in r.get_data(as_text=True)


def test_the_hand_off_ticket_works_once_and_only_in_the_browser_that_started(
    client, app, api, db_session, idp
):
    _body, h = _tenant(api, db_session, "sso-ticket")
    _create(client, h, idp)
    query, _ = _start(client, h)
    r = _callback(client, idp, query)
    ticket_url = r.headers["Location"]
    other = app.test_client()  # another browser: no hosted session, so no binding
    stolen = other.get(ticket_url)
    assert stolen.status_code == 400 and "another browser" in stolen.get_data(as_text=True)
    assert client.get(ticket_url).status_code == 400  # single use: the attempt consumed it


def test_email_outside_verified_domains_never_takes_over_an_account(client, api, db_session, app, idp):
    body, h = _tenant(api, db_session, "sso-takeover")
    victim = api.signup("sso-victim", email="victim@elsewhere.test")["user"]
    _create(client, h, idp)
    idp.email = "victim@elsewhere.test"
    query, _ = _start(client, h)
    r = _callback(client, idp, query)
    assert r.status_code == 403 and "verified domains" in r.get_data(as_text=True)
    assert db_session.scalars(select(ExternalIdentity)).all() == []
    assert _member(db_session, body["tenant"]["id"], "victim@elsewhere.test") is None
    [failed] = _events(client, h, "sso.login_failed")
    assert failed["data"] == {"reason": "email_outside_verified_domains", "email_domain": "elsewhere.test"}
    assert api.login("victim@elsewhere.test").status_code == 200  # the victim's account is untouched
    assert db_session.get(User, uuid.UUID(victim["id"])).email == "victim@elsewhere.test"


def test_an_account_on_a_verified_domain_is_linked_and_its_address_verified(
    client, api, db_session, app, idp
):
    body, h = _tenant(api, db_session, "sso-link")
    existing = add_member(app, body["tenant"]["id"], "viewer", email="alice@corp.test", verified=False)
    _create(client, h, idp, role_mapping={})
    query, _ = _start(client, h)
    _finish(client, _callback(client, idp, query))
    db_session.expire_all()
    user = db_session.get(User, existing.id)
    assert user.email_verified_at is not None
    assert db_session.scalars(select(ExternalIdentity.user_id)).all() == [existing.id]
    assert _member(db_session, body["tenant"]["id"], "alice@corp.test").role == "viewer"  # no mapping
    # returning: found by (provider, subject) even when the IdP's address changed
    idp.email, idp.nonce = "alice.renamed@corp.test", None
    query, _ = _start(client, h, email="alice@corp.test")
    _finish(client, _callback(client, idp, query))
    assert db_session.scalars(select(ExternalIdentity.user_id)).all() == [existing.id]


def test_a_disabled_connection_signs_nobody_in(client, api, db_session, idp):
    _body, h = _tenant(api, db_session, "sso-off")
    conn = _create(client, h, idp)
    query, _ = _start(client, h)
    r = client.patch(f"/api/v1/sso/connections/{conn['id']}", json={"enabled": False}, headers=h)
    assert r.status_code == 200
    r = _callback(client, idp, query)
    assert r.status_code == 403 and "switched off" in r.get_data(as_text=True)


# --- home realm discovery and require_sso ------------------------------------------------------


def test_home_realm_discovery_depends_on_the_domain_only(client, api, db_session, idp):
    _body, h = _tenant(api, db_session, "sso-hrd")
    _create(client, h, idp)
    app_client = register_client(client, h, client_type="public", first_party=True)
    login_request(client, app_client["client_id"])  # a pending authorization: the login page
    page = client.get("/oauth/login").get_data(as_text=True)
    assert 'id="continue"' in page and 'id="password"' in page
    csrf = csrf_of(page)
    for email in ("nobody-here@corp.test", "ALICE@Corp.Test"):  # no account / any case: same answer
        r = client.post("/oauth/login", data={"email": email, "step": "email", "csrf_token": csrf})
        assert r.status_code == 302 and r.headers["Location"].startswith(idp.url + "/authorize")
    for email in ("someone@other.test", "owner@sso-hrd.test"):
        r = client.post("/oauth/login", data={"email": email, "step": "email", "csrf_token": csrf})
        assert r.status_code == 200 and 'id="password"' in r.get_data(as_text=True)
        assert 'id="continue"' not in r.get_data(as_text=True)  # the password step


def test_require_sso_refuses_passwords_except_break_glass_owners(client, api, db_session, app, idp):
    body, h = _tenant(api, db_session, "sso-req", domain="sso-req.test")  # the owner's own domain
    _create(client, h, idp, domains=["sso-req.test"])
    alice = add_member(app, body["tenant"]["id"], "member", email="alice@sso-req.test")
    user = db_session.get(User, alice.id)
    user.password_hash = services(app).passwords.hash(TEST_PASSWORD)
    db_session.flush()
    before = api.login("alice@sso-req.test")  # require_sso is off: a password session
    assert before.status_code == 200
    alice_access, alice_refresh = before.get_json()["access_token"], before.get_json()["refresh_token"]
    owner_refresh = api.login(body["user"]["email"]).get_json()["refresh_token"]
    # break-glass entries must be owners
    r = client.patch(
        "/api/v1/tenant", json={"settings": {"sso_break_glass": ["alice@sso-req.test"]}}, headers=h
    )
    assert "sso_break_glass" in assert_problem(r, 422)["errors"]["settings"]
    r = client.patch(
        "/api/v1/tenant",
        json={"settings": {"require_sso": True, "sso_break_glass": [body["user"]["email"]]}},
        headers=h,
    )
    assert r.status_code == 200, r.get_json()
    assert_problem(api.login("alice@sso-req.test"), 403, "sso_required")
    # the password session opened before ends with the change, its access token at once; the
    # break-glass owner's goes on
    assert client.get("/api/v1/me", headers=api.auth(alice_access)).status_code == 401
    refresh = {"grant_type": "refresh_token"}
    refreshed = client.post("/oauth/token", data={**refresh, "refresh_token": alice_refresh})
    assert refreshed.status_code == 400 and refreshed.get_json()["error"] == "invalid_grant"
    r = client.post("/oauth/token", data={**refresh, "refresh_token": owner_refresh})
    assert r.status_code == 200, r.get_json()
    events = _events(client, h, "auth.sessions_revoked")
    [ended] = [e for e in events if e["data"].get("reason") == "require_sso"]
    assert ended["data"]["revoked"] == 1
    assert_problem(api.login("alice@sso-req.test", "wrong password"), 401, "invalid_credentials")
    # the domain's tenant governs the account, whichever tenant the sign-in is for
    other = api.signup("sso-req-other", email="owner@sso-req-other.test")
    db_session.add(Membership(user_id=alice.id, tenant_id=uuid.UUID(other["tenant"]["id"]), role="member"))
    db_session.flush()
    assert_problem(api.login("alice@sso-req.test", tenant="sso-req-other"), 403, "sso_required")
    assert api.login(body["user"]["email"]).status_code == 200  # the break-glass owner
    # the hosted password form says so too
    app_client = register_client(client, h, client_type="public", first_party=True)
    login_request(client, app_client["client_id"])  # a pending authorization: the login page
    page = client.get("/oauth/login")
    r = client.post(
        "/oauth/login",
        data={
            "email": "alice@sso-req.test",
            "password": TEST_PASSWORD,
            "csrf_token": csrf_of(page.get_data(as_text=True)),
        },
    )
    assert r.status_code == 403 and "single sign-on" in r.get_data(as_text=True)
    # an owner not listed is refused as well; a listed user who is no longer an owner too
    r = client.patch("/api/v1/tenant", json={"settings": {"sso_break_glass": []}}, headers=h)
    assert r.status_code == 200
    assert_problem(api.login(body["user"]["email"]), 403, "sso_required")


def test_seal_is_bound_to_its_info_and_row():
    sealed = seal("s3cret", b"row-1", info=b"one", secret_key="k")
    assert unseal(sealed, b"row-1", info=b"one", secret_key="k") == "s3cret"
    for aad, info, key in ((b"row-2", b"one", "k"), (b"row-1", b"two", "k"), (b"row-1", b"one", "other")):
        with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
            unseal(sealed, aad, info=info, secret_key=key)
    assert seal("s3cret", b"row-1", info=b"one", secret_key="k") != sealed  # a fresh nonce each time


def test_require_sso_refuses_passkey_sign_in_except_break_glass_owners(client, api, db_session, idp):
    from tests.test_webauthn import _passwordless, _register
    from tests.webauthn_device import Passkey

    body, h = _tenant(api, db_session, "sso-pk", domain="sso-pk.test")
    device = Passkey(uv=True, synced=True)
    assert _register(client, h, device).status_code == 201
    _create(client, h, idp, domains=["sso-pk.test"])
    # the owner names themselves break-glass as they turn it on (else their own password
    # session would end with the change, like every other one of the domain's users)
    settings = {"require_sso": True, "sso_break_glass": [body["user"]["id"]]}
    r = client.patch("/api/v1/tenant", json={"settings": settings}, headers=h)
    assert r.status_code == 200, r.get_json()
    assert _passwordless(client, device).status_code == 200
    r = client.patch("/api/v1/tenant", json={"settings": {"sso_break_glass": []}}, headers=h)
    assert r.status_code == 200, r.get_json()
    assert_problem(_passwordless(client, device), 403, "sso_required")


def test_an_idp_that_cannot_be_reached_leaves_the_user_on_the_login_page(client, api, db_session, idp):
    _body, h = _tenant(api, db_session, "sso-down")
    _create(client, h, idp)
    oidc._discovery._data.clear()
    idp.discovery = {"issuer": "https://moved.example"}  # no longer checks
    app_client = register_client(client, h, client_type="public", first_party=True)
    login_request(client, app_client["client_id"])  # a pending authorization: the login page
    r = email_step(client, "alice@corp.test")
    assert r.status_code == 502 and "cannot be reached" in r.get_data(as_text=True)
    assert r.mimetype == "text/html"
