"""Custom roles (docs/auth.md, "Custom roles"): ``/api/v1/roles`` and ``/api/v1/permissions``,
the read-only built-in roles, the no-escalation rule, deleting a role in use, tenant isolation,
the plan feature ``custom_roles``, step-up and verified email, and the cached principal (a
change reaches an existing token at once, with no extra SQL on the hot path)."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import event, func, select

from saas.errors import AppError
from saas.identity.models import CustomRole, Membership, SsoConnection
from saas.rbac import PERMISSIONS, ROLES
from saas.scim.models import ScimSettings
from saas.services import services
from saas.tenancy import roles as roles_service
from tests.helpers import add_member, assert_problem, bearer, give_plan, role_headers, token_for

AGENT = {"name": "support-agent", "permissions": ["contacts:read", "members:read"], "description": "Helps"}


def _tenant(api, db_session, slug: str, plan: str | None = "enterprise") -> tuple[dict, dict]:
    body = api.signup(slug)
    if plan:
        give_plan(db_session, body["tenant"]["id"], plan)
    return body, api.auth(body)


def _create(client, h, **body) -> dict:
    r = client.post("/api/v1/roles", json={**AGENT, **body}, headers=h)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def _actions(client, h, action: str) -> list[dict]:
    r = client.get(f"/api/v1/audit-events?action={action}", headers=h)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _downgrade(app, db_session, tenant_id) -> None:
    """The tenant's plan becomes ``free`` (no ``custom_roles``), as ``saas tenants set-plan`` does."""
    from saas.billing import entitlements
    from saas.billing.models import BillingOverride
    from saas.identity.models import Tenant

    tid = uuid.UUID(str(tenant_id))
    db_session.get(BillingOverride, tid).plan = "free"
    db_session.get(Tenant, tid).plan = "free"
    db_session.flush()
    entitlements.invalidate(db_session, tid, redis=services(app).redis)


def _stale(app, tenant_id, user_id, role="owner") -> dict:
    """A valid token whose sign-in is an hour old: no step-up."""
    issued = services(app).tokens.issue(
        subject=str(user_id), tenant_id=str(tenant_id), roles=[role], scope="api", client_id="saas-api",
        auth_time=int(time.time()) - 3600,
    )  # fmt: skip
    return bearer(issued.token)


def _custom_member(app, tenant_id, role: str) -> tuple[object, dict]:
    user = add_member(app, tenant_id, role)
    return user, bearer(token_for(app, user.id, tenant_id, role))


def _role_names(db_session, tenant_id) -> list[str]:
    return list(
        db_session.scalars(
            select(CustomRole.name)
            .where(CustomRole.tenant_id == uuid.UUID(str(tenant_id)))
            .order_by(CustomRole.name)
        )
    )


def _role_of(db_session, tenant_id, user_id) -> str:
    db_session.expire_all()
    return db_session.scalar(
        select(Membership.role).where(
            Membership.tenant_id == uuid.UUID(str(tenant_id)), Membership.user_id == uuid.UUID(str(user_id))
        )
    )


# --- reading: the built-in roles and the registry, on any plan --------------------------------


def test_listing_shows_the_builtin_roles_read_only_and_the_registry(app, client, api, db_session):
    owner, _h = _tenant(api, db_session, "cr-list", plan=None)  # free: no custom_roles, still readable
    _, viewer = role_headers(app, owner["tenant"]["id"], "viewer")
    listed = client.get("/api/v1/roles", headers=viewer)
    assert listed.status_code == 200, listed.get_json()
    body = listed.get_json()
    assert [r["name"] for r in body] == ["owner", "admin", "member", "viewer"]
    assert all(r["builtin"] for r in body)
    assert {r["name"]: set(r["permissions"]) for r in body} == {n: set(p) for n, p in ROLES.items()}
    assert {r["name"]: r["members"] for r in body} == {"owner": 1, "admin": 0, "member": 0, "viewer": 1}
    # a built-in role's id is fixed: readable like any role
    one = client.get(f"/api/v1/roles/{body[1]['id']}", headers=viewer).get_json()
    assert one["name"] == "admin" and one["builtin"] is True
    registry = client.get("/api/v1/permissions", headers=viewer).get_json()
    assert {p["name"]: p["description"] for p in registry} == PERMISSIONS
    assert (
        "roles:manage" in PERMISSIONS
        and "roles:manage" in ROLES["admin"]
        and "roles:manage" in ROLES["owner"]
    )
    assert "roles:manage" not in ROLES["member"]


