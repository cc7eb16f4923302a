"""Custom roles: a tenant's own named sets of permissions (docs/auth.md, "Custom roles").

A role is a name and a set of permissions of the registry (:data:`saas.rbac.PERMISSIONS`). The
built-in roles (:data:`saas.rbac.ROLES`: owner, admin, member, viewer) are read-only and shown
beside the tenant's own (:class:`~saas.identity.models.CustomRole`); ``Membership.role`` names
either, by name.

The rules:

- **No escalation.** Nobody creates, changes, assigns or deletes a role holding a permission
  they lack (:func:`check_grantable`, :func:`saas.rbac.can_grant`): a custom role is grantable
  when its permissions are a subset of the actor's. Between built-in roles the old order
  stands (only an owner grants owner; an admin grants admin and below).
- **A role in use is deleted only with a replacement**, which its members move to in the same
  transaction (:func:`delete_role`); without one, 409 ``role_in_use``.
- **The plan.** Creating, changing and assigning a custom role need the plan feature
  ``custom_roles`` (402 ``entitlement_required``). A tenant whose plan loses it keeps its custom
  roles working for the members who hold them; it can list and delete them (moving their
  members to another role), not create, change or assign them.
- **Changes reach every token at once.** Permissions are resolved from the database, never from
  the token: the cached principal (:mod:`saas.auth.principals`) reads a custom role's
  permissions with the membership, and a change of a ``CustomRole`` row invalidates the
  tenant's cached entries (in other processes within ``CACHE_LOCAL_TTL``, 0.5 s by default).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from saas.actions import ActionContext
from saas.audit import AuditAction
from saas.auth.context import Principal
from saas.billing.entitlements import check_feature
from saas.db import tenant_row, tenant_rows
from saas.errors import Conflict, ErrorCode, Forbidden, ValidationError
from saas.identity.models import CustomRole, Membership, SsoConnection, Tenant, custom_role_permissions
from saas.rbac import PERMISSIONS, ROLE_ORDER, ROLES, can_grant

FEATURE = "custom_roles"
#: a role's name: a lowercase slug of 2 to 32 characters (``support-agent``), the width of
#: ``Membership.role``
NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
MAX_NAME = 32
MAX_DESCRIPTION = 500
#: the fixed ids of the built-in roles (UUIDv5 of their names): the same in every tenant, so a
#: client can address them like the tenant's own, and learn that they are read-only
_BUILTIN_NAMESPACE = uuid.UUID("0b5e8f0e-6c4a-5d0c-9a57-7f3c2a1d9e11")
BUILTIN_IDS: dict[uuid.UUID, str] = {uuid.uuid5(_BUILTIN_NAMESPACE, name): name for name in ROLE_ORDER}
_BUILTIN_DESCRIPTIONS = {
    "owner": "Everything, billing included; only an owner makes another owner",
    "admin": "Everything but billing",
    "member": "Work with contacts; read members and the tenant",
    "viewer": "Read contacts, members and the tenant",
}


@dataclass(frozen=True)
class RoleView:
    """One role as the API shows it (``builtin``: read-only; ``members``: how many hold it,
    invited ones included)."""

    id: uuid.UUID
    name: str
    description: str
    permissions: tuple[str, ...]
    builtin: bool
    members: int
    created_at: Any = None
    updated_at: Any = None

    def to_public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "permissions": list(self.permissions),
            "builtin": self.builtin,
            "members": self.members,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def builtin_id(name: str) -> uuid.UUID:
    """The fixed id of built-in role ``name``."""
    return uuid.uuid5(_BUILTIN_NAMESPACE, name)


def registry() -> list[dict[str, str]]:
    """The permission registry, for an admin UI building roles: ``[{"name", "description"}]``."""
    return [{"name": name, "description": text} for name, text in PERMISSIONS.items()]


def _counts(session: Session, tenant_id: uuid.UUID) -> dict[str, int]:
    rows = session.execute(
        select(Membership.role, func.count())
        .where(Membership.tenant_id == tenant_id, Membership.status != "suspended")
        .group_by(Membership.role)
    )
    return {role: n for role, n in rows}


def _view(role: CustomRole, members: int) -> RoleView:
    return RoleView(
        role.id, role.name, role.description or "", tuple(sorted(role.permissions or ())), False, members,
        role.created_at, role.updated_at,
    )  # fmt: skip


def list_roles(session: Session, tenant_id: uuid.UUID) -> list[RoleView]:
    """The built-in roles (most powerful first), then the tenant's own by name."""
    counts = _counts(session, tenant_id)
    out = [
        RoleView(builtin_id(n), n, _BUILTIN_DESCRIPTIONS[n], tuple(sorted(ROLES[n])), True, counts.get(n, 0))
        for n in ROLE_ORDER
    ]
    rows = tenant_rows(session, CustomRole, tenant_id, CustomRole.name)
    out += [_view(r, counts.get(r.name, 0)) for r in rows]
    return out


