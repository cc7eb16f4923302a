"""Operations' periodic jobs (listed in :mod:`saas.schedules`, run by ``saas beat``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from saas.ops.lifecycle import purge_due
from saas.services import services


def purge_tenants(app: Any, now: datetime | None = None) -> dict[str, Any]:
    """Drop every soft-deleted tenant whose retention is over (``saas tenants purge``: one
    transaction each, see :func:`saas.ops.lifecycle.purge_due`).

    Returns:
        ``{"purged": [slug, ...], "failed": {slug: error}}``.
    """
    results = purge_due(services(app).database.engine, now=now)
    return {
        "purged": [r.slug for r in results if r.ok],
        "failed": {r.slug: r.error for r in results if not r.ok},
    }


def prune_audit(app: Any, now: datetime | None = None) -> dict[str, Any]:
    """Delete audit events older than each tenant's ``audit_log_days`` (``saas audit prune``;
    :func:`saas.ops.audit_retention.prune_expired`: batches of 1,000, the chain's anchor moved).

    Returns:
        ``{"deleted": n, "failed": {slug: error}}``.
    """
    from saas.ops.audit_retention import prune_expired

    results = prune_expired(services(app).database, now)
    rows = [r.to_dict() for r in results]
    failed = {r["slug"]: r["error"] for r in rows if r["error"]}
    return {"deleted": sum(r["deleted"] for r in rows), "failed": failed}


def prune_webhooks(app: Any, now: datetime | None = None) -> dict[str, int]:
    """Delete webhook attempts, finished deliveries and messages older than
    ``WEBHOOKS_RETENTION_DAYS`` (``saas webhooks prune``; :func:`saas.webhooks.delivery.prune`)."""
    from saas.db import utcnow
    from saas.webhooks.delivery import prune

    svc = services(app)
    with svc.database.transaction() as session:
        return prune(session, now or utcnow(), svc.settings.webhooks_retention_days)
