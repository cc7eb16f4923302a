"""Social login (docs/auth.md, "Social login") in process: ``SOCIAL_PROVIDERS``, the hosted
buttons and callback against the SSO tests' scriptable OpenID Provider over real HTTP
(``tests.test_sso_oidc.FakeProvider``) and a small local fake of GitHub (its OAuth endpoints and
``api.github.com``'s ``/user`` and ``/user/emails``), the linking rule's refusals, the issuer rules
of Google and Microsoft, and ``/api/v1/me/identities``.

The sign-in end to end in Chromium through a second instance of this service is
``tests/test_social_e2e.py``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from werkzeug.wrappers import Request

from saas.auth.social import providers as social_providers
from saas.db import utcnow
from saas.identity.models import ExternalIdentity, Membership, SsoConnection, Tenant, User, VerifiedDomain
from saas.services import services
from saas.settings import Settings, SettingsError
from tests.auth_helpers import REDIRECT, csrf_of, login_request, query_of, redeem_code, register_client
from tests.conftest import TEST_PASSWORD
from tests.helpers import assert_problem, bearer, give_plan, replace_services
from tests.test_sso_oidc import CLIENT_ID, CLIENT_SECRET, FakeProvider, Response_json

# --- SOCIAL_PROVIDERS ------------------------------------------------------------------------------


def test_social_providers_setting_reads_a_json_object():
    raw = (
        '{"google": {"client_id": "g-id", "client_secret": "se:cr,et"},'
        ' "acme-idp": {"issuer": "https://id.acme.test", "client_id": "a", "client_secret": "b",'
        ' "label": "Acme"}}'
    )
    settings = Settings.from_env({"SOCIAL_PROVIDERS": raw})
    assert settings.social_providers["google"] == {"client_id": "g-id", "client_secret": "se:cr,et"}
    assert settings.social_providers["acme-idp"]["issuer"] == "https://id.acme.test"
    assert Settings.from_env({}).social_providers == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"google": {"client_id": "x", "client_secret": "hunter2-secret"', "expected a JSON object"),
        ('["google"]', "expected a JSON object"),
        ('{"Bad Name": {"client_id": "x", "client_secret": "hunter2-secret"}}', "provider names"),
        ('{"google": {"client_id": "x"}}', "google: client_secret is required"),
        ('{"google": {"client_id": "x", "client_secret": "hunter2-secret", "tenant": "t"}}', "unknown keys"),
        ('{"acme": {"client_id": "x", "client_secret": "hunter2-secret"}}', "acme: issuer"),
        (
            '{"google": {"issuer": "https://evil.test", "client_id": "x", "client_secret": "hunter2-s"}}',
            "its issuer is fixed",
        ),
        ('{"github": {"client_id": "", "client_secret": "hunter2-secret"}}', "non-empty string"),
    ],
)
def test_a_bad_social_providers_setting_is_one_line_without_the_secret(raw, message):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"SOCIAL_PROVIDERS": raw})
    text = str(err.value)
    assert text.startswith("SOCIAL_PROVIDERS: ") and message in text, text
    assert "\n" not in text and "hunter2" not in text


def test_google_and_microsoft_issuer_rules(app):
    with app.app_context():
        google = social_providers._provider("google", {"client_id": "g", "client_secret": "s"})
        rule = google.accept_issuer()
        assert google.issuer == "https://accounts.google.com"
        assert rule({"iss": "https://accounts.google.com"}) and rule({"iss": "accounts.google.com"})
        assert not rule({"iss": "https://accounts.google.com.evil.test"})
        microsoft = social_providers._provider("microsoft", {"client_id": "m", "client_secret": "s"})
        assert microsoft.issuer == "https://login.microsoftonline.com/common/v2.0"
        assert microsoft.document_issuer == "https://login.microsoftonline.com/{tenantid}/v2.0"
        rule = microsoft.accept_issuer()
        tid = "9188040d-6c67-4c5b-b112-36a304b66dad"
        assert rule({"iss": f"https://login.microsoftonline.com/{tid}/v2.0", "tid": tid})
        assert not rule({"iss": f"https://login.microsoftonline.com/{tid}/v2.0", "tid": "another"})
        assert not rule({"iss": "https://login.microsoftonline.com/{tenantid}/v2.0"})  # no tid
        one_tenant = social_providers._provider(
            "microsoft",
            {
                "client_id": "m",
                "client_secret": "s",
                "issuer": f"https://login.microsoftonline.com/{tid}/v2.0",
            },
        )
        assert one_tenant.accept_issuer() is None  # plain equality with its issuer
        github = social_providers._provider("github", {"client_id": "h", "client_secret": "s"})
        assert (github.kind, github.issuer, github.scopes) == ("github", None, "read:user user:email")


# --- a provider over HTTP ------------------------------------------------------------------------


class FakeGitHub(FakeProvider):
    """FakeProvider plus GitHub's shapes: ``/login/oauth/access_token`` (no ID token) and the REST
    API's ``/user`` and ``/user/emails`` (``emails`` scripts the latter)."""

    def reset(self) -> None:
        super().reset()
        self.github_id = 4242
        self.emails: list[dict[str, Any]] = [
            {"email": "gina@example.test", "primary": True, "verified": True}
        ]
        self.api_auth: list[str | None] = []

    def wsgi(self, environ, start_response):
        req = Request(environ)
        if req.path == "/login/oauth/access_token":
            self.token_requests.append({"form": req.form.to_dict(), "auth": req.headers.get("Authorization")})
            response = Response_json(
                {"access_token": "gho_test", "token_type": "bearer", "scope": "user:email"}
            )
        elif req.path in ("/user", "/user/emails"):
            self.api_auth.append(req.headers.get("Authorization"))
            body = (
                {"id": self.github_id, "login": "gina", "name": "Gina"}
                if req.path == "/user"
                else self.emails
            )
            response = Response_json(body)
        else:
            return super().wsgi(environ, start_response)
        return response(environ, start_response)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGitHub]:
    server = FakeGitHub()
    server.thread.start()
    yield server
    server.server.shutdown()


