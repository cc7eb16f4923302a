"""Role-based permissions inside a tenant: each role is a named set of permissions.

Permissions are ``<resource>:<action>`` strings. Deny by default: a permission not listed for a
role is refused, and an unknown role grants nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

PERMISSIONS: dict[str, str] = {
    "contacts:read": "Read contacts",
    "contacts:write": "Create, change and delete contacts",
    "members:read": "List members",
    "members:manage": "Invite, change and remove members",
    "tenant:read": "Read the tenant's profile",
    "tenant:manage": "Change the tenant's name and settings",
    "billing:manage": "Change plan and payment",
    "audit:read": "Read the audit log",
    "clients:manage": "Manage OAuth clients",
    "sso:manage": "Manage verified domains and single sign-on",
    # custom roles (saas.tenancy.roles)
    "roles:manage": "Create, change and delete the tenant's custom roles",
    # outgoing webhooks (saas.webhooks)
    "webhooks:manage": "Manage webhook endpoints, read their delivery attempts, replay messages",
}

ROLES: dict[str, frozenset[str]] = {
    "owner": frozenset(PERMISSIONS),
    "admin": frozenset(PERMISSIONS) - {"billing:manage"},
    "member": frozenset({"contacts:read", "contacts:write", "members:read", "tenant:read"}),
    "viewer": frozenset({"contacts:read", "members:read", "tenant:read"}),
}

#: roles ordered from most to least powerful; a member may grant only roles at or below its own
ROLE_ORDER = ("owner", "admin", "member", "viewer")


def permissions_for(roles: Iterable[str]) -> frozenset[str]:
    """The union of the permissions of ``roles`` (unknown roles grant nothing)."""
    granted: set[str] = set()
    for role in roles:
        granted |= ROLES.get(role, frozenset())
    return frozenset(granted)


def can_assign(actor_role: str, target_role: str) -> bool:
    """Whether a member with ``actor_role`` may give (or take away) ``target_role``."""
    if actor_role not in ROLE_ORDER or target_role not in ROLE_ORDER:
        return False
    return ROLE_ORDER.index(actor_role) <= ROLE_ORDER.index(target_role)


# --- custom roles (saas.tenancy.roles; docs/auth.md, "Custom roles") ---------------------------


def can_grant(
    actor_role: str | None,
    actor_permissions: frozenset[str],
    target_role: str,
    target_permissions: frozenset[str] | None,
) -> bool:
    """Whether an actor may give (or take away, or act on a holder of) ``target_role``.

    Between built-in roles the order of :data:`ROLE_ORDER` decides (:func:`can_assign`). When
    either role is a custom one (``target_permissions``: the custom role's permissions, None
    for a built-in role), the no-escalation rule does: every permission of the target role must
    be among the actor's ``actor_permissions``; and ``owner`` is only ever granted by an owner.
    An unknown role (not built in and no permissions given) is never grantable.
    """
    actor_builtin = actor_role in ROLES
    if target_role in ROLES and target_permissions is None:
        if actor_builtin:
            return can_assign(actor_role or "", target_role)
        if target_role == "owner":
            return False
        return ROLES[target_role] <= actor_permissions
    if target_permissions is None:
        return False
    return target_permissions <= actor_permissions