def get_role(session: Session, tenant_id: uuid.UUID, role_id: uuid.UUID, *, lock: bool = False) -> CustomRole:
    """The tenant's custom role ``role_id`` (``lock``: ``FOR UPDATE``).

    Raises:
        Forbidden: ``role_read_only``, the id of a built-in role.
        NotFound: no such role in this tenant (another tenant's is the same 404).
    """
    if role_id in BUILTIN_IDS:
        raise _read_only(BUILTIN_IDS[role_id])
    return tenant_row(session, CustomRole, tenant_id, role_id, noun="role", lock=lock)


def view_role(session: Session, tenant_id: uuid.UUID, role_id: uuid.UUID) -> RoleView:
    """One role, built-in or the tenant's own, as :func:`list_roles` shows it.

    Raises:
        NotFound: no such role in this tenant.
    """
    counts = _counts(session, tenant_id)
    name = BUILTIN_IDS.get(role_id)
    if name is not None:
        return RoleView(
            role_id, name, _BUILTIN_DESCRIPTIONS[name], tuple(sorted(ROLES[name])), True, counts.get(name, 0)
        )
    role = get_role(session, tenant_id, role_id)
    return _view(role, counts.get(role.name, 0))


def _read_only(name: str) -> Forbidden:
    return Forbidden(
        f"'{name}' is a built-in role: it cannot be changed or deleted. Create a custom role instead.",
        code=ErrorCode.ROLE_READ_ONLY,
        title="Built-in role",
        extra={"role": name},
    )


# --- validation -------------------------------------------------------------------------------


def validate_name(raw: Any) -> str:
    """A role name: a lowercase slug (letters, digits, inner single hyphens) of 2 to 32
    characters, starting with a letter, and not a built-in role's name.

    Raises:
        ValidationError: 422 with ``errors.name``.
    """
    if not isinstance(raw, str):
        raise ValidationError({"name": ["Expected a string."]})
    name = raw.strip()
    if not 2 <= len(name) <= MAX_NAME or not NAME.match(name):
        raise ValidationError(
            {
                "name": [
                    f"2 to {MAX_NAME} lowercase letters, digits and inner hyphens, starting with a letter."
                ]
            }
        )
    if name in ROLES:
        raise ValidationError({"name": [f"'{name}' is a built-in role's name."]})
    return name


def validate_permissions(raw: Any) -> list[str]:
    """A role's permissions: a list of registry names (duplicates dropped), sorted.

    Raises:
        ValidationError: 422 with ``errors.permissions`` naming the unknown ones.
    """
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise ValidationError({"permissions": ["Expected a list of permission names."]})
    unknown = sorted({p for p in raw if p not in PERMISSIONS})
    if unknown:
        raise ValidationError(
            {"permissions": [f"Unknown permissions: {', '.join(unknown)} (GET /api/v1/permissions)."]}
        )
    return sorted(set(raw))


def validate_description(raw: Any) -> str:
    if not isinstance(raw, str) or len(raw) > MAX_DESCRIPTION:
        raise ValidationError({"description": [f"A string of at most {MAX_DESCRIPTION} characters."]})
    return raw.strip()


# --- where else a role is named: directory mappings ----------------------------------------


@dataclass(frozen=True)
class RoleReferrer:
    """Something outside memberships that names roles (a directory's mapping): ``names(session,
    tenant_id, role)`` lists what names ``role`` (human-readable, e.g. ``"sso connection <id>"``),
    ``rewrite(session, tenant_id, old, new)`` makes them name ``new``."""

    names: Callable[[Session, uuid.UUID, str], list[str]]
    rewrite: Callable[[Session, uuid.UUID, str, str], None]


