"""Billing's periodic jobs (listed in :mod:`saas.schedules`, run by ``saas beat``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from saas import audit
from saas.billing import service
from saas.billing.models import BillingAccount
from saas.identity.models import Tenant
from saas.services import services

log = logging.getLogger("saas.billing")


def reconcile(app: Any) -> dict[str, Any]:
    """Reconcile every tenant with a Stripe customer from Stripe (``saas billing sync --all``):
    repairs drift after missed webhooks (https://docs.stripe.com/webhooks#handle-failures), one
    transaction per tenant, a failing tenant logged and skipped. Off (nothing done) while billing
    is off.

    Returns:
        ``{"synced": {tenant_id: outcome}, "failed": {tenant_id: detail}}``, or
        ``{"skipped": "billing is off"}``.
    """
    svc = services(app)
    if svc.billing is None:
        return {"skipped": "billing is off"}
    with svc.database.transaction() as session:
        ids = list(
            session.scalars(
                select(BillingAccount.tenant_id).where(BillingAccount.stripe_customer_id.is_not(None))
            )
        )
    synced: dict[str, str] = {}
    failed: dict[str, str] = {}
    for tenant_id in ids:
        try:
            with svc.database.transaction() as session:
                tenant = session.get(Tenant, tenant_id)
                if tenant is None:
                    continue
                synced[str(tenant_id)] = service.sync_tenant(session, svc.billing, tenant, actor=audit.SYSTEM)
        except service.AppError as exc:
            failed[str(tenant_id)] = exc.detail or exc.title
            log.warning("billing reconciliation failed", extra={"tenant_id": str(tenant_id)})
    return {"synced": synced, "failed": failed}


def dunning(app: Any, now: datetime | None = None) -> dict[str, Any]:
    """Queue the end-of-grace mail of every tenant whose grace period (``past_due``) has just
    ended, once per subscription and grace period (``saas billing dunning``;
    :func:`saas.billing.dunning.notify_grace_ended`), in one transaction.

    Returns:
        ``{"mailed": [tenant_id, ...]}``.
    """
    from saas.billing import dunning as dunning_mod

    with services(app).database.transaction() as session:
        queued = dunning_mod.notify_grace_ended(session, now or datetime.now(UTC))
    return {"mailed": [str(t) for t in queued]}


def report_usage(app: Any, now: datetime | None = None) -> dict[str, Any]:
    """Every billed tenant's new API-call usage to Stripe Billing Meters
    (:func:`saas.billing.jobs.report_usage`; ``saas billing report-usage``): reruns never bill
    twice. Returns ``{"skipped": "billing is off"}`` or the run's counts."""
    from saas.billing.jobs import report_usage as run_report

    run = run_report(app, now=now)
    if run is None:
        return {"skipped": "billing is off"}
    return {"failed": len(run.failed)}
