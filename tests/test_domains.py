"""Verified domains (docs/auth.md, "Verified domains"): claims, DNS TXT verification against a
real local DNS server (dnslib, tests/dns_server.py), one tenant per domain, the permission, the
verified email, the step-up and the plan feature ``sso``."""

from __future__ import annotations

import time
import uuid

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from saas.billing.entitlements import plans_with_feature
from saas.identity.models import VerifiedDomain
from saas.services import services
from saas.tenancy import domains
from tests.conftest import TEST_PASSWORD
from tests.dns_server import dns_server, silent_dns_server
from tests.helpers import (
    assert_problem,
    bearer,
    drop_tenant,
    give_plan,
    live_server,
    replace_services,
    role_headers,
    verify_by_link,
)


@pytest.fixture()
def zone(app, monkeypatch):
    """A dnslib server the app resolves through (``DNS_NAMESERVERS``)."""
    with dns_server() as (z, address):
        settings = services(app).settings.with_overrides(dns_nameservers=(address,), dns_timeout_seconds=2.0)
        replace_services(monkeypatch, app, settings=settings)
        yield z


def _tenant(api, db_session, slug: str, plan: str = "enterprise", **kw) -> tuple[dict, dict]:
    body = api.signup(slug, **kw)
    if plan:
        give_plan(db_session, body["tenant"]["id"], plan)
    return body, api.auth(body)


def _claim(client, h, domain: str) -> dict:
    r = client.post("/api/v1/domains", json={"domain": domain}, headers=h)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def _publish(zone, claim: dict, value: str | None = None) -> None:
    zone.records[claim["record"]["name"]] = [value if value is not None else claim["record"]["value"]]


def _actions(client, h, action: str) -> list[dict]:
    r = client.get(f"/api/v1/audit-events?action={action}", headers=h)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_claim_returns_the_txt_record_and_is_audited(client, api, db_session):
    _, h = _tenant(api, db_session, "dom-claim")
    body = _claim(client, h, "  Example.COM. ")
    assert body["domain"] == "example.com" and body["status"] == "pending" and body["verified_at"] is None
    record = body["record"]
    assert record["type"] == "TXT" and record["name"] == "_saas-challenge.example.com"
    prefix = "saas-domain-verification="
    assert record["value"].startswith(prefix) and len(record["value"]) > len(prefix) + 40
    other = _claim(client, h, "example.org")
    assert other["record"]["value"] != record["value"]  # a random token per claim
    assert client.get(f"/api/v1/domains/{body['id']}", headers=h).get_json() == body
    assert [d["domain"] for d in client.get("/api/v1/domains", headers=h).get_json()] == [
        "example.com",
        "example.org",
    ]
    events = _actions(client, h, "domain.claimed")
    assert {e["data"]["domain"] for e in events} == {"example.com", "example.org"}
    assert_problem(
        client.post("/api/v1/domains", json={"domain": "EXAMPLE.com"}, headers=h),
        409,
        "domain_already_claimed",
    )


def test_internationalised_names_are_stored_as_a_labels(client, api, db_session):
    _, h = _tenant(api, db_session, "dom-idn")
    body = _claim(client, h, "Bücher.Example")
    assert body["domain"] == "xn--bcher-kva.example"
    assert body["record"]["name"] == "_saas-challenge.xn--bcher-kva.example"


@pytest.mark.parametrize(
    "domain",
    [
        "192.0.2.10",
        "::1",
        "[2001:db8::1]",
        "localhost",
        "a..example.com",
        "-bad.example.com",
        "bad-.example.com",
        "under_score.example.com",
        "x" * 64 + ".example.com",
        ("a" * 60 + ".") * 5 + "com",  # over 253 characters
        "example.123",
        "",
        "   ",
        "exa mple.com",
        "http://example.com",
    ],
)
def test_bad_domains_are_422(client, api, db_session, domain):
    _, h = _tenant(api, db_session, "dom-bad")
    body = assert_problem(
        client.post("/api/v1/domains", json={"domain": domain}, headers=h), 422, "validation_error"
    )
    assert body["errors"]["domain"]
    assert client.get("/api/v1/domains", headers=h).get_json() == []


def test_non_string_domain_is_422(client, api, db_session):
    _, h = _tenant(api, db_session, "dom-type")
    assert_problem(client.post("/api/v1/domains", json={"domain": 42}, headers=h), 422)
    assert_problem(client.post("/api/v1/domains", json={}, headers=h), 422)