# --- create, read, update, delete --------------------------------------------------------------


def test_crud_with_audit_and_assignment(app, client, api, db_session):
    owner, h = _tenant(api, db_session, "cr-crud")
    tid = owner["tenant"]["id"]
    role = _create(client, h, permissions=["members:read", "contacts:read", "contacts:read"])
    assert role["name"] == "support-agent" and role["builtin"] is False and role["members"] == 0
    assert role["permissions"] == ["contacts:read", "members:read"]  # deduplicated, sorted
    assert client.get(f"/api/v1/roles/{role['id']}", headers=h).get_json() == role
    assert [r["name"] for r in client.get("/api/v1/roles", headers=h).get_json()][-1] == "support-agent"

    # assign it: the member's permissions are the role's, from the database
    user = add_member(app, tid, "viewer")
    r = client.patch(f"/api/v1/members/{user.id}", json={"role": "support-agent"}, headers=h)
    assert r.status_code == 200, r.get_json()
    member_h = bearer(token_for(app, user.id, tid, "viewer"))
    me = client.get("/api/v1/me", headers=member_h).get_json()
    assert me["role"] == "support-agent" and set(me["permissions"]) == {"contacts:read", "members:read"}
    assert client.get("/api/v1/contacts", headers=member_h).status_code == 200
    assert_problem(client.get("/api/v1/tenant", headers=member_h), 403, "permission_denied")

    # change it: permissions, description and name (carried to the member)
    r = client.patch(
        f"/api/v1/roles/{role['id']}",
        json={"permissions": ["contacts:read", "tenant:read"], "description": "Reads", "name": "reader"},
        headers=h,
    )
    assert r.status_code == 200, r.get_json()
    changed = r.get_json()
    assert changed["name"] == "reader" and changed["permissions"] == ["contacts:read", "tenant:read"]
    assert changed["members"] == 1 and changed["description"] == "Reads"
    assert _role_of(db_session, tid, user.id) == "reader"
    assert client.get("/api/v1/tenant", headers=member_h).status_code == 200
    assert_problem(client.get("/api/v1/members", headers=member_h), 403, "permission_denied")

    created = _actions(client, h, "role.created")
    assert [e["data"]["name"] for e in created] == ["support-agent"]
    assert created[0]["target"] == {"type": "role", "id": role["id"]}
    updated = _actions(client, h, "role.updated")[0]["data"]
    assert updated["changes"]["permissions"]["added"] == ["tenant:read"]
    assert updated["changes"]["permissions"]["removed"] == ["members:read"]
    assert updated["changes"]["name"] == {"from": "support-agent", "to": "reader"}

    # delete it, moving its member
    r = client.delete(f"/api/v1/roles/{role['id']}?replacement=viewer", headers=h)
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"id": role["id"], "name": "reader", "replacement": "viewer", "members_moved": 1}
    assert _role_of(db_session, tid, user.id) == "viewer"
    assert _role_names(db_session, tid) == []
    assert client.get(f"/api/v1/roles/{role['id']}", headers=h).status_code == 404
    deleted = _actions(client, h, "role.deleted")[0]["data"]
    assert deleted == {"name": "reader", "replacement": "viewer", "members_moved": 1}