_REFERRERS: list[RoleReferrer] = []


def register_referrer(referrer: RoleReferrer) -> None:
    """Add a kind of role mapping (SCIM's group roles register theirs: ``saas.scim.service``)."""
    _REFERRERS.append(referrer)


def _connections(session: Session, tenant_id: uuid.UUID) -> list[SsoConnection]:
    return tenant_rows(session, SsoConnection, tenant_id)


def _connections_naming(session: Session, tenant_id: uuid.UUID, name: str) -> list[str]:
    return [
        f"sso connection {c.id}"
        for c in _connections(session, tenant_id)
        if c.default_role == name or name in (c.role_mapping or {}).values()
    ]


def _rewrite_connections(session: Session, tenant_id: uuid.UUID, old: str, new: str) -> None:
    for connection in _connections(session, tenant_id):
        if connection.default_role == old:
            connection.default_role = new
        mapping = connection.role_mapping or {}
        if old in mapping.values():
            connection.role_mapping = {k: (new if v == old else v) for k, v in mapping.items()}


register_referrer(RoleReferrer(_connections_naming, _rewrite_connections))


def references(session: Session, tenant_id: uuid.UUID, name: str) -> list[str]:
    """What names role ``name`` besides memberships: SSO connections (``default_role``, a
    ``role_mapping`` value), SCIM's group roles; empty when nothing does."""
    return [ref for referrer in _REFERRERS for ref in referrer.names(session, tenant_id, name)]


def rewrite_references(session: Session, tenant_id: uuid.UUID, old: str, new: str) -> None:
    """Make every mapping naming role ``old`` name ``new`` (a rename, or a deletion's
    replacement), in the caller's transaction, so a directory never maps to a role that is gone."""
    for referrer in _REFERRERS:
        referrer.rewrite(session, tenant_id, old, new)
    session.flush()


# --- the no-escalation rule -------------------------------------------------------------------


def role_names(session: Session, tenant_id: uuid.UUID) -> list[str]:
    """Every role the tenant can give: the built-in ones, then its custom roles by name."""
    custom = session.scalars(
        select(CustomRole.name).where(CustomRole.tenant_id == tenant_id).order_by(CustomRole.name)
    )
    return [*ROLE_ORDER, *custom]


def role_permissions(
    session: Session, tenant_id: uuid.UUID, role: str, *, lock: bool = False
) -> frozenset[str] | None:
    """A custom role's permissions (None: a built-in role).

    Raises:
        ValidationError: ``{"role": [...]}``, the tenant has no role of that name.
    """
    if role in ROLES:
        return None
    perms = custom_role_permissions(session, tenant_id, role, lock=lock) if isinstance(role, str) else None
    if perms is None:
        raise ValidationError({"role": [f"Must be one of: {', '.join(role_names(session, tenant_id))}."]})
    return perms


def may_grant(session: Session, actor: Principal, role: str) -> bool:
    """Whether ``actor`` may give ``role`` to someone, or act on someone holding it (change their
    role, remove them, reset their MFA): :func:`saas.rbac.can_grant`. An unknown role (a custom
    role since deleted) is treated as granting nothing, so anyone managing members may act on it."""
    if role in ROLES:
        return can_grant(actor.role, actor.permissions, role, None)
    perms = custom_role_permissions(session, actor.tenant_id, role)
    return can_grant(actor.role, actor.permissions, role, perms if perms is not None else frozenset())