@pytest.fixture()
def op(fake, app, monkeypatch) -> FakeGitHub:
    """The fake as provider ``fake`` (any OIDC issuer) and as ``github``, for this test."""
    fake.fresh()
    config = {
        "fake": {
            "issuer": fake.url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "label": "Fake ID",
        },
        "github": {"client_id": "gh-client", "client_secret": "gh-secret"},
    }
    replace_services(
        monkeypatch, app, settings=services(app).settings.with_overrides(social_providers=config)
    )
    monkeypatch.setattr(social_providers, "GITHUB_AUTHORIZE", fake.url + "/login/oauth/authorize")
    monkeypatch.setattr(social_providers, "GITHUB_TOKEN", fake.url + "/login/oauth/access_token")
    monkeypatch.setattr(social_providers, "GITHUB_API", fake.url)
    return fake


def _tenant(api, db_session, slug: str):
    body = api.signup(slug)
    return body, api.auth(body)


def _authorize(client, h, client_id: str | None = None) -> str:
    """A pending authorization of a (new) first-party client; returns ``client_id verifier``."""
    if client_id is None:
        client_id = register_client(client, h, client_type="public", first_party=True)["client_id"]
    verifier, r = login_request(client, client_id)
    assert r.status_code == 302 and r.headers["Location"].endswith("/oauth/login"), r.get_data(as_text=True)
    return client_id + " " + verifier


def _start(client, name: str = "fake") -> dict[str, str]:
    """The login page's button: the redirect to the provider's authorization endpoint (its query)."""
    page = client.get("/oauth/login").get_data(as_text=True)
    r = client.post(f"/oauth/social/{name}/start", data={"csrf_token": csrf_of(page)})
    assert r.status_code == 302, r.get_data(as_text=True)
    return query_of(r.headers["Location"])


def _callback(client, op: FakeProvider, query: dict[str, str], name: str = "fake", **params):
    op.nonce = query.get("nonce") if op.nonce is None else op.nonce
    return client.get(
        f"/oauth/social/{name}/callback", query_string={"state": query["state"], "code": "code-1", **params}
    )


def _links(db_session, email: str) -> list[ExternalIdentity]:
    user = db_session.scalars(select(User).where(User.email == email)).first()
    if user is None:
        return []
    return list(db_session.scalars(select(ExternalIdentity).where(ExternalIdentity.user_id == user.id)))


def _redeem(client, client_and_verifier: str, location: str) -> dict[str, Any]:
    client_id, verifier = client_and_verifier.split(" ")
    query = query_of(location)
    assert "code" in query, location
    return redeem_code(client, client_id, verifier, query["code"])