def test_builtin_roles_are_read_only_and_bad_input_is_422(app, client, api, db_session):
    owner, h = _tenant(api, db_session, "cr-ro")
    builtin = {r["name"]: r["id"] for r in client.get("/api/v1/roles", headers=h).get_json()}
    for name, rid in builtin.items():
        body = assert_problem(client.patch(f"/api/v1/roles/{rid}", json={"description": "x"}, headers=h), 403)
        assert body["code"] == "role_read_only" and body["role"] == name
        assert_problem(
            client.delete(f"/api/v1/roles/{rid}?replacement=viewer", headers=h), 403, "role_read_only"
        )
        r = client.post("/api/v1/roles", json={**AGENT, "name": name}, headers=h)
        assert "name" in assert_problem(r, 422, "validation_error")["errors"]
    for bad in ["A", "x", "Support", "support_agent", "-agent", "agent-", "a--b", "9lives", "a" * 33, "  "]:
        r = client.post("/api/v1/roles", json={**AGENT, "name": bad}, headers=h)
        assert "name" in assert_problem(r, 422)["errors"], bad
    r = client.post(
        "/api/v1/roles", json={**AGENT, "permissions": ["contacts:read", "root:everything"]}, headers=h
    )
    assert "root:everything" in assert_problem(r, 422)["errors"]["permissions"][0]
    assert_problem(client.post("/api/v1/roles", json={**AGENT, "description": "d" * 501}, headers=h), 422)
    assert_problem(client.post("/api/v1/roles", json={"name": "x-y"}, headers=h), 422)  # no permissions
    role = _create(client, h)
    assert_problem(client.post("/api/v1/roles", json=AGENT, headers=h), 409, "role_name_taken")
    other = _create(client, h, name="other-role")
    r = client.patch(f"/api/v1/roles/{other['id']}", json={"name": "support-agent"}, headers=h)
    assert_problem(r, 409, "role_name_taken")
    r = client.patch(f"/api/v1/roles/{other['id']}", json={"name": "admin"}, headers=h)
    assert_problem(r, 422)
    assert _role_names(db_session, owner["tenant"]["id"]) == ["other-role", "support-agent"]
    assert client.get(f"/api/v1/roles/{role['id']}", headers=h).get_json()["name"] == "support-agent"
    # assigning a role the tenant does not have is 422, as before
    user = add_member(app, owner["tenant"]["id"], "viewer")
    r = client.patch(f"/api/v1/members/{user.id}", json={"role": "no-such-role"}, headers=h)
    assert "role" in assert_problem(r, 422)["errors"]


# --- no escalation -------------------------------------------------------------------------------


def test_nobody_creates_or_changes_a_role_with_a_permission_they_lack(app, client, api, db_session):
    owner, h = _tenant(api, db_session, "cr-esc")
    tid = owner["tenant"]["id"]
    _, admin = role_headers(app, tid, "admin")
    r = client.post(
        "/api/v1/roles", json={**AGENT, "permissions": ["contacts:read", "billing:manage"]}, headers=admin
    )
    body = assert_problem(r, 403, "permission_not_held")
    assert body["missing"] == ["billing:manage"]
    assert _role_names(db_session, tid) == []
    # the owner makes one with billing:manage: the admin can neither change nor delete it
    billing = _create(client, h, name="billing-clerk", permissions=["billing:manage", "tenant:read"])
    r = client.patch(f"/api/v1/roles/{billing['id']}", json={"permissions": ["tenant:read"]}, headers=admin)
    assert_problem(r, 403, "permission_not_held")
    assert_problem(client.delete(f"/api/v1/roles/{billing['id']}", headers=admin), 403, "permission_not_held")
    # nor add a permission it lacks to a role it can edit
    agent = _create(client, h)
    r = client.patch(f"/api/v1/roles/{agent['id']}", json={"permissions": ["billing:manage"]}, headers=admin)
    assert_problem(r, 403, "permission_not_held")
    db_session.expire_all()
    assert db_session.get(CustomRole, uuid.UUID(billing["id"])).permissions == [
        "billing:manage",
        "tenant:read",
    ]
    assert db_session.get(CustomRole, uuid.UUID(agent["id"])).permissions == ["contacts:read", "members:read"]
    assert len(_actions(client, h, "role.updated")) == 0
    # and the admin cannot give the billing role to anyone
    r = client.post(
        "/api/v1/members", json={"email": "x@cr-esc.test", "role": "billing-clerk"}, headers=admin
    )
    assert assert_problem(r, 403, "role_not_assignable")["missing"] == ["billing:manage"]


