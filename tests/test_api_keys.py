"""API keys (docs/auth.md, "API keys"): the format and its checksum, the key shown once and
stored as SHA-256, the intersection with the creator's current permissions, revocation, expiry,
``last_used_at`` at most once a minute, escalation attempts, impersonation, tenant isolation.
Through the Flask test client, rolled back; two gunicorn workers are in
tests/test_api_keys_gunicorn.py."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from saas.actions import ActionContext
from saas.audit import Actor
from saas.auth import api_keys, impersonation
from saas.auth.models import ApiKey
from saas.identity.models import Membership, Tenant, User
from saas.services import services
from tests.helpers import add_member, assert_problem, bearer


def _in(days: float = 30) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def _fresh(app, user_id, tenant_id, role: str, age: int = 0) -> str:
    """An access token of a password login ``age`` seconds ago (a fresh one passes step-up)."""
    return (
        services(app)
        .tokens.issue(
            subject=str(user_id),
            tenant_id=str(tenant_id),
            roles=[role],
            scope="api",
            client_id="saas-api",
            auth_time=int(datetime.now(UTC).timestamp()) - age,
            amr=["pwd"],
        )
        .token
    )


def _create(client, h, permissions=("contacts:read",), name="CI", expires_at=None, status=201):
    r = client.post(
        "/api/v1/api-keys",
        json={"name": name, "permissions": list(permissions), "expires_at": expires_at or _in()},
        headers=h,
    )
    assert r.status_code == status, r.get_json()
    return r.get_json()


@pytest.fixture()
def org(api):
    body = api.signup("keys-acme")
    return body, api.auth(body)


def _count(db_session, model=ApiKey) -> int:
    return db_session.scalar(select(func.count()).select_from(model))


def _events(client, h, action):
    r = client.get(f"/api/v1/audit-events?action={action}", headers=h)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_format_checksum_and_tenant_round_trip():
    tenant = uuid.uuid4()
    key = api_keys.generate(tenant)
    assert re.fullmatch(api_keys.PATTERN, key) and len(key) == 69
    assert api_keys.parse(key) == tenant
    # the checksum is CRC32 of everything before it, as a scanner recomputes it offline
    assert key[-6:] == api_keys.checksum(key[:-6])
    assert api_keys.generate(tenant) != key  # random
    for bad in (
        key[:-1] + ("A" if key[-1] != "A" else "B"),  # a mistyped checksum
        key[:20] + ("x" if key[20] != "x" else "y") + key[21:],  # a mistyped body
        key[:-2],  # truncated
        key.replace("saas_pat_", "saas_pat_-")[:69],  # out of the alphabet
    ):
        with pytest.raises(Exception, match="API key"):
            api_keys.parse(bad)


def test_create_shows_the_key_once_stores_its_hash_and_audits(client, db_session, org):
    body, h = org
    created = _create(client, h, ["contacts:read", "members:read"], name="  Deploy bot ")
    key = created["key"]
    assert key.startswith("saas_pat_") and created["prefix"] == key[:15]
    assert created["name"] == "Deploy bot" and created["status"] == "active"
    assert created["permissions"] == ["contacts:read", "members:read"]
    assert created["created_by"] == body["user"]["id"] and created["last_used_at"] is None
    row = db_session.get(ApiKey, uuid.UUID(created["id"]))
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    # the key itself is stored nowhere, and never listed again
    stored = " ".join(str(v) for v in vars(row).values())
    assert key not in stored and key[15:] not in stored
    listed = client.get("/api/v1/api-keys", headers=h).get_json()
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]
    events = _events(client, h, "api_key.created")
    assert len(events) == 1 and events[0]["target"] == {"type": "api_key", "id": created["id"]}
    assert key not in str(events) and events[0]["data"]["permissions"] == ["contacts:read", "members:read"]


def test_a_key_is_a_bearer_with_only_its_permissions(client, org):
    body, h = org
    key = _create(client, h, ["contacts:read"])["key"]
    kh = bearer(key)
    assert client.get("/api/v1/contacts", headers=kh).status_code == 200
    me = client.get("/api/v1/me", headers=kh).get_json()
    assert me["user"]["id"] == body["user"]["id"]
    # the owner may write contacts, the key may not
    assert_problem(client.post("/api/v1/contacts", json={"name": "X"}, headers=kh), 403, "permission_denied")
    assert_problem(client.get("/api/v1/members", headers=kh), 403, "permission_denied")
    assert client.post("/api/v1/contacts", json={"name": "X"}, headers=h).status_code == 201


def test_a_write_through_a_key_is_audited_as_its_creator_naming_the_key(client, org):
    body, h = org
    created = _create(client, h, ["contacts:write", "contacts:read"])
    r = client.post("/api/v1/contacts", json={"name": "Via key"}, headers=bearer(created["key"]))
    assert r.status_code == 201, r.get_json()
    events = _events(client, h, "contact.created")
    assert events[0]["actor"] == {"type": "user", "id": body["user"]["id"]}
    assert events[0]["data"]["api_key"] == created["id"]


def test_garbage_and_wrong_checksums_are_refused_without_a_lookup(client, org, monkeypatch):
    _, h = org
    key = _create(client, h)["key"]

    def no_lookup(*a, **kw):
        raise AssertionError("looked up")

    monkeypatch.setattr(api_keys, "lookup", no_lookup)
    for bad in ("saas_pat_x", key[:-1] + ("A" if key[-1] != "A" else "B"), key + "0"):
        body = assert_problem(client.get("/api/v1/contacts", headers=bearer(bad)), 401)
        assert "API key" in body["detail"]
    monkeypatch.undo()
    # a well-formed key nobody issued (its checksum right): one lookup, 401, nothing written
    forged = api_keys.generate(uuid.UUID(org[0]["tenant"]["id"]))
    assert (
        "Unknown API key"
        in assert_problem(client.get("/api/v1/contacts", headers=bearer(forged)), 401)["detail"]
    )


def test_a_forged_key_for_an_unknown_tenant_leaves_nothing_in_redis(client, redis_client):
    stranger = uuid.uuid4()
    before = set(redis_client.keys(f"*{stranger}*"))
    r = client.get("/api/v1/contacts", headers=bearer(api_keys.generate(stranger)))
    assert_problem(r, 401)
    assert set(redis_client.keys(f"*{stranger}*")) == before == set()


def test_escalation_attempts_are_refused_and_change_nothing(app, client, db_session, org):
    body, h = org
    tid = body["tenant"]["id"]
    member = add_member(app, tid, "member")
    fresh = _fresh(app, str(member.id), tid, "member")
    mh = bearer(fresh)
    before_rows, before_events = _count(db_session), len(_events(client, h, "api_key.created"))
    problem = assert_problem(
        client.post(
            "/api/v1/api-keys",
            json={
                "name": "x",
                "permissions": ["contacts:read", "members:manage", "billing:manage"],
                "expires_at": _in(),
            },
            headers=mh,
        ),
        403,
        "permission_denied",
    )
    assert problem["permissions"] == ["billing:manage", "members:manage"]
    # unknown permissions, a past or too distant expiry, a naive time: 422 on the field
    for payload, field in (
        ({"permissions": ["contacts:read", "root:all"]}, "permissions"),
        ({"permissions": []}, "permissions"),
        ({"expires_at": _in(-1)}, "expires_at"),
        ({"expires_at": _in(366)}, "expires_at"),
        ({"expires_at": _in().replace("+00:00", "")}, "expires_at"),  # naive
        ({"name": ""}, "name"),
    ):
        full = {"name": "x", "permissions": ["contacts:read"], "expires_at": _in(), **payload}
        r = client.post("/api/v1/api-keys", json=full, headers=mh)
        assert field in assert_problem(r, 422)["errors"], (payload, r.get_json())
    assert _count(db_session) == before_rows and len(_events(client, h, "api_key.created")) == before_events
    # within the member's own permissions it works
    assert _create(client, mh, ["contacts:read", "contacts:write"])["created_by"] == str(member.id)


def test_the_maximum_lifetime_is_configurable(app, client, org, monkeypatch):
    from tests.helpers import replace_services

    _, h = org
    settings = services(app).settings.with_overrides(api_key_max_days=7)
    replace_services(monkeypatch, app, settings=settings)
    r = client.post(
        "/api/v1/api-keys",
        json={"name": "x", "permissions": ["contacts:read"], "expires_at": _in(8)},
        headers=h,
    )
    assert "7 days" in assert_problem(r, 422)["errors"]["expires_at"][0]
    _create(client, h, expires_at=_in(6))


def test_the_key_follows_its_creators_current_permissions(app, client, db_session, org):
    body, h = org
    tid = uuid.UUID(body["tenant"]["id"])
    admin = add_member(app, tid, "admin")
    token = _fresh(app, str(admin.id), str(tid), "admin")
    kh = bearer(_create(client, bearer(token), ["members:read", "contacts:write", "audit:read"])["key"])
    assert client.get("/api/v1/audit-events", headers=kh).status_code == 200
    # demoted to member: audit:read goes from the key at once, contacts and members stay
    r = client.patch(f"/api/v1/members/{admin.id}", json={"role": "member"}, headers=h)
    assert r.status_code == 200, r.get_json()
    assert_problem(client.get("/api/v1/audit-events", headers=kh), 403, "permission_denied")
    assert client.get("/api/v1/members", headers=kh).status_code == 200
    # a locked account's key stops
    db_session.execute(update(User).where(User.id == admin.id).values(status="locked"))
    db_session.commit()
    from saas.cache import invalidate_tenant

    invalidate_tenant([tid])  # a Core UPDATE: the ORM hooks do not see it
    assert_problem(client.get("/api/v1/members", headers=kh), 401)
    db_session.execute(update(User).where(User.id == admin.id).values(status="active"))
    db_session.commit()
    invalidate_tenant([tid])
    assert client.get("/api/v1/members", headers=kh).status_code == 200
    # removed from the tenant: the key stops
    assert client.delete(f"/api/v1/members/{admin.id}", headers=h).status_code == 204
    assert_problem(client.get("/api/v1/members", headers=kh), 401)


def test_a_custom_role_holders_key_gets_that_roles_permissions_and_follows_its_changes(
    app, client, db_session, org
):
    from tests.helpers import give_plan

    body, h = org
    tid = uuid.UUID(body["tenant"]["id"])
    give_plan(db_session, tid, "enterprise")
    db_session.commit()
    role = client.post(
        "/api/v1/roles", json={"name": "auditor", "permissions": ["audit:read", "members:read"]}, headers=h
    )
    assert role.status_code == 201, role.get_json()
    auditor = add_member(app, tid, "auditor")
    token = _fresh(app, str(auditor.id), str(tid), "auditor")
    # more than the custom role holds: refused, nothing stored
    _create(client, bearer(token), ["audit:read", "contacts:write"], status=403)
    kh = bearer(_create(client, bearer(token), ["audit:read", "members:read"])["key"])
    assert client.get("/api/v1/audit-events", headers=kh).status_code == 200
    # the role loses audit:read: so does the key, at once
    role_url = f"/api/v1/roles/{role.get_json()['id']}"
    r = client.patch(role_url, json={"permissions": ["members:read"]}, headers=h)
    assert r.status_code == 200, r.get_json()
    assert_problem(client.get("/api/v1/audit-events", headers=kh), 403, "permission_denied")
    assert client.get("/api/v1/members", headers=kh).status_code == 200


def test_revoke_own_or_any_with_members_manage_and_another_tenants_is_404(app, api, client, db_session, org):
    body, h = org
    tid = body["tenant"]["id"]
    member = add_member(app, tid, "member")
    mfresh = _fresh(app, str(member.id), tid, "member")
    mh = bearer(mfresh)
    mine = _create(client, mh)
    owners = _create(client, h)
    # a member sees and revokes only their own
    assert [k["id"] for k in client.get("/api/v1/api-keys", headers=mh).get_json()] == [mine["id"]]
    assert_problem(client.get("/api/v1/api-keys?all=true", headers=mh), 403, "permission_denied")
    assert_problem(client.delete(f"/api/v1/api-keys/{owners['id']}", headers=mh), 404)
    assert client.get("/api/v1/contacts", headers=bearer(owners["key"])).status_code == 200
    # the owner (members:manage) lists all and revokes the member's
    assert {k["id"] for k in client.get("/api/v1/api-keys?all=true", headers=h).get_json()} == {
        mine["id"],
        owners["id"],
    }
    assert client.delete(f"/api/v1/api-keys/{mine['id']}", headers=h).status_code == 204
    assert client.delete(f"/api/v1/api-keys/{mine['id']}", headers=h).status_code == 204  # idempotent
    problem = assert_problem(client.get("/api/v1/contacts", headers=bearer(mine["key"])), 401)
    assert "revoked" in problem["detail"]
    assert (
        'error="invalid_token"'
        in client.get("/api/v1/contacts", headers=bearer(mine["key"])).headers["WWW-Authenticate"]
    )
    listed = {k["id"]: k for k in client.get("/api/v1/api-keys", headers=mh).get_json()}
    assert listed[mine["id"]]["status"] == "revoked" and listed[mine["id"]]["revoked_at"]
    events = _events(client, h, "api_key.revoked")
    assert len(events) == 1 and events[0]["actor"]["id"] == body["user"]["id"]
    # another tenant: its owner cannot see, revoke, or reach this tenant with its own key
    other = api.signup("keys-other")
    oh = api.auth(other)
    assert_problem(client.delete(f"/api/v1/api-keys/{owners['id']}", headers=oh), 404)
    assert owners["id"] not in str(client.get("/api/v1/api-keys?all=true", headers=oh).get_json())
    okey = _create(client, oh, ["contacts:read", "contacts:write"])["key"]
    contact = client.post("/api/v1/contacts", json={"name": "Mine"}, headers=h).get_json()
    assert_problem(client.get(f"/api/v1/contacts/{contact['id']}", headers=bearer(okey)), 404)
    assert client.get("/api/v1/contacts", headers=bearer(okey)).get_json() == []
    # a key of the other tenant re-labelled with this tenant's id (checksum recomputed): unknown
    head = okey[: 9 + 32] + api_keys._base62(uuid.UUID(tid).int, 22)
    relabelled = head + api_keys.checksum(head)
    assert (
        "Unknown" in assert_problem(client.get("/api/v1/contacts", headers=bearer(relabelled)), 401)["detail"]
    )


def test_an_expired_key_is_a_clear_401(client, org, time_machine):
    _, h = org
    expires = datetime.now(UTC) + timedelta(days=2)
    key = _create(client, h, expires_at=expires.isoformat())["key"]
    assert client.get("/api/v1/contacts", headers=bearer(key)).status_code == 200
    time_machine.move_to(expires + timedelta(seconds=1), tick=False)
    r = client.get("/api/v1/contacts", headers=bearer(key))
    problem = assert_problem(r, 401)
    assert "expired at" in problem["detail"] and 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_last_used_at_is_written_at_most_once_a_minute(client, db_session, org, redis_client):
    _, h = org
    created = _create(client, h)
    kh = bearer(created["key"])
    key_id = uuid.UUID(created["id"])
    assert client.get("/api/v1/contacts", headers=kh).status_code == 200
    first = db_session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))
    assert first is not None
    statements = []
    from sqlalchemy import event

    engine = services(client.application).database.engine

    def count(conn, cursor, statement, *a):
        if "UPDATE saas.api_keys" in statement:
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(5):
            assert client.get("/api/v1/contacts", headers=kh).status_code == 200
        assert statements == []
        # another process (its own memo) within the minute: the Redis guard says no
        api_keys._TOUCHES.clear()
        assert client.get("/api/v1/contacts", headers=kh).status_code == 200
        assert statements == []
        # the next minute (the guard expired): one write
        api_keys._TOUCHES.clear()
        from saas.cache.namespace import TenantKeys

        redis_client.delete(TenantKeys(uuid.UUID(org[0]["tenant"]["id"])).api_key_used(str(key_id)))
        assert client.get("/api/v1/contacts", headers=kh).status_code == 200
        assert len(statements) == 1
    finally:
        event.remove(engine, "before_cursor_execute", count)
    listed = client.get("/api/v1/api-keys", headers=h).get_json()
    assert listed[0]["last_used_at"] is not None


def test_a_key_passes_no_step_up_and_manages_no_keys(client, org):
    _, h = org
    created = _create(client, h, ["members:manage", "members:read", "tenant:manage"])
    kh = bearer(created["key"])
    r = client.post(
        "/api/v1/api-keys",
        json={"name": "child", "permissions": ["members:read"], "expires_at": _in()},
        headers=kh,
    )
    assert_problem(r, 403, "api_key_forbidden")
    assert_problem(client.delete(f"/api/v1/api-keys/{created['id']}", headers=kh), 403, "api_key_forbidden")
    # a step-up action of its permissions (a settings change) is refused too
    r = client.patch("/api/v1/tenant", json={"settings": {"require_mfa": True}}, headers=kh)
    assert_problem(r, 403, "api_key_forbidden")
    # and an account change that asks for the password instead of a step-up
    r = client.put(
        "/api/v1/me/password", json={"current_password": "x", "new_password": "y" * 20}, headers=kh
    )
    assert_problem(r, 403, "api_key_forbidden")
    # nor the creator's personal data in every tenant (GDPR export: the person's own token only)
    assert_problem(client.get("/api/v1/me/export", headers=kh), 403, "api_key_forbidden")
    assert client.get("/api/v1/contacts", headers=h).status_code == 200


def test_impersonation_creates_and_revokes_no_keys(app, client, db_session, org):
    body, h = org
    tid = body["tenant"]["id"]
    created = _create(client, h)
    issued = impersonation.start(
        ActionContext.for_operator(db_session, Actor("operator", "ops-bob")),
        services(app).tokens,
        user=db_session.get(User, uuid.UUID(body["user"]["id"])),
        tenant=db_session.get(Tenant, uuid.UUID(tid)),
        reason="ticket 1",
        minutes=10,
    )
    db_session.commit()
    ih = bearer(issued.token)
    r = client.post(
        "/api/v1/api-keys",
        json={"name": "x", "permissions": ["contacts:read"], "expires_at": _in()},
        headers=ih,
    )
    assert_problem(r, 403, "impersonation_forbidden")
    assert_problem(
        client.delete(f"/api/v1/api-keys/{created['id']}", headers=ih), 403, "impersonation_forbidden"
    )
    assert client.get("/api/v1/contacts", headers=bearer(created["key"])).status_code == 200
    assert _count(db_session) == 1


def test_creating_needs_a_step_up_and_a_verified_email(app, api, client, db_session):
    body = api.signup("keys-unverified", verified=False)
    asked = {"name": "x", "permissions": ["contacts:read"], "expires_at": _in()}
    assert_problem(
        client.post("/api/v1/api-keys", json=asked, headers=api.auth(body)), 403, "email_unverified"
    )
    owner = api.signup("keys-stale")
    stale = _fresh(app, owner["user"]["id"], owner["tenant"]["id"], "owner", age=3600)  # a login an hour old
    r = client.post("/api/v1/api-keys", json=asked, headers=bearer(stale))
    assert_problem(r, 401, "insufficient_user_authentication")
    assert _count(db_session) == 0


def test_a_key_works_in_a_tenant_that_requires_mfa(client, db_session, org):
    body, h = org
    key = _create(client, h)["key"]
    tenant = db_session.get(Tenant, uuid.UUID(body["tenant"]["id"]))
    tenant.settings = {**(tenant.settings or {}), "require_mfa": True}
    db_session.commit()
    assert_problem(client.get("/api/v1/contacts", headers=h), 401, "mfa_required")  # the password token
    assert client.get("/api/v1/contacts", headers=bearer(key)).status_code == 200


def test_members_of_a_key_tenant_are_scoped(client, db_session, org):
    """The key's membership lookup is the creator's in the key's tenant only."""
    body, h = org
    key = _create(client, h, ["members:read"])["key"]
    db_session.execute(
        update(Membership)
        .where(Membership.user_id == uuid.UUID(body["user"]["id"]))
        .values(status="suspended")
    )
    db_session.commit()
    from saas.cache import invalidate_tenant

    invalidate_tenant([uuid.UUID(body["tenant"]["id"])])
    assert_problem(client.get("/api/v1/members", headers=bearer(key)), 401)


