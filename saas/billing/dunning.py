"""Dunning: the mails that ask a tenant to pay an unpaid invoice (the anchors: Laravel Cashier's
and Pay's ``payment_failed`` notifications).

* ``invoice.payment_failed`` (a webhook, :mod:`saas.billing.webhooks`) queues
  :data:`PAYMENT_FAILED_TOPIC` once per event, when Stripe's live invoice is still ``open``.
* The end of the grace period (``billing_accounts.grace_until``, set while ``past_due``;
  :func:`saas.billing.service.apply_subscription`) is no event of Stripe's: :func:`notify_grace_ended`,
  run by ``saas billing dunning`` and the beat schedule ``billing.dunning`` (every 10 minutes), finds each
  subscription whose grace period is over and queues :data:`GRACE_ENDED_TOPIC` once per
  subscription and grace period: ``grace_notice_for`` keeps the start (``past_due_since``) of the
  grace period already mailed, written in the transaction that queues the mail.

Both mails go (``saas.worker.mail``) to the billing contact and the owners, with the invoice's
hosted page (``hosted_invoice_url``). Both are audited in the tenant's log.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from saas import audit, outbox
from saas.audit import AuditAction
from saas.billing import entitlements as ent
from saas.billing.models import BillingAccount
from saas.identity.models import Tenant

#: outbox topic of the payment-failed mail (handler ``saas.worker.mail.send_payment_failed``)
PAYMENT_FAILED_TOPIC = "mail.payment_failed"
#: outbox topic of the end-of-grace mail (handler ``saas.worker.mail.send_grace_ended``)
GRACE_ENDED_TOPIC = "mail.grace_ended"
DUNNING_ACTOR = audit.Actor("system", "billing")


def queue_payment_failed(
    session: Session, tenant: Tenant, invoice: dict, event_id: str
) -> None:
    """Queue the payment-failed mail of Stripe's live ``invoice`` (an ``open`` one).

    Payload: ``tenant`` (slug), ``invoice_id``, ``number``, ``hosted_invoice_url``,
    ``amount_due`` (smallest currency unit), ``currency``, ``next_payment_attempt`` (Unix
    seconds or None), ``event_id`` (the ``Message-ID``: one mail per event)."""
    outbox.enqueue(
        session,
        PAYMENT_FAILED_TOPIC,
        {
            "tenant": tenant.slug,
            "invoice_id": invoice.get("id"),
            "number": invoice.get("number"),
            "hosted_invoice_url": invoice.get("hosted_invoice_url"),
            "amount_due": invoice.get("amount_due"),
            "currency": invoice.get("currency"),
            "next_payment_attempt": invoice.get("next_payment_attempt"),
            "event_id": event_id,
        },
        tenant_id=tenant.id,
    )


def notify_grace_ended(session: Session, now: datetime) -> list[uuid.UUID]:
    """Queue one end-of-grace mail for each ``past_due`` subscription whose grace period ended
    at or before ``now`` and was not mailed yet; returns the tenants queued.

    Idempotent: the account's ``grace_notice_for`` is set to its ``past_due_since`` in the
    caller's transaction, with the outbox message and the ``billing.grace_ended`` audit event, so
    a rerun (or a concurrent one: rows are taken ``FOR UPDATE SKIP LOCKED``) queues nothing
    twice; a later grace period (a new ``past_due_since``) is mailed again.

    Payload of :data:`GRACE_ENDED_TOPIC`: ``tenant`` (slug), ``subscription_id``,
    ``grace_until`` and ``past_due_since`` (Unix seconds), ``hosted_invoice_url`` (or None).
    """
    accounts = session.scalars(
        select(BillingAccount)
        .where(
            BillingAccount.status.in_(ent.GRACE_STATUSES),
            BillingAccount.grace_until.is_not(None),
            BillingAccount.grace_until <= now,
            BillingAccount.past_due_since.is_not(None),
            or_(
                BillingAccount.grace_notice_for.is_(None),
                BillingAccount.grace_notice_for != BillingAccount.past_due_since,
            ),
        )
        .order_by(BillingAccount.grace_until)
        .with_for_update(skip_locked=True)
    ).all()
    queued: list[uuid.UUID] = []
    for account in accounts:
        tenant = session.get(Tenant, account.tenant_id)
        assert account.past_due_since is not None and account.grace_until is not None
        account.grace_notice_for = account.past_due_since
        if tenant is None or tenant.deleted_at is not None:
            continue
        audit.record(
            session,
            AuditAction.BILLING_GRACE_ENDED,
            target_type="subscription",
            target_id=account.stripe_subscription_id,
            data={
                "past_due_since": account.past_due_since.isoformat(),
                "grace_until": account.grace_until.isoformat(),
            },
            actor=DUNNING_ACTOR,
            tenant_id=tenant.id,
        )
        outbox.enqueue(
            session,
            GRACE_ENDED_TOPIC,
            {
                "tenant": tenant.slug,
                "subscription_id": account.stripe_subscription_id,
                "grace_until": int(account.grace_until.timestamp()),
                "past_due_since": int(account.past_due_since.timestamp()),
                "hosted_invoice_url": account.open_invoice_url,
            },
            tenant_id=tenant.id,
        )
        queued.append(tenant.id)
    session.flush()
    return queued


__all__ = ["GRACE_ENDED_TOPIC", "PAYMENT_FAILED_TOPIC", "notify_grace_ended", "queue_payment_failed"]
