"""SAML 2.0 single sign-on (docs/auth.md, "SAML 2.0"): the IdP metadata a connection accepts,
the SP metadata route, and every refusal of the ACS, against a real pysaml2 IdP
(tests/saml_idp.py) whose answers are posted to the ACS as a browser would.

The sign-in's last step, :func:`saas.auth.sso.login.complete_login`, is replaced by a spy in
these tests: they assert the :class:`SsoIdentity` it is handed, or that it is never reached.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import jsonify
from sqlalchemy import func, select, text

from saas.auth.sso import login as sso_login
from saas.auth.sso import saml
from saas.auth.sso.protocol import new_transaction, protocol_for, save_transaction
from saas.db import schema_name_for
from saas.errors import ValidationError
from saas.identity.models import ExternalIdentity, Membership, SsoConnection
from saas.services import services
from saas.settings import Settings
from tests import saml_idp
from tests.saml_idp import User

idp = saml_idp.idp  # the shared fixture
private_urls = saml_idp.private_urls  # the shared fixture


@pytest.fixture()
def logins(monkeypatch):
    """The identities handed to ``complete_login`` (a spy answering 200 JSON)."""
    seen: list = []

    def spy(transaction, identity):
        seen.append((transaction, identity))
        return jsonify({"subject": identity.subject})

    monkeypatch.setattr(sso_login, "complete_login", spy)
    return seen


def _validate(app, payload, connection=None):
    with app.test_request_context():
        return protocol_for("saml").validate_config(payload, connection)


def _connection(app, api, db_session, idp, slug: str, **extra) -> SsoConnection:
    body = api.signup(slug)
    config, secret = _validate(app, {"metadata_xml": idp.metadata(), **extra})
    assert secret is None
    connection = SsoConnection(
        tenant_id=uuid.UUID(body["tenant"]["id"]),
        type="saml",
        name="Test IdP",
        config=config,
        domains=["saml.example"],
    )
    db_session.add(connection)
    db_session.commit()
    return connection


@pytest.fixture()
def conn(app, api, db_session, idp, client, private_urls):
    connection = _connection(app, api, db_session, idp, f"saml-{uuid.uuid4().hex[:6]}")
    r = client.get(f"/sso/saml/{connection.id}/metadata")
    assert r.status_code == 200
    idp.trust_sp(r.get_data(as_text=True))
    return connection


def _begin(client, connection) -> tuple[str, str]:
    r = client.get(f"/sso/saml/{connection.id}/login?next=/oauth/authorize?x=1")
    assert r.status_code == 303, r.get_data(as_text=True)
    query = parse_qs(urlsplit(r.headers["Location"]).query)
    return query["SAMLRequest"][0], query["RelayState"][0]


def _post(client, connection, saml_response: str, relay_state: str):
    return client.post(
        f"/sso/saml/{connection.id}/acs", data={"SAMLResponse": saml_response, "RelayState": relay_state}
    )


def _answer(client, idp, connection, fault=None):
    saml_request, relay_state = _begin(client, connection)
    acs, response, relay_state = idp.respond(saml_request, relay_state=relay_state, fault=fault)
    assert urlsplit(acs).path == f"/sso/saml/{connection.id}/acs"
    return _post(client, connection, response, relay_state), response, relay_state


def _failures(db_session, connection) -> list[dict]:
    schema = schema_name_for(connection.tenant_id)
    rows = db_session.execute(
        text(f'SELECT data, target_id FROM "{schema}".audit_events WHERE action = :a ORDER BY occurred_at'),  # noqa: S608 - a UUID's schema
        {"a": "sso.login_failed"},
    ).all()
    return [dict(row.data, target_id=row.target_id) for row in rows]


def _writes(db_session) -> tuple[int, int]:
    return (
        db_session.scalar(select(func.count()).select_from(Membership)),
        db_session.scalar(select(func.count()).select_from(ExternalIdentity)),
    )


# --- metadata validation ----------------------------------------------------------------------------


def test_good_metadata_is_stored_with_what_the_sp_needs(app, idp, private_urls):
    config, _ = _validate(app, {"metadata_xml": idp.metadata(), "groups_attribute": "memberOf"})
    assert config["idp_entity_id"] == idp.entity_id
    assert config["sso_url"] == f"{idp.base}/sso/redirect"
    assert config["sso_binding"] == "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
    assert config["certificates"] == [idp.cert_file.read_text()]
    assert config["metadata_xml"].startswith("<?xml") and config["metadata_url"] is None
    assert config["email_attribute"] is None and config["groups_attribute"] == "memberOf"


def test_metadata_from_a_url_is_fetched(app, idp, private_urls):
    config, _ = _validate(app, {"metadata_url": f"{idp.base}/metadata"})
    assert config["idp_entity_id"] == idp.entity_id and config["metadata_url"] == f"{idp.base}/metadata"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:9/metadata", "only https"),  # http outside SSO_ALLOW_PRIVATE_URLS
        ("https://127.0.0.1:9/metadata", "non-public address"),  # loopback
        ("https://169.254.169.254/latest/meta-data", "non-public address"),  # cloud metadata
        ("https://10.1.2.3/metadata", "non-public address"),
        ("https://localhost/metadata", "non-public address"),
        ("file:///etc/passwd", "not an http(s) URL"),
        ("https://user:pw@idp.example/metadata", "no credentials"),
    ],
)
def test_ssrf_urls_are_refused_before_any_connection(app, url, message):
    assert services(app).settings.sso_allow_private_urls is False
    with pytest.raises(ValidationError) as caught:
        _validate(app, {"metadata_url": url})
    assert message in caught.value.extra["errors"]["metadata_url"][0]


def test_an_unreachable_metadata_url_is_502(app, private_urls):
    from saas.auth.sso.saml import SsoProviderUnreachable

    with pytest.raises(SsoProviderUnreachable):
        _validate(app, {"metadata_url": "http://127.0.0.1:9/metadata"})


def _two_idps(xml: str) -> str:
    entity = xml.split("?>", 1)[1].strip()
    other = entity.replace('entityID="', 'entityID="urn:other:', 1)
    md = "urn:oasis:names:tc:SAML:2.0:metadata"
    return f'<md:EntitiesDescriptor xmlns:md="{md}">{entity}{other}</md:EntitiesDescriptor>'


def _strip_keys(xml: str) -> str:
    start, end = (
        xml.index("<md:KeyDescriptor"),
        xml.rindex("</md:KeyDescriptor>") + len("</md:KeyDescriptor>"),
    )
    return xml[:start] + xml[end:]


@pytest.mark.parametrize(
    ("mangle", "detail"),
    [
        (lambda xml: xml[: len(xml) // 2], "not well-formed XML"),
        (lambda xml: "<!DOCTYPE x [<!ENTITY a 'b'>]>" + xml.split("?>", 1)[1], "DTD or entities"),
        (lambda xml: "<hello/>", "no md:EntityDescriptor"),
        (lambda xml: xml.replace("IDPSSODescriptor", "SPSSODescriptor"), "no md:IDPSSODescriptor"),
        (_strip_keys, "no signing certificate"),
        (lambda xml: xml.replace('use="signing"', 'use="encryption"'), "no signing certificate"),
        (lambda xml: "", "empty"),
        (
            lambda xml: xml.replace('WantAuthnRequestsSigned="false"', 'WantAuthnRequestsSigned="true"'),
            "signed AuthnRequests",
        ),
        (_two_idps, "describes 2 identity providers"),
        (lambda xml: re.sub(r"<md:SingleSignOnService [^>]*/>", "", xml), "no SingleSignOnService"),
        (
            lambda xml: re.sub(r"<ds:X509Certificate>[^<]+", "<ds:X509Certificate>bm90IGEgY2VydA==", xml),
            "not a base64 DER",
        ),
    ],
)
def test_bad_metadata_is_422_with_a_precise_detail(app, idp, private_urls, mangle, detail):
    with pytest.raises(saml.SsoMetadataInvalid) as caught:
        _validate(app, {"metadata_xml": mangle(idp.metadata())})
    assert caught.value.status == 422 and caught.value.code == "sso_metadata_invalid"
    assert detail in caught.value.detail, caught.value.detail


@pytest.mark.parametrize(
    "mutate",
    [
        lambda x: re.sub(r' protocolSupportEnumeration="[^"]+"', "", x),
        lambda x: x.replace("<md:EntityDescriptor ", '<md:EntityDescriptor validUntil="yesterday" ', 1),
        lambda x: re.sub(r'Location="[^"]+/sso/redirect"', 'Location=""', x),
        lambda x: re.sub(r"<ds:X509Certificate>[^<]+", "<ds:X509Certificate>", x),
        lambda x: re.sub(r' entityID="[^"]+"', "", x),
        lambda x: x.replace("urn:oasis:names:tc:SAML:2.0:metadata", "urn:example:not-metadata"),
        lambda x: x.encode("utf-16").decode("latin-1"),
    ],
)
def test_mangled_metadata_is_a_422_never_an_exception(app, idp, private_urls, mutate):
    with pytest.raises(saml.SsoMetadataInvalid) as caught:
        _validate(app, {"metadata_xml": mutate(idp.metadata())})
    assert caught.value.status == 422 and caught.value.detail


def test_expired_metadata_is_refused_and_future_validity_kept(app, idp, private_urls):
    past = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with pytest.raises(saml.SsoMetadataInvalid) as caught:
        _validate(app, {"metadata_xml": idp.metadata(valid_until=past)})
    assert "expired" in caught.value.detail
    future = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    config, _ = _validate(app, {"metadata_xml": idp.metadata(valid_until=future)})
    assert config["valid_until"].startswith(future[:10])


def test_field_errors(app, idp):
    with pytest.raises(ValidationError) as caught:
        _validate(app, {})
    assert "metadata_xml" in caught.value.extra["errors"]
    with pytest.raises(ValidationError) as caught:
        _validate(app, {"metadata_xml": idp.metadata(), "metadata_url": "https://idp.example/md"})
    assert "not both" in caught.value.extra["errors"]["metadata_url"][0]
    with pytest.raises(ValidationError) as caught:
        _validate(app, {"metadata_xml": 42, "email_attribute": ""})
    assert set(caught.value.extra["errors"]) == {"metadata_xml", "email_attribute"}


def test_an_http_sso_location_needs_the_private_setting(app, idp):
    with pytest.raises(saml.SsoMetadataInvalid) as caught:
        _validate(app, {"metadata_xml": idp.metadata()})
    assert "https URL" in caught.value.detail


def test_an_update_without_metadata_keeps_it_and_changes_the_attributes(app, conn):
    config, _ = _validate(app, {"email_attribute": "mail"}, conn)
    assert config["metadata_xml"] == conn.config["metadata_xml"] and config["email_attribute"] == "mail"


# --- SP metadata and public config ----------------------------------------------------------------


def test_sp_metadata_route(client, conn, db_session, app):
    r = client.get(f"/sso/saml/{conn.id}/metadata")
    assert r.status_code == 200 and r.mimetype == "application/samlmetadata+xml"
    body = r.get_data(as_text=True)
    issuer = services(app).settings.issuer
    assert f'entityID="{issuer}/sso/saml/{conn.id}/metadata"' in body
    assert f'Location="{issuer}/sso/saml/{conn.id}/acs"' in body
    assert 'WantAssertionsSigned="true"' in body
    assert client.get(f"/sso/saml/{uuid.uuid4()}/metadata").status_code == 404
    conn.enabled = False
    db_session.commit()
    assert client.get(f"/sso/saml/{conn.id}/metadata").status_code == 404


def test_public_config(app, conn, idp):
    with app.test_request_context():
        shown = protocol_for("saml").public_config(conn)
    issuer = services(app).settings.issuer
    assert shown["sp_entity_id"] == f"{issuer}/sso/saml/{conn.id}/metadata"
    assert shown["acs_url"] == f"{issuer}/sso/saml/{conn.id}/acs"
    assert shown["idp_entity_id"] == idp.entity_id
    (fp,) = shown["certificate_fingerprints"]
    assert fp.startswith("SHA256:") and len(fp) == len("SHA256:") + 32 * 3 - 1
    assert "metadata_xml" not in shown and "certificates" not in shown


def test_begin_sends_an_authn_request_by_redirect(client, conn, redis_client):
    saml_request, relay_state = _begin(client, conn)
    import base64
    import zlib

    from saml2.samlp import authn_request_from_string

    xml = zlib.decompress(base64.b64decode(saml_request), -15).decode()
    request = authn_request_from_string(xml)
    assert request.force_authn in (None, "false")
    assert request.assertion_consumer_service_url.endswith(f"/sso/saml/{conn.id}/acs")
    stored = redis_client.get("sso:tx:" + relay_state)
    assert stored and request.id in stored.decode()


def test_an_idp_with_only_http_post_gets_an_auto_submitted_form(
    app, api, db_session, idp, client, private_urls, logins
):
    import requests

    body = api.signup(f"saml-post-{uuid.uuid4().hex[:6]}")
    config, _ = _validate(app, {"metadata_xml": idp.metadata(post_only=True)})
    assert config["sso_binding"] == "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
    connection = SsoConnection(
        tenant_id=uuid.UUID(body["tenant"]["id"]), type="saml", name="POST IdP", config=config
    )
    db_session.add(connection)
    db_session.commit()
    idp.trust_sp(client.get(f"/sso/saml/{connection.id}/metadata").get_data(as_text=True))
    page = client.get(f"/sso/saml/{connection.id}/login")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html_text = page.get_data(as_text=True)
    nonce = re.search(r'<script nonce="([^"]+)">', html_text).group(1)
    assert f"script-src 'nonce-{nonce}'" in page.headers["Content-Security-Policy"]
    assert f'action="{idp.base}/sso/post"' in html_text
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html_text))
    # the browser's post to the IdP, then the IdP's form back to the ACS
    answer = requests.post(f"{idp.base}/sso/post", data=fields, timeout=10)
    assert answer.status_code == 200, answer.text
    posted = dict(re.findall(r'name="(SAMLResponse|RelayState)" value="([^"]*)"', answer.text))
    r = _post(client, connection, posted["SAMLResponse"], posted["RelayState"])
    assert r.status_code == 200, r.get_data(as_text=True)
    assert logins[0][1].email == "ada@saml.example"


# --- the ACS ------------------------------------------------------------------------------------------


def test_a_signed_assertion_signs_in(client, conn, idp, logins, db_session):
    r, _, relay_state = _answer(client, idp, conn)
    assert r.status_code == 200, r.get_data(as_text=True)
    ((transaction, identity),) = logins
    assert transaction.state == relay_state and transaction.connection_id == conn.id
    assert transaction.next_url == "/oauth/authorize?x=1"
    assert identity.subject == "ada@saml.example" and identity.email == "ada@saml.example"
    assert identity.name == "Ada Lovelace"
    assert identity.groups == ("engineering", "admins")
    assert identity.attributes["mail"] == ("ada@saml.example",)
    assert identity.amr == ("pwd",)
    assert _failures(db_session, conn) == []


@pytest.mark.parametrize(
    ("fault", "reason", "status", "words"),
    [
        ("unsigned", "unsigned", 403, "not signed"),
        ("response_signed_only", "unsigned", 403, "not signed"),
        ("other_key", "signature", 403, "signature does not verify"),
        ("tampered", "signature", 403, "signature does not verify"),
        ("sha1", "signature_algorithm", 403, "weak or unknown algorithm"),
        ("wrapped", "signature", 403, "signature does not"),
        ("wrapped_new_id", "signature", 403, "signature does not cover"),
        ("wrong_audience", "audience", 403, "another service"),
        ("wrong_recipient", "recipient", 403, "another address"),
        ("wrong_destination", "destination", 403, "Destination"),
        ("expired", "expired", 403, "expired"),
        ("wrong_in_response_to", "in_response_to", 403, "InResponseTo"),
        ("wrong_issuer", "issuer", 403, "another identity provider"),
        ("denied", "idp_status", 403, "did not sign you in (Responder)"),
        ("transient", "subject", 403, "transient NameID"),
    ],
)
def test_each_bad_assertion_is_refused_audited_and_changes_nothing(
    client, conn, idp, logins, db_session, fault, reason, status, words
):
    before = _writes(db_session)
    r, _, _ = _answer(client, idp, conn, fault)
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.mimetype == "text/html" and words in r.get_data(as_text=True)
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert r.headers["Cache-Control"] == "no-store"
    assert logins == []
    assert _writes(db_session) == before
    (event,) = _failures(db_session, conn)
    assert event["reason"] == reason and event["protocol"] == "saml" and event["target_id"] == str(conn.id)


def test_metadata_expiring_after_it_was_stored_stops_sign_in(
    client, conn, idp, logins, db_session, time_machine
):
    conn.config = {**conn.config, "valid_until": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
    db_session.commit()
    saml_request, relay_state = _begin(client, conn)  # still valid
    _, response, relay_state = idp.respond(saml_request, relay_state=relay_state)
    time_machine.move_to(datetime.now(UTC) + timedelta(hours=2), tick=True)
    r = _post(client, conn, response, relay_state)
    assert r.status_code == 403 and "metadata has expired" in r.get_data(as_text=True)
    page = client.get(f"/sso/saml/{conn.id}/login")
    assert page.status_code == 400 and "metadata has expired" in page.get_data(as_text=True)
    assert logins == []
    assert [e["reason"] for e in _failures(db_session, conn)] == ["metadata_expired"]


def test_a_suspended_tenant_signs_nobody_in(client, conn, idp, logins, db_session):
    from saas.identity.models import Tenant

    saml_request, relay_state = _begin(client, conn)
    _, response, relay_state = idp.respond(saml_request, relay_state=relay_state)
    db_session.get(Tenant, conn.tenant_id).status = "suspended"
    db_session.commit()
    r = _post(client, conn, response, relay_state)
    assert r.status_code == 403 and logins == []
    assert [e["reason"] for e in _failures(db_session, conn)] == ["tenant_inactive"]


def test_the_same_response_posted_twice_is_refused(client, conn, idp, logins, db_session):
    r, response, relay_state = _answer(client, idp, conn)
    assert r.status_code == 200
    again = _post(client, conn, response, relay_state)
    assert again.status_code == 400 and "already used" in again.get_data(as_text=True)
    assert len(logins) == 1
    assert [e["reason"] for e in _failures(db_session, conn)] == ["transaction"]


def test_a_replayed_assertion_id_is_refused_even_with_a_fresh_transaction(
    client, conn, idp, logins, db_session, app
):
    r, response, _ = _answer(client, idp, conn)
    assert r.status_code == 200
    ((transaction, _),) = logins
    # an attacker who could start a transaction for the same request id still meets the replay cache
    with app.test_request_context():
        fresh = new_transaction(conn, "/")
        fresh.data["request_id"] = transaction.data["request_id"]
        save_transaction(fresh)
    again = _post(client, conn, response, fresh.state)
    assert again.status_code == 403 and "already used" in again.get_data(as_text=True)
    assert len(logins) == 1
    assert [e["reason"] for e in _failures(db_session, conn)] == ["replayed"]


def test_the_replay_marker_is_namespaced_and_expires(client, conn, idp, logins, redis_client):
    r, _, _ = _answer(client, idp, conn)
    assert r.status_code == 200
    (key,) = redis_client.keys(f"{{t:{conn.tenant_id}}}:saml:a:{conn.id}:*")
    ttl = redis_client.ttl(key)
    assert 5 * 60 - 5 <= ttl <= 5 * 60 + saml.CLOCK_SKEW_SECONDS + 5  # the IdP's 5-minute lifetime + skew


def test_transaction_refusals(client, conn, idp, logins, db_session, app, api):
    saml_request, relay_state = _begin(client, conn)
    _, response, _ = idp.respond(saml_request, relay_state=relay_state)
    for relay in ("", "not-a-state", "x" * 500):
        r = _post(client, conn, response, relay)
        assert r.status_code == 400 and "start again" in r.get_data(as_text=True)
    # the right transaction, posted to another connection's ACS
    other = _connection(app, api, db_session, idp, f"saml-o-{uuid.uuid4().hex[:6]}")
    r = _post(client, other, response, relay_state)
    assert r.status_code == 400 and "another sign-in" in r.get_data(as_text=True)
    assert _post(client, conn, response, relay_state).status_code == 400  # taken by the attempt above
    assert logins == []
    assert r.headers["X-Frame-Options"] == "DENY"


def test_garbage_is_a_400_page_never_a_500(client, conn, logins, db_session):
    import base64

    xxe = '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
    logout = '<samlp:LogoutResponse xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="a" Version="2.0"/>'
    garbage = [base64.b64encode(x.encode()).decode() for x in (xxe, logout)]
    for body in (
        {"SAMLResponse": "%%%not base64"},
        {"SAMLResponse": "PGZvbz4="},
        {},
        *[{"SAMLResponse": g} for g in garbage],
    ):
        _, relay_state = _begin(client, conn)
        r = client.post(f"/sso/saml/{conn.id}/acs", data={**body, "RelayState": relay_state})
        assert r.status_code == 400, r.get_data(as_text=True)
        assert r.mimetype == "text/html"
    assert logins == []
    assert {e["reason"] for e in _failures(db_session, conn)} == {"malformed"}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda x: re.sub(r"<ns1:Conditions .*?</ns1:Conditions>", "", x, flags=re.S),
        lambda x: re.sub(r"<ns1:Subject>.*?</ns1:Subject>", "", x, flags=re.S),
        lambda x: re.sub(r"<ns1:AuthnStatement .*?</ns1:AuthnStatement>", "", x, flags=re.S),
        lambda x: re.sub(r"(<ns1:NameID[^>]*>)[^<]*", r"\1", x),
        lambda x: re.sub(r'NotOnOrAfter="[^"]+"', 'NotOnOrAfter="yesterday"', x),
        lambda x: re.sub(r"<ns0:Status>.*?</ns0:Status>", "", x, flags=re.S),
        lambda x: re.sub(r"<ns1:Issuer[^>]*>[^<]*</ns1:Issuer>", "", x),
        lambda x: re.sub(r'Version="2.0"', 'Version="1.1"', x),
        lambda x: re.sub(r"<ns2:SignedInfo>.*?</ns2:SignedInfo>", "<ns2:SignedInfo/>", x, flags=re.S),
        lambda x: x.replace("<ns1:Assertion ", "<ns1:Assertion foo:bar='1' ", 1),
    ],
)
def test_mangled_responses_end_on_the_error_page_never_a_500(client, conn, idp, logins, mutate):
    import base64

    saml_request, relay_state = _begin(client, conn)
    _, response, relay_state = idp.respond(saml_request, relay_state=relay_state)
    mangled = mutate(base64.b64decode(response).decode())
    r = _post(client, conn, base64.b64encode(mangled.encode()).decode(), relay_state)
    assert r.status_code in (400, 403), r.get_data(as_text=True)
    assert r.mimetype == "text/html" and "Single sign-on failed" in r.get_data(as_text=True)
    assert logins == []


def test_unknown_or_disabled_connection_is_a_404_page(client, conn, db_session):
    assert client.post(f"/sso/saml/{uuid.uuid4()}/acs", data={"SAMLResponse": "x"}).status_code == 404
    assert client.get(f"/sso/saml/{uuid.uuid4()}/login").status_code == 404
    conn.enabled = False
    db_session.commit()
    assert client.get(f"/sso/saml/{conn.id}/login").status_code == 404


def test_next_must_be_a_local_path(client, conn):
    for bad in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        assert client.get(f"/sso/saml/{conn.id}/login", query_string={"next": bad}).status_code == 400


@pytest.fixture()
def opaque_user(idp):
    """The IdP's user named by a persistent (opaque) NameID, attributes set by the test."""
    idp.user = User(persistent_id="u-7f3a9")
    yield idp.user
    idp.user = User()


def test_email_comes_from_the_configured_attribute(client, conn, idp, logins, db_session, opaque_user):
    conn.config = {**conn.config, "email_attribute": "mail", "groups_attribute": "memberOf"}
    db_session.commit()
    opaque_user.attributes = {"mail": ["Grace@Saml.Example"], "memberOf": ["ops"], "groups": ["ignored"]}
    r, _, _ = _answer(client, idp, conn)
    assert r.status_code == 200, r.get_data(as_text=True)
    ((_, identity),) = logins
    assert identity.subject == "u-7f3a9"
    assert identity.email == "grace@saml.example" and identity.groups == ("ops",)


def test_a_missing_email_is_refused(client, conn, idp, logins, db_session, opaque_user):
    opaque_user.attributes = {"displayName": ["No Mail"]}
    r, _, _ = _answer(client, idp, conn)
    assert r.status_code == 403 and "no email address" in r.get_data(as_text=True)
    assert logins == []
    assert [e["reason"] for e in _failures(db_session, conn)] == ["email"]


def test_settings_read_the_private_urls_switch():
    assert Settings.from_env({"SSO_ALLOW_PRIVATE_URLS": "true"}).sso_allow_private_urls is True
    assert Settings.from_env({}).sso_allow_private_urls is False
