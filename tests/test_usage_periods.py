"""Usage billed in the subscription's own period (docs/billing.md, "Usage"): counted, capped and
reported per subscription period (15th to 15th), in slices each sent once with its own
identifier, the old period's last slice after a rollover, calendar months for the free plan.

The real ``stripe`` SDK talks to tests/stripe_fake.py, whose meter endpoint checks timestamps
(35 days back, 5 minutes ahead of its clock) and drops a repeated identifier for 24 hours as
Stripe does. No test depends on today's date: the reporter gets ``now`` (and the fake Stripe the
same clock); the limiter's tests count in periods around the Redis server's clock, which is what
its keys expire on.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from saas import create_app
from saas.billing import entitlements as ent
from saas.billing import usage
from saas.billing.periods import Period, calendar_month, label_of, subscription_period, usage_period
from saas.cli import Context, main
from saas.db import Database
from saas.services import services
from tests.conftest import Api, rolled_back
from tests.helpers import redis_now
from tests.stripe_fake import FakeStripe
from tests.test_billing import PRICES, audit_actions, billing_settings, checkout, deliver

ANCHOR = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)  # the subscription's anniversary: the 15th
NEXT = datetime(2026, 2, 15, 9, 30, tzinfo=UTC)
AFTER = datetime(2026, 3, 15, 9, 30, tzinfo=UTC)
LABEL, NEXT_LABEL = "20260115T093000Z", "20260215T093000Z"


@pytest.fixture(scope="session")
def ufake():
    fake = FakeStripe(PRICES)
    fake.url = fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def uapp(settings, engine, redis_client, ufake):
    """Billing on (against the fake Stripe) and the rate limiter on (it counts the usage)."""
    application = create_app(
        billing_settings(settings, ufake).with_overrides(ratelimit_enabled=True),
        database=Database(engine),
        redis=redis_client,
    )
    application.testing = True
    return application


@pytest.fixture()
def uconn(uapp, engine, redis_client, ufake):
    ufake.reset()
    with rolled_back(uapp, engine, redis_client) as conn:
        yield conn


@pytest.fixture()
def uclient(uapp, uconn):
    return uapp.test_client()


@pytest.fixture()
def uapi(uclient) -> Api:
    return Api(uclient)


@pytest.fixture()
def ucli(uapp, uconn):
    def run(*args: str):
        ctx = Context()
        ctx._settings = services(uapp).settings
        ctx._app = uapp
        return CliRunner().invoke(main, list(args), obj=ctx, catch_exceptions=False)

    return run


def subscribe(uapi, uclient, fake, period: tuple[datetime, datetime] | None = None, slug: str = "acme"):
    """(tenant id, auth headers, subscription id, customer id): a tenant subscribed to pro
    through checkout, billed over ``period`` (default: 30 days from now)."""
    signup = uapi.signup(slug)
    headers = uapi.auth(signup)
    session_id = checkout(uclient, headers)
    window = (int(period[0].timestamp()), int(period[1].timestamp())) if period else None
    fake.complete_checkout(session_id, period=window)
    r = uclient.get(f"/api/v1/billing/checkout/{session_id}/sync", headers=headers)
    assert r.status_code == 200, r.get_json()
    sub_id = fake.sessions[session_id]["subscription"]
    return signup["tenant"]["id"], headers, sub_id, fake.subscriptions[sub_id]["customer"]


def report(uapp, fake, now: datetime) -> usage.UsageRun:
    """One reporting run at ``now`` (Stripe's clock set to the same instant)."""
    fake.clock = lambda: now.timestamp()
    svc = services(uapp)
    return usage.report_usage(svc.database, svc.redis, svc.billing, now=now)


def events_of(fake, customer: str) -> list[dict]:
    return [e for e in fake.meter_events if e["payload"]["stripe_customer_id"] == customer]


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


# --- the period itself (pure) --------------------------------------------------------------------


def test_subscription_periods_start_on_the_anniversary_and_roll_forward():
    inside = subscription_period(ANCHOR, NEXT, datetime(2026, 2, 1, tzinfo=UTC))
    assert inside == Period(LABEL, ANCHOR, NEXT)  # the 1st of the month changes nothing
    # past the synced end (renewal not synced yet): the next period starts at the old end, so
    # its label is already the one the renewal will bring
    late = subscription_period(ANCHOR, NEXT, NEXT + timedelta(minutes=1))
    assert late.label == NEXT_LABEL and late.start == NEXT and late.end == NEXT + (NEXT - ANCHOR)
    assert subscription_period(ANCHOR, NEXT, NEXT - timedelta(microseconds=1)).label == LABEL
    # no window (free plan): the calendar month, a label of another shape
    month = usage_period(None, datetime(2026, 2, 20, tzinfo=UTC))
    assert month == calendar_month(datetime(2026, 2, 1, tzinfo=UTC))
    assert month.label == "2026-02" and month.is_calendar_month and not inside.is_calendar_month
    assert usage_period([ts(ANCHOR), ts(NEXT)], datetime(2026, 2, 1, tzinfo=UTC)).label == LABEL
    with pytest.raises(ValueError):
        subscription_period(NEXT, ANCHOR, ANCHOR)


def test_entitlements_carry_the_live_subscriptions_period():
    window = {"period_start": float(ts(ANCHOR)), "period_end": float(ts(NEXT))}
    active = ent.compute_entitlements(None, ent.BillingState("pro", "active", **window))
    assert active.quota_period == (ts(ANCHOR), ts(NEXT))
    assert active.to_dict()["quota_period"] == [ts(ANCHOR), ts(NEXT)]
    assert ent.compute_entitlements(None, ent.BillingState("pro", "past_due", **window)).quota_period
    # an operator's plan override changes the limits, not the period Stripe bills in
    overridden = ent.BillingState("pro", "trialing", override_plan="enterprise", **window)
    assert ent.compute_entitlements(None, overridden).quota_period == (ts(ANCHOR), ts(NEXT))
    for status in ("canceled", "unpaid", "paused"):  # free plan again: calendar months
        assert ent.compute_entitlements(None, ent.BillingState("pro", status, **window)).quota_period is None
    assert ent.compute_entitlements("free", ent.BillingState()).to_dict()["quota_period"] is None


# --- reporting: slices, rollover, reruns ---------------------------------------------------------


def test_usage_is_reported_in_slices_inside_the_anniversary_period(uapi, uclient, uconn, uapp, ufake,
                                                                   redis_client):  # fmt: skip
    tenant_id, _, _, customer = subscribe(uapi, uclient, ufake, (ANCHOR, NEXT))
    redis_client.set(usage.usage_key(tenant_id, LABEL), 100)
    redis_client.set(usage.usage_key(tenant_id, "2026-01"), 999)  # a calendar month is not billed
    first = datetime(2026, 1, 20, 10, 0, tzinfo=UTC)
    run = report(uapp, ufake, first)
    assert run.sent == {f"{tenant_id}/{LABEL}": 100} and not run.failed
    (event,) = events_of(ufake, customer)
    assert event["identifier"] == f"usage-{tenant_id}-{LABEL}-1" and event["event_name"] == "api_calls"
    assert event["payload"] == {"stripe_customer_id": customer, "value": "100"}
    assert event["timestamp"] == ts(first)  # inside the period, when it was cut
    # an hour later: only the calls since then, as the next slice
    redis_client.set(usage.usage_key(tenant_id, LABEL), 250)
    second = first + timedelta(hours=1)
    assert report(uapp, ufake, second).sent == {f"{tenant_id}/{LABEL}": 150}
    sent = [(e["identifier"][-2:], e["payload"]["value"], e["timestamp"]) for e in events_of(ufake, customer)]
    assert sent == [("-1", "100", ts(first)), ("-2", "150", ts(second))]
    # a rerun with nothing new sends nothing
    rerun = report(uapp, ufake, second)
    assert rerun.sent == {} and rerun.unchanged == [f"{tenant_id}/{LABEL}"]
    assert len(ufake.meter_events) == 2
    assert ufake.metered(customer, ts(ANCHOR), ts(NEXT)) == 250  # what Stripe's meter bills
    row = uconn.execute(
        text("SELECT reported, slices, closed_at FROM saas.billing_usage_periods WHERE period = :p"),
        {"p": LABEL},
    ).one()
    assert tuple(row) == (250, 2, None)  # open until its final slice after the period's end
    # an operator zeroes the counter (`saas limits reset --quota`): what was billed stays billed,
    # the calls counted since are billed on top
    redis_client.set(usage.usage_key(tenant_id, LABEL), 7)
    assert report(uapp, ufake, second + timedelta(hours=1)).sent == {f"{tenant_id}/{LABEL}": 7}
    assert ufake.metered(customer, ts(ANCHOR), ts(NEXT)) == 257


def test_rollover_reports_the_old_periods_last_slice_inside_it_then_closes_it(
    uapi, uclient, uconn, uapp, ufake, redis_client
):
    tenant_id, _, sub_id, customer = subscribe(uapi, uclient, ufake, (ANCHOR, NEXT))
    old, new = usage.usage_key(tenant_id, LABEL), usage.usage_key(tenant_id, NEXT_LABEL)
    redis_client.set(old, 250)
    report(uapp, ufake, NEXT - timedelta(hours=1, minutes=30))
    # the last calls of the period, then Stripe renews on the anniversary and tells us
    redis_client.set(old, 260)
    renewed = ufake.renew(sub_id, ts(NEXT), ts(AFTER))
    assert deliver(uclient, ufake.event("customer.subscription.updated", renewed)).status_code == 200
    redis_client.set(new, 5)
    # two minutes after the end: both periods are reported; the old one stays open (calls in
    # flight may still land in its counter) and its slice is stamped inside it
    run = report(uapp, ufake, NEXT + timedelta(minutes=2))
    assert run.sent == {f"{tenant_id}/{LABEL}": 10, f"{tenant_id}/{NEXT_LABEL}": 5} and run.closed == []
    stamps = {e["identifier"]: e["timestamp"] for e in events_of(ufake, customer)}
    assert stamps[f"usage-{tenant_id}-{LABEL}-2"] == ts(NEXT) - 1
    assert stamps[f"usage-{tenant_id}-{NEXT_LABEL}-1"] == ts(NEXT + timedelta(minutes=2))
    # settled (5 min after the end, well before Stripe finalizes the invoice ~1 h after it):
    # the final slice, and the period is closed and audited once
    redis_client.set(old, 262)
    run = report(uapp, ufake, NEXT + timedelta(minutes=6))
    assert run.sent == {f"{tenant_id}/{LABEL}": 2} and run.closed == [f"{tenant_id}/{LABEL}"]
    assert audit_actions(uconn, tenant_id, "billing.usage_") == ["billing.usage_reported"]
    schema = "t_" + uuid.UUID(tenant_id).hex
    event = f"SELECT data FROM {schema}.audit_events WHERE action = 'billing.usage_reported'"  # noqa: S608
    assert uconn.execute(text(event)).scalar_one() == {
        "start": ANCHOR.isoformat(), "end": NEXT.isoformat(), "api_calls": 262, "slices": 3
    }  # fmt: skip
    # a closed period's counter is never read again
    redis_client.set(old, 300)
    assert report(uapp, ufake, NEXT + timedelta(hours=1)).sent == {}
    assert ufake.metered(customer, ts(ANCHOR), ts(NEXT)) == 262
    assert ufake.metered(customer, ts(NEXT), ts(AFTER)) == 5
    assert all(ts(ANCHOR) <= e["timestamp"] < ts(NEXT) for e in events_of(ufake, customer)
               if LABEL in e["identifier"])  # fmt: skip


def test_a_rerun_resends_the_same_slice_and_never_bills_twice(uapi, uclient, uconn, uapp, ufake,
                                                              redis_client):  # fmt: skip
    tenant_id, _, _, customer = subscribe(uapi, uclient, ufake, (ANCHOR, NEXT))
    key, name = usage.usage_key(tenant_id, LABEL), f"{tenant_id}/{LABEL}"
    redis_client.set(key, 40)
    ufake.fail_paths["/v1/billing/meter_events"] = 1  # Stripe down for this run
    first = datetime(2026, 1, 20, 10, 0, tzinfo=UTC)
    assert name in report(uapp, ufake, first).failed
    assert ufake.meter_events == []
    # the slice was cut before the send: the next run sends exactly it, then the calls since
    redis_client.set(key, 70)
    assert report(uapp, ufake, first + timedelta(hours=1)).sent == {name: 70}
    assert [(e["identifier"][-2:], e["payload"]["value"], e["timestamp"]) for e in ufake.meter_events] == [
        ("-1", "40", ts(first)), ("-2", "30", ts(first + timedelta(hours=1)))
    ]  # fmt: skip
    # Stripe got slice 2 but its answer was lost (the row says unsent), the SDK's idempotency
    # cache is gone: the resend carries the same identifier and Stripe drops it
    uconn.execute(text("UPDATE saas.billing_usage_reports SET sent_at = NULL WHERE slice = 2"))
    ufake.idempotent.clear()
    report(uapp, ufake, first + timedelta(hours=2))
    assert len(ufake.meter_events) == 2
    unsent = text("SELECT count(*) FROM saas.billing_usage_reports WHERE sent_at IS NULL")
    assert uconn.execute(unsent).scalar() == 0
    # days later (Stripe's 24 h dedupe window is over): what was sent is never sent again
    assert report(uapp, ufake, first + timedelta(days=3)).sent == {}
    assert ufake.metered(customer, ts(ANCHOR), ts(NEXT)) == 70
    identifiers = [e["identifier"] for e in ufake.meter_events]
    assert len(identifiers) == len(set(identifiers))


def test_report_usage_command_and_the_workers_schedule(uapi, uclient, uconn, uapp, ufake, redis_client, ucli):
    """``saas billing report-usage`` and the worker's periodic job run the same function (here
    at the real now: the subscription's period is the 30 days from now)."""

    tenant_id, _, sub_id, customer = subscribe(uapi, uclient, ufake)
    start = ufake.subscriptions[sub_id]["items"]["data"][0]["current_period_start"]
    label = label_of(datetime.fromtimestamp(start, UTC))
    key = usage.usage_key(tenant_id, label)
    redis_client.set(key, 12)
    result = ucli("billing", "report-usage", "acme")
    assert result.exit_code == 0 and "12 API calls reported for 1 periods" in result.output, result.output
    again = ucli("billing", "report-usage", "--json")
    assert again.exit_code == 0 and f'"{tenant_id}/{label}"' in again.output and '"sent": {}' in again.output
    show = json.loads(ucli("billing", "show", "acme", "--json").output)["api_calls"]
    assert show["period"] == label and show["used"] == 12
    # beat's schedule runs the same report (billing.report_usage, every USAGE_REPORT_INTERVAL)
    from saas.schedules import by_name
    from saas.worker.engine import beat_schedule, import_function

    entry = by_name("billing.report_usage")
    every = beat_schedule([entry], settings=services(uapp).settings)[entry.name]["schedule"].run_every
    assert every.total_seconds() == services(uapp).settings.usage_report_interval_seconds == 900
    redis_client.set(key, 20)
    assert import_function(entry.function)(uapp) == {"failed": 0}
    assert import_function(entry.function)(uapp) == {"failed": 0}  # a rerun sends nothing more
    assert [e["payload"]["value"] for e in events_of(ufake, customer)] == ["12", "8"]


def test_a_canceled_subscriptions_period_is_closed_after_it_stopped(uapi, uclient, uconn, uapp, ufake,
                                                                   redis_client):  # fmt: skip
    tenant_id, _, sub_id, customer = subscribe(uapi, uclient, ufake, (ANCHOR, NEXT))
    redis_client.set(usage.usage_key(tenant_id, LABEL), 30)
    canceled = ufake.update_subscription(sub_id, status="canceled")
    assert deliver(uclient, ufake.event("customer.subscription.deleted", canceled)).status_code == 200
    synced_at = uconn.execute(text("SELECT synced_at FROM saas.billing_accounts")).scalar()
    # no longer the current period: its counter stops growing; it is closed once settled (from
    # its last sync), with the calls it had; the free plan's calendar month is not billed
    redis_client.set(usage.usage_key(tenant_id, "2026-01"), 7)
    run = report(uapp, ufake, min(NEXT, synced_at) + timedelta(minutes=10))
    assert run.sent == {f"{tenant_id}/{LABEL}": 30} and run.closed == [f"{tenant_id}/{LABEL}"]
    assert ufake.metered(customer, ts(ANCHOR), ts(NEXT)) == 30 and len(ufake.meter_events) == 1


def test_concurrent_runs_bill_each_call_once(uapp, ufake, engine, redis_client):
    """Four reporters at once (beat runs, an operator), twice, on committed data: each
    period's slice is cut under its row lock, so every call is billed exactly once."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.helpers import drop_tenant

    ufake.reset()
    tenant_id, customer = uuid.uuid4(), f"cus_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO saas.tenants (id, slug, name, status, plan, schema_name, settings, created_at,"
            " updated_at) VALUES (:id, :slug, 'Race', 'active', 'pro', :schema, '{}', now(), now())"
        ), {"id": tenant_id, "slug": f"race-{tenant_id.hex[:8]}", "schema": f"t_{tenant_id.hex}"})
        conn.execute(text(
            "INSERT INTO saas.billing_accounts (tenant_id, stripe_customer_id, stripe_subscription_id,"
            " status, current_period_start, current_period_end, cancel_at_period_end, created_at,"
            " updated_at) VALUES (:t, :c, :s, 'active', :start, :end, false, now(), now())"
        ), {"t": tenant_id, "c": customer, "s": f"sub_{tenant_id.hex[:12]}", "start": ANCHOR, "end": NEXT})
    committed, billing = Database(engine), services(uapp).billing
    now = datetime(2026, 1, 20, 10, 0, tzinfo=UTC)
    ufake.clock = lambda: now.timestamp()
    ufake.meter_delay_seconds = 0.05  # a slow Stripe widens the window between cut and mark
    key = usage.usage_key(tenant_id, LABEL)
    try:
        with ThreadPoolExecutor(4) as pool:
            for count in (100, 160):
                redis_client.set(key, count)
                runs = list(pool.map(lambda _: usage.report_usage(committed, redis_client, billing, now=now),
                                     range(4)))  # fmt: skip
                assert not any(r.failed for r in runs), [r.failed for r in runs]
        assert ufake.metered(customer, ts(ANCHOR), ts(NEXT)) == 160
        assert sorted(e["identifier"][-2:] for e in events_of(ufake, customer)) == ["-1", "-2"]
    finally:
        redis_client.delete(key)
        drop_tenant(engine, tenant_id)


# --- counting and the quota follow the period ----------------------------------------------------


def _contacts(uclient, h):
    return uclient.get("/api/v1/contacts", headers=h)


def test_the_quota_counts_in_the_subscription_period_and_resets_at_its_end(
    uapi, uclient, uconn, uapp, ufake, redis_client, ucli
):
    # a period that is not a calendar month, around the Redis server's clock (the counters
    # expire on it): 3 days ago to 28 days ahead
    now = redis_now(redis_client).replace(microsecond=0)
    start, end = now - timedelta(days=3, hours=5), now + timedelta(days=28, hours=2)
    tenant_id, h, sub_id, _ = subscribe(uapi, uclient, ufake, (start, end))
    label = label_of(start)
    assert ucli("tenants", "set-plan", "acme", "pro", "--limit", "monthly_api_calls=4").exit_code == 0
    document = uclient.get("/api/v1/billing", headers=h).get_json()["api_calls"]  # counted: 1
    assert document["period"] == label and document["used"] == 1 and document["allowed"] == 4
    assert document["start"].startswith(start.isoformat()[:19])
    assert document["end"].startswith(end.isoformat()[:19])
    statuses = [_contacts(uclient, h).status_code for _ in range(5)]
    assert statuses.count(200) == 3 and statuses[-1] == 429, statuses
    refused = _contacts(uclient, h)
    body = refused.get_json()
    assert body["code"] == "quota_exceeded" and body["period"] == label
    assert body["reset"] == end.isoformat().replace("+00:00", "Z")
    assert f"w={int((end - start).total_seconds())}" in refused.headers["RateLimit-Policy"]
    assert redis_client.get(usage.usage_key(tenant_id, label)) == b"4"
    # the period ends; the renewal is not synced yet: the next period (from the old end) counts
    limiter = services(uapp).limiter
    limiter.clock = lambda: end + timedelta(minutes=1)
    try:
        assert _contacts(uclient, h).status_code == 200
        assert redis_client.get(usage.usage_key(tenant_id, label_of(end))) == b"1"
        # Stripe's renewal arrives: the same period, now synced
        renewed = ufake.renew(sub_id, ts(end), ts(end + timedelta(days=31)))
        assert deliver(uclient, ufake.event("customer.subscription.updated", renewed)).status_code == 200
        assert _contacts(uclient, h).status_code == 200
        assert redis_client.get(usage.usage_key(tenant_id, label_of(end))) == b"2"
        assert usage.current_period(_tenant(uapp, tenant_id), end + timedelta(minutes=1)) == Period(
            label_of(end), end, end + timedelta(days=31)
        )
    finally:
        limiter.clock = lambda: datetime.now(UTC)


def _tenant(uapp, tenant_id: str):
    from saas.identity.models import Tenant

    with uapp.app_context():
        return services(uapp).database.session().get(Tenant, uuid.UUID(tenant_id))


def test_the_free_plan_counts_in_calendar_months(uapi, uclient, uconn, redis_client, steady_month):
    h = uapi.auth(signup := uapi.signup("freebie"))
    tenant_id = signup["tenant"]["id"]
    for _ in range(3):
        assert _contacts(uclient, h).status_code == 200
    month = calendar_month(steady_month)
    document = uclient.get("/api/v1/billing", headers=h).get_json()["api_calls"]
    assert document["period"] == f"{steady_month:%Y-%m}" and document["allowed"] == 10000
    assert document["start"].startswith(f"{steady_month:%Y-%m}-01T00:00:00")
    assert int(redis_client.get(usage.usage_key(tenant_id, month.label))) >= 3
    assert [k.decode() for k in redis_client.keys(f"{{t:{tenant_id}}}:usage:*")] == [
        usage.usage_key(tenant_id, month.label)
    ]