def check_assignable(session: Session, actor: Principal, role: str, *, check_plan: bool = True) -> None:
    """Refuse to give ``role`` (an invitation, a role change, a replacement): it must exist, the
    tenant's plan must have ``custom_roles`` for a custom one, and the actor must hold each of its
    permissions. A custom role is locked ``FOR SHARE`` until the transaction ends (a concurrent
    delete waits, then moves the new holder too). ``check_plan=False`` skips the plan: only for
    ``saas tenants import`` restoring a tenant's own invitations (a moved tenant keeps its roles,
    as a downgraded one does).

    Raises:
        ValidationError: no such role. PaymentRequired: ``entitlement_required`` (a custom
            role on a plan without ``custom_roles``). Forbidden: ``role_not_assignable``.
    """
    perms = role_permissions(session, actor.tenant_id, role, lock=True)
    if perms is not None and check_plan:
        check_feature(actor.tenant, FEATURE)
    if not can_grant(actor.role, actor.permissions, role, perms):
        raise Forbidden(
            f"Your role cannot grant '{role}'.",
            code=ErrorCode.ROLE_NOT_ASSIGNABLE,
            title="Permission denied",
            extra={"missing": sorted((perms if perms is not None else ROLES[role]) - actor.permissions)},
        )


def check_role_exists(session: Session, tenant_id: uuid.UUID, role: str) -> None:
    """Refuse a role the tenant cannot give on a directory's word (SSO, SCIM): unknown, or a
    custom role while the plan lacks ``custom_roles``.

    Raises:
        ValidationError: ``{"role": [...]}``. PaymentRequired: ``entitlement_required``.
    """
    if role_permissions(session, tenant_id, role, lock=True) is not None:
        check_feature(session.get(Tenant, tenant_id), FEATURE)


def _check_not_escalating(actor: Principal, permissions: Iterable[str]) -> None:
    missing = sorted(set(permissions) - actor.permissions)
    if missing:
        raise Forbidden(
            f"You cannot give a role permissions you do not hold: {', '.join(missing)}.",
            code=ErrorCode.PERMISSION_NOT_HELD,
            title="Permission not held",
            extra={"missing": missing},
        )


def _actor(ctx: ActionContext) -> Principal:
    if ctx.principal is None or ctx.principal.tenant_id is None:
        raise TypeError("a role change needs a tenant principal in its ActionContext")
    return ctx.principal


# --- create, change, delete -------------------------------------------------------------------


def create_role(ctx: ActionContext, name: Any, permissions: Any, description: Any = "") -> CustomRole:
    """Create a custom role of the context's tenant, audited ``role.created``.

    Raises:
        ValidationError: 422, a bad name (:func:`validate_name`), unknown permissions.
        Forbidden: ``permission_not_held``, a permission the actor lacks (nothing is written).
        Conflict: ``role_name_taken``.
    """
    session, actor = ctx.session, _actor(ctx)
    name = validate_name(name)
    perms = validate_permissions(permissions)
    description = validate_description(description if description is not None else "")
    _check_not_escalating(actor, perms)
    role = CustomRole(
        tenant_id=actor.tenant_id,
        name=name,
        description=description,
        permissions=perms,
        created_by=actor.user_id,
    )
    _save(session, role)
    ctx.record(
        AuditAction.ROLE_CREATED,
        tenant_id=actor.tenant_id,
        target_type="role",
        target_id=role.id,
        data={"name": name, "permissions": perms},
    )
    return role


def _save(session: Session, role: CustomRole, assign: dict[str, Any] | None = None) -> None:
    """Insert ``role`` (or set ``assign`` on it) in a savepoint: a name taken meanwhile is a 409
    and leaves the request's transaction usable."""
    try:
        with session.begin_nested():
            session.add(role)
            for key, value in (assign or {}).items():
                setattr(role, key, value)
            session.flush()
    except IntegrityError:
        name = (assign or {}).get("name", role.name)
        raise Conflict(
            f"This tenant has a role named '{name}' already.",
            code=ErrorCode.ROLE_NAME_TAKEN,
            title="Role name taken",
        ) from None


