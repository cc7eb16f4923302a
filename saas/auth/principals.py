"""Cached tenant resolution, tenant status, entitlements and membership role.

One hot-path read, :func:`snapshot_for`, answers everything the request pipeline needs about a
caller before the view runs, in one Redis round trip (none when the in-process layer is
fresh) and no SQL on a hit:

* ``tenant``: id, slug, name, status, plan, schema (entry ``tenant``);
* ``entitlements``: ``saas.billing.entitlements.entitlements_for(tenant).to_dict()`` (``ent``);
* the user's membership role and status in the tenant (``m:<user id hex>``);
* for a service account (no user), its OAuth client's current role (``cl:<client_id>``; None
  when the client is no longer the tenant's), never the role written in the token.

A member entry whose role is one of the tenant's custom roles also carries that role's
``permissions`` (read by the same query: :class:`~saas.identity.models.CustomRole` is joined on
the role's name), so custom roles cost the hot path nothing; a change of a custom role is a
change of a watched model, which invalidates the tenant's entries.

On a miss the three are computed with one SQL query (tenant left-joined with the membership)
plus whatever ``entitlements_for`` needs, and stored under the tenant's cache version.

Invalidation is automatic for ORM changes: a flush that inserts, updates or deletes a watched
model (``Tenant``, ``Membership`` and whatever :func:`watch_model` registers, e.g. billing's
subscription table) bumps the tenant's version at once, and again after the commit (so a reader
that refilled the cache between flush and commit from the old committed row is overruled).
Core ``UPDATE`` statements bypass the ORM: call :func:`saas.cache.invalidate_tenant` after them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, g
from sqlalchemy import and_, event, select
from sqlalchemy.orm import Session

from saas.cache.core import MISS, invalidate_tenant
from saas.memo import Memo
from saas.services import services

_WATCHED: dict[type, Callable[[Any], uuid.UUID | None]] = {}
_INSTALLED = False


@dataclass(frozen=True)
class TenantSnapshot:
    id: uuid.UUID
    slug: str
    name: str
    status: str
    plan: str | None
    schema_name: str
    #: the tenant's ``require_mfa`` setting: a person's token whose ``amr`` shows no second factor is refused
    require_mfa: bool = False
    #: the tenant's ``allow_impersonation`` setting (default on): off, impersonation tokens stop working
    allow_impersonation: bool = True

    def to_cache(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "slug": self.slug,
            "name": self.name,
            "status": self.status,
            "plan": self.plan,
            "schema_name": self.schema_name,
            "require_mfa": self.require_mfa,
            "allow_impersonation": self.allow_impersonation,
        }

    @classmethod
    def from_cache(cls, data: dict[str, Any]) -> TenantSnapshot:
        return cls(
            uuid.UUID(data["id"]),
            data["slug"],
            data["name"],
            data["status"],
            data["plan"],
            data["schema_name"],
            bool(data.get("require_mfa")),
            bool(data.get("allow_impersonation", True)),
        )


@dataclass(frozen=True)
class PrincipalSnapshot:
    """What the pipeline knows about a caller. ``tenant`` None: no such tenant.
    ``role`` None: no active membership, or (a client token, ``user_id`` None) no such client
    in the tenant; a client's ``role`` is its current one."""

    tenant: TenantSnapshot | None
    entitlements: dict[str, Any]
    role: str | None
    membership_status: str | None
    #: a custom role's permissions (from the database, like the role); None for a built-in role
    role_permissions: frozenset[str] | None = None


def _member_name(user_id: uuid.UUID) -> str:
    return "m:" + user_id.hex


def _client_name(client_id: str) -> str:
    return "cl:" + client_id


def snapshot_for(
    tenant_id: uuid.UUID, user_id: uuid.UUID | None, client_id: str | None = None
) -> PrincipalSnapshot:
    """The caller's snapshot (memoised on ``flask.g`` for the request). ``client_id`` is read
    only for a service account (``user_id`` None).

    Uses the request's session (``saas.db.session()``) on a miss.
    """
    if user_id is not None:
        client_id = None
    memo_key = (tenant_id, user_id, client_id)
    memo = g.get("_principal_snapshot")
    if memo is not None and memo[0] == memo_key:
        return memo[1]
    cache = services().cache
    if user_id:
        names = ["tenant", "ent", _member_name(user_id)]
    elif client_id:
        names = ["tenant", "ent", _client_name(client_id)]
    else:
        names = ["tenant", "ent"]
    if cache is not None:
        values, version = cache.get_many(tenant_id, names)
    else:
        values, version = dict.fromkeys(names, MISS), None
    if any(v is MISS for v in values.values()):
        computed = _compute(tenant_id, user_id, client_id)
        values = {"tenant": computed["tenant"], "ent": computed["ent"]}
        if user_id is not None:
            values[_member_name(user_id)] = computed["member"]
        elif client_id:
            values[_client_name(client_id)] = computed["member"]
        if cache is not None and computed["tenant"] is not None:
            cache.set_many(tenant_id, version, values)
    tenant_data = values["tenant"]
    member = values[names[2]] if len(names) > 2 else None
    inputs = (tenant_data, values["ent"], member)
    built = _BUILT.get(memo_key)
    if built is not None and all(a is b for a, b in zip(built[0], inputs, strict=True)):
        snap = built[1]  # the same cached entries as last time: the same snapshot
    else:
        snap = PrincipalSnapshot(
            tenant=TenantSnapshot.from_cache(tenant_data) if tenant_data else None,
            entitlements=values["ent"] or {},
            role=member["role"] if member and member.get("status") == "active" else None,
            membership_status=member.get("status") if member else None,
            role_permissions=(
                frozenset(member["permissions"]) if member and member.get("permissions") is not None else None
            ),
        )
        _BUILT.put(memo_key, (inputs, snap))
    g._principal_snapshot = (memo_key, snap)
    return snap


