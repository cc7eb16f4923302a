"""Social login end to end with real peers: a second instance of this service under gunicorn
(``tests.idp_peer.idp``, its own database, key and secret) is "any standard OpenID Connect
issuer", configured in ``SOCIAL_PROVIDERS`` as ``acme``; the service under test runs in a real
HTTP server; Debian's Chromium (Playwright) walks the hosted pages of both.

The IdP side: a tenant with a confidential first-party client whose redirect URI is the
service's ``/oauth/social/acme/callback``, and the people who sign in there (members of that
tenant, their addresses verified there, so the IdP's ID tokens say ``email_verified: true``).
The service side: a tenant with a public first-party client; some of the same people already
have accounts there.

Proved here: a new account from the provider (no tenant: the client gets ``access_denied``;
once a member, the returning identity signs in by its ``sub``); an existing account is never
linked by its address alone (the browser gets the linking page, nothing is linked), and is
linked after its password, or after a link mailed to it and opened in the same browser;
``GET /api/v1/me/identities``; unlinking with step-up, refused for the only way in.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from saas import worker as worker_module
from saas.db import Database, utcnow
from saas.identity.models import ExternalIdentity, Membership, User
from saas.outbox import OutboxMessage
from saas.services import EXTENSION, services
from saas.worker import Worker, load_handlers
from tests.auth_helpers import pkce_pair
from tests.conftest import TEST_PASSWORD
from tests.helpers import drop_tenant, live_server, public_client_over_http, signup_over_http, verify_by_link
from tests.idp_peer import bearer, idp, register_relying_party  # noqa: F401 - idp: the shared provider fixture
from tests.peers import chromium_available, launch_chromium, smtp_inbox

pytestmark = pytest.mark.skipif(
    not chromium_available(), reason="Debian chromium or playwright is not installed"
)


@dataclass
class World:
    sp_base: str
    app: object
    engine: object
    idp_base: str
    idp_engine: object
    idp_tenant: uuid.UUID
    tenant_id: uuid.UUID
    owner: dict
    client_id: str
    tag: str


def _add_person(engine, app, tenant_id, email: str, *, password: bool = True) -> uuid.UUID:
    """A committed user (address verified, ``TEST_PASSWORD`` unless ``password`` is false), an
    active member of ``tenant_id``, in the database of ``engine``."""
    hashed = services(app).passwords.hash(TEST_PASSWORD) if password else None
    with Session(bind=engine) as db:
        user = User(email=email, name=email.split("@")[0], password_hash=hashed, email_verified_at=utcnow())
        db.add(user)
        db.flush()
        db.add(Membership(user_id=user.id, tenant_id=tenant_id, role="member", status="active"))
        db.commit()
        return user.id


@pytest.fixture(scope="module")
def world(idp, settings, engine, redis_client) -> Iterator[World]:  # noqa: F811 - the fixture
    idp_base, idp_engine = idp
    tag = uuid.uuid4().hex[:8]
    with engine.connect() as conn:
        first_outbox_id = conn.scalar(select(func.coalesce(func.max(OutboxMessage.id), 0)))
    with live_server(settings, engine, redis_client) as (sp_base, app, live_settings):
        idp_owner = signup_over_http(idp_base, f"idp-soc-{tag}", f"idp-owner@{tag}.test")
        with Session(bind=idp_engine) as db:  # the IdP owner's address verified there
            db.get(User, uuid.UUID(idp_owner["user"]["id"])).email_verified_at = utcnow()
            db.commit()
        idp_client = register_relying_party(
            idp_base, idp_owner, "Our SaaS (social login)", f"{sp_base}/oauth/social/acme/callback"
        )
        # SOCIAL_PROVIDERS={"acme": {"issuer": <IdP>, "client_id": ..., "client_secret": ...}}
        providers = {
            "acme": {
                "issuer": idp_base,
                "client_id": idp_client["client_id"],
                "client_secret": idp_client["client_secret"],
                "label": "Acme ID",
            }
        }
        app.extensions[EXTENSION] = replace(
            services(app), settings=live_settings.with_overrides(social_providers=providers)
        )
        owner = signup_over_http(sp_base, f"sp-soc-{tag}", f"owner@sp-{tag}.test")
        tenant_id = uuid.UUID(owner["tenant"]["id"])
        try:
            verify_by_link(sp_base, app, owner["user"]["email"])
            app_client = public_client_over_http(sp_base, owner, f"{sp_base}/callback")
            yield World(
                sp_base,
                app,
                engine,
                idp_base,
                idp_engine,
                uuid.UUID(idp_owner["tenant"]["id"]),
                tenant_id,
                owner,
                app_client["client_id"],
                tag,
            )
        finally:
            drop_tenant(engine, tenant_id)
            with Session(bind=engine) as db:
                db.execute(delete(User).where(User.email.like(f"%@social-{tag}.test")))
                db.execute(delete(OutboxMessage).where(OutboxMessage.id > first_outbox_id))
                db.commit()


def _authorize_url(w: World, challenge: str, **extra: str) -> str:
    return (
        requests.Request(
            "GET",
            f"{w.sp_base}/oauth/authorize",
            params={
                "response_type": "code",
                "client_id": w.client_id,
                "redirect_uri": f"{w.sp_base}/callback",
                "scope": "openid email api",
                "state": "st-social",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                **extra,
            },
        )
        .prepare()
        .url
    )


def _client_url(w: World) -> re.Pattern:
    return re.compile(re.escape(w.sp_base) + r"/callback\?.*")


def _idp_login(page, w: World, email: str) -> None:
    """The IdP's hosted login (the browser was sent there by the social button)."""
    page.wait_for_url(re.compile(re.escape(w.idp_base) + r"/oauth/login.*"))
    page.fill("#email", email)
    page.fill("#password", TEST_PASSWORD)
    page.click("#submit")


