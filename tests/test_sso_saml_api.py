"""SAML 2.0 through the connections API and home realm discovery (docs/auth.md, "Per-tenant
SSO"): ``POST /api/v1/sso/connections`` with ``type: "saml"``, bad metadata as problems that
store nothing, and a sign-in from the hosted login page (email first) through the real pysaml2
IdP (tests/saml_idp.py) to an authorization code and tokens.

The connections API, home realm discovery and the real ``complete_login`` come with the OIDC
branch (``saas.tenancy.sso_views``); without them this module is skipped.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest

pytest.importorskip("saas.tenancy.sso_views", reason="the connections API lands with the OIDC branch")

from saas.db import utcnow
from saas.identity.models import ExternalIdentity, SsoConnection, VerifiedDomain
from saas.services import services
from tests import saml_idp
from tests.auth_helpers import (
    REDIRECT,
    email_step,
    login_request,
    query_of,
    redeem_code,
    register_client,
)
from tests.helpers import assert_problem, give_plan

idp = saml_idp.idp  # the shared fixture
private_urls = saml_idp.private_urls  # the shared fixture


def _tenant(api, db_session, slug: str):
    body = api.signup(slug)
    give_plan(db_session, body["tenant"]["id"], "enterprise")
    db_session.add(
        VerifiedDomain(
            tenant_id=uuid.UUID(body["tenant"]["id"]),
            domain="saml.example",
            token="t" * 20,
            verified_at=utcnow(),
        )
    )
    db_session.flush()
    return body, api.auth(body)


def _count(db_session) -> int:
    return len(db_session.query(SsoConnection).all())


def test_create_a_saml_connection_through_the_api(client, api, db_session, idp, private_urls, app):
    _, h = _tenant(api, db_session, f"saml-api-{uuid.uuid4().hex[:6]}")
    r = client.post(
        "/api/v1/sso/connections",
        json={
            "type": "saml",
            "name": "Test IdP",
            "metadata_url": f"{idp.base}/metadata",
            "domains": ["saml.example"],
            "groups_attribute": "groups",
        },
        headers=h,
    )
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    issuer = services(app).settings.issuer
    config = body["config"]
    assert config["sp_entity_id"] == f"{issuer}/sso/saml/{body['id']}/metadata"
    assert config["acs_url"] == f"{issuer}/sso/saml/{body['id']}/acs"
    assert config["idp_entity_id"] == idp.entity_id and len(config["certificate_fingerprints"]) == 1
    assert "metadata_xml" not in config and "certificates" not in config
    metadata = client.get(f"/sso/saml/{body['id']}/metadata")
    assert metadata.status_code == 200 and config["acs_url"] in metadata.get_data(as_text=True)


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"metadata_xml": "<not xml"}, 422, "sso_metadata_invalid"),
        ({"metadata_xml": '<?xml version="1.0"?><hello/>'}, 422, "sso_metadata_invalid"),
        ({"metadata_url": "https://169.254.169.254/latest/meta-data"}, 422, "validation_error"),
        ({}, 422, "validation_error"),
    ],
)
def test_bad_metadata_is_a_problem_and_stores_nothing(client, api, db_session, payload, status, code):
    _, h = _tenant(api, db_session, f"saml-bad-{uuid.uuid4().hex[:6]}")
    before = _count(db_session)
    r = client.post("/api/v1/sso/connections", json={"type": "saml", "name": "x", **payload}, headers=h)
    body = assert_problem(r, status, code)
    assert body["detail"]
    assert _count(db_session) == before
    events = client.get("/api/v1/audit-events?action=sso.connection_created", headers=h).get_json()
    assert events == []


def test_home_realm_discovery_signs_in_through_the_saml_idp(client, api, db_session, idp, private_urls):
    _, h = _tenant(api, db_session, f"saml-hrd-{uuid.uuid4().hex[:6]}")
    created = client.post(
        "/api/v1/sso/connections",
        json={"type": "saml", "name": "IdP", "metadata_xml": idp.metadata(), "domains": ["saml.example"]},
        headers=h,
    )
    assert created.status_code == 201, created.get_json()
    connection_id = created.get_json()["id"]
    idp.trust_sp(client.get(f"/sso/saml/{connection_id}/metadata").get_data(as_text=True))
    app_client = register_client(client, h, client_type="public", first_party=True)
    verifier, r = login_request(client, app_client["client_id"])
    assert r.status_code == 302, r.get_data(as_text=True)
    r = email_step(client, "ada@saml.example")
    assert r.status_code in (302, 303) and r.headers["Location"].startswith(f"{idp.base}/sso/redirect?"), (
        r.status_code,
        r.headers.get("Location"),
    )
    query = query_of(r.headers["Location"])
    acs, response, relay_state = idp.respond(query["SAMLRequest"], relay_state=query["RelayState"])
    r = client.post(urlsplit(acs).path, data={"SAMLResponse": response, "RelayState": relay_state})
    assert r.status_code in (302, 303), r.get_data(as_text=True)
    r = client.get(r.headers["Location"])  # the hosted hand-off
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT), r.get_data(as_text=True)
    code = query_of(r.headers["Location"])["code"]
    tokens = redeem_code(client, app_client["client_id"], verifier, code)
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200 and me.get_json()["user"]["email"] == "ada@saml.example"
    linked = db_session.query(ExternalIdentity).filter_by(provider=f"sso:{connection_id}").all()
    assert [x.subject for x in linked] == ["ada@saml.example"]
