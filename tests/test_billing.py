"""Billing end to end: the real ``stripe`` SDK against a local server speaking Stripe's API
shapes (tests/stripe_fake.py), webhooks signed exactly as Stripe signs them."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import stripe
from click.testing import CliRunner
from sqlalchemy import text

from saas import create_app
from saas.billing import entitlements as ent
from saas.billing.models import BillingAccount, WebhookEvent
from saas.billing.service import STRIPE_API_VERSION
from saas.billing.usage import usage_key
from saas.cli import Context, main
from saas.db import Database, utcnow
from saas.identity.models import Tenant
from saas.services import services
from saas.settings import Settings, SettingsError
from tests.conftest import Api, rolled_back
from tests.helpers import mailed_invitation_token
from tests.stripe_fake import FakeStripe, sign

SECRET = "whsec_test_current_0123456789"
OLD_SECRET = "whsec_test_previous_0123456789"
PRICES = {
    "price_pro_month": {"interval": "month", "unit_amount": 1200},
    "price_pro_year": {"interval": "year", "unit_amount": 12000},
    "price_ent_month": {"interval": "month", "unit_amount": 9900},
}
PRICE_ENV = {
    "STRIPE_PRICE_PRO": "price_pro_month",
    "STRIPE_PRICE_PRO_YEARLY": "price_pro_year",
    "STRIPE_PRICE_ENTERPRISE": "price_ent_month",
}


@pytest.fixture(scope="session")
def fake_stripe():
    fake = FakeStripe(PRICES)
    fake.url = fake.start()
    yield fake
    fake.stop()


def billing_settings(settings: Settings, fake: FakeStripe) -> Settings:
    return settings.with_overrides(
        stripe_secret_key="sk_test_billing",
        stripe_webhook_secrets=(SECRET, OLD_SECRET),
        stripe_prices=PRICE_ENV,
        stripe_api_base=fake.url,
    )


@pytest.fixture(scope="session")
def billing_app(settings, engine, redis_client, fake_stripe):
    application = create_app(
        billing_settings(settings, fake_stripe), database=Database(engine), redis=redis_client
    )
    application.testing = True
    return application


@pytest.fixture()
def bconn(billing_app, engine, redis_client, fake_stripe):
    """Like ``connection``, for the app with billing on; the fake Stripe starts empty."""
    fake_stripe.reset()
    with rolled_back(billing_app, engine, redis_client) as conn:
        yield conn


@pytest.fixture()
def bclient(billing_app, bconn):
    return billing_app.test_client()


@pytest.fixture()
def bapi(bclient) -> Api:
    return Api(bclient)


@pytest.fixture()
def cli(billing_app, bconn):
    """Run ``saas ...`` against the billing app (inside the test's transaction)."""

    def run(*args: str):
        ctx = Context()
        ctx._settings = services(billing_app).settings
        ctx._app = billing_app
        return CliRunner().invoke(main, list(args), obj=ctx, catch_exceptions=False)

    return run


# --- helpers -------------------------------------------------------------------------------------


def deliver(
    client, event: dict, secret: str = SECRET, timestamp: int | None = None, header: str | None = None
):
    payload = json.dumps(event)
    sig = header if header is not None else sign(payload, secret, timestamp)
    headers = {"Stripe-Signature": sig} if sig else {}
    return client.post("/webhooks/stripe", data=payload, content_type="application/json", headers=headers)


def audit_actions(conn, tenant_id: str, prefix: str = "billing.") -> list[str]:
    schema = "t_" + uuid.UUID(tenant_id).hex
    rows = conn.execute(
        text(f"SELECT action FROM {schema}.audit_events WHERE action LIKE :p ORDER BY occurred_at"),  # noqa: S608
        {"p": prefix + "%"},
    )
    return [r[0] for r in rows]


def tenant_row(billing_app, tenant_id: str) -> Tenant:
    with billing_app.app_context():
        session = services(billing_app).database.session()
        tenant = session.get(Tenant, uuid.UUID(tenant_id))
        assert tenant is not None
        return tenant


def entitlements_now(billing_app, tenant_id: str) -> ent.Entitlements:
    with billing_app.app_context():
        session = services(billing_app).database.session()
        try:
            return ent.entitlements_for(session.get(Tenant, uuid.UUID(tenant_id)))
        finally:
            session.close()


def account_of(billing_app, tenant_id: str) -> BillingAccount | None:
    session = services(billing_app).database.session()
    try:
        return session.get(BillingAccount, uuid.UUID(tenant_id))
    finally:
        session.close()


def checkout(bclient, headers, plan: str = "pro", interval: str = "month") -> str:
    r = bclient.post("/api/v1/billing/checkout", json={"plan": plan, "interval": interval}, headers=headers)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["url"].rsplit("/", 1)[1]


def subscribed(bapi, bclient, fake, slug: str = "acme", plan: str = "pro", status: str = "active"):
    """A tenant with a subscription applied through the checkout return page."""
    signup = bapi.signup(slug)
    headers = bapi.auth(signup)
    session_id = checkout(bclient, headers, plan)
    fake.complete_checkout(session_id, status=status)
    r = bclient.get(f"/api/v1/billing/checkout/{session_id}/sync", headers=headers)
    assert r.status_code == 200, r.get_json()
    tenant_id = signup["tenant"]["id"]
    sub_id = fake.sessions[session_id]["subscription"]
    return tenant_id, headers, sub_id


# --- configuration ------------------------------------------------------------------------------


def test_pinned_api_version_is_the_sdks():
    assert stripe.api_version == STRIPE_API_VERSION


def test_settings_read_stripe_variables():
    s = Settings.from_env(
        {
            "STRIPE_SECRET_KEY": "sk_test_x",
            "STRIPE_WEBHOOK_SECRET": "whsec_a, whsec_b",
            "STRIPE_PRICE_PRO": "price_1",
            "STRIPE_API_BASE": "http://127.0.0.1:12111",
            "BILLING_GRACE_DAYS": "3",
        }
    )
    assert s.billing_enabled and s.stripe_webhook_secrets == ("whsec_a", "whsec_b")
    assert s.stripe_prices == {"STRIPE_PRICE_PRO": "price_1"} and s.billing_grace_days == 3
    for bad in (
        {"STRIPE_SECRET_KEY": "pk_live_x"},
        {"STRIPE_WEBHOOK_SECRET": "nope"},
        {"STRIPE_PRICE_PRO": "prod_1"},
    ):
        with pytest.raises(SettingsError, match=next(iter(bad))):
            Settings.from_env(bad)
    assert not Settings.from_env({}).billing_enabled


def test_invalid_catalogue_and_missing_price_stop_startup(settings, engine, redis_client, fake_stripe):
    good = {"requests_per_minute": 1, "seats": 1, "monthly_api_calls": -1}
    for plan, message in (
        ({**good, "seats": "x"}, r"plans.pro.seats"),
        ({**good, "colour": "red"}, r"unknown keys \['colour'\]"),
        ({**good, "features": {"sso": [1]}}, r"plans.pro.features"),
        ({**good, "price_env": {"week": "STRIPE_PRICE_PRO"}}, r"plans.pro.price_env"),
    ):
        with pytest.raises(ent.CatalogueError, match=message):
            ent.parse_catalogue({"default_plan": "pro", "plans": {"pro": plan}})
    with pytest.raises(ent.CatalogueError, match="default_plan"):
        ent.parse_catalogue({"default_plan": "gold", "plans": {"pro": good}})
    incomplete = billing_settings(settings, fake_stripe).with_overrides(
        stripe_prices={"STRIPE_PRICE_PRO": "price_pro_month"}
    )
    with pytest.raises(SettingsError, match="STRIPE_PRICE_ENTERPRISE"):
        create_app(incomplete, database=Database(engine), redis=redis_client)
    no_secret = billing_settings(settings, fake_stripe).with_overrides(stripe_webhook_secrets=())
    with pytest.raises(SettingsError, match="STRIPE_WEBHOOK_SECRET"):
        create_app(no_secret, database=Database(engine), redis=redis_client)
    with pytest.raises(ent.CatalogueError, match="already used"):
        ent.validate_prices({"STRIPE_PRICE_PRO": "price_same", "STRIPE_PRICE_ENTERPRISE": "price_same"}, True)


def test_state_mapping_is_pure_and_complete():
    now = utcnow()
    grace_future, grace_past = (now + timedelta(days=1)).timestamp(), (now - timedelta(seconds=1)).timestamp()
    cases = [
        (ent.BillingState("pro", "active"), "pro", False),
        (ent.BillingState("pro", "trialing"), "pro", False),
        (ent.BillingState("pro", "past_due", grace_future), "pro", False),
        (ent.BillingState("pro", "past_due", grace_past), "pro", True),
        (ent.BillingState("pro", "canceled"), "free", False),
        (ent.BillingState("pro", "unpaid"), "free", False),
        (ent.BillingState("pro", "incomplete_expired"), "free", False),
        (ent.BillingState("pro", "canceled", override_plan="enterprise"), "enterprise", False),
        (ent.BillingState("pro", "past_due", grace_past, override_plan="pro"), "pro", False),
        (ent.BillingState(), "free", False),
    ]
    for state, plan, read_only in cases:
        e = ent.compute_entitlements("free", state, now)
        assert (e.plan, e.read_only) == (plan, read_only), state
    e = ent.compute_entitlements("free", ent.BillingState(override_limits={"seats": 50, "sso": True}), now)
    assert e.seats == 50 and e.features["sso"] is True


# --- billing off ----------------------------------------------------------------------------------


def test_without_keys_billing_answers_503_and_default_plan(api, client, app):
    acme = api.signup("acme")
    h = api.auth(acme)
    for method, path in (
        ("get", "/api/v1/billing"),
        ("post", "/api/v1/billing/checkout"),
        ("post", "/api/v1/billing/portal"),
        ("get", "/api/v1/billing/checkout/cs_test_x/sync"),
    ):
        kwargs = {"json": {"plan": "pro"}} if path.endswith("checkout") else {}
        r = getattr(client, method)(path, headers=h, **kwargs)
        assert r.status_code == 503 and r.get_json()["code"] == "billing_not_configured", (path, r.get_json())
    r = client.post("/webhooks/stripe", data="{}", headers={"Stripe-Signature": "t=1,v1=x"})
    assert r.status_code == 503
    assert entitlements_now(app, acme["tenant"]["id"]).plan == "free"


# --- checkout, portal, sync ----------------------------------------------------------------------


def test_checkout_session_shape_idempotency_and_permission(bapi, bclient, fake_stripe, steady_month):
    # steady_month: both checkouts in the same hour, which the idempotency key carries
    signup = bapi.signup("acme")
    h = bapi.auth(signup)
    first = checkout(bclient, h, "pro")
    again = checkout(bclient, h, "pro")
    assert first == again  # same idempotency key: Stripe answers the same session
    (params,) = [p for p in fake_stripe.calls("POST", "/v1/checkout/sessions")][:1]
    assert params["mode"] == "subscription"
    assert params["client_reference_id"] == signup["tenant"]["id"]
    assert params["line_items"] == [{"price": "price_pro_month", "quantity": "1"}]
    headers = [hd for m, path, _, hd in fake_stripe.requests if path == "/v1/checkout/sessions"]
    assert all(hd.get("Idempotency-Key", "").startswith("checkout-") for hd in headers)
    assert all(hd.get("Stripe-Version") == STRIPE_API_VERSION for hd in headers)
    assert len(fake_stripe.customers) == 1  # one customer per tenant, created once
    yearly = checkout(bclient, h, "pro", "year")
    assert fake_stripe.sessions[yearly]["_line_items"][0]["price"] == "price_pro_year"
    for body in ({"plan": "free"}, {"plan": "gold"}, {"plan": "pro", "interval": "week"}, {}):
        r = bclient.post("/api/v1/billing/checkout", json=body, headers=h)
        assert r.status_code == 422, body
    # an admin lacks billing:manage
    invite = bclient.post("/api/v1/members", json={"email": "admin@acme.test", "role": "admin"}, headers=h)
    assert invite.status_code == 201, invite.get_json()
    token = mailed_invitation_token(bclient.application, "admin@acme.test")
    accepted = bclient.post(
        "/api/v1/invitations/accept", json={"token": token, "password": "another good pass"}
    )
    admin_h = bapi.auth(accepted.get_json())
    r = bclient.post("/api/v1/billing/checkout", json={"plan": "pro"}, headers=admin_h)
    assert r.status_code == 403 and r.get_json()["code"] == "permission_denied"
    assert bclient.get("/api/v1/billing", headers=admin_h).status_code == 403  # billing:manage too


def test_billing_overview_needs_billing_manage(bapi, bclient, billing_app):
    """Every billing endpoint needs ``billing:manage``, the overview too: only owners see the
    plan, seats and usage; admins, members and viewers get the same 403 as for checkout."""
    from tests.helpers import role_headers

    signup = bapi.signup("acme")
    owner = bclient.get("/api/v1/billing", headers=bapi.auth(signup))
    assert owner.status_code == 200 and owner.get_json()["plan"]
    for role in ("admin", "member", "viewer"):
        _, h = role_headers(billing_app, signup["tenant"]["id"], role)
        r = bclient.get("/api/v1/billing", headers=h)
        assert r.status_code == 403, (role, r.get_json())
        assert r.mimetype == "application/problem+json"
        assert r.get_json()["code"] == "permission_denied" and r.get_json()["permission"] == "billing:manage"


def test_portal_returns_stripe_url(bapi, bclient, fake_stripe):
    h = bapi.auth(bapi.signup("acme"))
    r = bclient.post("/api/v1/billing/portal", headers=h)
    assert r.status_code == 200
    assert r.get_json()["url"].startswith("https://billing.stripe.com/p/session/")
    (params,) = fake_stripe.calls("POST", "/v1/billing_portal/sessions")
    assert params["customer"] in fake_stripe.customers


def test_checkout_sync_before_webhook_then_webhook_is_a_no_op(bapi, bclient, bconn, billing_app, fake_stripe):
    signup = bapi.signup("acme")
    h = bapi.auth(signup)
    tenant_id = signup["tenant"]["id"]
    session_id = checkout(bclient, h)
    r = bclient.get(f"/api/v1/billing/checkout/{session_id}/sync", headers=h)
    assert r.status_code == 409 and r.get_json()["code"] == "checkout_incomplete"
    completed = fake_stripe.complete_checkout(session_id)
    r = bclient.get(f"/api/v1/billing/checkout/{session_id}/sync", headers=h)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["plan"] == "pro" and body["status"] == "active" and body["current_period_end"]
    assert body["entitlements"]["requests_per_minute"] == 600
    assert entitlements_now(billing_app, tenant_id).plan == "pro"
    # the webhook lands afterwards: applied, but nothing changes
    r = deliver(bclient, fake_stripe.event("checkout.session.completed", completed))
    assert r.status_code == 200 and r.get_json()["status"] == "processed"
    assert audit_actions(bconn, tenant_id).count("billing.subscription_changed") == 1
    assert bclient.get("/api/v1/billing", headers=h).get_json()["plan"] == "pro"
    # a live subscription: a second checkout is refused
    r = bclient.post("/api/v1/billing/checkout", json={"plan": "enterprise"}, headers=h)
    assert r.status_code == 409 and r.get_json()["code"] == "subscription_exists"


def test_sync_of_another_tenants_session_is_404(bapi, bclient, fake_stripe):
    h_acme = bapi.auth(bapi.signup("acme"))
    h_other = bapi.auth(bapi.signup("globex"))
    session_id = checkout(bclient, h_acme)
    fake_stripe.complete_checkout(session_id)
    for sid in (session_id, "cs_test_unknown", "not-a-session"):
        r = bclient.get(f"/api/v1/billing/checkout/{sid}/sync", headers=h_other)
        assert r.status_code == 404, sid


def test_get_billing_document(bapi, bclient, redis_client, fake_stripe):
    from saas.billing.periods import label_of

    tenant_id, h, sub_id = subscribed(bapi, bclient, fake_stripe)
    start = fake_stripe.subscriptions[sub_id]["items"]["data"][0]["current_period_start"]
    label = label_of(datetime.fromtimestamp(start, UTC))  # usage counts in the subscription's period
    redis_client.set(usage_key(tenant_id, label), 42)
    body = bclient.get("/api/v1/billing", headers=h).get_json()
    assert body["seats"] == {"used": 1, "allowed": 25}
    assert body["api_calls"]["period"] == label
    assert body["api_calls"]["used"] == 42 and body["api_calls"]["allowed"] == 1000000
    assert body["cancel_at_period_end"] is False and body["read_only"] is False


# --- webhooks: authenticity ------------------------------------------------------------------------


def _events(bconn) -> int:
    return bconn.execute(text("SELECT count(*) FROM saas.stripe_webhook_events")).scalar()


def test_bad_or_missing_signature_is_400_and_stores_nothing(bapi, bclient, bconn, fake_stripe):
    _, _, sub_id = subscribed(bapi, bclient, fake_stripe)
    event = fake_stripe.event("customer.subscription.updated", fake_stripe.subscriptions[sub_id])
    for kwargs in (
        {"secret": "whsec_wrong"},
        {"header": ""},
        {"header": "garbage"},
        {"header": f"t={int(time.time())},v0=abc"},
    ):
        r = deliver(bclient, event, **kwargs)
        assert r.status_code == 400 and r.get_json()["code"] == "invalid_signature", kwargs
    payload = json.dumps(event)
    tampered = payload.replace('"active"', '"canceled"')
    r = bclient.post("/webhooks/stripe", data=tampered, content_type="application/json",
                     headers={"Stripe-Signature": sign(payload, SECRET)})  # fmt: skip
    assert r.status_code == 400
    assert _events(bconn) == 0


def test_stale_and_future_timestamps_are_refused(bapi, bclient, bconn, fake_stripe):
    _, _, sub_id = subscribed(bapi, bclient, fake_stripe)
    event = fake_stripe.event("customer.subscription.updated", fake_stripe.subscriptions[sub_id])
    now = int(time.time())
    assert deliver(bclient, event, timestamp=now - 301).status_code == 400
    assert deliver(bclient, event, timestamp=now + 3600).status_code == 400
    assert _events(bconn) == 0
    assert deliver(bclient, event, timestamp=now - 200).status_code == 200


def test_rotated_secret_still_verifies(bapi, bclient, fake_stripe):
    _, _, sub_id = subscribed(bapi, bclient, fake_stripe)
    event = fake_stripe.event("customer.subscription.updated", fake_stripe.subscriptions[sub_id])
    assert deliver(bclient, event, secret=OLD_SECRET).status_code == 200


# --- webhooks: exactly once, order-proof ----------------------------------------------------------


def test_duplicate_delivery_is_a_200_no_op(bapi, bclient, bconn, fake_stripe):
    tenant_id, _, sub_id = subscribed(bapi, bclient, fake_stripe)
    fake_stripe.update_subscription(sub_id, cancel_at_period_end=True)
    event = fake_stripe.event("customer.subscription.updated", fake_stripe.subscriptions[sub_id])
    first = deliver(bclient, event)
    second = deliver(bclient, event)
    assert first.get_json()["status"] == "processed"
    assert second.status_code == 200 and second.get_json()["status"] == "duplicate"
    assert audit_actions(bconn, tenant_id).count("billing.subscription_changed") == 2  # sync + this one
    assert bconn.execute(text("SELECT attempts FROM saas.stripe_webhook_events")).scalar() == 1


def test_unknown_event_type_is_stored_and_ignored(bclient, bconn, fake_stripe):
    event = fake_stripe.event("charge.refunded", {"id": "ch_1", "object": "charge"})
    r = deliver(bclient, event)
    assert r.status_code == 200 and r.get_json()["status"] == "ignored"
    assert bconn.execute(text("SELECT status FROM saas.stripe_webhook_events")).scalar() == "ignored"


def test_updated_before_created(bapi, bclient, billing_app, fake_stripe):
    """Stripe sends created then updated; they arrive the other way round."""
    signup = bapi.signup("acme")
    h = bapi.auth(signup)
    tenant_id = signup["tenant"]["id"]
    session_id = checkout(bclient, h)
    fake_stripe.complete_checkout(session_id)
    sub_id = fake_stripe.sessions[session_id]["subscription"]
    t0 = int(time.time())
    created = fake_stripe.event(
        "customer.subscription.created", fake_stripe.subscriptions[sub_id], created=t0
    )
    fake_stripe.update_subscription(sub_id, price="price_ent_month")
    updated = fake_stripe.event(
        "customer.subscription.updated", fake_stripe.subscriptions[sub_id], created=t0 + 1
    )
    assert deliver(bclient, updated).get_json()["status"] == "processed"
    assert entitlements_now(billing_app, tenant_id).plan == "enterprise"
    r = deliver(bclient, created)
    assert r.status_code == 200
    assert entitlements_now(billing_app, tenant_id).plan == "enterprise"  # the older event did not win


def test_deleted_before_updated(bapi, bclient, billing_app, fake_stripe):
    tenant_id, h, sub_id = subscribed(bapi, bclient, fake_stripe)
    t0 = int(time.time())
    updated = fake_stripe.event(
        "customer.subscription.updated", fake_stripe.subscriptions[sub_id], created=t0
    )
    fake_stripe.update_subscription(sub_id, status="canceled", ended_at=t0 + 1)
    deleted = fake_stripe.event(
        "customer.subscription.deleted", fake_stripe.subscriptions[sub_id], created=t0 + 1
    )
    assert deliver(bclient, deleted).status_code == 200
    assert entitlements_now(billing_app, tenant_id).plan == "free"
    assert deliver(bclient, updated).status_code == 200  # payload says active: ignored as stale
    assert entitlements_now(billing_app, tenant_id).plan == "free"
    # even an "updated" in the same second cannot resurrect it: the state is re-fetched
    same_second = fake_stripe.event(
        "customer.subscription.updated", updated["data"]["object"], created=t0 + 1
    )
    assert deliver(bclient, same_second).status_code == 200
    body = bclient.get("/api/v1/billing", headers=h).get_json()
    assert body["plan"] == "free" and body["status"] == "canceled"


def test_cancel_moves_tenant_to_free_plan(bapi, bclient, bconn, billing_app, fake_stripe):
    tenant_id, _, sub_id = subscribed(bapi, bclient, fake_stripe)
    assert entitlements_now(billing_app, tenant_id).seats == 25
    fake_stripe.update_subscription(sub_id, status="canceled")
    r = deliver(
        bclient, fake_stripe.event("customer.subscription.deleted", fake_stripe.subscriptions[sub_id])
    )
    assert r.status_code == 200
    e = entitlements_now(billing_app, tenant_id)
    assert (e.plan, e.seats, e.requests_per_minute) == ("free", 3, 60)
    assert tenant_row(billing_app, tenant_id).plan == "free"
    assert "billing.subscription_changed" in audit_actions(bconn, tenant_id)


def test_processing_error_is_500_with_no_partial_effect_then_retry_applies(
    bapi, bclient, bconn, billing_app, fake_stripe
):
    tenant_id, _, sub_id = subscribed(bapi, bclient, fake_stripe)
    audits_before = audit_actions(bconn, tenant_id)
    fake_stripe.update_subscription(sub_id, price="price_ent_month")
    fake_stripe.fail_paths["/v1/subscriptions/"] = 1
    event = fake_stripe.event("invoice.paid", {
        "id": "in_1", "object": "invoice", "customer": account_of(billing_app, tenant_id).stripe_customer_id,
        "amount_paid": 9900, "currency": "usd",
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": sub_id}},
    })  # fmt: skip
    r = deliver(bclient, event)
    assert r.status_code == 500 and r.get_json()["code"] == "webhook_processing_failed"
    stored = bconn.execute(text("SELECT status, error FROM saas.stripe_webhook_events")).one()
    assert stored.status == "failed" and "Simulated outage" in stored.error
    assert audit_actions(bconn, tenant_id) == audits_before  # the invoice audit was rolled back too
    assert entitlements_now(billing_app, tenant_id).plan == "pro"
    r = deliver(bclient, event)  # Stripe retries
    assert r.status_code == 200 and r.get_json()["status"] == "processed"
    assert entitlements_now(billing_app, tenant_id).plan == "enterprise"
    assert audit_actions(bconn, tenant_id)[-2:] == ["billing.invoice_paid", "billing.subscription_changed"]


def test_upgrade_raises_rate_limit_at_once(bapi, bclient, billing_app, redis_client, fake_stripe):
    tenant_id, _, sub_id = subscribed(bapi, bclient, fake_stripe)
    assert entitlements_now(billing_app, tenant_id).requests_per_minute == 600
    assert redis_client.exists(ent.cache_key(tenant_id))  # cached
    fake_stripe.update_subscription(sub_id, price="price_ent_month")
    event = fake_stripe.event("customer.subscription.updated", fake_stripe.subscriptions[sub_id])
    assert deliver(bclient, event).status_code == 200
    e = entitlements_now(billing_app, tenant_id)
    assert (e.plan, e.requests_per_minute, e.seats, e.monthly_api_calls) == ("enterprise", 6000, None, None)


def test_past_due_grace_then_read_only_then_paid(bapi, bclient, bconn, billing_app, fake_stripe):
    tenant_id, h, sub_id = subscribed(bapi, bclient, fake_stripe)
    fake_stripe.update_subscription(sub_id, status="past_due")
    customer = account_of(billing_app, tenant_id).stripe_customer_id
    invoice = {"id": "in_2", "object": "invoice", "customer": customer, "amount_due": 1200,
               "attempt_count": 1, "parent": {"subscription_details": {"subscription": sub_id}}}  # fmt: skip
    assert deliver(bclient, fake_stripe.event("invoice.payment_failed", invoice)).status_code == 200
    account = account_of(billing_app, tenant_id)
    assert account.status == "past_due"
    assert timedelta(days=6, hours=23) < account.grace_until - utcnow() <= timedelta(days=7)
    # in the grace period: still the plan, writes allowed
    assert entitlements_now(billing_app, tenant_id).plan == "pro"
    assert bclient.post("/api/v1/contacts", json={"name": "Ada"}, headers=h).status_code == 201
    # grace over: read-only
    bconn.execute(
        # on the service's clock (not the database server's: they need not agree)
        text("UPDATE saas.billing_accounts SET grace_until = :g WHERE tenant_id = :t"),
        {"g": utcnow() - timedelta(seconds=1), "t": tenant_id},
    )
    with billing_app.app_context():
        ent.invalidate(None, uuid.UUID(tenant_id))
    r = bclient.post("/api/v1/contacts", json={"name": "Grace"}, headers=h)
    assert r.status_code == 402 and r.get_json()["code"] == "payment_required"
    assert bclient.get("/api/v1/contacts", headers=h).status_code == 200
    assert bclient.post("/api/v1/billing/portal", headers=h).status_code == 200  # can still pay
    # paid: writable again
    fake_stripe.update_subscription(sub_id, status="active")
    paid = {**invoice, "id": "in_3", "amount_paid": 1200}
    assert deliver(bclient, fake_stripe.event("invoice.paid", paid)).status_code == 200
    assert bclient.post("/api/v1/contacts", json={"name": "Grace"}, headers=h).status_code == 201
    assert account_of(billing_app, tenant_id).grace_until is None
    assert {"billing.payment_failed", "billing.invoice_paid"} <= set(audit_actions(bconn, tenant_id))


def test_trial_will_end_mail_arrives_with_the_trial_end_date(bapi, bclient, bconn, billing_app, fake_stripe):
    """``customer.subscription.trial_will_end`` -> outbox ``mail.trial_will_end`` -> the worker
    -> a real SMTP server: one mail to the billing contact and the owners with the end date."""
    from email.utils import getaddresses

    from saas.worker import Worker, load_handlers
    from tests.peers import smtp_inbox

    tenant_id, _, sub_id = subscribed(bapi, bclient, fake_stripe, status="trialing")
    customer = fake_stripe.customers[account_of(billing_app, tenant_id).stripe_customer_id]
    customer["email"] = "billing@acme.test"
    assert deliver(bclient, fake_stripe.event("customer.updated", customer)).status_code == 200
    trial_end = 1799055000  # Monday 4 January 2027, 09:30 UTC
    subscription = {**fake_stripe.subscriptions[sub_id], "trial_end": trial_end}
    event = fake_stripe.event("customer.subscription.trial_will_end", subscription)
    assert deliver(bclient, event).status_code == 200

    with smtp_inbox() as inbox:
        load_handlers()
        settings = services(billing_app).settings.with_overrides(smtp_url=inbox.url)
        outcome = Worker(services(billing_app).database, settings, {"app": billing_app}).run_until_idle()
    assert "failed" not in outcome and "retry" not in outcome, outcome
    left = bconn.execute(text("SELECT topic, last_error FROM saas.outbox WHERE sent_at IS NULL")).all()
    assert left == []
    (mail,) = [m for m in inbox.messages if "trial" in m["Subject"]]
    (envelope,) = [e for e in inbox.envelopes if e.content.find(b"trial") >= 0]
    assert sorted(envelope.rcpt_tos) == ["billing@acme.test", "owner@acme.test"]
    assert sorted(a for _, a in getaddresses([mail["To"]])) == ["billing@acme.test", "owner@acme.test"]
    assert mail["Subject"] == "Your Acme trial ends on 04 January 2027"
    body = mail.get_payload(decode=True).decode()
    assert "Monday 04 January 2027, 09:30 UTC" in body and "/billing" in body
    assert mail["Message-ID"] == f"<trial-will-end-{event['id']}@localhost>"


def test_customer_events_trial_end_and_action_required(bapi, bclient, bconn, billing_app, fake_stripe):
    tenant_id, _, sub_id = subscribed(bapi, bclient, fake_stripe, status="trialing")
    assert entitlements_now(billing_app, tenant_id).plan == "pro"
    customer = fake_stripe.customers[account_of(billing_app, tenant_id).stripe_customer_id]
    customer["email"] = "billing@acme.test"
    for event in (
        fake_stripe.event("customer.updated", customer),
        fake_stripe.event("customer.subscription.trial_will_end", fake_stripe.subscriptions[sub_id]),
        fake_stripe.event("invoice.payment_action_required",
                          {"id": "in_4", "object": "invoice", "customer": customer["id"]}),
        fake_stripe.event("customer.deleted", customer),
    ):  # fmt: skip
        r = deliver(bclient, event)
        assert r.status_code == 200 and r.get_json()["status"] == "processed", (event["type"], r.get_json())
    actions = audit_actions(bconn, tenant_id)
    for action in ("billing.customer_updated", "billing.trial_will_end", "billing.payment_action_required",
                   "billing.customer_deleted"):  # fmt: skip
        assert action in actions
    account = account_of(billing_app, tenant_id)
    assert account.customer_email == "billing@acme.test" and account.customer_deleted_at is not None
    topics = bconn.execute(text("SELECT topic FROM saas.outbox WHERE tenant_id = :t"), {"t": tenant_id})
    assert "mail.trial_will_end" in [t[0] for t in topics]


def test_event_for_unknown_customer_is_ignored(bclient, fake_stripe):
    sub = fake_stripe.create_subscription("cus_not_ours", "price_pro_month")
    r = deliver(bclient, fake_stripe.event("customer.subscription.updated", sub))
    assert r.status_code == 200 and r.get_json()["status"] == "ignored"


# --- seats ----------------------------------------------------------------------------------------


def _invite(bclient, h, email: str, role: str = "member"):
    return bclient.post("/api/v1/members", json={"email": email, "role": role}, headers=h)


def test_invite_beyond_seats_is_402_naming_the_plan(bapi, bclient, bconn):
    h = bapi.auth(bapi.signup("acme"))
    assert _invite(bclient, h, "a@acme.test").status_code == 201
    assert _invite(bclient, h, "b@acme.test").status_code == 201
    r = _invite(bclient, h, "c@acme.test")
    assert r.status_code == 402
    body = r.get_json()
    assert body["code"] == "seats_exceeded" and body["plan"] == "free"
    assert body["required_plan"] == "pro" and body["seats"] == 3 and body["seats_used"] == 3
    assert bconn.execute(text("SELECT count(*) FROM saas.users WHERE email = 'c@acme.test'")).scalar() == 0


def run_outbox(billing_app, bconn, topic: str = "billing.sync_seats") -> int:
    """Deliver pending outbox messages of ``topic`` the way ``saas worker`` does; returns how many."""
    from saas.billing.jobs import HANDLERS

    rows = bconn.execute(
        text("SELECT id, payload FROM saas.outbox WHERE topic = :t AND sent_at IS NULL ORDER BY id"),
        {"t": topic},
    ).all()
    for row in rows:
        HANDLERS[topic](billing_app, row.payload)
        bconn.execute(text("UPDATE saas.outbox SET sent_at = now() WHERE id = :i"), {"i": row.id})
    return len(rows)


def test_joining_and_leaving_updates_quantity_with_proration(bapi, bclient, bconn, billing_app, fake_stripe):
    tenant_id, h, sub_id = subscribed(bapi, bclient, fake_stripe)
    item_id = fake_stripe.subscriptions[sub_id]["items"]["data"][0]["id"]
    assert _invite(bclient, h, "b@acme.test").status_code == 201
    token = mailed_invitation_token(bclient.application, "b@acme.test")
    assert run_outbox(billing_app, bconn) == 0  # invited is not active yet
    accepted = bclient.post(
        "/api/v1/invitations/accept", json={"token": token, "password": "another good pass"}
    )
    assert accepted.status_code == 200
    assert fake_stripe.calls("POST", "/v1/subscription_items/") == []  # never inside the request
    assert run_outbox(billing_app, bconn) == 1
    assert fake_stripe.calls("POST", f"/v1/subscription_items/{item_id}") == [
        {"quantity": "2", "proration_behavior": "create_prorations"}
    ]
    assert account_of(billing_app, tenant_id).quantity == 2
    user_id = accepted.get_json()["user"]["id"]
    assert bclient.delete(f"/api/v1/members/{user_id}", headers=h).status_code == 204
    run_outbox(billing_app, bconn)
    assert fake_stripe.calls("POST", f"/v1/subscription_items/{item_id}")[-1]["quantity"] == "1"
    assert "billing.seats_changed" in audit_actions(bconn, tenant_id)


def test_seat_pushes_carry_the_count_when_sent_and_survive_a_stripe_outage(
    bapi, bclient, bconn, billing_app, fake_stripe
):
    from saas.billing.jobs import HANDLERS

    tenant_id, h, sub_id = subscribed(bapi, bclient, fake_stripe)
    item_id = fake_stripe.subscriptions[sub_id]["items"]["data"][0]["id"]
    for email in ("b@acme.test", "c@acme.test"):
        assert _invite(bclient, h, email).status_code == 201
        token = mailed_invitation_token(bclient.application, email)
        r = bclient.post("/api/v1/invitations/accept", json={"token": token, "password": "another good pass"})
        assert r.status_code == 200
    query = text("SELECT payload FROM saas.outbox WHERE topic = 'billing.sync_seats' ORDER BY id")
    payloads = [r.payload for r in bconn.execute(query)]
    assert payloads == [{"tenant_id": tenant_id}] * 2
    fake_stripe.fail_paths["/v1/subscription_items/"] = 1
    with pytest.raises(stripe.APIError):  # Stripe down: nothing changes, the worker retries
        HANDLERS["billing.sync_seats"](billing_app, payloads[1])
    assert account_of(billing_app, tenant_id).quantity == 1
    for payload in reversed(payloads):  # any order, any number of times: the current count wins
        HANDLERS["billing.sync_seats"](billing_app, payload)
    pushes = fake_stripe.calls("POST", f"/v1/subscription_items/{item_id}")
    assert [p["quantity"] for p in pushes] == ["3", "3"]  # the failed attempt, then one push
    assert account_of(billing_app, tenant_id).quantity == 3


def test_stripe_client_has_a_short_timeout(billing_app):
    from saas.billing import service

    client = services(billing_app).billing.client
    http = client._requestor._client
    assert http._timeout == service.STRIPE_TIMEOUT_SECONDS <= 10
    assert client._requestor._options.max_network_retries == 2


# --- operator: sync, replay, events, set-plan, usage ----------------------------------------------


def test_sync_repairs_a_missed_webhook(bapi, bclient, billing_app, cli, fake_stripe):
    tenant_id, _, sub_id = subscribed(bapi, bclient, fake_stripe)
    fake_stripe.update_subscription(sub_id, price="price_ent_month", cancel_at_period_end=True)  # no webhook
    assert entitlements_now(billing_app, tenant_id).plan == "pro"  # drift
    result = cli("billing", "sync", "acme")
    assert result.exit_code == 0, result.output
    assert "acme: changed" in result.output
    assert entitlements_now(billing_app, tenant_id).plan == "enterprise"
    assert account_of(billing_app, tenant_id).cancel_at_period_end is True
    result = cli("billing", "sync", "--all")
    assert result.exit_code == 0 and "acme: unchanged" in result.output
    assert cli("billing", "sync").exit_code == 2


def test_replay_repairs_a_failed_event_and_events_lists_it(bapi, bclient, billing_app, cli, fake_stripe):
    tenant_id, _, sub_id = subscribed(bapi, bclient, fake_stripe)
    fake_stripe.update_subscription(sub_id, status="canceled")
    event = fake_stripe.event("customer.subscription.deleted", fake_stripe.subscriptions[sub_id])
    fake_stripe.fail_paths["/v1/subscriptions/"] = 1
    assert deliver(bclient, event).status_code == 500
    listed = cli("billing", "events", "--failed", "--json")
    assert [e["id"] for e in json.loads(listed.output)] == [event["id"]]
    assert entitlements_now(billing_app, tenant_id).plan == "pro"
    result = cli("billing", "replay", event["id"])
    assert result.exit_code == 0 and "processed" in result.output, result.output
    assert entitlements_now(billing_app, tenant_id).plan == "free"
    assert json.loads(cli("billing", "events", "--failed", "--json").output) == []
    assert cli("billing", "replay", "evt_missing").exit_code == 1


def test_set_plan_override_is_audited_and_wins(bapi, bclient, bconn, billing_app, cli):
    signup = bapi.signup("acme")
    tenant_id = signup["tenant"]["id"]
    result = cli(
        "tenants", "set-plan", "acme", "enterprise", "--reason", "design partner", "--limit", "seats=7"
    )
    assert result.exit_code == 0, result.output
    e = entitlements_now(billing_app, tenant_id)
    assert (e.plan, e.seats, e.features["sso"]) == ("enterprise", 7, True)
    assert audit_actions(bconn, tenant_id) == ["billing.plan_overridden"]
    shown = json.loads(cli("billing", "show", "acme", "--json").output)
    assert shown["plan"] == "enterprise" and shown["override"]["reason"] == "design partner"
    assert cli("tenants", "set-plan", "acme", "gold").exit_code == 2
    assert cli("tenants", "set-plan", "acme", "none").exit_code == 0
    assert entitlements_now(billing_app, tenant_id).plan == "free"
    plans = json.loads(cli("billing", "plans", "--json").output)
    assert {p["id"]: p["prices"]["month"] for p in plans if p["prices"]} == {
        "pro": "price_pro_month", "enterprise": "price_ent_month"
    }  # fmt: skip


def test_webhook_events_table_holds_payload(bapi, bclient, bconn, fake_stripe):
    _, _, sub_id = subscribed(bapi, bclient, fake_stripe)
    event = fake_stripe.event("customer.subscription.updated", fake_stripe.subscriptions[sub_id])
    deliver(bclient, event)
    session = bconn
    row = session.execute(
        text("SELECT id, type, payload, processed_at FROM saas.stripe_webhook_events")
    ).one()
    assert (
        row.id == event["id"] and row.type == event["type"] and row.payload["data"]["object"]["id"] == sub_id
    )
    assert row.processed_at is not None
    assert WebhookEvent.__table__.c.id.primary_key


# --- real commits: the same event from two threads at once ----------------------------------------


def test_same_event_delivered_concurrently_has_one_effect(billing_app, engine, redis_client, fake_stripe):
    """Two deliveries of one event race on real, committed transactions: exactly one applies."""
    import threading

    redis_client.flushdb()
    fake_stripe.reset()
    slug = "race-" + uuid.uuid4().hex[:8]
    client = billing_app.test_client()
    api = Api(client)
    signup = api.signup(slug)
    tenant_id = signup["tenant"]["id"]
    schema = "t_" + uuid.UUID(tenant_id).hex
    event_ids: list[str] = []
    try:
        h = api.auth(signup)
        session_id = checkout(client, h)
        fake_stripe.complete_checkout(session_id)
        assert client.get(f"/api/v1/billing/checkout/{session_id}/sync", headers=h).status_code == 200
        sub_id = fake_stripe.sessions[session_id]["subscription"]
        fake_stripe.update_subscription(sub_id, price="price_ent_month")
        event = fake_stripe.event("customer.subscription.updated", fake_stripe.subscriptions[sub_id])
        event_ids.append(event["id"])
        fake_stripe.delay_seconds = 0.2  # the first delivery holds its locks while the second arrives
        barrier = threading.Barrier(2)
        answers: list[tuple[int, str]] = []

        def send() -> None:
            c = billing_app.test_client()
            barrier.wait()
            r = deliver(c, event)
            answers.append((r.status_code, r.get_json()["status"]))

        threads = [threading.Thread(target=send) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(answers) == [(200, "duplicate"), (200, "processed")]
        with engine.connect() as conn:
            query = f"SELECT count(*) FROM {schema}.audit_events WHERE data->>'event' = :e"  # noqa: S608
            changes = conn.execute(text(query), {"e": event["id"]}).scalar()
            attempts = conn.execute(
                text("SELECT attempts FROM saas.stripe_webhook_events WHERE id = :e"), {"e": event["id"]}
            ).scalar()
        assert changes == 1 and attempts == 1
        assert len(fake_stripe.calls("GET", f"/v1/subscriptions/{sub_id}")) == 2  # the sync + one apply
        assert entitlements_now(billing_app, tenant_id).plan == "enterprise"
    finally:
        fake_stripe.delay_seconds = 0.0
        with engine.begin() as conn:
            conn.execute(
                text("DELETE FROM saas.stripe_webhook_events WHERE id = ANY(:ids)"), {"ids": event_ids}
            )
            conn.execute(text("DELETE FROM saas.outbox WHERE tenant_id = :t"), {"t": tenant_id})
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(text("DELETE FROM saas.tenants WHERE id = :t"), {"t": tenant_id})
            conn.execute(text("DELETE FROM saas.users WHERE email = :e"), {"e": f"owner@{slug}.test"})
        redis_client.flushdb()


def test_paused_means_free_and_resumed_restores_the_plan(bapi, bclient, billing_app, fake_stripe):
    tenant_id, _, sub_id = subscribed(bapi, bclient, fake_stripe)
    t0 = int(time.time())
    fake_stripe.update_subscription(sub_id, status="paused")
    paused = fake_stripe.event("customer.subscription.paused", fake_stripe.subscriptions[sub_id], created=t0)
    assert deliver(bclient, paused).status_code == 200
    assert entitlements_now(billing_app, tenant_id).plan == "free"
    fake_stripe.update_subscription(sub_id, status="active")
    resumed = fake_stripe.event(
        "customer.subscription.resumed", fake_stripe.subscriptions[sub_id], created=t0 + 1
    )
    assert deliver(bclient, resumed).status_code == 200
    assert entitlements_now(billing_app, tenant_id).plan == "pro"


def test_live_event_on_a_test_key_is_ignored(bapi, bclient, billing_app, fake_stripe):
    tenant_id, _, sub_id = subscribed(bapi, bclient, fake_stripe)
    fake_stripe.update_subscription(sub_id, status="canceled")
    event = {
        **fake_stripe.event("customer.subscription.deleted", fake_stripe.subscriptions[sub_id]),
        "livemode": True,
    }
    r = deliver(bclient, event)
    assert r.status_code == 200 and r.get_json()["status"] == "ignored"
    assert entitlements_now(billing_app, tenant_id).plan == "pro"


def test_cached_entitlements_need_no_database(bapi, bclient, billing_app, fake_stripe):
    """The hot path: once cached, a tenant with only ``id`` and ``plan`` is answered from Redis."""
    from types import SimpleNamespace

    tenant_id, _, _ = subscribed(bapi, bclient, fake_stripe)
    assert entitlements_now(billing_app, tenant_id).plan == "pro"  # fills the cache
    detached = SimpleNamespace(id=uuid.UUID(tenant_id), plan="free")
    with billing_app.app_context():
        assert ent.entitlements_for(detached).plan == "pro"
    # outside any app (no cache, no session): the tenant's own plan column
    assert ent.entitlements_for(detached).plan == "free"


def test_openapi_documents_the_billing_paths(bclient):
    paths = bclient.get("/openapi.json").get_json()["paths"]
    for path in ("/api/v1/billing", "/api/v1/billing/checkout", "/api/v1/billing/portal",
                 "/api/v1/billing/checkout/{session_id}/sync", "/webhooks/stripe"):  # fmt: skip
        assert path in paths, path


def test_a_stale_reader_cannot_refill_the_cache_after_an_invalidation(billing_app, redis_client, bconn):
    """Reader loads old state, a change commits and invalidates, the reader then tries to cache:
    the generation moved, so the old state is not cached."""
    tenant_id = uuid.uuid4()
    redis_client.flushdb()
    old = ent.BillingState("pro", "active")
    with billing_app.app_context():
        ent._cache_if_generation(redis_client, tenant_id, old, b"0")
        assert redis_client.get(ent.cache_key(tenant_id))  # no change in between: cached
        ent.invalidate(None, tenant_id)  # a change commits
        assert redis_client.get(ent.cache_key(tenant_id)) is None
        ent._cache_if_generation(redis_client, tenant_id, old, b"0")  # the stale reader
        assert redis_client.get(ent.cache_key(tenant_id)) is None


# --- review fixes (issue #4 review) ---------------------------------------------------------------


def test_non_utf8_body_with_a_fresh_timestamp_is_400_and_stores_nothing(bclient, bconn):
    header = f"t={int(time.time())},v1={'0' * 64}"
    for body in (b"\xff\xfe{}", b'{"id": "evt_\xc3"}'):
        r = bclient.post("/webhooks/stripe", data=body, content_type="application/json",
                         headers={"Stripe-Signature": header})  # fmt: skip
        assert r.status_code == 400 and r.get_json()["code"] == "invalid_signature"
    r = bclient.post("/webhooks/stripe", data=b"{}", content_type="application/json",
                     headers={"Stripe-Signature": f"t={int(time.time())},v1=\u00e4"})  # fmt: skip
    assert r.status_code == 400 and r.get_json()["code"] == "invalid_signature"
    assert _events(bconn) == 0


def test_limit_overrides_unlimited_and_zero_are_kept_and_booleans_refused(bapi, cli, billing_app):
    state = ent.BillingState("pro", "active", override_limits={"requests_per_minute": -1, "seats": 0})
    e = ent.compute_entitlements("free", state)
    assert e.requests_per_minute is None and e.seats == 0  # unlimited, and zero, not the plan's 600
    e = ent.compute_entitlements("free", ent.BillingState(override_limits={"requests_per_minute": 0}))
    assert e.requests_per_minute == 0
    e = ent.compute_entitlements("free", ent.BillingState(override_limits={"seats": True}))
    assert e.seats == 3  # a stored boolean is not a limit: the plan's applies
    tenant_id = bapi.signup("acme")["tenant"]["id"]
    for bad in ("seats=true", "seats=false", "requests_per_minute=-2", "seats=1.5", "seats=ten"):
        result = cli("tenants", "set-plan", "acme", "pro", "--limit", bad)
        assert result.exit_code == 2, (bad, result.output)
    assert cli("tenants", "set-plan", "acme", "pro", "--limit", "requests_per_minute=-1").exit_code == 0
    assert entitlements_now(billing_app, tenant_id).requests_per_minute is None


def test_replaying_processed_events_never_repeats_mail_or_audit(bapi, bclient, bconn, cli, fake_stripe):
    tenant_id, _, sub_id = subscribed(bapi, bclient, fake_stripe, status="trialing")
    customer = fake_stripe.subscriptions[sub_id]["customer"]
    trial = fake_stripe.event("customer.subscription.trial_will_end", fake_stripe.subscriptions[sub_id])
    paid = fake_stripe.event("invoice.paid", {"id": "in_9", "object": "invoice", "customer": customer,
                                              "amount_paid": 1200, "currency": "usd"})  # fmt: skip
    fake_stripe.customers[customer]["email"] = "new@acme.test"
    updated = fake_stripe.event("customer.updated", fake_stripe.customers[customer])
    deleted = fake_stripe.event(
        "customer.deleted", fake_stripe.customers[customer], created=updated["created"] + 1
    )
    for event in (trial, paid, updated, deleted):
        assert deliver(bclient, event).status_code == 200
        result = cli("billing", "replay", event["id"])
        assert result.exit_code == 0 and "processed" in result.output, result.output
    mails = bconn.execute(
        text("SELECT payload FROM saas.outbox WHERE topic = 'mail.trial_will_end' AND tenant_id = :t"),
        {"t": tenant_id},
    ).all()
    assert [m.payload["event_id"] for m in mails] == [trial["id"]]
    actions = audit_actions(bconn, tenant_id)
    for action in ("billing.trial_will_end", "billing.invoice_paid", "billing.customer_updated",
                   "billing.customer_deleted"):  # fmt: skip
        assert actions.count(action) == 1, (action, actions)


def test_an_older_customer_updated_never_overwrites_a_newer_one(bapi, bclient, billing_app, fake_stripe):
    tenant_id, _, sub_id = subscribed(bapi, bclient, fake_stripe)
    customer = dict(fake_stripe.customers[fake_stripe.subscriptions[sub_id]["customer"]])
    now = int(time.time())
    older = fake_stripe.event("customer.updated", {**customer, "email": "old@acme.test"}, created=now - 10)
    newer = fake_stripe.event("customer.updated", {**customer, "email": "new@acme.test"}, created=now)
    assert deliver(bclient, newer).status_code == 200
    r = deliver(bclient, older)
    assert r.status_code == 200 and r.get_json()["status"] == "processed"
    assert account_of(billing_app, tenant_id).customer_email == "new@acme.test"
    # the same second: order unknown, Stripe's current customer decides
    fake_stripe.customers[customer["id"]]["email"] = "live@acme.test"
    tie = fake_stripe.event("customer.updated", {**customer, "email": "stale@acme.test"}, created=now)
    assert deliver(bclient, tie).status_code == 200
    assert account_of(billing_app, tenant_id).customer_email == "live@acme.test"


def test_a_failed_checkout_keeps_the_new_customer_id(bapi, bclient, billing_app, fake_stripe):
    signup = bapi.signup("acme")
    h = bapi.auth(signup)
    fake_stripe.fail_paths["/v1/checkout/sessions"] = 1
    r = bclient.post("/api/v1/billing/checkout", json={"plan": "pro"}, headers=h)
    assert r.status_code == 503 and r.get_json()["code"] == "stripe_unavailable"
    (customer_id,) = fake_stripe.customers
    assert account_of(billing_app, signup["tenant"]["id"]).stripe_customer_id == customer_id
    fake_stripe.idempotent.clear()  # more than 24 h later: Stripe no longer replays the create
    checkout(bclient, h)
    assert list(fake_stripe.customers) == [customer_id]  # no duplicate customer
    assert fake_stripe.sessions[next(iter(fake_stripe.sessions))]["customer"] == customer_id


def test_grace_runs_from_stripes_invoice_time_and_a_late_sync_does_not_restart_it(
    bapi, bclient, billing_app, cli, fake_stripe
):
    tenant_id, _, sub_id = subscribed(bapi, bclient, fake_stripe)
    failed_at = int(time.time()) - 5 * 86400  # the renewal failed 5 days ago; we hear of it now
    invoice = fake_stripe.renewal_failed(sub_id, finalized_at=failed_at)
    assert deliver(bclient, fake_stripe.event("invoice.payment_failed", invoice)).status_code == 200
    account = account_of(billing_app, tenant_id)
    assert account.status == "past_due" and int(account.past_due_since.timestamp()) == failed_at
    assert int(account.grace_until.timestamp()) == failed_at + 7 * 86400  # 2 days left, not 7
    assert cli("billing", "sync", "acme").exit_code == 0  # a late reconciliation
    assert int(account_of(billing_app, tenant_id).grace_until.timestamp()) == failed_at + 7 * 86400
    # the grace is over once Stripe's time says so, even though we saw past_due only now
    fake_stripe.renewal_failed(sub_id, finalized_at=int(time.time()) - 8 * 86400)
    assert cli("billing", "sync", "acme").exit_code == 0
    assert entitlements_now(billing_app, tenant_id).read_only is True


def test_billing_changes_need_a_recent_authentication(bapi, bclient, billing_app, fake_stripe):
    """Checkout and portal are step-up actions (RFC 9470): a token whose ``auth_time`` is older
    than the step-up window answers 401 ``insufficient_user_authentication``."""
    import time

    signup = bapi.signup("acme")
    stale = services(billing_app).tokens.issue(
        subject=signup["user"]["id"],
        tenant_id=signup["tenant"]["id"],
        roles=["owner"],
        scope="api",
        client_id="saas-api",
        auth_time=int(time.time()) - 3600,
    )
    h = {"Authorization": f"Bearer {stale.token}"}
    for path, body in (("/api/v1/billing/checkout", {"plan": "pro"}), ("/api/v1/billing/portal", None)):
        r = bclient.post(path, json=body, headers=h)
        assert r.status_code == 401 and r.get_json()["code"] == "insufficient_user_authentication", path
    assert bclient.get("/api/v1/billing", headers=h).status_code == 200  # reading needs no step-up
    assert fake_stripe.calls("POST", "/v1/checkout/sessions") == []