#: (tenant, user) -> (the cache entries a snapshot was built from, the snapshot). The in-process
#: cache layer hands out the same objects while they are fresh, so identical inputs (``is``)
#: mean the snapshot is still the right one; new entries (a refresh, an invalidation) never
#: match. It holds the inputs, so their ids cannot be reused while kept.
_BUILT: Memo[tuple[uuid.UUID, uuid.UUID | None, str | None], tuple[tuple[Any, ...], PrincipalSnapshot]] = (
    Memo("cache.principal_snapshots", maxsize=10_000)
)


def _compute(tenant_id: uuid.UUID, user_id: uuid.UUID | None, client_id: str | None = None) -> dict[str, Any]:
    from saas import db
    from saas.auth.models import OAuthClient
    from saas.identity.models import CustomRole, Membership, Tenant, User

    session = db.session()
    member: dict[str, Any] | None = None
    if user_id is not None:
        row = session.execute(
            select(Tenant, Membership.role, Membership.status, User.status, CustomRole.permissions)
            .outerjoin(Membership, and_(Membership.tenant_id == Tenant.id, Membership.user_id == user_id))
            .outerjoin(User, User.id == Membership.user_id)
            .outerjoin(
                CustomRole, and_(CustomRole.tenant_id == Tenant.id, CustomRole.name == Membership.role)
            )
            .where(Tenant.id == tenant_id)
        ).first()
        tenant = row[0] if row else None
        if row is not None:
            # a locked account's tokens stop working at once, like a removed membership's
            status = row[2] if row[3] in (None, "active") else "account_locked"
            member = {"role": row[1], "status": status}
            if row[4] is not None:  # a custom role: its permissions now (saas.tenancy.roles)
                member["permissions"] = sorted(row[4])
    elif client_id:
        row = session.execute(
            select(Tenant, OAuthClient.role)
            .outerjoin(
                OAuthClient, and_(OAuthClient.tenant_id == Tenant.id, OAuthClient.client_id == client_id)
            )
            .where(Tenant.id == tenant_id)
        ).first()
        tenant = row[0] if row else None
        if row is not None:
            # the client's role now (a deleted client has none), not the one in its token
            member = {"role": row[1], "status": "active" if row[1] else "gone"}
    else:
        tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        return {"tenant": None, "ent": None, "member": None}
    ent = services().entitlements(tenant)
    ent_data = ent.to_dict() if hasattr(ent, "to_dict") else dict(vars(ent))
    snap = TenantSnapshot(
        tenant.id, tenant.slug, tenant.name, tenant.status, tenant.plan, tenant.schema_name,
        bool((tenant.settings or {}).get("require_mfa")),
        bool((tenant.settings or {}).get("allow_impersonation", True)),
    )  # fmt: skip
    out: dict[str, Any] = {"tenant": snap.to_cache(), "ent": ent_data}
    if user_id is not None or client_id:
        out["member"] = member
    return out


# --- invalidation through ORM events --------------------------------------------------------


def watch_model(model: type, tenant_of: Callable[[Any], uuid.UUID | None]) -> None:
    """Invalidate the tenant's cache whenever a ``model`` row is inserted, updated or deleted
    through the ORM. ``tenant_of(row)`` returns the row's tenant id.

    Example (billing): ``watch_model(Subscription, lambda s: s.tenant_id)``.
    """
    _WATCHED[model] = tenant_of
    install_hooks()


def init_app(app: Flask) -> None:
    """Invalidate cached principals on every committed change of a watched model (when the
    tenant cache is on; called once by ``create_app``)."""
    if services(app).cache is not None:
        install_hooks()


def install_hooks() -> None:
    """Register the session events once per process (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from saas.auth.models import ApiKey, OAuthClient
    from saas.identity.models import CustomRole, Membership, Tenant

    _WATCHED.setdefault(Tenant, lambda t: t.id)
    _WATCHED.setdefault(CustomRole, lambda r: r.tenant_id)  # a custom role's permissions
    _WATCHED.setdefault(Membership, lambda m: m.tenant_id)
    _WATCHED.setdefault(OAuthClient, lambda c: c.tenant_id)  # a client's role and existence
    _WATCHED.setdefault(ApiKey, lambda k: k.tenant_id)  # an API key's entry (saas.auth.api_keys)
    event.listen(Session, "after_flush", _after_flush)
    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_soft_rollback", _after_rollback)
    _INSTALLED = True


def _after_flush(session: Session, flush_context: Any) -> None:
    touched: set[uuid.UUID] = set()
    for obj in (*session.new, *session.dirty, *session.deleted):
        tenant_of = _WATCHED.get(type(obj))
        if tenant_of is None:
            continue
        tenant_id = tenant_of(obj)
        if isinstance(tenant_id, uuid.UUID):
            touched.add(tenant_id)
    if touched:
        session.info.setdefault("saas.cache.touched", set()).update(touched)
        invalidate_tenant(touched)


def _after_commit(session: Session) -> None:
    touched = session.info.pop("saas.cache.touched", None)
    if touched:
        invalidate_tenant(touched)


def _after_rollback(session: Session, previous_transaction: Any) -> None:
    if not session.in_transaction():
        session.info.pop("saas.cache.touched", None)
