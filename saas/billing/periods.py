"""Usage periods: the window in which a tenant's API calls are counted, capped by
``monthly_api_calls`` and billed (pure functions; no I/O, so the rate limiter's hot path may
call them).

* A tenant with a live subscription (Stripe status ``trialing``, ``active`` or ``past_due``)
  whose billing period is synced: the subscription's current period
  ``[current_period_start, current_period_end)``. Stripe bills a subscription over its own
  period, anchored on its ``billing_cycle_anchor`` (the subscription's anniversary, e.g. the
  15th to the 15th, not the 1st; https://docs.stripe.com/billing/subscriptions/billing-cycle).
  Its label is the period's start in UTC, ``YYYYMMDDTHHMMSSZ`` (``20261115T093000Z``).
* Any other tenant (the free plan, a canceled subscription): the UTC calendar month, label
  ``YYYY-MM``. The two label shapes never collide.
* Past the synced end while the renewal is not synced yet (a late webhook): Stripe's next period
  starts where the last one ended, so the next period's label is already exact; its end is
  estimated as one more period of the same length until the renewal arrives.

The window travels in the tenant's cached entitlements as ``quota_period`` = ``[start, end]``
(unix seconds; :func:`saas.billing.entitlements.compute_entitlements`), so the hot path derives
the counter's key from the cached billing state without another read (:func:`usage_period`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["Period", "calendar_month", "label_of", "subscription_period", "usage_period"]


@dataclass(frozen=True, slots=True)
class Period:
    """A usage period ``[start, end)`` (aware UTC datetimes) and its counter's ``label``."""

    label: str
    start: datetime
    end: datetime

    @property
    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())

    @property
    def is_calendar_month(self) -> bool:
        return len(self.label) == 7


def calendar_month(now: datetime) -> Period:
    """The UTC calendar month containing ``now`` (label ``YYYY-MM``)."""
    now = now.astimezone(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return Period(f"{start:%Y-%m}", start, end)


def label_of(start: datetime) -> str:
    """The label of a subscription period starting at ``start``: ``YYYYMMDDTHHMMSSZ`` (UTC)."""
    return f"{start.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def subscription_period(start: datetime, end: datetime, now: datetime) -> Period:
    """The subscription period of ``now`` from the synced ``[start, end)``; rolled forward by
    periods of the same length when ``now`` is past ``end`` (renewal not synced yet).

    Raises:
        ValueError: ``end`` is not after ``start``.
    """
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end <= start:
        raise ValueError(f"a period must end after it starts ({start.isoformat()} -> {end.isoformat()})")
    if now >= end:
        length = end - start
        skipped = (now - end) // length + 1
        start, end = start + skipped * length, end + skipped * length
    return Period(label_of(start), start, end)


def usage_period(window: Sequence[float] | None, now: datetime) -> Period:
    """The usage period of ``now`` for a tenant whose entitlements carry ``quota_period`` =
    ``window`` (``[start, end]`` in unix seconds; None or empty: the calendar month)."""
    if not window:
        return calendar_month(now)
    start = datetime.fromtimestamp(window[0], UTC)
    end = datetime.fromtimestamp(window[1], UTC)
    if end <= start:
        return calendar_month(now)
    return subscription_period(start, end, now)