def update_role(ctx: ActionContext, role: CustomRole, changes: dict[str, Any]) -> CustomRole:
    """Change a custom role's ``name``, ``description`` and/or ``permissions`` (keys of
    ``changes``), audited ``role.updated`` with each change's old and new value. A new name is
    carried to every membership holding the role, in the same transaction. The actor must hold
    every permission of the role, before and after (nobody edits a role above them).

    Raises:
        ValidationError: 422 (see :func:`create_role`). Forbidden: ``permission_not_held``.
        Conflict: ``role_name_taken``.
    """
    session, actor = ctx.session, _actor(ctx)
    _check_not_escalating(actor, role.permissions or ())
    diff: dict[str, Any] = {}
    assign: dict[str, Any] = {}
    if "permissions" in changes:
        perms = validate_permissions(changes["permissions"])
        _check_not_escalating(actor, perms)
        old = sorted(role.permissions or ())
        if perms != old:
            diff["permissions"] = {"from": old, "to": perms, "added": sorted(set(perms) - set(old)),
                                   "removed": sorted(set(old) - set(perms))}  # fmt: skip
            assign["permissions"] = perms
    if "description" in changes:
        description = validate_description(changes["description"])
        if description != role.description:
            diff["description"] = {"from": role.description, "to": description}
            assign["description"] = description
    old_name = role.name
    if "name" in changes:
        name = validate_name(changes["name"])
        if name != old_name:
            diff["name"] = {"from": old_name, "to": name}
            assign["name"] = name
    if not diff:
        return role
    _save(session, role, assign)
    if "name" in diff:
        session.execute(
            update(Membership)
            .where(Membership.tenant_id == actor.tenant_id, Membership.role == old_name)
            .values(role=role.name)
            .execution_options(synchronize_session="fetch")
        )
        rewrite_references(session, actor.tenant_id, old_name, role.name)
    ctx.record(
        AuditAction.ROLE_UPDATED,
        tenant_id=actor.tenant_id,
        target_type="role",
        target_id=role.id,
        data={"name": role.name, "changes": diff},
    )
    return role


def delete_role(ctx: ActionContext, role: CustomRole, replacement: str | None) -> int:
    """Delete a custom role. Its members (active, invited and suspended) move to
    ``replacement`` in the same transaction; returns how many moved. Audited ``role.deleted``
    with the replacement and the count.

    The actor must hold every permission of the role and be able to grant the replacement
    (:func:`check_assignable`): deleting never escalates anyone.

    Raises:
        Conflict: ``role_in_use``, members hold it and no ``replacement`` was named (nothing
            changes; the problem says how many members).
        ValidationError: ``replacement`` is unknown, or is the role itself.
        Forbidden: ``permission_not_held``, ``role_not_assignable``.
        PaymentRequired: ``entitlement_required``, a custom replacement without ``custom_roles``.
    """
    session, actor = ctx.session, _actor(ctx)
    tenant_row(session, CustomRole, role.tenant_id, role.id, noun="role", lock=True)  # gone meanwhile: 404
    _check_not_escalating(actor, role.permissions or ())
    held = (
        session.scalar(
            select(func.count()).where(Membership.tenant_id == actor.tenant_id, Membership.role == role.name)
        )
        or 0
    )
    if replacement is not None:
        if replacement == role.name:
            raise ValidationError({"replacement": ["The replacement must be another role."]})
        try:
            check_assignable(session, actor, replacement)
        except ValidationError as exc:
            errors = (exc.extra or {}).get("errors", {})
            raise ValidationError({"replacement": errors.get("role", ["No such role."])}) from None
    moved = 0
    referenced = references(session, actor.tenant_id, role.name)
    if referenced and replacement is None:
        raise Conflict(
            f"'{role.name}' is named by {', '.join(referenced)}: delete it with ?replacement=<role>, "
            "which they will name instead.",
            code=ErrorCode.ROLE_IN_USE,
            title="Role in use",
            extra={"members": held, "referenced_by": referenced},
        )
    if referenced:
        rewrite_references(session, actor.tenant_id, role.name, replacement)
    if held:
        if replacement is None:
            raise Conflict(
                f"{held} member(s) hold '{role.name}': delete it with ?replacement=<role> to move them.",
                code=ErrorCode.ROLE_IN_USE,
                title="Role in use",
                extra={"members": held},
            )
        result = session.execute(
            update(Membership)
            .where(Membership.tenant_id == actor.tenant_id, Membership.role == role.name)
            .values(role=replacement)
            .execution_options(synchronize_session="fetch")
        )
        moved = result.rowcount or 0
    session.delete(role)
    session.flush()
    ctx.record(
        AuditAction.ROLE_DELETED,
        tenant_id=actor.tenant_id,
        target_type="role",
        target_id=role.id,
        data={"name": role.name, "replacement": replacement if held else None, "members_moved": moved},
    )
    return moved
