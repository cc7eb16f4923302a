"""Per-tenant SSO end to end with real peers: a second instance of this service, under gunicorn
with its own database, signing key and secret, is the tenant's OpenID Provider; the service under
test runs in a real HTTP server (``tests.helpers.live_server``); Debian's Chromium (Playwright)
walks the hosted pages of both.

The IdP side: a tenant whose owner is ``alice@<domain>``, and a confidential first-party OAuth
client whose redirect URI is the service's ``/sso/oidc/callback``. The service side: a tenant on
the enterprise plan with ``<domain>`` verified and an OIDC connection to the IdP (its discovery
and JWKS fetched over HTTP) with ``default_role`` member and a ``role_mapping`` on the IdP's
``tid`` claim. The browser: the service's hosted login, the email, home realm discovery to the
IdP's hosted login, the password there, back through the callback and the hand-off to the
client's redirect URI with a code; the tokens work and Alice is a just-in-time member with the
mapped role.

The IdP listens on ``localhost`` and the service on ``127.0.0.1``: two hosts, so their hosted
session cookies (both ``saas_auth`` on ``/oauth``) stay apart in the one browser. The IdP shares
this run's Redis database (its keys are random or tenant-scoped, so they never meet the
service's). Everything commits for real: the IdP's database is dropped at the end, the service's
tenants too.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import jwt as pyjwt
import pytest
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from saas.db import utcnow
from saas.identity.models import ExternalIdentity, Membership, User, VerifiedDomain
from saas.services import services
from tests.auth_helpers import pkce_pair
from tests.conftest import TEST_PASSWORD
from tests.helpers import (
    drop_tenant,
    give_plan,
    live_server,
    public_client_over_http,
    signup_over_http,
    verify_by_link,
)
from tests.idp_peer import bearer, idp, register_relying_party  # noqa: F401 - idp: the shared provider fixture
from tests.peers import chromium_available, launch_chromium


@pytest.fixture(scope="module")
def sp(settings, engine, redis_client) -> Iterator[tuple[str, object]]:
    """(base URL, app): the service under test, served on 127.0.0.1."""
    with live_server(settings, engine, redis_client) as (base, app, _settings):
        yield base, app


@pytest.mark.skipif(not chromium_available(), reason="Debian chromium or playwright is not installed")
def test_oidc_sign_in_through_a_second_instance_in_chromium(idp, sp, engine):  # noqa: F811 - the fixture
    from playwright.sync_api import sync_playwright

    idp_base, idp_engine = idp
    sp_base, app = sp
    tag = uuid.uuid4().hex[:8]
    domain = f"corp-{tag}.test"
    alice = f"alice@{domain}"
    # the IdP: Alice's tenant there, and the service registered as its OAuth client
    idp_owner = signup_over_http(idp_base, f"idp-{tag}", alice)
    verify_by_link(idp_base, idp_engine, alice)
    idp_client = register_relying_party(idp_base, idp_owner, "Our SaaS (SSO)", f"{sp_base}/sso/oidc/callback")
    # the service: a tenant with the domain verified and a connection to the IdP
    sp_owner = signup_over_http(sp_base, f"sp-{tag}", f"owner@sp-{tag}.test")
    tenant_id = uuid.UUID(sp_owner["tenant"]["id"])
    try:
        verify_by_link(sp_base, app, sp_owner["user"]["email"])
        with app.app_context():
            session = services(app).database.session()
            try:
                give_plan(session, tenant_id, "enterprise")
                session.add(
                    VerifiedDomain(tenant_id=tenant_id, domain=domain, token="t" * 20, verified_at=utcnow())
                )
                session.commit()
            finally:
                session.close()
        idp_tenant = idp_owner["tenant"]["id"]
        r = requests.post(
            f"{sp_base}/api/v1/sso/connections",
            json={
                "type": "oidc",
                "name": "Corp IdP",
                "issuer": idp_base,
                "client_id": idp_client["client_id"],
                "client_secret": idp_client["client_secret"],
                "domains": [domain],
                "default_role": "member",
                "role_mapping": {f"tid={idp_tenant}": "admin"},
            },
            headers=bearer(sp_owner),
            timeout=20,
        )
        assert r.status_code == 201, r.text
        assert r.json()["config"]["redirect_uri"] == f"{sp_base}/sso/oidc/callback"
        app_client = public_client_over_http(sp_base, sp_owner, f"{sp_base}/callback")
        verifier, challenge = pkce_pair()
        authorize = (
            requests.Request(
                "GET",
                f"{sp_base}/oauth/authorize",
                params={
                    "response_type": "code",
                    "client_id": app_client["client_id"],
                    "redirect_uri": f"{sp_base}/callback",
                    "scope": "openid email api",
                    "state": "st-e2e",
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                },
            )
            .prepare()
            .url
        )
        captured: dict[str, str] = {}
        with sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                page = browser.new_page()
                page.goto(authorize)
                page.fill("#email", alice)
                page.click("#continue")  # home realm discovery: to the IdP
                page.wait_for_url(re.compile(re.escape(idp_base) + r"/oauth/login.*"))
                page.fill("#email", alice)
                page.fill("#password", TEST_PASSWORD)
                page.click("#submit")
                # back through /sso/oidc/callback and /oauth/sso/complete to the client (a 404 here:
                # only the URL matters)
                page.wait_for_url(re.compile(re.escape(sp_base) + r"/callback\?.*"))
                captured["url"] = page.url
            finally:
                browser.close()
        params = parse_qs(urlsplit(captured["url"]).query)
        assert params["state"] == ["st-e2e"], captured
        r = requests.post(
            f"{sp_base}/oauth/token",
            data={
                "grant_type": "authorization_code",
                "code": params["code"][0],
                "code_verifier": verifier,
                "client_id": app_client["client_id"],
                "redirect_uri": f"{sp_base}/callback",
            },
            timeout=10,
        )
        assert r.status_code == 200, r.text
        tokens = r.json()
        claims = pyjwt.decode(tokens["access_token"], options={"verify_signature": False})
        assert claims["tid"] == str(tenant_id) and "sso" in claims["amr"]
        me = requests.get(
            f"{sp_base}/api/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}, timeout=10
        )
        assert me.status_code == 200 and me.json()["user"]["email"] == alice, me.text
        assert me.json()["role"] == "admin"  # role_mapping on the IdP's tid claim
        with Session(bind=engine) as db:
            user = db.scalars(select(User).where(User.email == alice)).one()
            membership = db.scalars(
                select(Membership).where(Membership.tenant_id == tenant_id, Membership.user_id == user.id)
            ).one()
            assert membership.status == "active" and membership.role == "admin"  # role_mapping on tid
            assert user.email_verified_at is not None and user.password_hash is None
            link = db.scalars(select(ExternalIdentity).where(ExternalIdentity.user_id == user.id)).one()
            assert link.subject == idp_owner["user"]["id"]  # the IdP's sub: Alice's id there
        events = requests.get(
            f"{sp_base}/api/v1/audit-events?action=sso.login", headers=bearer(sp_owner), timeout=10
        ).json()
        assert [e["actor"]["id"] for e in events] == [str(user.id)]
        # the session is an ordinary refresh family: refresh works, logout-style revocation applies
        r = requests.post(
            f"{sp_base}/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
                "client_id": app_client["client_id"],
            },
            timeout=10,
        )
        assert r.status_code == 200, r.text
    finally:
        drop_tenant(engine, tenant_id)
