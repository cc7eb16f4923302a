"""Audit retention: each tenant keeps its audit events for its plan's ``audit_log_days``
(``saas/billing/plans.toml`` features, operator overrides included); older ones are deleted
by :func:`prune_expired`, a plain function that ``saas audit prune`` and the daily schedule
``audit.retention`` (:mod:`saas.schedules`, run by ``saas beat``) call.

Pruning keeps the hash chain verifiable (:mod:`saas.audit`): it deletes a prefix of the chain
only, in batches of ``batch_size`` events, each batch in its own short transaction that locks
the tenant's chain row (appends wait for it, a second pruner too), deletes the batch and moves
the chain's anchor to the last event deleted. The prefix ends before the first event (in chain
order) that is recent enough to keep, so an event a few milliseconds out of time order is kept
a little longer, never deleted early. A tenant whose events were pruned gets one
``audit.pruned`` event (how many, before when, up to which ``seq``).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update

from saas import audit
from saas.audit import AuditAction, AuditChain, AuditEvent
from saas.db import Database, utcnow
from saas.identity.models import Tenant

log = logging.getLogger("saas.audit.retention")

#: events deleted per transaction
DEFAULT_BATCH_SIZE = 1000


@dataclass
class PruneResult:
    """One tenant's prune: ``days`` its retention (None: unlimited, nothing pruned),
    ``deleted`` how many events went, ``anchor_seq`` the chain's anchor afterwards."""

    tenant_id: uuid.UUID
    slug: str
    days: int | None
    deleted: int = 0
    batches: int = 0
    anchor_seq: int = 0
    #: why this tenant could not be pruned (the others still are)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": str(self.tenant_id),
            "slug": self.slug,
            "retention_days": self.days,
            "deleted": self.deleted,
            "batches": self.batches,
            "anchor_seq": self.anchor_seq,
            "error": self.error,
        }


def retention_days(tenant: Tenant) -> int | None:
    """The tenant's ``audit_log_days`` now (plan, subscription and overrides:
    :func:`saas.billing.entitlements.entitlements_for`); None when unlimited (missing or -1).
    ``tenant`` must be attached to a session (its billing rows are read through it)."""
    from saas.billing.entitlements import entitlements_for

    days = entitlements_for(tenant).features.get("audit_log_days")
    if days is None or days == -1 or isinstance(days, bool) or not isinstance(days, int):
        return None
    return max(days, 0)


def _prune_batch(database: Database, schema: str, cutoff: datetime, batch_size: int) -> tuple[int, int]:
    """Delete at most ``batch_size`` events of the chain's prefix older than ``cutoff`` in one
    transaction; returns (deleted, anchor seq)."""
    table = AuditEvent.__table__
    with database.transaction(schema) as session:
        chain = session.scalars(select(AuditChain).where(AuditChain.id == 1).with_for_update()).first()
        if chain is None:
            return 0, 0
        rows = session.execute(
            select(table.c.seq, table.c.hash, table.c.occurred_at)
            .where(table.c.seq > chain.anchor_seq)
            .order_by(table.c.seq)
            .limit(batch_size)
        ).all()
        old = []
        for row in rows:
            if row.occurred_at >= cutoff:
                break
            old.append(row)
        if not old:
            return 0, chain.anchor_seq
        last = old[-1]
        session.execute(delete(table).where(table.c.seq > chain.anchor_seq, table.c.seq <= last.seq))
        session.execute(
            update(AuditChain.__table__)
            .where(AuditChain.__table__.c.id == 1)
            .values(anchor_seq=last.seq, anchor_hash=last.hash, pruned_at=utcnow())
        )
        return len(old), last.seq


def prune_tenant(
    database: Database,
    tenant_id: uuid.UUID,
    slug: str,
    schema: str,
    days: int | None,
    now: datetime,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> PruneResult:
    """Delete ``schema``'s events older than ``now - days`` (see the module), then record one
    ``audit.pruned`` event when any went."""
    result = PruneResult(tenant_id, slug, days)
    if days is None:
        return result
    cutoff = now - timedelta(days=days)
    while True:
        deleted, anchor = _prune_batch(database, schema, cutoff, batch_size)
        result.anchor_seq = anchor
        if not deleted:
            break
        result.deleted += deleted
        result.batches += 1
    if result.deleted:
        with database.transaction(schema) as session:
            audit.record(
                session,
                AuditAction.AUDIT_PRUNED,
                target_type="tenant",
                target_id=tenant_id,
                data={"deleted": result.deleted, "before": cutoff.isoformat(), "through_seq": anchor,
                      "retention_days": days},
                actor=audit.SYSTEM,
            )  # fmt: skip
    return result


def prune_expired(
    database: Database,
    now: datetime | None = None,
    *,
    only: set[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[PruneResult]:
    """Apply every tenant's audit retention (``only``: slugs or ids). ``now``: the clock
    (tests pass one; default the current time). Returns one result per tenant considered.

    Raises:
        ValueError: ``batch_size`` below 1.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    now = now or utcnow()
    with database.transaction() as session:
        tenants = session.scalars(select(Tenant).order_by(Tenant.created_at)).all()
        if only:
            tenants = [t for t in tenants if t.slug in only or str(t.id) in only]
        plan = [(t.id, t.slug, t.schema_name, retention_days(t)) for t in tenants]
    results = []
    for tenant_id, slug, schema, days in plan:
        try:
            results.append(prune_tenant(database, tenant_id, slug, schema, days, now, batch_size))
        except Exception as exc:  # one tenant's failure (its schema gone) stops no other
            log.exception("audit prune failed", extra={"tenant": slug})
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            results.append(PruneResult(tenant_id, slug, days, error=error))
    return results