def test_a_warm_key_request_sends_the_sql_and_redis_calls_of_a_jwt_request(app, client, org, monkeypatch):
    """The hot path: with the caches warm, a key's request runs the same SQL statements and as
    many Redis calls as the same request with a JWT (its one cached lookup is served in process;
    its revocation marker replaces the session's in the same call)."""
    from sqlalchemy import event

    _, h = org
    kh = bearer(_create(client, h)["key"])
    # entries stay fresh in process for the test (CACHE_LOCAL_TTL is 0.5 s: a slow machine would
    # refresh between the warm-up and the measure, the key's two entries against the JWT's one)
    monkeypatch.setattr(services(app).cache.local, "ttl", 3600.0)
    guard = services(app).redis_guard
    real_call = guard.call

    def measure(headers) -> tuple[list[str], list[str]]:
        # warm: the first request may miss and fill Redis (a miss is not copied in process); the
        # second reads Redis and fills the in-process layer
        for _ in range(2):
            assert client.get("/api/v1/contacts", headers=headers).status_code == 200
        sql: list[str] = []
        redis_calls: list[str] = []

        def on_sql(conn, cursor, statement, *a):
            if "SAVEPOINT" not in statement:  # the test transaction's, numbered
                sql.append(statement)

        def counting(component, func, key=None):
            redis_calls.append(component)
            return real_call(component, func, key=key)

        engine = services(app).database.engine
        event.listen(engine, "before_cursor_execute", on_sql)
        monkeypatch.setattr(guard, "call", counting)
        try:
            assert client.get("/api/v1/contacts", headers=headers).status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", on_sql)
            monkeypatch.setattr(guard, "call", real_call)
        return sql, redis_calls

    jwt_sql, jwt_redis = measure(h)
    key_sql, key_redis = measure(kh)
    assert key_sql == jwt_sql and key_sql and not any("api_keys" in s for s in key_sql)
    assert len(key_redis) == len(jwt_redis), (key_redis, jwt_redis)
