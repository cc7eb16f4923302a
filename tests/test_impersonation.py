"""Impersonation for support (docs/auth.md): the token's ``act`` claim (RFC 8693 section 4.1), each
request audited with both actors, the sensitive actions refused, step-up never satisfied, and the
tenant's ``allow_impersonation`` setting. Through the Flask test client, rolled back; the CLI and a
live server are in tests/ops/test_impersonate.py."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import select, update

from saas.actions import ActionContext
from saas.audit import Actor, AuditEvent
from saas.auth import impersonation
from saas.errors import AppError
from saas.identity.models import Tenant, User
from saas.services import services
from tests.helpers import add_member, assert_problem, bearer

OPERATOR = Actor("operator", "ops-alice")


def _start(app, db_session, user_id, tenant_id, *, reason="ticket 4711", minutes=15, actor=OPERATOR):
    user = db_session.get(User, uuid.UUID(str(user_id)))
    tenant = db_session.get(Tenant, uuid.UUID(str(tenant_id)))
    issued = impersonation.start(
        ActionContext.for_operator(db_session, actor),
        services(app).tokens,
        user=user,
        tenant=tenant,
        reason=reason,
        minutes=minutes,
    )
    db_session.commit()
    return issued


@pytest.fixture()
def org(api, app):
    """(signup body, owner headers, a member and an impersonation token for the member)."""
    body = api.signup("imp-acme")
    return body, api.auth(body)


def _events(client, headers, action):
    r = client.get(f"/api/v1/audit-events?action={action}", headers=headers)
    assert r.status_code == 200, r.get_json()
    return {"items": r.get_json()}


def test_token_carries_act_and_works_and_each_request_is_audited_with_both_actors(
    app, client, db_session, org
):
    body, owner = org
    tid = body["tenant"]["id"]
    member = add_member(app, tid, "member")
    issued = _start(app, db_session, member.id, tid, minutes=20)
    claims = issued.claims
    assert claims["act"] == {"sub": "ops-alice"} and claims["sub"] == str(member.id)
    assert claims["exp"] - claims["iat"] == 20 * 60 and issued.expires_in == 1200
    assert "auth_time" not in claims and "amr" not in claims  # nobody authenticated as the member

    me = client.get("/api/v1/me", headers=bearer(issued.token))
    assert me.status_code == 200, me.get_json()
    assert me.get_json()["user"]["id"] == str(member.id)

    started = _events(client, owner, "impersonation.started")["items"]
    assert len(started) == 1
    assert started[0]["actor"] == {"type": "operator", "id": "ops-alice"}
    assert started[0]["target"] == {"type": "user", "id": str(member.id)}
    assert started[0]["data"]["reason"] == "ticket 4711" and started[0]["data"]["minutes"] == 20
    used = _events(client, owner, "impersonation.used")["items"]
    assert len(used) == 1
    assert used[0]["actor"] == {"type": "user", "id": str(member.id)}
    assert used[0]["data"]["act"] == {"sub": "ops-alice"}
    assert used[0]["data"]["path"] == "/api/v1/me" and used[0]["data"]["status"] == 200
    assert used[0]["data"]["jti"] == claims["jti"]


def test_events_written_during_an_impersonated_request_name_the_operator(app, client, db_session, org):
    body, owner = org
    tid = body["tenant"]["id"]
    member = add_member(app, tid, "member")
    token = _start(app, db_session, member.id, tid).token
    r = client.post("/api/v1/contacts", json={"name": "Ada"}, headers=bearer(token))
    assert r.status_code == 201, r.get_json()
    created = _events(client, owner, "contact.created")["items"]
    assert created and created[0]["actor"]["id"] == str(member.id)
    assert created[0]["data"].get("act") == {"sub": "ops-alice"}


def test_ordinary_tokens_write_no_impersonation_event(client, org):
    _body, owner = org
    assert client.get("/api/v1/me", headers=owner).status_code == 200
    assert _events(client, owner, "impersonation.used")["items"] == []


SENSITIVE = [
    ("put", "/api/v1/me/password", {"current_password": "x" * 12, "new_password": "a new long passphrase"}),
    ("post", "/api/v1/me/email", {"new_email": "new@example.test", "password": "x" * 12}),
    ("post", "/api/v1/me/mfa/totp", {}),
    ("delete", "/api/v1/me/mfa/totp", {"password": "x" * 12, "code": "123456"}),
    ("post", "/api/v1/me/mfa/recovery-codes", None),
    ("post", "/api/v1/me/webauthn/registration/options", None),
    ("delete", "/api/v1/me/webauthn/credentials/00000000-0000-4000-8000-000000000001", None),
    ("delete", "/api/v1/me", {"password": "x" * 12}),
    ("post", "/api/v1/billing/checkout", {"plan": "pro"}),
    ("post", "/api/v1/billing/portal", None),
    ("post", "/api/v1/clients", {"name": "x", "redirect_uris": ["https://x.test/cb"]}),
    ("patch", "/api/v1/tenant", {"settings": {"allow_impersonation": False}}),
    ("delete", "/api/v1/members/00000000-0000-4000-8000-000000000002/sessions", None),
]


@pytest.mark.parametrize(("method", "path", "payload"), SENSITIVE, ids=[f"{m} {p}" for m, p, _ in SENSITIVE])
def test_sensitive_actions_are_refused_to_an_impersonated_owner(
    app, client, db_session, org, method, path, payload
):
    body, owner = org
    token = _start(app, db_session, body["user"]["id"], body["tenant"]["id"]).token
    kwargs = {"headers": bearer(token)}
    if payload is not None:
        kwargs["json"] = payload
    r = getattr(client, method)(path, **kwargs)
    problem = assert_problem(r, 403, "impersonation_forbidden")
    assert problem["operator"] == "ops-alice"
    tenant = db_session.get(Tenant, uuid.UUID(body["tenant"]["id"]))
    db_session.refresh(tenant)
    assert "allow_impersonation" not in (tenant.settings or {})  # nothing changed
    refused = [e for e in _events(client, owner, "impersonation.used")["items"] if e["data"]["path"] == path]
    assert refused and refused[0]["data"]["status"] == 403  # the attempt is in the log


def test_step_up_is_never_satisfied_even_by_a_fresh_act_token(app, client, org):
    """A token with ``act`` and a fresh ``auth_time``/``amr`` (as if one were minted with them)
    still cannot step up."""
    body, _owner = org
    token = (
        services(app)
        .tokens.issue(
            subject=body["user"]["id"],
            tenant_id=body["tenant"]["id"],
            roles=["owner"],
            scope="api",
            client_id="saas-api",
            auth_time=int(time.time()),
            amr=["pwd", "otp"],
            extra={"act": {"sub": "ops-alice"}},
        )
        .token
    )
    r = client.patch("/api/v1/tenant", json={"settings": {"require_mfa": True}}, headers=bearer(token))
    assert_problem(r, 403, "impersonation_forbidden")
    # nor the user's personal data in every tenant (the GDPR export is the person's own)
    assert_problem(client.get("/api/v1/me/export", headers=bearer(token)), 403, "impersonation_forbidden")


def test_a_malformed_act_claim_is_refused(app, client, org):
    body, _owner = org
    token = services(app).tokens.issue(
        subject=body["user"]["id"], tenant_id=body["tenant"]["id"], roles=["owner"], scope="api",
        client_id="saas-api", extra={"act": "ops-alice"},
    ).token  # fmt: skip
    assert_problem(client.get("/api/v1/me", headers=bearer(token)), 401)


def test_allow_impersonation_false_refuses_new_tokens_and_kills_existing_ones(app, client, db_session, org):
    body, owner = org
    tid = body["tenant"]["id"]
    member = add_member(app, tid, "member")
    token = _start(app, db_session, member.id, tid).token
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200

    r = client.patch("/api/v1/tenant", json={"settings": {"allow_impersonation": False}}, headers=owner)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["settings"]["allow_impersonation"] is False

    assert_problem(client.get("/api/v1/me", headers=bearer(token)), 401, "impersonation_disabled")
    assert client.get("/api/v1/me", headers=owner).status_code == 200  # ordinary tokens unaffected
    with pytest.raises(AppError) as err:
        _start(app, db_session, member.id, tid)
    assert err.value.code == "impersonation_disabled"
    assert len(_events(client, owner, "impersonation.started")["items"]) == 1  # only the first


def test_impersonation_works_in_a_tenant_that_requires_mfa(app, client, db_session, org):
    """``require_mfa`` is about how the member signs in; the operator did not sign in as them."""
    body, _owner = org
    tid = uuid.UUID(body["tenant"]["id"])
    member = add_member(app, tid, "member")
    db_session.execute(update(Tenant).where(Tenant.id == tid).values(settings={"require_mfa": True}))
    db_session.commit()
    from saas.cache import invalidate_tenant

    invalidate_tenant({tid})
    token = _start(app, db_session, member.id, tid).token
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"minutes": 61}, "validation_error"),
        ({"minutes": 0}, "validation_error"),
        ({"reason": "   "}, "validation_error"),
        ({"actor": Actor("user", str(uuid.uuid4()))}, "validation_error"),
    ],
    ids=["61 minutes", "0 minutes", "blank reason", "not an operator"],
)
def test_bad_requests_issue_nothing(app, db_session, org, kwargs, code):
    body, _owner = org
    with pytest.raises(AppError) as err:
        _start(app, db_session, body["user"]["id"], body["tenant"]["id"], **kwargs)
    assert err.value.code == code
    _assert_no_start(db_session, body["tenant"]["id"])


def test_non_members_and_locked_accounts_are_refused(app, db_session, org, api):
    body, _owner = org
    tid = body["tenant"]["id"]
    other = api.signup("imp-other")
    with pytest.raises(AppError) as err:  # a member of another tenant only
        _start(app, db_session, other["user"]["id"], tid)
    assert err.value.code == "not_a_member"
    removed = add_member(app, tid, "member", status="removed")
    with pytest.raises(AppError) as err:
        _start(app, db_session, removed.id, tid)
    assert err.value.code == "not_a_member"
    locked = add_member(app, tid, "member")
    db_session.execute(update(User).where(User.id == locked.id).values(status="locked"))
    with pytest.raises(AppError) as err:
        _start(app, db_session, locked.id, tid)
    assert err.value.code == "impersonation_forbidden"
    _assert_no_start(db_session, tid)


def _assert_no_start(db_session, tenant_id):
    from saas.db import schema_name_for, translate_map

    rows = db_session.execute(
        select(AuditEvent.id).where(AuditEvent.action == "impersonation.started"),
        execution_options={"schema_translate_map": translate_map(schema_name_for(uuid.UUID(str(tenant_id))))},
    ).all()
    assert rows == []
