"""Usage metering: API calls per tenant and period, counted in Redis, reported to Stripe.

Counter key (shared with the rate limiter in ``saas.limits``, which increments it once per
API call)::

    {t:<tenant_id>}:usage:<period>        period = "YYYY-MM" (UTC calendar month)

The ``{t:...}`` hash tag keeps every key of a tenant in one Redis Cluster slot and puts the
tenant in the key by construction (invariant 8); the id is the canonical lowercase, hyphenated
UUID. :func:`count_api_call` (increment) and :func:`read_usage` (read) are the documented pair:
any other incrementer must use :func:`usage_key` and keep the key until the period has been
reported (:func:`count_api_call` sets it to expire :data:`KEEP_AFTER_PERIOD` after the period
ends, never earlier).

Only a closed period is reported: one that ended at least :data:`SETTLE_SECONDS` ago, so calls
counted in its last moments are in. A zero or unreadable count records nothing (no
``billing_usage_reports`` row, no meter event), so a later run can still bill the true count.

:func:`report_usage` sends one Stripe Billing Meter event per tenant and closed period
(https://docs.stripe.com/api/billing/meter-event/create) with ``identifier`` =
``usage-<tenant_id>-<period>``: Stripe drops a repeated identifier, and the
``billing_usage_reports`` row (primary key tenant + period) stops a rerun from sending again
once Stripe's dedupe window has passed, so a rerun never bills twice.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import stripe
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from saas.billing.models import BillingAccount, UsageReport
from saas.billing.service import Billing
from saas.db import Database, utcnow

log = logging.getLogger("saas.billing.usage")

#: a period is closed (reportable) this long after its end: late increments have landed
SETTLE_SECONDS = 300
#: a usage counter lives this long after its period ends (reporting must happen before; Stripe
#: accepts meter events up to 35 days back)
KEEP_AFTER_PERIOD = timedelta(days=62)


class PeriodNotClosed(ValueError):
    """The period has not ended yet (or ended less than :data:`SETTLE_SECONDS` ago)."""


def period_of(moment: datetime | None = None) -> str:
    """The usage period containing ``moment`` (default now): ``YYYY-MM`` in UTC."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m")


def previous_period(period: str) -> str:
    """The period before ``period`` (``2026-01`` -> ``2025-12``)."""
    year, month = (int(x) for x in period.split("-"))
    return f"{year - 1}-12" if month == 1 else f"{year}-{month - 1:02d}"


def period_end(period: str) -> datetime:
    """The first instant after ``period`` (UTC)."""
    year, month = (int(x) for x in period.split("-"))
    return datetime(year + (month == 12), 1 if month == 12 else month + 1, 1, tzinfo=UTC)


def usage_key(tenant_id: uuid.UUID | str, period: str) -> str:
    """The Redis key counting ``tenant_id``'s API calls in ``period``: ``{t:<id>}:usage:<period>``
    (``<id>`` canonical: lowercase, hyphenated; ``period`` ``YYYY-MM``).

    Raises:
        ValueError: ``tenant_id`` is not a UUID.
    """
    return f"{{t:{uuid.UUID(str(tenant_id))}}}:usage:{period}"


def read_usage(redis: Any, tenant_id: uuid.UUID | str, period: str) -> int | None:
    """API calls of the tenant in ``period`` (0 when none were counted); None when Redis is down
    or the value is not a count."""
    try:
        raw = redis.get(usage_key(tenant_id, period))
    except Exception:
        log.warning("usage counter unavailable", exc_info=True)
        return None
    try:
        return int(raw) if raw else 0
    except ValueError:
        log.warning("usage counter of tenant %s holds %r, not a count", tenant_id, raw)
        return None


def count_api_call(redis: Any, tenant_id: uuid.UUID | str, period: str | None = None) -> int:
    """Count one API call of the tenant in ``period`` (default: now); returns the new count.

    The key expires :data:`KEEP_AFTER_PERIOD` after the period's end (set once, ``EXPIREAT NX``).
    """
    period = period or period_of()
    key = usage_key(tenant_id, period)
    pipe = redis.pipeline(transaction=True)
    pipe.incr(key)
    pipe.expireat(key, period_end(period) + KEEP_AFTER_PERIOD, nx=True)
    return int(pipe.execute()[0])


