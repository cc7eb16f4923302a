"""Billing's periodic jobs (listed in :mod:`saas.schedules`, run by ``saas beat``)."""

from __future__ import annotations

import logging
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