def test_a_custom_role_holder_assigns_only_roles_within_its_permissions(app, client, api, db_session):
    owner, h = _tenant(api, db_session, "cr-assign")
    tid = owner["tenant"]["id"]
    _create(
        client,
        h,
        name="people-lead",
        permissions=["members:read", "members:manage", "contacts:read", "tenant:read"],
    )
    _create(client, h, name="reader", permissions=["contacts:read"])
    _create(client, h, name="writer", permissions=["contacts:read", "contacts:write"])
    _lead, lead_h = _custom_member(app, tid, "people-lead")
    viewer = add_member(app, tid, "viewer")
    admin = add_member(app, tid, "admin")
    before = db_session.scalar(
        select(func.count()).select_from(Membership).where(Membership.tenant_id == uuid.UUID(tid))
    )
    for role in ("writer", "member", "admin", "owner"):  # each holds a permission the lead lacks
        r = client.post(
            "/api/v1/members", json={"email": f"{role}@cr-assign.test", "role": role}, headers=lead_h
        )
        assert_problem(r, 403, "role_not_assignable")
        r = client.patch(f"/api/v1/members/{viewer.id}", json={"role": role}, headers=lead_h)
        assert_problem(r, 403, "role_not_assignable")
    # nor act on a member above it
    assert_problem(client.patch(f"/api/v1/members/{admin.id}", json={"role": "reader"}, headers=lead_h), 403)
    assert_problem(client.delete(f"/api/v1/members/{admin.id}", headers=lead_h), 403, "role_not_assignable")
    after = db_session.scalar(
        select(func.count()).select_from(Membership).where(Membership.tenant_id == uuid.UUID(tid))
    )
    assert after == before
    assert _role_of(db_session, tid, viewer.id) == "viewer" and _role_of(db_session, tid, admin.id) == "admin"
    # within its permissions: allowed
    r = client.post("/api/v1/members", json={"email": "new@cr-assign.test", "role": "reader"}, headers=lead_h)
    assert r.status_code == 201, r.get_json()
    r = client.patch(f"/api/v1/members/{viewer.id}", json={"role": "reader"}, headers=lead_h)
    assert r.status_code == 200, r.get_json()
    assert client.delete(f"/api/v1/members/{viewer.id}", headers=lead_h).status_code == 204
    # the built-in order stands: an admin gives a custom role without a permission it lacks
    _, admin_h = role_headers(app, tid, "admin")
    r = client.post("/api/v1/members", json={"email": "w@cr-assign.test", "role": "writer"}, headers=admin_h)
    assert r.status_code == 201, r.get_json()


# --- delete: in use, replacement ------------------------------------------------------------------


def test_a_role_in_use_is_deleted_only_with_a_replacement(app, client, api, db_session):
    owner, h = _tenant(api, db_session, "cr-del")
    tid = owner["tenant"]["id"]
    role = _create(client, h)
    holder = add_member(app, tid, "support-agent")
    r = client.post("/api/v1/members", json={"email": "inv@cr-del.test", "role": "support-agent"}, headers=h)
    assert r.status_code == 201, r.get_json()
    r = client.delete(f"/api/v1/roles/{role['id']}", headers=h)
    assert assert_problem(r, 409, "role_in_use")["members"] == 2
    r = client.delete(f"/api/v1/roles/{role['id']}?replacement=no-such", headers=h)
    assert "replacement" in assert_problem(r, 422)["errors"]
    r = client.delete(f"/api/v1/roles/{role['id']}?replacement=support-agent", headers=h)
    assert "replacement" in assert_problem(r, 422)["errors"]
    _, admin = role_headers(app, tid, "admin")
    assert_problem(
        client.delete(f"/api/v1/roles/{role['id']}?replacement=owner", headers=admin),
        403,
        "role_not_assignable",
    )
    assert _role_names(db_session, tid) == ["support-agent"]
    assert _role_of(db_session, tid, holder.id) == "support-agent"
    assert _actions(client, h, "role.deleted") == []
    # moved to another custom role, invited member included, in one transaction
    reader = _create(client, h, name="reader", permissions=["contacts:read"])
    r = client.delete(f"/api/v1/roles/{role['id']}?replacement=reader", headers=admin)
    assert r.status_code == 200 and r.get_json()["members_moved"] == 2, r.get_json()
    assert _role_of(db_session, tid, holder.id) == "reader"
    moved = db_session.scalar(
        select(func.count()).where(Membership.tenant_id == uuid.UUID(tid), Membership.role == "reader")
    )
    assert moved == 2
    # an unused role needs no replacement
    assert (
        client.delete(f"/api/v1/roles/{_create(client, h, name='spare')['id']}", headers=h).status_code == 200
    )
    assert reader["id"] in {x["id"] for x in client.get("/api/v1/roles", headers=h).get_json()}


