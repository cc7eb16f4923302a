"""Control-plane tables of billing (schema ``saas``).

* ``billing_accounts``: one row per tenant (so at most one subscription per tenant): the Stripe
  customer, the subscription's last known state, and the ordering guard
  (``last_event_created``: the ``created`` of the newest subscription event applied).
* ``stripe_webhook_events``: every verified webhook event, stored under its unique Stripe id:
  the exactly-once ledger and the operator's view (``saas billing events``).
* ``billing_overrides``: an operator's plan or limit override (``saas tenants set-plan``).
* ``billing_usage_periods``: one row per tenant and usage period being reported to Stripe
  Billing Meters (the subscription's own periods): how much of its counter is reported, and
  when its final slice was sent (``closed_at``).
* ``billing_usage_reports``: one row per slice of a period sent (or being sent) as one meter
  event, written before the send, so a rerun resends the same event and never bills twice.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from saas.db import JSONType, SharedBase, utcnow
from saas.identity.models import Tenant


class BillingAccount(SharedBase):
    """A tenant's Stripe customer and (at most one) subscription, as last applied."""

    __tablename__ = "billing_accounts"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"), primary_key=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    customer_email: Mapped[str | None] = mapped_column(String(320))
    customer_deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    subscription_item_id: Mapped[str | None] = mapped_column(String(255))
    price_id: Mapped[str | None] = mapped_column(String(255))
    plan: Mapped[str | None] = mapped_column(String(32))
    interval: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str | None] = mapped_column(String(32))  # Stripe subscription status
    quantity: Mapped[int | None] = mapped_column(Integer)
    #: the subscription's current billing period ``[start, end)`` (Stripe's items.data[].current_period_*)
    current_period_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    current_period_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    trial_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    past_due_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    grace_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_event_created: Mapped[int | None] = mapped_column(BigInteger)  # unix seconds (Stripe clock)
    last_event_id: Mapped[str | None] = mapped_column(String(255))
    #: ``created`` of the newest ``customer.updated|deleted`` applied (unix seconds, Stripe clock)
    customer_event_created: Mapped[int | None] = mapped_column(BigInteger)
    #: the customer's address and tax ids as Stripe has them (``customer.updated``,
    #: ``customer.tax_id.*``): ``{"country", "line1", ...}`` and ``[{"type", "value", ...}]``
    customer_address: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    customer_tax_ids: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    #: the hosted page of the unpaid latest invoice while ``past_due`` (the dunning mails' link)
    open_invoice_url: Mapped[str | None] = mapped_column(String(2048))
    #: ``past_due_since`` of the grace period whose end was mailed (``saas billing dunning``)
    grace_notice_for: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class WebhookEvent(SharedBase):
    """One Stripe event: ``status`` is received | processed | ignored | failed."""

    __tablename__ = "stripe_webhook_events"
    __table_args__ = (
        Index("ix_stripe_webhook_events_failed", "received_at", postgresql_where="status = 'failed'"),
        Index("ix_stripe_webhook_events_tenant_id", "tenant_id"),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # evt_...: the unique event id
    type: Mapped[str] = mapped_column(String(100))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    livemode: Mapped[bool] = mapped_column(Boolean, default=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default="received")
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BillingOverride(SharedBase):
    """An operator's override: ``plan`` replaces the subscription's plan; ``limits`` replaces
    single entitlements (``seats``, ``requests_per_minute``, ``monthly_api_calls``, features)."""

    __tablename__ = "billing_overrides"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"), primary_key=True)
    plan: Mapped[str | None] = mapped_column(String(32))
    limits: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    reason: Mapped[str | None] = mapped_column(Text)
    set_by: Mapped[str | None] = mapped_column(String(320))
    set_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UsagePeriod(SharedBase):
    """A tenant's usage period reported to Stripe Billing Meters (``saas.billing.usage``).

    ``period`` is the counter's label (:mod:`saas.billing.periods`); ``reported`` the counter's
    value the slices so far (``slices`` of them) cover (what they billed is their sum: a counter
    that restarted from 0 is billed again from 0); ``closed_at`` when the final slice
    (after the period's end) was sent: a closed period is never read again.
    """

    __tablename__ = "billing_usage_periods"
    __table_args__ = (
        Index("ix_billing_usage_periods_open", "tenant_id", postgresql_where="closed_at IS NULL"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"), primary_key=True)
    period: Mapped[str] = mapped_column(String(32), primary_key=True)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stripe_customer_id: Mapped[str] = mapped_column(String(255))
    reported: Mapped[int] = mapped_column(BigInteger, default=0)
    slices: Mapped[int] = mapped_column(Integer, default=0)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UsageReport(SharedBase):
    """One slice of a usage period: one Stripe meter event of ``quantity`` API calls (the
    counter went from ``cumulative - quantity`` to ``cumulative``), with ``identifier``
    (Stripe's dedupe key: ``usage-<tenant>-<period>-<slice>``) and ``event_at`` (its
    ``timestamp``, inside the period) fixed before the first send; ``sent_at`` once Stripe has it.
    """

    __tablename__ = "billing_usage_reports"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"), primary_key=True)
    period: Mapped[str] = mapped_column(String(32), primary_key=True)
    slice: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    quantity: Mapped[int] = mapped_column(BigInteger)
    cumulative: Mapped[int] = mapped_column(BigInteger)
    identifier: Mapped[str] = mapped_column(String(255), unique=True)
    stripe_customer_id: Mapped[str] = mapped_column(String(255))
    event_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
