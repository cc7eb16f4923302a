"""SAML 2.0 sign-in end to end: Debian's Chromium (Playwright) goes from this service's
SP-initiated login (``GET /sso/saml/<id>/login``) to a real pysaml2 IdP (tests/saml_idp.py, over
HTTP) and back by the IdP's auto-submitted HTTP-POST form to the ACS of a real HTTP server
thread; ``requests`` does the same for a refused answer, read back from the audit API.

The last step (``saas.auth.sso.login.complete_login``) is whatever the branch has: the
stand-in answers with the verified identity as JSON, the real one redirects into the hosted
session; the test accepts both and checks the identity where it is visible.

These tests commit for real (their own tenant in the run's database, dropped at the end).
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from saas.auth.sso.protocol import protocol_for
from saas.identity.models import ExternalIdentity
from saas.services import services
from tests import saml_idp
from tests.helpers import drop_tenant, live_server, signup_over_http
from tests.peers import chromium_available, launch_chromium
from tests.saml_idp import add_saml_connection

idp = saml_idp.idp  # the shared fixture


@pytest.fixture(scope="module")
def live(settings, engine, redis_client):
    with live_server(settings.with_overrides(sso_allow_private_urls=True), engine, redis_client) as served:
        yield served


@pytest.fixture()
def connection(live, idp, engine):
    """A tenant with a SAML connection to the test IdP (committed), the IdP trusting its SP."""
    base, app, _settings = live
    slug = f"saml-e2e-{uuid.uuid4().hex[:8]}"
    owner = signup_over_http(base, slug, f"owner@{slug}.test", name="SAML E2E")
    tenant_id = uuid.UUID(owner["tenant"]["id"])
    with app.test_request_context():
        config, _ = protocol_for("saml").validate_config({"metadata_url": f"{idp.base}/metadata"}, None)
    with services(app).database.session() as session:
        connection_id = add_saml_connection(session, tenant_id, config)
    sp = requests.get(f"{base}/sso/saml/{connection_id}/metadata", timeout=10)
    assert sp.status_code == 200 and sp.headers["Content-Type"].startswith("application/samlmetadata+xml")
    idp.trust_sp(sp.text)
    yield base, connection_id, owner
    drop_tenant(engine, tenant_id)


@pytest.mark.skipif(not chromium_available(), reason="Debian chromium or playwright is not installed")
def test_chromium_signs_in_through_the_idp(connection, idp, engine):
    from playwright.sync_api import sync_playwright

    base, connection_id, _owner = connection
    idp.fault = None
    seen: list[str] = []
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            page.on("request", lambda req: seen.append(f"{req.method} {req.url}"))
            response = page.goto(f"{base}/sso/saml/{connection_id}/login?next=/oauth/tenant")
            page.wait_for_load_state("networkidle")
            body = page.content()
            final_url = page.url
            status = response.status if response else None
        finally:
            browser.close()
    # the browser went to the IdP's SSO endpoint, then posted the IdP's form to the ACS
    assert any(s.startswith(f"GET {idp.base}/sso/redirect?SAMLRequest=") for s in seen), seen
    assert f"POST {base}/sso/saml/{connection_id}/acs" in seen, seen
    assert "Single sign-on failed" not in body, body
    if final_url.startswith(f"{base}/sso/saml/{connection_id}/acs"):  # the stand-in's JSON
        shown = json.loads(re.sub(r"<[^>]+>", "", body))
        assert shown["subject"] == "ada@saml.example" and shown["email"] == "ada@saml.example"
        assert shown["groups"] == ["engineering", "admins"] and shown["next_url"] == "/oauth/tenant"
    else:  # the real login pipeline: through the hosted hand-off to `next`, signed in
        assert final_url == f"{base}/oauth/tenant", final_url
        with Session(engine) as session:
            linked = session.scalars(
                select(ExternalIdentity).where(ExternalIdentity.provider == f"sso:{connection_id}")
            ).all()
        assert [(x.subject, x.email) for x in linked] == [("ada@saml.example", "ada@saml.example")]
    assert status is not None


@pytest.mark.skipif(not chromium_available(), reason="Debian chromium or playwright is not installed")
def test_chromium_sees_the_error_page_for_an_assertion_signed_by_another_key(connection, idp):
    from playwright.sync_api import sync_playwright

    base, connection_id, owner = connection
    idp.fault = "other_key"
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                page = browser.new_page()
                acs_status: list[int] = []
                page.on(
                    "response",
                    lambda res: acs_status.append(res.status) if res.url.endswith("/acs") else None,
                )
                page.goto(f"{base}/sso/saml/{connection_id}/login")
                page.wait_for_selector("#detail")
                detail = page.text_content("#detail")
            finally:
                browser.close()
    finally:
        idp.fault = None
    assert acs_status == [403]
    assert "signature does not verify" in detail
    events = requests.get(
        f"{base}/api/v1/audit-events?action=sso.login_failed",
        headers={"Authorization": f"Bearer {owner['token']['access_token']}"},
        timeout=10,
    )
    assert events.status_code == 200, events.text
    (event,) = events.json()
    assert event["data"]["reason"] == "signature" and event["target"]["id"] == str(connection_id)
