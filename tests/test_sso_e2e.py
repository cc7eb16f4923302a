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

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt as pyjwt
import pytest
import requests
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from saas.db import utcnow
from saas.identity.models import ExternalIdentity, Membership, User, VerifiedDomain
from saas.migrate import upgrade_shared
from saas.services import services
from tests.auth_helpers import pkce_pair
from tests.conftest import TEST_PASSWORD, _redis_url
from tests.helpers import drop_tenant, give_plan, live_server, verify_by_link
from tests.peers import chromium_available, free_port, launch_chromium
from tests.test_identity_gunicorn import _stop, _wait_http

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def idp(database_url, worker_id_str, tmp_path_factory) -> Iterator[tuple[str, object]]:
    """(base URL, engine): this service under gunicorn on its own fresh database, as an IdP."""
    from saas.auth.keys import KeyStore

    server_url = make_url(database_url)
    name = f"saas_idp_{worker_id_str}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server_url.set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    upgrade_shared(engine)
    tmp = tmp_path_factory.mktemp("sso-idp")
    (tmp / "keys").mkdir()
    KeyStore(tmp / "keys", "RS256", generate=True)
    port = free_port()
    base = f"http://localhost:{port}"
    env = {
        **os.environ,
        "DATABASE_URL": url.replace("postgresql+psycopg://", "postgresql://"),
        "REDIS_URL": _redis_url(worker_id_str),
        "SECRET_KEY": "the-identity-provider-instance",
        "SAAS_ENV": "development",
        "SAAS_SIGNING_KEY_PATH": str(tmp / "keys"),
        "SAAS_ISSUER": base,
        "RATELIMIT_ENABLED": "false",
        "ARGON2_MEMORY_KIB": "8192",
        "ARGON2_TIME_COST": "1",
        "LOG_LEVEL": "WARNING",
        "GUNICORN_MAX_REQUESTS": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
    }
    stderr = tmp / "gunicorn.stderr"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "infra/gunicorn.conf.py", "-w", "2",
             "-b", f"127.0.0.1:{port}", "wsgi:app"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        try:
            _wait_http(base, proc, stderr)
            yield base, engine
        finally:
            _stop(proc)  # by PID: this module's own process
            engine.dispose()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


@pytest.fixture(scope="module")
def sp(settings, engine, redis_client) -> Iterator[tuple[str, object]]:
    """(base URL, app): the service under test, served on 127.0.0.1."""
    with live_server(settings, engine, redis_client) as (base, app, _settings):
        yield base, app


def _signup(base: str, slug: str, email: str) -> dict:
    r = requests.post(
        f"{base}/api/v1/signup",
        json={"tenant": {"name": slug, "slug": slug}, "owner": {"email": email, "password": TEST_PASSWORD}},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return r.json()


def _bearer(body: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {body['token']['access_token']}"}


@pytest.mark.skipif(not chromium_available(), reason="Debian chromium or playwright is not installed")
def test_oidc_sign_in_through_a_second_instance_in_chromium(idp, sp, engine):
    from playwright.sync_api import sync_playwright

    idp_base, idp_engine = idp
    sp_base, app = sp
    tag = uuid.uuid4().hex[:8]
    domain = f"corp-{tag}.test"
    alice = f"alice@{domain}"
    # the IdP: Alice's tenant there, and the service registered as its OAuth client
    idp_owner = _signup(idp_base, f"idp-{tag}", alice)
    verify_by_link(idp_base, idp_engine, alice)
    r = requests.post(
        f"{idp_base}/api/v1/clients",
        json={
            "name": "Our SaaS (SSO)",
            "client_type": "confidential",
            "first_party": True,
            "redirect_uris": [f"{sp_base}/sso/oidc/callback"],
            "scope": "openid email profile",
        },
        headers=_bearer(idp_owner),
        timeout=10,
    )
    assert r.status_code == 201, r.text
    idp_client = r.json()
    # the service: a tenant with the domain verified and a connection to the IdP
    sp_owner = _signup(sp_base, f"sp-{tag}", f"owner@sp-{tag}.test")
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
            headers=_bearer(sp_owner),
            timeout=20,
        )
        assert r.status_code == 201, r.text
        assert r.json()["config"]["redirect_uri"] == f"{sp_base}/sso/oidc/callback"
        r = requests.post(
            f"{sp_base}/api/v1/clients",
            json={
                "name": "App",
                "client_type": "public",
                "first_party": True,
                "redirect_uris": [f"{sp_base}/callback"],
            },
            headers=_bearer(sp_owner),
            timeout=10,
        )
        assert r.status_code == 201, r.text
        app_client = r.json()
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
            f"{sp_base}/api/v1/audit-events?action=sso.login", headers=_bearer(sp_owner), timeout=10
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
