"""Background jobs of billing: delivered from the transactional outbox by topic (run by
``saas worker``), and the usage report (:func:`report_usage`, scheduled in
:data:`saas.schedules.SCHEDULES`, published by ``saas beat``).

:data:`HANDLERS` maps an outbox topic to its handler. The contract every handler keeps::

    fn(app: flask.Flask, payload: dict) -> None

* ``payload`` is the outbox message's JSON payload, exactly as enqueued.
* Delivery is at least once: a handler may run twice for one message, or after a later message
  of the same topic; it is idempotent and reads current state rather than trusting the payload.
* It returns normally when the message is done (sent, or nothing to do: billing off, tenant
  gone, quantity already right) and raises to have the worker retry it later (Stripe down).
* It opens its own transaction(s) on ``services(app).database`` and runs in ``app``'s context.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Flask
from sqlalchemy import func, select, update

from saas import audit
from saas.audit import AuditAction
from saas.billing import entitlements as ent
from saas.billing import usage
from saas.billing.models import BillingAccount
from saas.billing.service import SYNC_SEATS_TOPIC, get_account, seats_used, update_quantity
from saas.billing.usage import UsageRun
from saas.identity.models import Tenant
from saas.services import services

log = logging.getLogger("saas.billing.jobs")

SEATS_ACTOR = audit.Actor("system", "billing")

Handler = Callable[[Flask, dict[str, Any]], None]


def sync_seats(app: Flask, payload: dict[str, Any]) -> None:
    """Set the tenant's per-seat subscription quantity to its active members now (at least 1),
    with proration (``proration_behavior=create_prorations``).

    Payload: ``{"tenant_id": "<uuid>"}`` (enqueued by :func:`saas.billing.service.members_changed`).
    Pushes of one tenant are serialized by a transaction-scoped advisory lock, and each reads the
    member count while holding it, so the last push always carries the latest count, whatever
    order messages are delivered in. The account row is only locked for the final write, so
    requests and webhooks never wait on Stripe. Nothing is sent when the quantity is already right.

    Raises:
        KeyError, ValueError: malformed payload (the worker should park the message).
        stripe.StripeError: Stripe refused or was unreachable: nothing changed; retry later.
    """
    tenant_id = uuid.UUID(str(payload["tenant_id"]))
    handle = services(app).billing
    if handle is None:
        return
    with app.app_context(), services(app).database.transaction() as session:
        session.execute(
            select(func.pg_advisory_xact_lock(func.hashtextextended(f"billing.sync_seats:{tenant_id}", 0)))
        )
        account = get_account(session, tenant_id)
        if (
            account is None
            or not account.subscription_item_id
            or account.status not in (ent.PAID_STATUSES | ent.GRACE_STATUSES)
            or not ent.plan(account.plan).per_seat
        ):
            return
        quantity = max(seats_used(session, tenant_id), 1)
        if quantity == account.quantity:
            return
        previous, item, sub_id = (
            account.quantity,
            account.subscription_item_id,
            account.stripe_subscription_id,
        )
        update_quantity(handle, item, quantity)
        session.execute(
            update(BillingAccount)
            .where(BillingAccount.tenant_id == tenant_id, BillingAccount.subscription_item_id == item)
            .values(quantity=quantity)
        )
        tenant = session.get(Tenant, tenant_id)
        if tenant is not None:
            audit.record(
                session,
                AuditAction.BILLING_SEATS_CHANGED,
                target_type="subscription",
                target_id=sub_id,
                data={"from": previous, "to": quantity},
                actor=SEATS_ACTOR,
                tenant_id=tenant.id,
            )
        log.info("tenant %s: seat quantity %s -> %s", tenant_id, previous, quantity)


def report_usage(app: Flask, now: datetime | None = None) -> UsageRun | None:
    """The usage report (:func:`saas.billing.usage.report_usage`) of every billed tenant, at
    ``now`` (default: now); None when billing is off. Run every ``USAGE_REPORT_INTERVAL``
    seconds by ``saas beat`` (``billing.report_usage`` in :data:`saas.schedules.SCHEDULES`) and by
    ``saas billing report-usage``;
    reruns and concurrent runs never bill twice. Raises nothing for one tenant's failure (it is
    in :attr:`UsageRun.failed` and retried by the next run)."""
    svc = services(app)
    if svc.billing is None:
        return None
    with app.app_context():
        run = usage.report_usage(svc.database, svc.redis, svc.billing, now=now)
    if run.failed:
        log.warning("usage report: %s periods failed (retried next run)", len(run.failed))
    return run


#: outbox topic -> handler ``fn(app, payload) -> None`` (see the module docstring)
HANDLERS: dict[str, Handler] = {SYNC_SEATS_TOPIC: sync_seats}

__all__ = ["HANDLERS", "report_usage", "sync_seats"]