def test_directory_mappings_follow_a_rename_and_block_a_bare_delete(app, client, api, db_session):
    owner, h = _tenant(api, db_session, "cr-sso")
    tid = uuid.UUID(owner["tenant"]["id"])
    role = _create(client, h)
    connection = SsoConnection(
        tenant_id=tid, type="oidc", name="corp", domains=[], default_role="support-agent",
        role_mapping={"helpdesk": "support-agent", "eng": "admin"}, config={},
    )  # fmt: skip
    db_session.add(connection)
    db_session.commit()
    db_session.add(ScimSettings(tenant_id=tid, group_roles={"Support": "support-agent"}))
    db_session.commit()
    r = client.patch(f"/api/v1/roles/{role['id']}", json={"name": "helper"}, headers=h)
    assert r.status_code == 200, r.get_json()
    db_session.expire_all()
    assert db_session.get(ScimSettings, tid).group_roles == {"Support": "helper"}
    assert connection.default_role == "helper"
    assert connection.role_mapping == {"helpdesk": "helper", "eng": "admin"}
    # no member holds it, but a connection names it: a replacement is needed
    problem = assert_problem(client.delete(f"/api/v1/roles/{role['id']}", headers=h), 409, "role_in_use")
    assert problem["referenced_by"] == [f"sso connection {connection.id}", "scim settings"]
    assert _role_names(db_session, str(tid)) == ["helper"]
    r = client.delete(f"/api/v1/roles/{role['id']}?replacement=viewer", headers=h)
    assert r.status_code == 200, r.get_json()
    db_session.expire_all()
    assert connection.default_role == "viewer"
    assert connection.role_mapping == {"helpdesk": "viewer", "eng": "admin"}
    assert db_session.get(ScimSettings, tid).group_roles == {"Support": "viewer"}


# --- isolation ------------------------------------------------------------------------------------


def test_another_tenants_role_is_a_404_and_cannot_be_assigned(app, client, api, db_session):
    _a, ha = _tenant(api, db_session, "cr-iso-a")
    b, hb = _tenant(api, db_session, "cr-iso-b")
    role = _create(client, ha, name="secret-role")
    for method, kw in (("GET", {}), ("PATCH", {"json": {"description": "mine"}}), ("DELETE", {})):
        r = client.open(f"/api/v1/roles/{role['id']}", method=method, headers=hb, **kw)
        assert_problem(r, 404)
    assert "secret-role" not in {x["name"] for x in client.get("/api/v1/roles", headers=hb).get_json()}
    r = client.post("/api/v1/members", json={"email": "x@cr-iso-b.test", "role": "secret-role"}, headers=hb)
    assert_problem(r, 422)
    assert (
        client.get(f"/api/v1/roles/{role['id']}", headers=ha).get_json()["description"]
        == AGENT["description"]
    )
    # a member of B whose role string names A's role gets nothing from it
    user = add_member(app, b["tenant"]["id"], "secret-role")
    me = client.get(
        "/api/v1/me", headers=bearer(token_for(app, user.id, b["tenant"]["id"], "owner"))
    ).get_json()
    assert me["permissions"] == []


# --- the plan --------------------------------------------------------------------------------------


