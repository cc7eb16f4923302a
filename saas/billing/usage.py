"""Usage metering: API calls per tenant and usage period, counted in Redis, reported to Stripe
Billing Meters continuously, in slices, each billed exactly once.

Counter key (shared with the rate limiter in ``saas.limits``, which increments it once per
admitted API call in the same Lua call as the rate limits and the quota)::

    {t:<tenant_id>}:usage:<label>

``<label>`` names the tenant's usage period (:mod:`saas.billing.periods`): a live
subscription's own billing period (``YYYYMMDDTHHMMSSZ``, its start: Stripe bills a subscription
over its period, which starts on its anniversary, not on the 1st), else the UTC calendar month
(``YYYY-MM``; the free plan). The ``{t:...}`` hash tag keeps every key of a tenant in one Redis
Cluster slot and puts the tenant in the key by construction (invariant 8). The counter expires
:data:`KEEP_AFTER_PERIOD` after its period ends, so it outlives Stripe's 35-day window.

Reporting (:func:`report_usage`, run by the worker every ``USAGE_REPORT_INTERVAL`` seconds and by
``saas billing report-usage``): each subscription period being reported is a
``billing_usage_periods`` row (registered by :func:`saas.billing.service.keep_usage_period`
whenever a subscription is applied, and by each run for the current period). For each open
period a run:

1. locks the period's row and, unless an earlier slice is still unsent, reads the counter; the
   calls counted since the last slice become a new *slice*: a ``billing_usage_reports`` row
   with its quantity, the identifier ``usage-<tenant_id>-<label>-<n>`` and the event timestamp
   (now, clamped inside the period), committed **before** anything is sent;
2. sends every unsent slice as one meter event
   (https://docs.stripe.com/api/billing/meter-event/create): ``event_name``
   ``STRIPE_METER_EVENT_NAME``, ``payload`` ``{stripe_customer_id, value}``, the slice's
   ``identifier`` and ``timestamp``, and the identifier as ``Idempotency-Key``;
3. marks it sent. A resend after a crash or a Stripe outage sends the very same event (same
   identifier, value and timestamp): Stripe drops a repeated identifier (within at least 24 h),
   and a slice marked sent is never sent again, so a rerun never bills twice and no call is lost.

Rollover: a period stays open after its end: its counter is read until its final slice. Once the
period has ended (or stopped being the subscription's current period) at least
:data:`SETTLE_SECONDS` ago, so that in-flight calls have landed, the run sends the final slice
(timestamp: the period's last second) and closes the period. Stripe finalizes the period's
invoice about an hour after its end and accepts meter events up to 35 days back, so with the
default interval (900 s) the closing slice arrives within about 20 minutes of the end.

The meter must sum raw events (``default_aggregation.formula = sum``, raw ingestion): each slice
carries only the calls since the previous one.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import stripe
from sqlalchemy import and_, func, select, update

from saas import audit
from saas.audit import AuditAction
from saas.billing import entitlements as ent
from saas.billing.models import BillingAccount, UsagePeriod, UsageReport
from saas.billing.periods import Period, usage_period
from saas.billing.service import Billing, keep_usage_periods
from saas.cache.namespace import TenantKeys
from saas.db import Database, utcnow

log = logging.getLogger("saas.billing.usage")

#: a period's final slice is sent this long after it ended: calls counted in its last moments
#: (requests in flight, a worker's plan kept until then) have landed
SETTLE_SECONDS = 300
#: a usage counter lives this long after its period ends (the limiter's ``QUOTA_RETENTION``)
KEEP_AFTER_PERIOD = timedelta(days=62)
#: who reports usage (audit actor of a closed period)
USAGE_ACTOR = audit.Actor("system", "billing-usage")


def usage_key(tenant_id: uuid.UUID | str, label: str) -> str:
    """The Redis key counting ``tenant_id``'s API calls in the period ``label``:
    ``{t:<id>}:usage:<label>`` (``<id>`` canonical: lowercase, hyphenated).

    Raises:
        ValueError: ``tenant_id`` is not a UUID.
    """
    return TenantKeys(uuid.UUID(str(tenant_id))).usage(label)


def read_usage(redis: Any, tenant_id: uuid.UUID | str, label: str) -> int | None:
    """API calls of the tenant in the period ``label`` (0 when none were counted); None when
    Redis is down or the value is not a count."""
    try:
        raw = redis.get(usage_key(tenant_id, label))
    except Exception:
        log.warning("usage counter unavailable", exc_info=True)
        return None
    try:
        return int(raw) if raw else 0
    except ValueError:
        log.warning("usage counter of tenant %s holds %r, not a count", tenant_id, raw)
        return None


def count_api_call(redis: Any, tenant_id: uuid.UUID | str, period: Period) -> int:
    """Count one API call of the tenant in ``period``; returns the new count (the rate
    limiter's Lua call does the same for every admitted request).

    The key expires :data:`KEEP_AFTER_PERIOD` after the period's end (set once, ``EXPIREAT NX``).
    """
    key = usage_key(tenant_id, period.label)
    pipe = redis.pipeline(transaction=True)
    pipe.incr(key)
    pipe.expireat(key, period.end + KEEP_AFTER_PERIOD, nx=True)
    return int(pipe.execute()[0])


def current_period(tenant: Any, now: datetime | None = None) -> Period:
    """The usage period of ``tenant`` (a ``Tenant`` row or anything :func:`entitlements_for`
    takes) at ``now`` (default: now): its live subscription's period, else the calendar month."""
    return usage_period(ent.entitlements_for(tenant).quota_period, now or utcnow())


def identifier_for(tenant_id: uuid.UUID, label: str, slice_no: int) -> str:
    """The meter event identifier of one slice: ``usage-<tenant_id>-<label>-<n>`` (at most 64
    characters; Stripe's limit is 100)."""
    return f"usage-{tenant_id}-{label}-{slice_no}"


@dataclass
class UsageRun:
    """Result of :func:`report_usage`, by ``"<tenant_id>/<period label>"``."""

    #: quantity sent in this run (new slices and resent ones)
    sent: dict[str, int] = field(default_factory=dict)
    #: periods closed by this run (their final slice is at Stripe)
    closed: list[str] = field(default_factory=list)
    #: open periods with no new calls since their last slice
    unchanged: list[str] = field(default_factory=list)
    #: what went wrong (the counter unreadable, Stripe refused or unreachable): retried next run
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Slice:
    period: str
    slice: int
    quantity: int
    identifier: str
    customer: str
    timestamp: int


def report_usage(
    database: Database,
    redis: Any,
    billing: Billing,
    *,
    now: datetime | None = None,
    tenant_ids: list[uuid.UUID] | None = None,
) -> UsageRun:
    """Report each billed tenant's new API calls (or only ``tenant_ids``'), as described in the
    module docstring: register the current subscription periods, then for every open period
    create the slice of calls counted since the last one, send the unsent slices, and close the
    periods that ended at least :data:`SETTLE_SECONDS` before ``now``.

    Idempotent and safe to run concurrently (each period's row is locked while its slice is
    cut; a slice sent twice has one identifier). Failures are per period, listed in
    :attr:`UsageRun.failed` and retried by the next run; nothing raises for one tenant.

    Args:
        now: the reporting instant (aware UTC; default: now). Slice timestamps are ``now``
            clamped inside their period.
    """
    now = now or utcnow()
    run = UsageRun()
    live = ent.PAID_STATUSES | ent.GRACE_STATUSES
    with database.transaction() as session:
        query = select(BillingAccount).where(
            BillingAccount.stripe_customer_id.is_not(None),
            BillingAccount.customer_deleted_at.is_(None),
            BillingAccount.stripe_subscription_id.is_not(None),
            BillingAccount.status.in_(live),
        )
        if tenant_ids is not None:
            query = query.where(BillingAccount.tenant_id.in_(tenant_ids))
        keep_usage_periods(session, session.scalars(query))
    with database.transaction() as session:
        unsent = (
            select(UsageReport.slice)
            .where(
                UsageReport.tenant_id == UsagePeriod.tenant_id,
                UsageReport.period == UsagePeriod.period,
                UsageReport.sent_at.is_(None),
            )
            .exists()
        )
        query = (
            select(UsagePeriod, BillingAccount, unsent)
            .join(BillingAccount, BillingAccount.tenant_id == UsagePeriod.tenant_id)
            .where(UsagePeriod.closed_at.is_(None))
            .order_by(UsagePeriod.tenant_id, UsagePeriod.starts_at)
        )
        if tenant_ids is not None:
            query = query.where(UsagePeriod.tenant_id.in_(tenant_ids))
        todo = [
            (p.tenant_id, p.period, int(p.reported), _closing_at(p, a), bool(pending))
            for p, a, pending in session.execute(query)
        ]  # fmt: skip
    counts = _read_counters(redis, [(t, label) for t, label, *_ in todo])
    settle = timedelta(seconds=SETTLE_SECONDS)
    for (tenant_id, label, reported, closing_at, pending), count in zip(todo, counts, strict=True):
        name = f"{tenant_id}/{label}"
        if not pending and count is not None and count == reported and now < closing_at + settle:
            run.unchanged.append(name)  # nothing new and not closing: no transaction at all
            continue
        try:
            _report_period(database, redis, billing, tenant_id, label, closing_at, now, run, name)
        except Exception as exc:
            log.warning("usage report of %s failed: %s", name, exc.__class__.__name__)
            run.failed[name] = exc.__class__.__name__
    return run


def _read_counters(redis: Any, periods: list[tuple[uuid.UUID, str]], chunk: int = 500) -> list[int | None]:
    """The counters of ``periods``, pipelined (``GET`` each: a tenant's keys are in its own
    cluster slot, so no ``MGET`` across tenants); None where unknown (Redis down, not a count),
    which sends those periods down the locked path, where the read is retried and reported."""
    out: list[int | None] = []
    for start in range(0, len(periods), chunk):
        part = periods[start : start + chunk]
        try:
            pipe = redis.pipeline(transaction=False)
            for tenant_id, label in part:
                pipe.get(usage_key(tenant_id, label))
            raws = pipe.execute()
        except Exception:
            log.warning("usage counters unavailable", exc_info=True)
            out += [None] * len(part)
            continue
        for raw in raws:
            try:
                out.append(int(raw) if raw else 0)
            except ValueError:
                out.append(None)
    return out


def _closing_at(period: UsagePeriod, account: BillingAccount) -> datetime:
    """When the period's counter stops growing: its end, or earlier when it stopped being the
    subscription's current period (canceled, plan change that reset the cycle), taken as the
    account's last sync; the final slice is cut :data:`SETTLE_SECONDS` later."""
    live = account.status in (ent.PAID_STATUSES | ent.GRACE_STATUSES)
    current = live and account.current_period_start == period.starts_at
    if current or account.synced_at is None:
        return period.ends_at
    return min(period.ends_at, account.synced_at)


def _report_period(
    database: Database,
    redis: Any,
    billing: Billing,
    tenant_id: uuid.UUID,
    label: str,
    closing_at: datetime,
    now: datetime,
    run: UsageRun,
    name: str,
) -> None:
    final = now >= closing_at + timedelta(seconds=SETTLE_SECONDS)
    for _ in range(2):  # a second pass after resending an earlier run's slices cuts the new one
        pending, fresh, total = _cut_slice(database, redis, tenant_id, label, now, final, run, name)
        if pending is None:
            return
        for s in pending:
            _send(billing, tenant_id, s)
            run.sent[name] = run.sent.get(name, 0) + s.quantity
        _mark_sent(database, tenant_id, label, pending, now, close=final and fresh, total=total)
        if fresh:
            if final:
                run.closed.append(name)
            return


def _cut_slice(
    database: Database,
    redis: Any,
    tenant_id: uuid.UUID,
    label: str,
    now: datetime,
    final: bool,
    run: UsageRun,
    name: str,
) -> tuple[list[_Slice] | None, bool, int]:
    """In one transaction, with the period's row locked: the slices to send (the unsent ones of
    an earlier run, else the new one), whether they cover the counter as read now (``fresh``),
    and the counter's value they bring the period to. ``None`` when there is nothing to send
    (the period may have been closed here)."""
    with database.transaction() as session:
        period = session.get(UsagePeriod, (tenant_id, label), with_for_update=True)
        if period is None or period.closed_at is not None:
            return None, False, 0
        unsent = list(
            session.scalars(
                select(UsageReport)
                .where(
                    and_(
                        UsageReport.tenant_id == tenant_id,
                        UsageReport.period == label,
                        UsageReport.sent_at.is_(None),
                    )
                )
                .order_by(UsageReport.slice)
            )
        )
        if unsent:
            return [_plain(r) for r in unsent], False, period.reported
        count = read_usage(redis, tenant_id, label)
        if count is None:
            run.failed[name] = "usage counter unavailable"
            return None, False, 0
        new = count - period.reported
        if count < period.reported:
            # the counter counts again from 0 (``saas limits reset --quota``, Redis data lost):
            # what it holds now are calls made since, and what was reported stays billed
            log.warning("usage counter of %s went back from %s to %s: billing the %s since",
                        name, period.reported, count, count)  # fmt: skip
            new = count
        if new <= 0:
            if final:
                _close(session, period, now)
                run.closed.append(name)
            else:
                run.unchanged.append(name)
            return None, False, 0
        period.slices += 1
        latest = period.ends_at - timedelta(seconds=1)
        event_at = min(max(now, period.starts_at), latest).replace(microsecond=0)
        row = UsageReport(
            tenant_id=tenant_id, period=label, slice=period.slices, quantity=new,
            cumulative=count, identifier=identifier_for(tenant_id, label, period.slices),
            stripe_customer_id=period.stripe_customer_id, event_at=event_at, reported_at=utcnow(),
        )  # fmt: skip
        session.add(row)
        period.reported = count
        session.flush()
        return [_plain(row)], True, count


def _plain(row: UsageReport) -> _Slice:
    return _Slice(row.period, row.slice, int(row.quantity), row.identifier, row.stripe_customer_id,
                  int(row.event_at.timestamp()))  # fmt: skip


def _send(billing: Billing, tenant_id: uuid.UUID, s: _Slice) -> None:
    """One meter event; an identifier Stripe already holds (an earlier send whose answer was
    lost) counts as sent."""
    try:
        billing.client.v1.billing.meter_events.create(
            params={
                "event_name": billing.settings.stripe_meter_event_name,
                "identifier": s.identifier,
                "timestamp": s.timestamp,
                "payload": {"stripe_customer_id": s.customer, "value": str(s.quantity)},
            },
            options={"idempotency_key": s.identifier},
        )
    except stripe.InvalidRequestError as exc:
        if exc.code != "resource_already_exists":
            raise
        log.info("usage slice %s of tenant %s was already at Stripe", s.identifier, tenant_id)


def _mark_sent(
    database: Database,
    tenant_id: uuid.UUID,
    label: str,
    sent: list[_Slice],
    now: datetime,
    *,
    close: bool,
    total: int,
) -> None:
    with database.transaction() as session:
        session.execute(
            update(UsageReport)
            .where(
                UsageReport.tenant_id == tenant_id,
                UsageReport.period == label,
                UsageReport.slice.in_([s.slice for s in sent]),
                UsageReport.sent_at.is_(None),
            )
            .values(sent_at=utcnow())
        )
        if not close:
            return
        period = session.get(UsagePeriod, (tenant_id, label), with_for_update=True)
        if period is not None and period.closed_at is None and period.reported == total:
            _close(session, period, now)


def _close(session: Any, period: UsagePeriod, now: datetime) -> None:
    """The period's final slice is at Stripe: it is never read again (audited once)."""
    period.closed_at = now
    billed = session.scalar(
        select(func.coalesce(func.sum(UsageReport.quantity), 0)).where(
            UsageReport.tenant_id == period.tenant_id, UsageReport.period == period.period
        )
    )
    audit.record(
        session,
        AuditAction.BILLING_USAGE_REPORTED,
        target_type="usage_period",
        target_id=period.period,
        data={
            "start": period.starts_at.isoformat(),
            "end": period.ends_at.isoformat(),
            "api_calls": int(billed or 0),
            "slices": int(period.slices),
        },
        actor=USAGE_ACTOR,
        tenant_id=period.tenant_id,
    )


__all__ = [
    "KEEP_AFTER_PERIOD",
    "SETTLE_SECONDS",
    "UsageRun",
    "count_api_call",
    "current_period",
    "identifier_for",
    "read_usage",
    "report_usage",
    "usage_key",
]
