"""Invariant 7: every change a person makes is audited in the tenant's own log (who, what,
when, from where); and the audit-events endpoint filters and paginates."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from saas.services import services
from tests.helpers import assert_problem, mailed_invitation_token, role_headers


@pytest.fixture()
def owner(api):
    return api.signup("acme")


def _events(client, h, **params):
    r = client.get("/api/v1/audit-events", query_string=params, headers=h)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_every_change_is_audited(api, app, client, owner):
    h = {**api.auth(owner), "X-Request-ID": "req-audit-1", "User-Agent": "audit-test/1.0"}
    uid = owner["user"]["id"]
    expected: list[tuple[str, str | None]] = [
        ("tenant.created", owner["tenant"]["id"]),
        ("email.verification_sent", uid),  # the signup mailed the owner a verification link
    ]

    c = client.post("/api/v1/contacts", json={"name": "Ada"}, headers=h).get_json()
    expected.append(("contact.created", c["id"]))
    client.patch(f"/api/v1/contacts/{c['id']}", json={"company": "Engines"}, headers=h)
    expected.append(("contact.updated", c["id"]))
    client.delete(f"/api/v1/contacts/{c['id']}", headers=h)
    expected.append(("contact.deleted", c["id"]))
    client.patch(
        "/api/v1/tenant", json={"name": "Acme Two", "settings": {"password_min_length": 12}}, headers=h
    )
    expected.append(("tenant.updated", owner["tenant"]["id"]))
    inv = client.post(
        "/api/v1/members", json={"email": "new@acme.test", "role": "member"}, headers=h
    ).get_json()
    expected.append(("member.invited", inv["invitation_id"]))  # the invitation, not a user id
    invitation_token = mailed_invitation_token(client.application, "new@acme.test")
    r = client.post(
        "/api/v1/invitations/accept", json={"token": invitation_token, "password": "twelve chars ok"}
    )
    assert r.status_code == 200, r.get_json()
    joined_id = r.get_json()["user"]["id"]
    expected.append(("member.joined", joined_id))
    client.patch(f"/api/v1/members/{joined_id}", json={"role": "viewer"}, headers=h)
    expected.append(("member.role_changed", joined_id))
    client.delete(f"/api/v1/members/{joined_id}", headers=h)
    expected.append(("member.removed", joined_id))

    events = _events(client, api.auth(owner), page_size=100)
    got = [(e["action"], e["target"]["id"]) for e in reversed(events)]
    assert got == expected
    by_action = {e["action"]: e for e in events}
    for action in ("contact.created", "tenant.updated", "member.invited", "member.removed"):
        e = by_action[action]
        assert e["actor"] == {"type": "user", "id": uid}
        assert e["request_id"] == "req-audit-1"
        assert e["user_agent"] == "audit-test/1.0"
        assert e["ip"] == "127.0.0.1"
        assert datetime.fromisoformat(e["occurred_at"]) > datetime.now(UTC) - timedelta(minutes=1)
    assert by_action["member.joined"]["actor"]["id"] == joined_id
    assert by_action["contact.updated"]["data"] == {"fields": ["company"]}
    assert by_action["member.role_changed"]["data"] == {"from": "member", "to": "viewer"}
    # no secrets in the log
    assert invitation_token not in json.dumps(events)
    assert "twelve chars ok" not in json.dumps(events)


def test_failed_changes_leave_no_audit_event(api, client, owner):
    h = api.auth(owner)
    before = len(_events(client, h))
    client.post("/api/v1/contacts", json={"name": ""}, headers=h)  # 422
    client.patch("/api/v1/members/" + owner["user"]["id"], json={"role": "admin"}, headers=h)  # 409
    assert len(_events(client, h)) == before


def test_filters_and_pagination(api, app, client, owner):
    h = api.auth(owner)
    other, other_h = role_headers(app, owner["tenant"]["id"], "admin")
    for i in range(3):
        client.post("/api/v1/contacts", json={"name": f"by owner {i}"}, headers=h)
    client.post("/api/v1/contacts", json={"name": "by admin"}, headers=other_h)
    assert len(_events(client, h, actor=str(other.id))) == 1
    assert len(_events(client, h, action="contact.created")) == 4
    assert len(_events(client, h, action="contact.created", actor=owner["user"]["id"])) == 3
    r = client.get("/api/v1/audit-events?page=1&page_size=2", headers=h)
    # tenant.created, email.verification_sent and the four contacts
    assert len(r.get_json()) == 2 and json.loads(r.headers["X-Pagination"])["total"] == 6
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert _events(client, h, since=future) == []
    assert len(_events(client, h, since=past, until=future)) == 6
    assert _events(client, h, until=past) == []
    body = assert_problem(
        client.get("/api/v1/audit-events", query_string={"since": future, "until": past}, headers=h), 422
    )
    assert "until" in body["errors"]
    assert_problem(client.get("/api/v1/audit-events?since=yesterday", headers=h), 422)
    assert_problem(client.get("/api/v1/audit-events?since=2026-01-01T00:00:00", headers=h), 422)  # naive


def test_newest_first(api, client, owner):
    h = api.auth(owner)
    client.post("/api/v1/contacts", json={"name": "first"}, headers=h)
    client.post("/api/v1/contacts", json={"name": "second"}, headers=h)
    events = _events(client, h, action="contact.created")
    assert events[0]["occurred_at"] >= events[1]["occurred_at"]


def test_audit_record_without_tenant_context_fails(app, connection):
    """Outside a tenant-bound session, ``record`` needs an explicit tenant schema: without one it
    fails loudly (placeholder schema), and a non-tenant schema is refused."""
    from sqlalchemy.exc import ProgrammingError

    from saas import audit

    session = services(app).database.session()
    try:
        with pytest.raises(ProgrammingError, match="tenant"):
            audit.record(session, audit.AuditAction.TENANT_UPDATED, actor=audit.SYSTEM)
        session.rollback()
        with pytest.raises(ValueError):
            audit.record(session, audit.AuditAction.TENANT_UPDATED, actor=audit.SYSTEM, schema="public")
    finally:
        session.close()