def test_a_plan_without_custom_roles_is_402_and_existing_roles_keep_working(app, client, api, db_session):
    free, hf = _tenant(api, db_session, "cr-free", plan=None)
    r = client.post("/api/v1/roles", json=AGENT, headers=hf)
    body = assert_problem(r, 402, "entitlement_required")
    assert body["feature"] == "custom_roles" and body["plan"] == "pro"
    assert_problem(
        client.patch(f"/api/v1/roles/{uuid.uuid4()}", json={}, headers=hf), 402, "entitlement_required"
    )
    assert _role_names(db_session, free["tenant"]["id"]) == []

    # a tenant that had it, then lost it
    owner, h = _tenant(api, db_session, "cr-down")
    tid = owner["tenant"]["id"]
    role = _create(client, h)
    holder, holder_h = _custom_member(app, tid, "support-agent")
    viewer = add_member(app, tid, "viewer")
    roles_service.check_role_exists(db_session, uuid.UUID(tid), "support-agent")  # SSO, SCIM may give it
    with pytest.raises(AppError) as err:
        roles_service.check_role_exists(db_session, uuid.UUID(tid), "no-such-role")
    assert err.value.status == 422
    _downgrade(app, db_session, tid)
    assert client.get("/api/v1/contacts", headers=holder_h).status_code == 200  # still works
    assert "support-agent" in {x["name"] for x in client.get("/api/v1/roles", headers=h).get_json()}
    r = client.patch(f"/api/v1/members/{viewer.id}", json={"role": "support-agent"}, headers=h)
    assert_problem(r, 402, "entitlement_required")
    r = client.post("/api/v1/members", json={"email": "n@cr-down.test", "role": "support-agent"}, headers=h)
    assert_problem(r, 402, "entitlement_required")
    assert_problem(client.patch(f"/api/v1/roles/{role['id']}", json={"description": "x"}, headers=h), 402)
    assert _role_of(db_session, tid, viewer.id) == "viewer"
    # ... and the directory cannot give it either
    with pytest.raises(AppError) as err:
        roles_service.check_role_exists(db_session, uuid.UUID(tid), "support-agent")
    assert err.value.status == 402
    # deleting it (moving its members to a built-in role) still works
    r = client.delete(f"/api/v1/roles/{role['id']}?replacement=member", headers=h)
    assert r.status_code == 200 and r.get_json()["members_moved"] == 1, r.get_json()
    assert _role_of(db_session, tid, holder.id) == "member"


# --- step-up and verified email ---------------------------------------------------------------------


def test_changing_permissions_or_deleting_needs_a_step_up_and_a_verified_email(app, client, api, db_session):
    owner, h = _tenant(api, db_session, "cr-step")
    tid, uid = owner["tenant"]["id"], owner["user"]["id"]
    role = _create(client, h)
    stale = _stale(app, tid, uid)
    r = client.patch(f"/api/v1/roles/{role['id']}", json={"permissions": ["contacts:read"]}, headers=stale)
    assert_problem(r, 401, "insufficient_user_authentication")
    assert_problem(
        client.delete(f"/api/v1/roles/{role['id']}", headers=stale), 401, "insufficient_user_authentication"
    )
    # a new description (or the same permissions) changes nobody's access: no step-up
    r = client.patch(
        f"/api/v1/roles/{role['id']}",
        json={"description": "New", "permissions": AGENT["permissions"]},
        headers=stale,
    )
    assert r.status_code == 200, r.get_json()
    db_session.expire_all()
    assert db_session.get(CustomRole, uuid.UUID(role["id"])).permissions == ["contacts:read", "members:read"]
    # an unverified admin: 403 email_unverified
    user = add_member(app, tid, "admin", verified=False)
    unverified = bearer(token_for(app, user.id, tid, "admin"))
    assert_problem(
        client.post("/api/v1/roles", json={**AGENT, "name": "x-y"}, headers=unverified),
        403,
        "email_unverified",
    )
    assert_problem(client.delete(f"/api/v1/roles/{role['id']}", headers=unverified), 403, "email_unverified")
    # granting a custom role that manages members is a step-up action, like granting admin
    _create(client, h, name="people-lead", permissions=["members:read", "members:manage"])
    viewer = add_member(app, tid, "viewer")
    r = client.patch(f"/api/v1/members/{viewer.id}", json={"role": "people-lead"}, headers=stale)
    assert_problem(r, 401, "insufficient_user_authentication")
    r = client.patch(f"/api/v1/members/{viewer.id}", json={"role": "support-agent"}, headers=stale)
    assert r.status_code == 200, r.get_json()


# --- the cached principal ------------------------------------------------------------------------------