def test_the_login_page_shows_a_button_per_provider_and_the_request_is_pkce_state_nonce(
    app, client, api, db_session, op
):
    _, h = _tenant(api, db_session, "soc-buttons")
    _authorize(client, h)
    page = client.get("/oauth/login").get_data(as_text=True)
    assert 'id="social-fake"' in page and "Sign in with Fake ID" in page and "Sign in with GitHub" in page
    query = _start(client)
    assert query["client_id"] == CLIENT_ID and query["code_challenge_method"] == "S256"
    assert query["redirect_uri"] == services(app).settings.issuer + "/oauth/social/fake/callback"
    assert (
        len(query["state"]) >= 43 and len(query["nonce"]) >= 43 and query["scope"] == "openid email profile"
    )
    github = _start(client, "github")
    assert github["client_id"] == "gh-client" and "nonce" not in github and github["code_challenge"]
    r = client.post("/oauth/social/nope/start", data={"csrf_token": csrf_of(page)})
    assert r.status_code == 404
    assert client.post("/oauth/social/fake/start", data={"csrf_token": "forged"}).status_code == 400


def test_a_new_account_from_a_verified_address_joins_no_tenant(client, api, db_session, op):
    _, h = _tenant(api, db_session, "soc-new")
    _authorize(client, h)
    op.email = "newbie@example.test"
    op.claims = {"email_verified": True}
    r = _callback(client, op, _start(client))
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT), r.get_data(as_text=True)
    assert query_of(r.headers["Location"])["error"] == "access_denied"  # no tenant yet
    user = db_session.scalars(select(User).where(User.email == "newbie@example.test")).one()
    assert user.email_verified_at is not None and user.password_hash is None
    assert db_session.scalars(select(Membership).where(Membership.user_id == user.id)).all() == []
    [link] = _links(db_session, "newbie@example.test")
    assert (link.provider, link.subject, link.connection_id) == ("social:fake", op.subject, None)
    assert op.token_requests[-1]["auth"].startswith("Basic ")  # client_secret_basic, from discovery
    assert op.token_requests[-1]["form"]["code_verifier"]


def test_an_unverified_address_makes_no_account(client, api, db_session, op):
    _, h = _tenant(api, db_session, "soc-unverified")
    _authorize(client, h)
    op.email = "squatter@example.test"  # no email_verified claim: not verified
    r = _callback(client, op, _start(client))
    assert r.status_code == 403 and "verified" in r.get_data(as_text=True)
    assert db_session.scalars(select(User).where(User.email == "squatter@example.test")).first() is None


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"nonce": "another-nonce"}, "nonce"),
        ({"aud": "someone-else"}, "aud"),
        ({"iss": "https://elsewhere.test"}, "another issuer"),
        ({"exp": int(time.time()) - 3600}, "expired"),
    ],
)
def test_a_refused_id_token_signs_nobody_in(client, api, db_session, op, claims, reason):
    _, h = _tenant(api, db_session, f"soc-refused-{uuid.uuid4().hex[:6]}")
    _authorize(client, h)
    op.email = "refused@example.test"
    op.claims = {"email_verified": True, **claims}
    r = _callback(client, op, _start(client))
    assert r.status_code == 400 and reason in r.get_data(as_text=True), r.get_data(as_text=True)
    assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert db_session.scalars(select(User).where(User.email == "refused@example.test")).first() is None


def test_a_state_from_another_browser_or_used_twice_finds_nothing(app, client, api, db_session, op):
    _, h = _tenant(api, db_session, "soc-state")
    _authorize(client, h)
    op.email = "state@example.test"
    op.claims = {"email_verified": True}
    query = _start(client)
    other = app.test_client()  # another browser: no hosted session
    r = _callback(other, op, query)
    assert r.status_code == 400 and "another browser" in r.get_data(as_text=True)
    # refused there without spending this browser's transaction: here it signs in, once
    r = _callback(client, op, query)
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT), r.get_data(as_text=True)
    r = _callback(client, op, query)
    assert r.status_code == 400 and "expired" in r.get_data(as_text=True)
    assert len(_links(db_session, "state@example.test")) == 1
    _authorize(client, h)
    r = _callback(client, op, _start(client), error="access_denied")
    assert r.status_code == 400 and "access_denied" in r.get_data(as_text=True)


