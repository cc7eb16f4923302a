"""Tenant lifecycle: suspend, resume, scheduled deletion and purge, slug renames, export and
import. Every change is written to the tenant's own audit log with the acting operator
(design invariant 7); functions take a session and never commit (the caller's unit of work).

Statuses: ``active``; ``suspended`` (every request and token refresh is refused: see
``saas.auth.context.current_principal``); a soft-deleted tenant is ``suspended`` with
``deleted_at`` and ``purge_after`` set, and ``saas tenants purge`` drops it after that date.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql as pgsql
from sqlalchemy import Engine, delete, func, select, text
from sqlalchemy.orm import Session

from saas import audit
from saas.audit import AuditAction
from saas.db import check_schema_name, utcnow
from saas.errors import Conflict, ErrorCode, ValidationError
from saas.identity.models import Membership, Tenant
from saas.identity.slugs import normalize_slug, slug_problems

DEFAULT_RETENTION_DAYS = 30


def lifecycle_state(tenant: Tenant) -> str:
    """``active``, ``suspended`` or ``deleted`` (suspended and scheduled for purge)."""
    if tenant.deleted_at is not None:
        return "deleted"
    return tenant.status


def _audit(session: Session, tenant: Tenant, action: str, actor: audit.Actor, **data: Any) -> None:
    audit.record(
        session,
        action,
        target_type="tenant",
        target_id=tenant.id,
        data={k: v for k, v in data.items() if v is not None},
        actor=actor,
        tenant_id=tenant.id,
    )


def _revoke_tenant_sessions(session: Session, tenant: Tenant, reason: str) -> int:
    from saas.auth.models import RefreshToken
    from saas.auth.sessions import revoke_tokens

    return revoke_tokens(session, RefreshToken.tenant_id == tenant.id, reason=reason)


def suspend(session: Session, tenant: Tenant, reason: str, actor: audit.Actor) -> Tenant:
    """Suspend ``tenant``: requests and refreshes are refused, refresh tokens revoked.

    Raises:
        ValidationError: empty reason.
        Conflict: already suspended (``tenant_already_suspended``).
    """
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": ["Must not be empty."]})
    if tenant.status == "suspended":
        raise Conflict("The tenant is already suspended.", code=ErrorCode.TENANT_ALREADY_SUSPENDED)
    tenant.status = "suspended"
    tenant.suspended_reason = reason[:1000]
    tenant.suspended_at = utcnow()
    revoked = _revoke_tenant_sessions(session, tenant, "tenant_suspended")
    _audit(session, tenant, AuditAction.TENANT_SUSPENDED, actor, reason=reason, revoked_sessions=revoked)
    session.flush()
    return tenant


def resume(session: Session, tenant: Tenant, actor: audit.Actor) -> Tenant:
    """Make ``tenant`` active again; also cancels a scheduled deletion.

    Raises:
        Conflict: the tenant is active (``tenant_active``).
    """
    if tenant.status == "active" and tenant.deleted_at is None:
        raise Conflict("The tenant is active.", code=ErrorCode.TENANT_ACTIVE)
    was_deleted = tenant.deleted_at is not None
    tenant.status = "active"
    tenant.suspended_reason = tenant.suspended_at = tenant.deleted_at = tenant.purge_after = None
    _audit(session, tenant, AuditAction.TENANT_RESUMED, actor, deletion_cancelled=was_deleted or None)
    session.flush()
    return tenant


def schedule_deletion(
    session: Session, tenant: Tenant, actor: audit.Actor, retention_days: int = DEFAULT_RETENTION_DAYS
) -> Tenant:
    """Soft delete: suspend now, purge after ``retention_days`` (``saas tenants purge``).

    Raises:
        ValidationError: negative retention.
        Conflict: deletion already scheduled (``tenant_deleted``).
    """
    if retention_days < 0:
        raise ValidationError({"retention_days": ["Must be zero or more."]})
    if tenant.deleted_at is not None:
        raise Conflict("The tenant's deletion is already scheduled.", code=ErrorCode.TENANT_DELETED)
    now = utcnow()
    if tenant.status != "suspended":
        tenant.suspended_at = now
        tenant.suspended_reason = "deleted"
        _revoke_tenant_sessions(session, tenant, "tenant_deleted")
    tenant.status = "suspended"
    tenant.deleted_at = now
    tenant.purge_after = now + timedelta(days=retention_days)
    _audit(
        session,
        tenant,
        AuditAction.TENANT_DELETION_SCHEDULED,
        actor,
        purge_after=tenant.purge_after.isoformat(),
    )
    session.flush()
    return tenant


def drop_tenant(session: Session, tenant: Tenant) -> None:
    """Drop the tenant's schema and its shared rows (memberships, invitations, refresh tokens
    go by ``ON DELETE CASCADE``) in the caller's transaction. Users stay: they are global
    identities that may belong to other tenants. Irreversible once committed."""
    schema = check_schema_name(tenant.schema_name)
    session.execute(
        text(pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pgsql.Identifier(schema)).as_string(None))
    )
    session.execute(delete(Tenant).where(Tenant.id == tenant.id))
    session.flush()


@dataclass
class PurgeResult:
    tenant_id: str
    slug: str
    ok: bool
    error: str | None = None


def purge_due(engine: Engine, now: datetime | None = None, only: set[str] | None = None) -> list[PurgeResult]:
    """Drop every tenant whose ``purge_after`` has passed, each in its own transaction (the row
    is re-read ``FOR UPDATE SKIP LOCKED`` so two purgers never collide and a resumed tenant is
    never dropped)."""
    from saas.db import Database

    now = now or utcnow()
    db = Database(engine)
    with engine.connect() as conn:
        due = conn.execute(
            select(Tenant.id, Tenant.slug).where(Tenant.purge_after.is_not(None), Tenant.purge_after <= now)
        ).all()
    results: list[PurgeResult] = []
    for tenant_id, slug in due:
        if only and slug not in only and str(tenant_id) not in only:
            continue
        try:
            with db.transaction() as session:
                tenant = session.scalars(
                    select(Tenant)
                    .where(Tenant.id == tenant_id, Tenant.purge_after <= now)
                    .with_for_update(skip_locked=True)
                ).first()
                if tenant is None:
                    continue
                drop_tenant(session, tenant)
            results.append(PurgeResult(str(tenant_id), slug, True))
        except Exception as exc:
            results.append(PurgeResult(str(tenant_id), slug, False, f"{type(exc).__name__}: {exc}"[:300]))
    return results


def rename_slug(session: Session, tenant: Tenant, new_slug: str, actor: audit.Actor) -> Tenant:
    """Change the tenant's slug (its schema, derived from the id, does not move).

    Raises:
        ValidationError: not a valid slug. Conflict: taken (``slug_taken``) or unchanged.
    """
    slug = normalize_slug(new_slug)
    if problems := slug_problems(slug):
        raise ValidationError({"slug": problems})
    if slug == tenant.slug:
        raise Conflict("That is already the tenant's slug.", code=ErrorCode.SLUG_UNCHANGED)
    if session.scalar(select(func.count()).select_from(Tenant).where(Tenant.slug == slug)):
        raise Conflict("That slug is taken.", code=ErrorCode.SLUG_TAKEN)
    old = tenant.slug
    tenant.slug = slug
    _audit(session, tenant, AuditAction.TENANT_SLUG_RENAMED, actor, old=old, new=slug)
    session.flush()
    return tenant


def tenant_overview(session: Session, tenant: Tenant) -> dict[str, Any]:
    """What ``saas tenants show`` prints: schema size (bytes), members, plan and entitlements,
    usage (rows per tenant table), last activity (newest audit event or member login)."""
    from saas.identity.models import User
    from saas.product import tenant_tables

    schema = tenant.schema_name
    size = session.scalar(
        text(
            "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s AND c.relkind IN ('r', 'p')"
        ),
        {"s": schema},
    )
    rows = session.execute(
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.tenant_id == tenant.id)
        .order_by(User.email)
    ).all()
    members = [{"email": u.email, "role": m.role, "status": m.status} for m, u in rows]
    logins = [u.last_login_at for _, u in rows if u.last_login_at]
    quoted = pgsql.Identifier(check_schema_name(schema)).as_string(None)
    names = [t.name for t in tenant_tables()]
    counts_sql = " UNION ALL ".join(
        f"SELECT {pgsql.Literal(name).as_string(None)}, count(*) "  # noqa: S608 - quoted identifiers
        f"FROM {quoted}.{pgsql.Identifier(name).as_string(None)}"
        for name in names
    )
    usage: dict[str, int] = {}
    last_audit = None
    exists = session.scalar(text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema})
    if exists:
        usage = {name: n for name, n in session.execute(text(counts_sql))}
        last_audit = session.scalar(text(f"SELECT max(occurred_at) FROM {quoted}.audit_events"))  # noqa: S608
    candidates = [d for d in [last_audit, *logins] if d is not None]
    try:
        from saas.billing.entitlements import entitlements_for

        entitlements = entitlements_for(tenant).to_dict()
    except Exception:  # an unknown plan must not hide the rest
        entitlements = None
    return {
        **tenant.to_public(),
        "state": lifecycle_state(tenant),
        "schema": schema,
        "schema_exists": bool(exists),
        "schema_version": tenant.schema_version,
        "schema_bytes": int(size or 0),
        "suspended_reason": tenant.suspended_reason,
        "suspended_at": tenant.suspended_at,
        "deleted_at": tenant.deleted_at,
        "purge_after": tenant.purge_after,
        "members": members,
        "entitlements": entitlements,
        "usage": usage,
        "last_activity_at": max(candidates) if candidates else None,
    }