def is_closed(period: str, now: datetime | None = None) -> bool:
    """Whether ``period`` ended at least :data:`SETTLE_SECONDS` before ``now``."""
    now = now or datetime.now(UTC)
    return now >= period_end(period) + timedelta(seconds=SETTLE_SECONDS)


@dataclass
class UsageRun:
    """Result of :func:`report_usage`: tenant id -> quantity sent, and what was skipped."""

    period: str
    sent: dict[str, int] = field(default_factory=dict)
    already_reported: list[str] = field(default_factory=list)
    #: no API calls counted: nothing sent and nothing recorded (a later run may still bill)
    empty: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def report_usage(
    database: Database,
    redis: Any,
    billing: Billing,
    period: str,
    tenant_ids: list[uuid.UUID] | None = None,
) -> UsageRun:
    """Report ``period``'s API calls of each billed tenant (or of ``tenant_ids``) to Stripe.

    Each tenant is one transaction: the report row is inserted (``ON CONFLICT DO NOTHING``: a
    tenant already reported is skipped), then the meter event is sent with the identifier
    ``usage-<tenant_id>-<period>``; a Stripe failure rolls the row back so the next run retries.
    The event's timestamp is the period's last second (Stripe accepts up to 35 days back).
    A tenant whose count is zero is listed in ``empty``; one whose count cannot be read in
    ``failed``: neither records a row, so a later run can still bill the true count.

    Raises:
        PeriodNotClosed: ``period`` has not ended (or ended less than :data:`SETTLE_SECONDS` ago).
    """
    if not is_closed(period):
        raise PeriodNotClosed(
            f"period {period} is not closed yet; it can be reported from "
            f"{(period_end(period) + timedelta(seconds=SETTLE_SECONDS)).isoformat()}"
        )
    run = UsageRun(period)
    with database.transaction() as session:
        query = select(BillingAccount.tenant_id, BillingAccount.stripe_customer_id).where(
            BillingAccount.stripe_customer_id.is_not(None), BillingAccount.customer_deleted_at.is_(None)
        )
        if tenant_ids is not None:
            query = query.where(BillingAccount.tenant_id.in_(tenant_ids))
        accounts = list(session.execute(query))
    timestamp = min(int(period_end(period).timestamp()) - 1, int(utcnow().timestamp()))
    for tenant_id, customer_id in accounts:
        quantity = read_usage(redis, tenant_id, period)
        if quantity is None:
            run.failed[str(tenant_id)] = "usage counter unavailable"
            continue
        if quantity <= 0:
            run.empty.append(str(tenant_id))
            continue
        identifier = f"usage-{tenant_id}-{period}"
        try:
            with database.transaction() as session:
                inserted = session.execute(
                    insert(UsageReport.__table__)
                    .values(tenant_id=tenant_id, period=period, quantity=quantity, identifier=identifier,
                            stripe_customer_id=customer_id, reported_at=utcnow())
                    .on_conflict_do_nothing()
                    .returning(UsageReport.__table__.c.tenant_id)
                ).first()  # fmt: skip
                if inserted is None:
                    run.already_reported.append(str(tenant_id))
                    continue
                try:
                    billing.client.v1.billing.meter_events.create(
                        params={
                            "event_name": billing.settings.stripe_meter_event_name,
                            "identifier": identifier,
                            "timestamp": timestamp,
                            "payload": {"stripe_customer_id": customer_id, "value": str(quantity)},
                        },
                        options={"idempotency_key": identifier},
                    )
                except stripe.InvalidRequestError as exc:
                    # an earlier run's event reached Stripe but its row was lost (answer timed
                    # out, crash before commit): Stripe holds it, so record it as reported
                    if exc.code != "resource_already_exists":
                        raise
                    log.info("usage of tenant %s for %s was already at Stripe", tenant_id, period)
                run.sent[str(tenant_id)] = quantity
        except Exception as exc:
            log.warning("usage report for tenant %s failed: %s", tenant_id, exc.__class__.__name__)
            run.failed[str(tenant_id)] = exc.__class__.__name__
    return run