def test_an_existing_account_is_not_linked_by_its_address_nor_by_another_accounts_sign_in(
    client, api, db_session, op
):
    owner, h = _tenant(api, db_session, "soc-exist")
    mallory = api.signup("soc-exist-m", email="mallory@example.test")
    _authorize(client, h)
    op.email = owner["user"]["email"].upper()  # case does not matter, and proves nothing
    op.claims = {"email_verified": True}
    r = _callback(client, op, _start(client))
    page = r.get_data(as_text=True)
    assert r.status_code == 200 and 'id="social-link"' in page and "Fake ID" in page
    assert _links(db_session, owner["user"]["email"]) == []
    # someone else's account signing in in this browser links nothing to either account
    r = client.post(
        "/oauth/login",
        data={"email": mallory["user"]["email"], "password": TEST_PASSWORD, "csrf_token": csrf_of(page)},
    )
    assert r.status_code == 302, r.get_data(as_text=True)
    assert (
        _links(db_session, owner["user"]["email"]) == [] and _links(db_session, "mallory@example.test") == []
    )


def test_a_later_unrelated_sign_in_links_nothing(client, api, db_session, op):
    """The pending identity is dropped when the login page is opened afresh: only a sign-in from
    the page that says "an account already uses this address" links (a planted session cannot
    wait for its victim's next ordinary sign-in)."""
    owner, h = _tenant(api, db_session, "soc-later")
    _authorize(client, h)
    op.email = owner["user"]["email"]
    op.claims = {"email_verified": True}
    assert 'id="social-link"' in _callback(client, op, _start(client)).get_data(as_text=True)
    page = client.get("/oauth/login").get_data(as_text=True)
    assert 'id="social-link"' not in page
    r = client.post(
        "/oauth/login",
        data={"email": owner["user"]["email"], "password": TEST_PASSWORD, "csrf_token": csrf_of(page)},
    )
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT)
    assert _links(db_session, owner["user"]["email"]) == []


def test_a_wrong_password_on_the_linking_page_keeps_it(client, api, db_session, op):
    owner, h = _tenant(api, db_session, "soc-retry")
    _authorize(client, h)
    op.email = owner["user"]["email"]
    op.claims = {"email_verified": True}
    page = _callback(client, op, _start(client)).get_data(as_text=True)
    r = client.post(
        "/oauth/login",
        data={"email": owner["user"]["email"], "password": "not the password", "csrf_token": csrf_of(page)},
    )
    assert r.status_code == 401 and 'id="social-link"' in r.get_data(as_text=True)
    r = client.post(
        "/oauth/login",
        data={"email": owner["user"]["email"], "password": TEST_PASSWORD, "csrf_token": csrf_of(page)},
    )
    assert r.status_code == 302 and len(_links(db_session, owner["user"]["email"])) == 1


def test_the_account_signing_in_after_the_callback_is_linked_and_a_returning_identity_signs_in(
    client, api, db_session, op
):
    owner, h = _tenant(api, db_session, "soc-return")
    cv = _authorize(client, h)
    op.email = owner["user"]["email"]
    op.claims = {"email_verified": True}
    page = _callback(client, op, _start(client)).get_data(as_text=True)
    r = client.post(
        "/oauth/login",
        data={"email": owner["user"]["email"], "password": TEST_PASSWORD, "csrf_token": csrf_of(page)},
    )
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT)
    [link] = _links(db_session, owner["user"]["email"])
    events = client.get("/api/v1/audit-events?action=social.linked", headers=h).get_json()
    assert [(e["data"]["via"], e["data"]["provider"]) for e in events] == [("password", "social:fake")]
    _redeem(client, cv, r.headers["Location"])
    # the next time the identity alone signs in, whatever address it now asserts
    cv = _authorize(client, h)
    op.nonce = None
    op.email = "renamed@example.test"
    r = _callback(client, op, _start(client))
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT), r.get_data(as_text=True)
    tokens = _redeem(client, cv, r.headers["Location"])
    import jwt as pyjwt

    assert pyjwt.decode(tokens["access_token"], options={"verify_signature": False})["amr"] == ["social"]
    db_session.refresh(link)
    assert link.email == "renamed@example.test" and link.last_login_at is not None