def test_verify_with_the_published_record(client, api, db_session, zone):
    _, h = _tenant(api, db_session, "dom-ok")
    claim = _claim(client, h, "acme-corp.example")
    zone.records[claim["record"]["name"]] = ["v=spf1 -all", claim["record"]["value"]]  # among others
    r = client.post(f"/api/v1/domains/{claim['id']}/verify", headers=h)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["status"] == "verified" and body["verified_at"]
    assert "_saas-challenge.acme-corp.example" in zone.queries
    (event,) = _actions(client, h, "domain.verified")
    assert event["target"]["id"] == claim["id"] and event["data"]["domain"] == "acme-corp.example"
    again = client.post(f"/api/v1/domains/{claim['id']}/verify", headers=h)  # idempotent
    assert again.status_code == 200 and again.get_json()["verified_at"] == body["verified_at"]
    assert len(_actions(client, h, "domain.verified")) == 1


@pytest.mark.parametrize("published", ["wrong", "missing", "nodata"])
def test_a_wrong_or_missing_record_leaves_the_domain_unverified(client, api, db_session, zone, published):
    _, h = _tenant(api, db_session, "dom-wrong")
    claim = _claim(client, h, "acme-wrong.example")
    if published == "wrong":
        _publish(zone, claim, "saas-domain-verification=not-the-token")
    elif published == "nodata":
        zone.records[claim["record"]["name"]] = []
    body = assert_problem(
        client.post(f"/api/v1/domains/{claim['id']}/verify", headers=h), 422, "domain_not_verified"
    )
    assert body["record"] == claim["record"]
    assert body["found"] == (["saas-domain-verification=not-the-token"] if published == "wrong" else [])
    assert client.get(f"/api/v1/domains/{claim['id']}", headers=h).get_json()["status"] == "pending"
    assert _actions(client, h, "domain.verified") == []


def test_a_dns_timeout_is_503_and_changes_nothing(app, client, api, db_session, monkeypatch):
    _, h = _tenant(api, db_session, "dom-timeout")
    claim = _claim(client, h, "acme-slow.example")
    with silent_dns_server() as address:
        settings = services(app).settings.with_overrides(dns_nameservers=(address,), dns_timeout_seconds=0.3)
        replace_services(monkeypatch, app, settings=settings)
        body = assert_problem(
            client.post(f"/api/v1/domains/{claim['id']}/verify", headers=h), 503, "dns_unavailable"
        )
    assert "nothing changed" in body["detail"]
    assert client.get(f"/api/v1/domains/{claim['id']}", headers=h).get_json()["status"] == "pending"


def test_a_domain_belongs_to_one_tenant(client, api, db_session, zone):
    _, first = _tenant(api, db_session, "dom-first")
    _, second = _tenant(api, db_session, "dom-second")
    a = _claim(client, first, "shared.example")
    b = _claim(client, second, "shared.example")  # two pending claims are allowed
    zone.records[a["record"]["name"]] = [a["record"]["value"], b["record"]["value"]]
    assert client.post(f"/api/v1/domains/{a['id']}/verify", headers=first).status_code == 200
    # the second tenant's record is published too: the first to verify has won
    assert_problem(client.post(f"/api/v1/domains/{b['id']}/verify", headers=second), 409, "domain_taken")
    assert client.get(f"/api/v1/domains/{b['id']}", headers=second).get_json()["status"] == "pending"
    # nor can anyone claim it now
    _, third = _tenant(api, db_session, "dom-third")
    assert_problem(
        client.post("/api/v1/domains", json={"domain": "Shared.Example"}, headers=third), 409, "domain_taken"
    )
    # once the first tenant lets it go, the second may verify it
    assert client.delete(f"/api/v1/domains/{a['id']}", headers=first).status_code == 204
    assert client.post(f"/api/v1/domains/{b['id']}/verify", headers=second).get_json()["status"] == "verified"


def test_the_first_to_verify_wins_a_race(client, api, db_session, zone, monkeypatch):
    """Two verifications that both pass the "verified elsewhere?" check: the partial unique index
    refuses the second (409 ``domain_taken``), and its claim stays pending."""
    _, first = _tenant(api, db_session, "dom-race1")
    _, second = _tenant(api, db_session, "dom-race2")
    a = _claim(client, first, "race.example")
    b = _claim(client, second, "race.example")
    zone.records[a["record"]["name"]] = [a["record"]["value"], b["record"]["value"]]
    assert client.post(f"/api/v1/domains/{a['id']}/verify", headers=first).status_code == 200
    monkeypatch.setattr(domains, "_verified_elsewhere", lambda *args: False)  # the race's window
    assert_problem(client.post(f"/api/v1/domains/{b['id']}/verify", headers=second), 409, "domain_taken")
    assert client.get(f"/api/v1/domains/{b['id']}", headers=second).get_json()["status"] == "pending"


