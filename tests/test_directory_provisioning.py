"""Directory provisioning (the base of SSO just-in-time membership and SCIM): a member added on a
directory's word takes a seat like an invitation, and deactivating one ends their access at once."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from saas.actions import ActionContext
from saas.audit import Actor
from saas.errors import AppError
from saas.identity.models import Membership, Tenant
from saas.tenancy import members
from tests.helpers import give_plan, token_for


@pytest.fixture(autouse=True)
def _app_context(app):
    """Services need an app context; the test client's requests must not share it (nor its
    ``flask.g``), so it is popped around each request (:func:`_get_me`)."""
    with app.app_context():
        yield


def _get_me(client, token):
    from flask.globals import _cv_app

    ctx = _cv_app.get()
    ctx.pop()
    try:
        return client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code
    finally:
        ctx.push()


@pytest.fixture()
def tenant(api, db_session):
    body = api.signup("dirco")
    return db_session.get(Tenant, body["tenant"]["id"])


def _ctx(db_session):
    return ActionContext.for_operator(db_session, Actor("operator", "test"))


def test_provision_creates_a_verified_member_and_deactivation_ends_access(app, client, tenant, db_session):
    got = members.provision_member(
        _ctx(db_session), tenant, email="Ada@dirco.test", name="Ada", role="member",
        source="scim", email_verified=True,
    )  # fmt: skip
    assert got.created_user and got.took_seat and got.membership.status == "active"
    assert got.user.email_verified_at is not None and got.user.password_hash is None
    # again: nothing changes, no second seat
    again = members.provision_member(
        _ctx(db_session), tenant, email="ada@dirco.test", name=None, role="admin",
        source="scim", email_verified=False,
    )  # fmt: skip
    assert again.membership.id == got.membership.id and not again.took_seat
    assert again.membership.role == "member"
    db_session.commit()
    token = token_for(app, got.user.id, tenant.id, "member")
    assert _get_me(client, token) == 200

    members.deactivate_member(_ctx(db_session), tenant.id, got.user.id, source="scim")
    db_session.commit()
    assert db_session.get(Membership, got.membership.id).status == "suspended"
    assert _get_me(client, token) == 401
    # signing in over SSO never undoes a deprovisioning; SCIM's active: true does
    with pytest.raises(AppError) as refused:
        members.provision_member(
            _ctx(db_session), tenant, email="ada@dirco.test", name=None, role="member",
            source="sso:x", email_verified=True,
        )  # fmt: skip
    assert refused.value.code == "member_suspended"
    back = members.provision_member(
        _ctx(db_session), tenant, email="ada@dirco.test", name=None, role="member",
        source="scim", email_verified=True, reactivate=True,
    )  # fmt: skip
    assert back.took_seat and back.membership.status == "active"
    actions = [e.action for e in _events(db_session, tenant)]
    assert actions.count("member.provisioned") == 2 and "member.deactivated" in actions


def test_provisioning_respects_seats_and_the_last_owner(tenant, db_session):
    give_plan(db_session, tenant.id, "free")
    owner = db_session.scalars(select(Membership).where(Membership.tenant_id == tenant.id)).one()
    with pytest.raises(AppError) as last:
        members.deactivate_member(_ctx(db_session), tenant.id, owner.user_id, source="scim")
    assert last.value.code == "last_owner"
    with pytest.raises(AppError) as bad_role:
        members.provision_member(
            _ctx(db_session), tenant, email="x@dirco.test", name=None, role="emperor",
            source="scim", email_verified=False,
        )  # fmt: skip
    assert bad_role.value.status == 422
    seats = 0
    with pytest.raises(AppError) as full:
        for i in range(50):
            members.provision_member(
                _ctx(db_session), tenant, email=f"p{i}@dirco.test", name=None, role="viewer",
                source="scim", email_verified=False,
            )  # fmt: skip
            seats += 1
    assert full.value.code == "seats_exceeded" and seats < 50


def _events(db_session, tenant):
    from sqlalchemy import text

    return [
        type("E", (), {"action": a})
        for a in db_session.execute(
            text(f'SELECT action FROM "{tenant.schema_name}".audit_events ORDER BY occurred_at')  # noqa: S608
        ).scalars()
    ]


def test_an_existing_account_is_attached_only_where_the_directory_speaks_for_it(api, tenant, db_session):
    other = api.signup("elsewhere", email="bob@elsewhere.test")
    with pytest.raises(AppError) as refused:
        members.provision_member(
            _ctx(db_session), tenant, email="bob@elsewhere.test", name=None, role="member",
            source="scim", email_verified=False,
        )  # fmt: skip
    assert refused.value.code == "account_not_linkable" and refused.value.status == 409
    assert db_session.scalar(select(Membership).where(Membership.tenant_id == tenant.id,
                             Membership.user_id == other["user"]["id"])) is None  # fmt: skip
    # a directory that speaks for the address (its verified domain) attaches it
    got = members.provision_member(
        _ctx(db_session), tenant, email="bob@elsewhere.test", name=None, role="member",
        source="sso:x", email_verified=True,
    )  # fmt: skip
    assert not got.created_user and got.membership.status == "active"


def test_the_most_powerful_role_has_the_most_permissions(tenant, db_session):
    from saas.identity.models import CustomRole

    give_plan(db_session, tenant.id, "enterprise")
    five = ["contacts:read", "members:read", "tenant:read", "contacts:write", "audit:read"]
    db_session.add(CustomRole(tenant_id=tenant.id, name="support", permissions=five))
    db_session.add(CustomRole(tenant_id=tenant.id, name="reader", permissions=["contacts:read"]))
    db_session.flush()
    pick = members.most_powerful_role
    assert pick(db_session, tenant.id, ["viewer", "support", "member"]) == "support"  # 5 permissions beat 4
    assert pick(db_session, tenant.id, ["reader", "viewer"]) == "viewer"
    assert pick(db_session, tenant.id, ["admin", "support", "owner"]) == "owner"
    assert pick(db_session, tenant.id, ["reader"]) == "reader"