def test_require_sso_users_cannot_step_around_sso(client, api, db_session, op):
    owner, h = _tenant(api, db_session, "soc-sso")
    tenant_id = uuid.UUID(owner["tenant"]["id"])
    give_plan(db_session, tenant_id, "enterprise")
    db_session.add(
        VerifiedDomain(tenant_id=tenant_id, domain="corp.test", token="t" * 20, verified_at=utcnow())
    )
    db_session.add(
        SsoConnection(
            tenant_id=tenant_id,
            type="oidc",
            name="Corp",
            enabled=True,
            domains=["corp.test"],
            default_role="member",
            config={"issuer": op.url, "client_id": "x"},
        )
    )
    tenant = db_session.get(Tenant, tenant_id)
    tenant.settings = {**(tenant.settings or {}), "require_sso": True}
    db_session.flush()
    _authorize(client, h)
    op.email = "newcomer@corp.test"  # a new account on the domain
    op.claims = {"email_verified": True}
    r = _callback(client, op, _start(client))
    assert r.status_code == 403 and "single sign-on" in r.get_data(as_text=True)
    assert db_session.scalars(select(User).where(User.email == "newcomer@corp.test")).first() is None


def test_github_a_verified_primary_address_and_the_numeric_id(client, api, db_session, op):
    _, h = _tenant(api, db_session, "soc-gh")
    _authorize(client, h)
    op.emails = [
        {"email": "public@example.test", "primary": False, "verified": True},
        {"email": "gina@example.test", "primary": True, "verified": True},
    ]
    r = _callback(client, op, _start(client, "github"), name="github")
    assert r.status_code == 302 and "error=access_denied" in r.headers["Location"], r.get_data(as_text=True)
    [link] = _links(db_session, "gina@example.test")
    assert (link.provider, link.subject) == ("social:github", "4242")
    assert op.token_requests[-1]["form"]["client_secret"] == "gh-secret"  # client_secret_post
    assert op.token_requests[-1]["form"]["code_verifier"]
    assert op.api_auth[-2:] == ["Bearer gho_test", "Bearer gho_test"]


def test_github_without_a_verified_primary_address_makes_no_account(client, api, db_session, op):
    _, h = _tenant(api, db_session, "soc-gh-unverified")
    _authorize(client, h)
    op.emails = [
        {"email": "gina@example.test", "primary": True, "verified": False},
        {"email": "other@example.test", "primary": False, "verified": True},
    ]
    r = _callback(client, op, _start(client, "github"), name="github")
    assert r.status_code == 400 and "did not share a verified email" in r.get_data(as_text=True)
    assert (
        db_session.scalars(
            select(User).where(User.email.in_(["gina@example.test", "other@example.test"]))
        ).all()
        == []
    )


# --- /api/v1/me/identities -------------------------------------------------------------------------


def test_identities_list_sso_read_only_and_unlink_rules(app, client, api, db_session):
    owner, h = _tenant(api, db_session, "soc-api")
    user_id = uuid.UUID(owner["user"]["id"])
    tenant_id = uuid.UUID(owner["tenant"]["id"])
    connection = SsoConnection(
        tenant_id=tenant_id,
        type="oidc",
        name="Corp",
        enabled=True,
        domains=[],
        default_role="member",
        config={},
    )
    db_session.add(connection)
    db_session.flush()
    sso = ExternalIdentity(
        user_id=user_id,
        provider=f"sso:{connection.id}",
        subject="s-1",
        connection_id=connection.id,
        email="a@x.test",
    )
    social = ExternalIdentity(user_id=user_id, provider="social:google", subject="g-1", email="a@gmail.test")
    db_session.add_all([sso, social])
    db_session.flush()
    other = api.signup("soc-api-other")
    theirs = ExternalIdentity(user_id=uuid.UUID(other["user"]["id"]), provider="social:google", subject="g-2")
    db_session.add(theirs)
    db_session.flush()
    social_id, theirs_id = social.id, theirs.id
    r = client.get("/api/v1/me/identities", headers=h)
    assert r.status_code == 200
    listed = {i["provider"]: i for i in r.get_json()}
    assert set(listed) == {f"sso:{connection.id}", "social:google"}
    assert listed["social:google"]["removable"] and listed["social:google"]["label"] == "Google"
    assert not listed[f"sso:{connection.id}"]["removable"] and listed[f"sso:{connection.id}"]["kind"] == "sso"
    assert_problem(
        client.delete(f"/api/v1/me/identities/{sso.id}", headers=h), 409, "identity_unlink_refused"
    )
    assert_problem(client.delete(f"/api/v1/me/identities/{theirs.id}", headers=h), 404)
    assert_problem(client.delete("/api/v1/me/identities/not-a-uuid", headers=h), 404)
    stale = services(app).tokens.issue(
        subject=str(user_id),
        tenant_id=str(tenant_id),
        roles=["owner"],
        scope="api",
        client_id="saas-api",
        auth_time=int(time.time()) - 3600,
    )
    r = client.delete(f"/api/v1/me/identities/{social.id}", headers=bearer(stale.token))
    assert_problem(r, 401, "insufficient_user_authentication")
    assert client.delete(f"/api/v1/me/identities/{social.id}", headers=h).status_code == 204
    db_session.expire_all()
    assert db_session.get(ExternalIdentity, social_id) is None and db_session.get(ExternalIdentity, theirs_id)
    events = client.get("/api/v1/audit-events?action=social.unlinked", headers=h).get_json()
    assert [e["data"]["provider"] for e in events] == ["social:google"]
    assert client.get("/api/v1/me/identities", headers=api.auth(other)).get_json()[0]["id"] == str(theirs_id)