def test_a_permission_removed_stops_an_existing_token_at_once(app, client, api, db_session):
    owner, h = _tenant(api, db_session, "cr-cache")
    role = _create(client, h)
    _, holder_h = _custom_member(app, owner["tenant"]["id"], "support-agent")
    assert client.get("/api/v1/contacts", headers=holder_h).status_code == 200
    assert client.get("/api/v1/contacts", headers=holder_h).status_code == 200  # served from the cache
    r = client.patch(f"/api/v1/roles/{role['id']}", json={"permissions": ["members:read"]}, headers=h)
    assert r.status_code == 200, r.get_json()
    assert_problem(client.get("/api/v1/contacts", headers=holder_h), 403, "permission_denied")
    r = client.patch(f"/api/v1/roles/{role['id']}", json={"permissions": ["contacts:read"]}, headers=h)
    assert client.get("/api/v1/contacts", headers=holder_h).status_code == 200


def test_custom_roles_cost_the_hot_path_no_extra_sql(app, client, api, db_session, engine):
    owner, h = _tenant(api, db_session, "cr-hot")
    _create(client, h)
    _, holder_h = _custom_member(app, owner["tenant"]["id"], "support-agent")
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert client.get("/api/v1/permissions", headers=holder_h).status_code == 200  # a miss
        miss = list(statements)
        statements.clear()
        assert client.get("/api/v1/permissions", headers=holder_h).status_code == 200  # a hit
        hit = list(statements)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    with_roles = [s for s in miss if "custom_roles" in s]
    assert len(with_roles) == 1 and "memberships" in with_roles[0]  # joined into the one query
    assert hit == []


# --- a delete racing an assignment ----------------------------------------------------------------


def test_a_delete_waits_for_a_concurrent_assignment_and_moves_its_member_too(app, engine):
    """Committed, on two connections: an assignment holds the role ``FOR SHARE`` until it commits,
    so a delete of the role waits for it, then moves the new holder with the others; no member
    is left holding a deleted role."""
    import threading

    from saas.actions import ActionContext
    from saas.audit import Actor, RequestMeta
    from saas.auth.context import Principal
    from saas.db import Database
    from saas.identity.models import Tenant, User
    from saas.tenancy import provisioning
    from tests.helpers import drop_tenant
    from tests.test_provisioning import _wait_for_lock_waiter

    db = Database(engine)
    with app.app_context(), db.transaction() as session:
        done = provisioning.provision_tenant(
            session, services(app).passwords, slug="cr-race", name="Race", owner_email="o@cr-race.test",
            owner_password=None,
        )  # fmt: skip
        tid = done.tenant.id
        done.tenant.plan = "enterprise"
        role = CustomRole(tenant_id=tid, name="agent", permissions=["contacts:read"])
        user = User(email="agent@cr-race.test", name="Agent")
        session.add_all([role, user])
        session.flush()
        role_id, user_id = role.id, user.id

    def context(session):
        tenant = session.get(Tenant, tid)
        actor = Principal(
            None, tid, None, frozenset(), {}, roles=("owner",), permissions=ROLES["owner"], tenant=tenant
        )
        return ActionContext(session, Actor("operator", "test"), actor, RequestMeta.current())

    result: dict = {}

    def delete_it():
        with app.app_context(), db.transaction() as session:
            ctx = context(session)
            result["moved"] = roles_service.delete_role(ctx, session.get(CustomRole, role_id), "viewer")

    first = db.session()
    try:
        with app.app_context():
            ctx = context(first)
            roles_service.check_assignable(first, ctx.principal, "agent")  # locks the role FOR SHARE
            first.add(Membership(user_id=user_id, tenant_id=tid, role="agent", status="active"))
            first.flush()
            thread = threading.Thread(target=delete_it)
            thread.start()
            _wait_for_lock_waiter(engine)  # the delete waits on the assignment
            first.commit()
            thread.join(timeout=20)
        assert not thread.is_alive()
        assert result["moved"] == 1
        with engine.connect() as conn:
            assert conn.scalar(select(Membership.role).where(Membership.user_id == user_id)) == "viewer"
            assert (
                conn.scalar(select(func.count()).select_from(CustomRole).where(CustomRole.tenant_id == tid))
                == 0
            )
    finally:
        first.close()
        drop_tenant(engine, tid)