def test_the_database_refuses_two_verified_rows_for_one_domain(api, db_session):
    t1, _ = _tenant(api, db_session, "dom-db1", plan="")
    t2, _ = _tenant(api, db_session, "dom-db2", plan="")
    now = db_session.scalar(text("SELECT now()"))
    for tenant in (t1, t2):
        db_session.add(
            VerifiedDomain(tenant_id=uuid.UUID(tenant["tenant"]["id"]), domain="db.example", token="t")
        )
    db_session.flush()  # two pending claims
    rows = db_session.query(VerifiedDomain).filter_by(domain="db.example").all()
    rows[0].verified_at = now
    db_session.flush()
    rows[1].verified_at = now
    with pytest.raises(IntegrityError, match="uq_verified_domains_domain_verified"):
        db_session.flush()
    db_session.rollback()


def test_another_tenants_domain_is_404(client, api, db_session, zone):
    _, mine = _tenant(api, db_session, "dom-mine")
    _, theirs = _tenant(api, db_session, "dom-theirs")
    claim = _claim(client, theirs, "theirs.example")
    _publish(zone, claim)
    assert_problem(client.get(f"/api/v1/domains/{claim['id']}", headers=mine), 404)
    assert_problem(client.post(f"/api/v1/domains/{claim['id']}/verify", headers=mine), 404)
    assert_problem(client.delete(f"/api/v1/domains/{claim['id']}", headers=mine), 404)
    assert client.get("/api/v1/domains", headers=mine).get_json() == []
    assert client.get(f"/api/v1/domains/{claim['id']}", headers=theirs).get_json()["status"] == "pending"
    assert_problem(client.get(f"/api/v1/domains/{uuid.uuid4()}", headers=mine), 404)


def test_delete_is_audited(client, api, db_session, zone):
    _, h = _tenant(api, db_session, "dom-del")
    claim = _claim(client, h, "gone.example")
    _publish(zone, claim)
    assert client.post(f"/api/v1/domains/{claim['id']}/verify", headers=h).status_code == 200
    assert client.delete(f"/api/v1/domains/{claim['id']}", headers=h).status_code == 204
    assert_problem(client.get(f"/api/v1/domains/{claim['id']}", headers=h), 404)
    (event,) = _actions(client, h, "domain.deleted")
    assert event["data"] == {"domain": "gone.example", "was_verified": True}


def test_members_are_refused_and_admins_allowed(app, client, api, db_session):
    owner, _ = _tenant(api, db_session, "dom-roles")
    _, member = role_headers(app, owner["tenant"]["id"], "member")
    for method, path in [
        ("GET", "/api/v1/domains"),
        ("POST", "/api/v1/domains"),
        ("GET", f"/api/v1/domains/{uuid.uuid4()}"),
        ("DELETE", f"/api/v1/domains/{uuid.uuid4()}"),
        ("POST", f"/api/v1/domains/{uuid.uuid4()}/verify"),
    ]:
        r = client.open(path, method=method, json={"domain": "x.example"}, headers=member)
        assert assert_problem(r, 403, "permission_denied")["permission"] == "sso:manage"
    _, admin = role_headers(app, owner["tenant"]["id"], "admin")
    assert client.get("/api/v1/domains", headers=admin).status_code == 200


def test_changes_need_a_step_up(app, client, api, db_session, zone):
    """A login older than the step-up window (RFC 9470) may read, not claim, verify or delete."""
    owner, fresh = _tenant(api, db_session, "dom-stepup")
    claim = _claim(client, fresh, "stepup.example")
    _publish(zone, claim)
    stale = services(app).tokens.issue(
        subject=owner["user"]["id"],
        tenant_id=owner["tenant"]["id"],
        roles=["owner"],
        scope="api",
        client_id="saas-api",
        auth_time=int(time.time()) - 3600,
    )
    h = bearer(stale.token)
    assert client.get("/api/v1/domains", headers=h).status_code == 200
    for method, path in [
        ("POST", "/api/v1/domains"),
        ("POST", f"/api/v1/domains/{claim['id']}/verify"),
        ("DELETE", f"/api/v1/domains/{claim['id']}"),
    ]:
        r = client.open(path, method=method, json={"domain": "other.example"}, headers=h)
        assert_problem(r, 401, "insufficient_user_authentication")
    assert [d["status"] for d in client.get("/api/v1/domains", headers=h).get_json()] == ["pending"]


