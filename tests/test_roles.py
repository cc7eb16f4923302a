"""Roles: every endpoint declares the permission it needs (deny by default), and each role is
allowed exactly the actions its permission set names. Table-driven over the app's url_map."""

from __future__ import annotations

import re
import uuid

import pytest

from saas.rbac import PERMISSIONS, ROLES, can_assign, permissions_for
from tests.helpers import assert_problem, give_plan, role_headers

#: endpoints deliberately open to anonymous callers (method, rule)
PUBLIC = {
    ("POST", "/api/v1/signup"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/invitations/accept"),
    # authenticated by a bearer token or by an mfa_token (login's second step, enrollment)
    ("POST", "/api/v1/auth/mfa"),
    ("POST", "/api/v1/me/mfa/totp"),
    ("POST", "/api/v1/me/mfa/totp/confirm"),
    # the token of a mailed link authorizes (docs/auth.md, "Password reset", "Email verification")
    ("POST", "/api/v1/auth/password/forgot"),
    ("POST", "/api/v1/auth/password/reset"),
    ("POST", "/api/v1/auth/email/verify"),
    ("POST", "/api/v1/auth/email/change"),
    # a passkey signs in (passwordless) or is the second factor of an mfa_token
    ("POST", "/api/v1/auth/webauthn/options"),
    ("POST", "/api/v1/auth/webauthn/verify"),
    ("POST", "/api/v1/auth/mfa/webauthn/options"),
    ("POST", "/api/v1/auth/mfa/webauthn/verify"),
}
_UNSET = object()


def _view_method(app, rule, method):
    view = app.view_functions[rule.endpoint]
    cls = getattr(view, "view_class", None)
    return getattr(cls, method.lower(), None) if cls is not None else view


def _api_operations(app):
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1"):
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            func = _view_method(app, rule, method)
            yield rule, method, getattr(func, "_required_permission", _UNSET)


def _concrete_path(rule) -> str:
    def sub(match):
        converter = match.group(1) or "string"
        return str(uuid.uuid4()) if converter == "uuid" else ("1" if converter == "int" else "x")

    return re.sub(r"<(?:(\w+):)?\w+>", sub, rule.rule)


def test_every_api_endpoint_declares_a_permission_or_is_public(app):
    undeclared = [
        (method, rule.rule)
        for rule, method, perm in _api_operations(app)
        if perm is _UNSET and (method, rule.rule) not in PUBLIC
    ]
    assert undeclared == []
    declared = {perm for _, _, perm in _api_operations(app) if isinstance(perm, str)}
    assert declared <= set(PERMISSIONS)
    assert {
        "contacts:read",
        "contacts:write",
        "members:read",
        "members:manage",
        "tenant:manage",
        "audit:read",
    } <= declared


@pytest.fixture()
def tenant_with_roles(api, app, db_session):
    owner = api.signup("acme")
    # the matrix invites more people than the free plan's seats: give this tenant room
    give_plan(db_session, owner["tenant"]["id"], "enterprise")
    headers = {"owner": api.auth(owner)}
    for role in ("admin", "member", "viewer"):
        headers[role] = role_headers(app, owner["tenant"]["id"], role)[1]
    return owner, headers


def test_role_matrix_over_url_map(app, client, tenant_with_roles):
    """For every declared permission and role: 403 ``permission_denied`` exactly when the role
    lacks it (the permission is checked before the body is parsed or any object looked up)."""
    _, headers = tenant_with_roles
    checked = 0
    for rule, method, perm in _api_operations(app):
        if perm is _UNSET:
            continue
        path = _concrete_path(rule)
        for role, h in headers.items():
            body = {} if method in ("POST", "PUT", "PATCH") else None
            r = client.open(path, method=method, json=body, headers=h)
            denied = r.status_code == 403 and r.get_json().get("code") == "permission_denied"
            should_deny = perm is not None and perm not in ROLES[role]
            assert denied == should_deny, (role, method, rule.rule, perm, r.status_code, r.get_json())
            if should_deny:
                assert r.get_json()["permission"] == perm
            checked += 1
        # anonymous: 401 with a Bearer challenge, never 403 or data
        r = client.open(path, method=method, json={} if method != "GET" else None)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer"), (
            method,
            rule.rule,
        )
    assert checked >= 4 * 10


EXPLICIT = [
    # (role, method, path, body, expected status)
    ("viewer", "POST", "/api/v1/contacts", {"name": "X"}, 403),
    ("viewer", "GET", "/api/v1/contacts", None, 200),
    ("member", "POST", "/api/v1/contacts", {"name": "X"}, 201),
    ("member", "POST", "/api/v1/members", {"email": "x@acme.test", "role": "viewer"}, 403),
    ("member", "GET", "/api/v1/members", None, 200),
    ("member", "GET", "/api/v1/audit-events", None, 403),
    ("member", "PATCH", "/api/v1/tenant", {"name": "New"}, 403),
    ("viewer", "GET", "/api/v1/tenant", None, 200),
    ("admin", "PATCH", "/api/v1/tenant", {"name": "New"}, 200),
    ("admin", "GET", "/api/v1/audit-events", None, 200),
    ("admin", "POST", "/api/v1/members", {"email": "x@acme.test", "role": "owner"}, 403),
    ("admin", "POST", "/api/v1/members", {"email": "x@acme.test", "role": "admin"}, 201),
    ("owner", "POST", "/api/v1/members", {"email": "x@acme.test", "role": "owner"}, 201),
]


@pytest.mark.parametrize(("role", "method", "path", "body", "status"), EXPLICIT)
def test_explicit_cases(client, tenant_with_roles, role, method, path, body, status):
    _, headers = tenant_with_roles
    r = client.open(path, method=method, json=body, headers=headers[role])
    assert r.status_code == status, r.get_json()
    if status == 403:
        assert_problem(r, 403)


def test_me_reports_role_and_permissions(client, tenant_with_roles):
    _, headers = tenant_with_roles
    for role, h in headers.items():
        me = client.get("/api/v1/me", headers=h).get_json()
        assert me["role"] == role
        assert set(me["permissions"]) == ROLES[role]


def test_role_comes_from_the_membership_not_the_token(app, client, tenant_with_roles):
    """A token claiming ``owner`` for a viewer grants only what the membership says."""
    from tests.helpers import add_member, bearer, token_for

    owner, _ = tenant_with_roles
    viewer = add_member(app, owner["tenant"]["id"], "viewer")
    lying = token_for(app, viewer.id, owner["tenant"]["id"], "owner")
    r = client.post("/api/v1/contacts", json={"name": "X"}, headers=bearer(lying))
    assert_problem(r, 403, "permission_denied")


def test_narrow_scope_limits_permissions(app, client, tenant_with_roles):
    from tests.helpers import bearer, token_for

    owner, _ = tenant_with_roles
    token = token_for(app, owner["user"]["id"], owner["tenant"]["id"], "owner", scope="contacts:read")
    h = bearer(token)
    assert client.get("/api/v1/contacts", headers=h).status_code == 200
    assert_problem(client.post("/api/v1/contacts", json={"name": "X"}, headers=h), 403, "permission_denied")


def test_rbac_tables():
    assert ROLES["owner"] == frozenset(PERMISSIONS)
    assert "billing:manage" not in ROLES["admin"]
    assert ROLES["viewer"] < ROLES["member"] < ROLES["admin"] < ROLES["owner"]
    assert permissions_for(["unknown"]) == frozenset()
    assert can_assign("admin", "member") and not can_assign("admin", "owner")
    assert not can_assign("member", "viewer") or "members:manage" not in ROLES["member"]
    assert not can_assign("nobody", "viewer")