def _sign_in_at_acme(page, w: World, challenge: str, email: str) -> None:
    """From the client's authorization request through the social button to the IdP's hosted
    login of ``email``."""
    page.goto(_authorize_url(w, challenge))
    page.click("#social-acme")
    _idp_login(page, w, email)


def _tokens(w: World, url: str, verifier: str) -> dict:
    params = parse_qs(urlsplit(url).query)
    assert params.get("state") == ["st-social"] and "code" in params, url
    r = requests.post(
        f"{w.sp_base}/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": params["code"][0],
            "code_verifier": verifier,
            "client_id": w.client_id,
            "redirect_uri": f"{w.sp_base}/callback",
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()


def _links(engine, email: str) -> list[ExternalIdentity]:
    with Session(bind=engine) as db:
        user = db.scalars(select(User).where(User.email == email)).one()
        return list(db.scalars(select(ExternalIdentity).where(ExternalIdentity.user_id == user.id)))


def _events(w: World, action: str) -> list[dict]:
    r = requests.get(
        f"{w.sp_base}/api/v1/audit-events", params={"action": action}, headers=bearer(w.owner), timeout=10
    )
    assert r.status_code == 200, r.text
    return r.json()


def _me_headers(tokens: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def test_a_new_account_then_a_returning_identity_and_the_only_way_in(world):
    from playwright.sync_api import sync_playwright

    w = world
    nora = f"nora@social-{w.tag}.test"
    idp_sub = _add_person(w.idp_engine, w.app, w.idp_tenant, nora)
    verifier, challenge = pkce_pair()
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            page.goto(_authorize_url(w, challenge))
            assert page.inner_text("#social-acme") == "Sign in with Acme ID"
            page.click("#social-acme")
            _idp_login(page, w, nora)
            page.wait_for_url(_client_url(w))
            # a new account, in no tenant: the client gets access_denied (RFC 6749 section 4.1.2.1)
            assert parse_qs(urlsplit(page.url).query)["error"] == ["access_denied"], page.url
            with Session(bind=w.engine) as db:
                user = db.scalars(select(User).where(User.email == nora)).one()
                assert user.password_hash is None and user.email_verified_at is not None
                db.add(Membership(user_id=user.id, tenant_id=w.tenant_id, role="member", status="active"))
                db.commit()
            [link] = _links(w.engine, nora)
            assert (link.provider, link.subject) == ("social:acme", str(idp_sub))
            # once a member: the returning identity signs in (prompt=login: this browser's sign-in
            # ends, the IdP remembers Nora, so the social button comes straight back)
            verifier, challenge = pkce_pair()
            page.goto(_authorize_url(w, challenge, prompt="login"))
            page.click("#social-acme")
            page.wait_for_url(_client_url(w))
            url = page.url
        finally:
            browser.close()
    tokens = _tokens(w, url, verifier)
    r = requests.get(f"{w.sp_base}/api/v1/me/identities", headers=_me_headers(tokens), timeout=10)
    assert r.status_code == 200, r.text
    [identity] = r.json()
    assert identity["provider"] == "social:acme" and identity["email"] == nora, identity
    assert identity["kind"] == "social" and identity["removable"] and identity["last_login_at"]
    # no password, no passkey, no other identity: unlinking it would lock Nora out
    r = requests.delete(
        f"{w.sp_base}/api/v1/me/identities/{identity['id']}", headers=_me_headers(tokens), timeout=10
    )
    assert r.status_code == 409 and r.json()["code"] == "identity_unlink_refused", r.text
    assert len(_links(w.engine, nora)) == 1


def test_an_existing_account_is_linked_only_after_its_password(world):
    from playwright.sync_api import sync_playwright

    w = world
    paul = f"paul@social-{w.tag}.test"
    _add_person(w.idp_engine, w.app, w.idp_tenant, paul)
    user_id = _add_person(w.engine, w.app, w.tenant_id, paul)
    verifier, challenge = pkce_pair()
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            _sign_in_at_acme(page, w, challenge, paul)
            # the same verified address at the provider: not linked, not signed in, asked for proof
            page.wait_for_selector("#social-link")
            assert page.url.startswith(f"{w.sp_base}/oauth/social/acme/callback")
            assert "Acme ID" in page.inner_text("#social-link")
            assert _links(w.engine, paul) == []
            assert page.input_value("#email") == paul
            page.fill("#password", TEST_PASSWORD)
            page.click("#submit")
            page.wait_for_url(_client_url(w))
            url = page.url
        finally:
            browser.close()
    tokens = _tokens(w, url, verifier)
    [link] = _links(w.engine, paul)
    assert link.provider == "social:acme"
    linked = [e for e in _events(w, "social.linked") if e["target"]["id"] == str(user_id)]
    assert [e["data"]["via"] for e in linked] == ["password"], linked
    r = requests.get(f"{w.sp_base}/api/v1/me/identities", headers=_me_headers(tokens), timeout=10)
    [identity] = r.json()
    # Paul has a password: the identity can go (a fresh login is the step-up)
    r = requests.delete(
        f"{w.sp_base}/api/v1/me/identities/{identity['id']}", headers=_me_headers(tokens), timeout=10
    )
    assert r.status_code == 204, r.text
    assert _links(w.engine, paul) == []
    unlinked = [e for e in _events(w, "social.unlinked") if e["target"]["id"] == str(user_id)]
    assert [e["data"]["provider"] for e in unlinked] == ["social:acme"]


def test_an_existing_account_is_linked_by_a_mailed_link_in_the_same_browser(world, settings):
    """The link goes through the outbox worker to a real SMTP server; it works only in the
    browser that asked for it."""
    from playwright.sync_api import sync_playwright

    w = world
    quinn = f"quinn@social-{w.tag}.test"
    _add_person(w.idp_engine, w.app, w.idp_tenant, quinn)
    user_id = _add_person(w.engine, w.app, w.tenant_id, quinn)
    verifier, challenge = pkce_pair()
    load_handlers()
    handlers_before = worker_module.handlers()
    try:
        with smtp_inbox() as inbox, sync_playwright() as p:
            deliver = Worker(
                Database(w.engine), settings.with_overrides(smtp_url=inbox.url, issuer=w.sp_base)
            )
            browser = launch_chromium(p)
            try:
                page = browser.new_page()
                _sign_in_at_acme(page, w, challenge, quinn)
                page.wait_for_selector("#social-link")
                page.click("#social-link-email")
                assert "Check your mail" in page.content()
                assert _links(w.engine, quinn) == []
                deliver.run_until_idle()
                [mail] = [m for m in inbox.to(quinn) if m["Subject"] == "Link a sign-in to your account"]
                body = mail.get_payload(decode=True).decode()
                link = re.search(r"(http://\S+/oauth/social/link/confirm\?token=\S+)", body).group(1)
                assert link.startswith(f"{w.sp_base}/oauth/social/link/confirm?token=")
                # another browser (whoever else reads the mailbox) links nothing with it
                other = browser.new_context().new_page()
                other.goto(link)
                other.click("#submit")
                assert "invalid" in other.inner_text("#detail").lower()
                assert _links(w.engine, quinn) == []
                page.goto(link)  # a GET (a mail scanner's) spends nothing: a button
                assert _links(w.engine, quinn) == []
                page.click("#submit")
                page.wait_for_url(_client_url(w))
                url = page.url
            finally:
                browser.close()
    finally:
        worker_module._handlers.clear()
        worker_module._handlers.update(handlers_before)
    _tokens(w, url, verifier)
    [link_row] = _links(w.engine, quinn)
    assert link_row.provider == "social:acme"
    linked = [e for e in _events(w, "social.linked") if e["target"]["id"] == str(user_id)]
    assert [e["data"]["via"] for e in linked] == ["email_link"], linked