def test_a_passkey_proves_the_account_and_a_social_sign_in_is_one_factor(
    app, client, api, db_session, op, time_machine
):
    """The pending identity is linked by the account's passkey sign-in (``via`` passkey); once
    the account has TOTP, the identity alone gets the MFA page, and the code makes ``amr``
    ``["social", "otp"]``."""
    from saas.auth import mfa
    from tests.test_webauthn_hosted import OPTIONS, VERIFY
    from tests.webauthn_device import Passkey

    time_machine.move_to(1_900_000_000, tick=False)
    owner, h = _tenant(api, db_session, "soc-passkey")
    client_id = register_client(client, h, client_type="public", first_party=True)["client_id"]
    device = Passkey(uv=True)
    start = client.post("/api/v1/me/webauthn/registration/options", headers=h).get_json()
    r = client.post(
        "/api/v1/me/webauthn/registration/verify",
        json={
            "ceremony_id": start["ceremony_id"],
            "credential": device.register(start["publicKey"]),
            "name": "K",
        },
        headers=h,
    )
    assert r.status_code == 201, r.get_json()
    cv = _authorize(client, h, client_id)
    op.email = owner["user"]["email"]
    op.claims = {"email_verified": True}
    page = _callback(client, op, _start(client)).get_data(as_text=True)
    assert 'id="social-link"' in page and 'data-purpose="login"' in page  # the passkey button is there
    csrf = csrf_of(page)
    options = client.post(OPTIONS, json={"purpose": "login"}, headers={"X-CSRF-Token": csrf}).get_json()
    r = client.post(
        VERIFY,
        json={"purpose": "login", "credential": device.sign(options["publicKey"])},
        headers={"X-CSRF-Token": csrf},
    )
    assert r.status_code == 200 and r.get_json()["redirect"].startswith(REDIRECT), r.get_json()
    _redeem(client, cv, r.get_json()["redirect"])
    events = client.get("/api/v1/audit-events?action=social.linked", headers=h).get_json()
    assert [e["data"]["via"] for e in events] == ["passkey"]
    secret = client.post("/api/v1/me/mfa/totp", headers=h).get_json()["secret"]
    code = mfa.totp_at(secret, int(time.time() // 30))
    assert client.post("/api/v1/me/mfa/totp/confirm", json={"code": code}, headers=h).status_code == 200
    time_machine.move_to(1_900_000_060, tick=False)
    cv = _authorize(client, h, client_id)
    op.nonce = None
    r = _callback(client, op, _start(client))
    assert r.status_code == 302 and r.headers["Location"].endswith("/oauth/mfa"), r.get_data(as_text=True)
    page = client.get("/oauth/mfa").get_data(as_text=True)
    r = client.post(
        "/oauth/mfa",
        data={"code": mfa.totp_at(secret, int(time.time() // 30)), "csrf_token": csrf_of(page)},
    )
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT), r.get_data(as_text=True)
    tokens = _redeem(client, cv, r.headers["Location"])
    assert services(app).tokens.verify(tokens["access_token"])["amr"] == ["social", "otp"]


def test_an_unreachable_provider_leaves_the_user_on_the_login_page(
    app, client, api, db_session, op, monkeypatch
):
    _, h = _tenant(api, db_session, "soc-down")
    _authorize(client, h)
    config = {"down": {"issuer": "http://127.0.0.1:9", "client_id": "x", "client_secret": "y"}}
    replace_services(
        monkeypatch, app, settings=services(app).settings.with_overrides(social_providers=config)
    )
    page = client.get("/oauth/login").get_data(as_text=True)
    r = client.post("/oauth/social/down/start", data={"csrf_token": csrf_of(page)})
    assert r.status_code == 502 and "cannot be reached" in r.get_data(as_text=True)