def test_an_unverified_email_is_refused(client, api, db_session):
    _, h = _tenant(api, db_session, "dom-unverified", verified=False)
    assert_problem(client.get("/api/v1/domains", headers=h), 403, "email_unverified")
    assert_problem(
        client.post("/api/v1/domains", json={"domain": "u.example"}, headers=h), 403, "email_unverified"
    )


@pytest.mark.parametrize("plan", ["free", "pro"])
def test_a_plan_without_sso_is_402_naming_the_plan_that_has_it(client, api, db_session, plan):
    _, h = _tenant(api, db_session, f"dom-{plan}", plan="" if plan == "free" else plan)
    cheapest = plans_with_feature("sso")[0]
    assert cheapest.id == "enterprise"
    for r in (
        client.get("/api/v1/domains", headers=h),
        client.post("/api/v1/domains", json={"domain": "p.example"}, headers=h),
    ):
        body = assert_problem(r, 402, "entitlement_required")
        assert body["feature"] == "sso" and body["plan"] == "enterprise"
        assert cheapest.name in body["detail"]
    db = services(client.application).database.session()
    assert db.query(VerifiedDomain).count() == 0


def test_the_openapi_document_declares_the_problems(client):
    spec = client.get("/openapi.json").get_json()
    post = spec["paths"]["/api/v1/domains"]["post"]
    assert post["x-required-permission"] == "sso:manage" and post["x-required-feature"] == "sso"
    assert {"401", "402", "403", "409", "422"} <= set(post["responses"])
    verify = spec["paths"]["/api/v1/domains/{domain_id}/verify"]["post"]
    assert {"402", "404", "409", "422", "503"} <= set(verify["responses"])


def test_claim_and_verify_through_a_live_server(settings, engine, redis_client):
    """A real HTTP server committing for real, ``requests`` as the client, a real DNS server."""
    slug = f"dom-live-{uuid.uuid4().hex[:6]}"
    email = f"owner@{slug}.test"
    with dns_server() as (zone, address):
        live_settings = settings.with_overrides(dns_nameservers=(address,))
        with live_server(live_settings, engine, redis_client) as (base, app, _):
            tenant_id = None
            try:
                r = requests.post(
                    f"{base}/api/v1/signup",
                    json={
                        "tenant": {"name": slug, "slug": slug},
                        "owner": {"email": email, "password": TEST_PASSWORD},
                    },
                    timeout=10,
                )
                assert r.status_code == 201, r.text
                owner = r.json()
                tenant_id = owner["tenant"]["id"]
                h = bearer(owner["token"]["access_token"])
                r = requests.get(f"{base}/api/v1/domains", headers=h, timeout=10)
                assert r.status_code == 403 and r.json()["code"] == "email_unverified"
                verify_by_link(base, app, email)
                r = requests.get(f"{base}/api/v1/domains", headers=h, timeout=10)
                assert r.status_code == 402 and r.json()["plan"] == "enterprise"
                with app.app_context():  # the operator's override, and the caches it drops
                    session = services(app).database.session()
                    give_plan(session, tenant_id, "enterprise")
                    session.commit()
                    session.close()
                r = requests.post(
                    f"{base}/api/v1/domains", json={"domain": f"{slug}.example"}, headers=h, timeout=10
                )
                assert r.status_code == 201, r.text
                claim = r.json()
                verify = f"{base}/api/v1/domains/{claim['id']}/verify"
                r = requests.post(verify, headers=h, timeout=10)
                assert r.status_code == 422 and r.json()["code"] == "domain_not_verified"
                zone.records[claim["record"]["name"]] = [claim["record"]["value"]]
                r = requests.post(verify, headers=h, timeout=10)
                assert r.status_code == 200 and r.json()["status"] == "verified", r.text
                with engine.connect() as conn:
                    verified_at = conn.scalar(
                        text("SELECT verified_at FROM saas.verified_domains WHERE id = :id"),
                        {"id": claim["id"]},
                    )
                assert verified_at is not None
                r = requests.delete(f"{base}/api/v1/domains/{claim['id']}", headers=h, timeout=10)
                assert r.status_code == 204
            finally:
                if tenant_id:
                    drop_tenant(engine, tenant_id)
