"""Billing depth (docs/billing.md): an operator's plan catalogue (``PLANS_FILE``) and its
features (``entitlements.has``), Checkout trials with or without a card, promotion codes, tax,
the customer's tax ids and address, the invoices list, and the dunning mails (payment failed,
grace period over). The real ``stripe`` SDK against tests/stripe_fake.py; mail through the outbox
worker to a real SMTP server (aiosmtpd). The same flows through gunicorn:
tests/test_billing_gunicorn.py."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from saas import create_app
from saas.billing import entitlements as ent
from saas.db import Database
from saas.services import services
from saas.settings import Settings, SettingsError
from tests import test_billing as billing_tests
from tests.conftest import Api, rolled_back
from tests.helpers import assert_problem, mailed_invitation_token
from tests.test_billing import account_of, audit_actions, billing_settings, deliver, subscribed

# the billing tests' fixtures (the real SDK against tests/stripe_fake.py; billing on)
fake_stripe = billing_tests.fake_stripe
billing_app = billing_tests.billing_app
bconn, bclient, bapi, cli = billing_tests.bconn, billing_tests.bclient, billing_tests.bapi, billing_tests.cli

#: an operator's catalogue: other plan names, a feature of its own (``webhooks``), trials
CUSTOM_CATALOGUE = """
default_plan = "starter"

[plans.starter]
name = "Starter"
seats = 2
requests_per_minute = 30
monthly_api_calls = 1000
features = { sso = false, custom_roles = false, audit_log_days = 7, webhooks = false }

[plans.team]
name = "Team"
price_env = { month = "STRIPE_PRICE_TEAM" }
per_seat = true
seats = 10
requests_per_minute = 300
monthly_api_calls = 100000
trial_days = 14
payment_method_collection = "if_required"
features = { sso = false, custom_roles = true, audit_log_days = 30, webhooks = true }

[plans.scale]
name = "Scale"
price_env = { month = "STRIPE_PRICE_SCALE" }
seats = -1
requests_per_minute = 3000
monthly_api_calls = -1
trial_days = 7
features = { sso = true, custom_roles = true, audit_log_days = 365, webhooks = true }
"""
CUSTOM_PRICES = {
    "price_team_month": {"interval": "month", "unit_amount": 1500},
    "price_scale_month": {"interval": "month", "unit_amount": 9000},
}
CUSTOM_PRICE_ENV = {"STRIPE_PRICE_TEAM": "price_team_month", "STRIPE_PRICE_SCALE": "price_scale_month"}


def write_catalogue(folder: Path, body: str = CUSTOM_CATALOGUE) -> Path:
    path = folder / "plans.toml"
    path.write_text(body)
    return path


@pytest.fixture(scope="module")
def plans_file(tmp_path_factory) -> Path:
    return write_catalogue(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture(scope="module")
def custom_app(settings, engine, redis_client, fake_stripe, plans_file):
    """The app with billing on and the operator's catalogue (tax and promotion-code field on)."""
    fake_stripe.prices.update(CUSTOM_PRICES)
    custom = billing_settings(settings, fake_stripe).with_overrides(
        plans_file=str(plans_file),
        stripe_prices=CUSTOM_PRICE_ENV,
        billing_allow_promotion_codes=True,
        billing_automatic_tax=True,
        billing_tax_id_collection=True,
    )
    try:
        application = create_app(custom, database=Database(engine), redis=redis_client)
    finally:
        ent.use_catalogue(None)  # code outside an app context keeps the packaged catalogue
    application.testing = True
    return application


@pytest.fixture()
def capi(custom_app, engine, redis_client, fake_stripe):
    fake_stripe.reset()
    with rolled_back(custom_app, engine, redis_client) as conn:
        api = Api(custom_app.test_client())
        api.conn = conn
        yield api


def custom_cli(app):
    from click.testing import CliRunner

    from saas.cli import Context, main

    def run(*args: str):
        ctx = Context()
        ctx._settings = services(app).settings
        ctx._app = app
        try:
            return CliRunner().invoke(main, list(args), obj=ctx, catch_exceptions=False)
        finally:
            ent.use_catalogue(None)  # the command made the app's catalogue the process's: undo it

    return run


def checkout_call(fake_stripe) -> dict:
    (params,) = fake_stripe.calls("POST", "/v1/checkout/sessions")[-1:]
    return params


# --- the catalogue -------------------------------------------------------------------------------


def test_a_custom_catalogue_is_validated_at_start_up_with_one_line(tmp_path, settings, engine, redis_client):
    good = {"requests_per_minute": 1, "seats": 1, "monthly_api_calls": -1}
    paid = {**good, "price_env": {"month": "STRIPE_PRICE_PRO"}}
    for plans, message in (
        ({"pro": {**paid, "trial_days": -1}}, r"plans.pro.trial_days: expected an integer 0..730"),
        ({"pro": {**paid, "trial_days": 731}}, r"plans.pro.trial_days"),
        ({"pro": {**paid, "trial_days": True}}, r"plans.pro.trial_days"),
        ({"pro": {**good, "trial_days": 14}}, r"plans.pro.trial_days: only a paid plan"),
        ({"pro": {**paid, "payment_method_collection": "never"}}, r"plans.pro.payment_method_collection"),
        ({"pro": {**good, "features": {"Bad-Name": True}}}, r"plans.pro.features.Bad-Name"),
        ({"pro": {**good, "features": {"seats": True}}}, r"plans.pro.features.seats"),
        ({"pro": {**good, "per_seat": "yes"}}, r"plans.pro.per_seat"),
        (
            {"pro": {**good, "features": {"sso": True}}, "max": {**good, "features": {"sso": 1}}},
            r"plans.max.features.sso: expected a bool",
        ),
    ):
        with pytest.raises(ent.CatalogueError, match=message):
            ent.parse_catalogue({"default_plan": "pro", "plans": plans})
    broken = write_catalogue(
        tmp_path, CUSTOM_CATALOGUE.replace("trial_days = 14", "trial_days = 'two weeks'")
    )
    with pytest.raises(ent.CatalogueError) as raised:
        create_app(
            settings.with_overrides(plans_file=str(broken)), database=Database(engine), redis=redis_client
        )
    message = str(raised.value)
    assert message.startswith(f"PLANS_FILE {broken}: plans.team.trial_days") and "\n" not in message
    (tmp_path / "bad.toml").write_text("default_plan = [")
    with pytest.raises(ent.CatalogueError, match=r"^PLANS_FILE .*bad.toml: "):
        ent.load_catalogue(tmp_path / "bad.toml")
    assert ent.catalogue()[0] == "free"  # the failed start-ups left the packaged catalogue in force
    with pytest.raises(SettingsError, match="PLANS_FILE: no such file"):
        Settings.from_env({"PLANS_FILE": str(tmp_path / "missing.toml")})
    assert Settings.from_env({"PLANS_FILE": str(broken)}).plans_file == str(broken.resolve())
    for name, value in (("BILLING_TRIAL_PAYMENT_METHOD", "sometimes"), ("BILLING_AUTOMATIC_TAX", "maybe")):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})


def test_each_app_reads_its_own_catalogue(custom_app, billing_app, plans_file):
    with custom_app.app_context():
        default, plans = ent.catalogue()
        assert (default, list(plans)) == ("starter", ["starter", "team", "scale"])
        assert plans["team"].trial_days == 14 and plans["team"].payment_method_collection == "if_required"
        assert ent.feature_kinds() == {
            "sso": bool,
            "custom_roles": bool,
            "audit_log_days": int,
            "webhooks": bool,
        }
    with billing_app.app_context():
        assert list(ent.catalogue()[1]) == ["free", "pro", "enterprise"]
    assert ent.catalogue()[0] == "free"  # outside an app: the process's (packaged) catalogue


def test_has_gates_features_and_the_402_names_the_cheapest_plan(capi, custom_app):
    signup = capi.signup("acme")
    h = capi.auth(signup)
    tenant_id = uuid.UUID(signup["tenant"]["id"])
    with custom_app.app_context():
        from saas.identity.models import Tenant

        tenant = services(custom_app).database.session().get(Tenant, tenant_id)
        assert not ent.has(tenant, "webhooks") and ent.has(tenant, "audit_log_days")
        assert not ent.has(tenant, "no_such_feature")
        with pytest.raises(ent.EntitlementRequired) as raised:
            ent.check_feature(tenant, "webhooks")
        assert raised.value.extra == {"feature": "webhooks", "plan": "team"}
    # a gated endpoint asks the same question (require_feature_admin -> has)
    r = capi.client.post(
        "/api/v1/roles", json={"name": "auditor", "permissions": ["members:read"]}, headers=h
    )
    body = assert_problem(r, 402, "entitlement_required")
    assert (body["feature"], body["plan"]) == ("custom_roles", "team") and "Team plan" in body["detail"]
    r = capi.client.get("/api/v1/billing", headers=h)
    assert r.status_code == 200, r.get_json()
    features = {f["name"]: f for f in r.get_json()["features"]}
    assert list(features) == ["sso", "custom_roles", "audit_log_days", "webhooks"]
    assert features["webhooks"] == {
        "name": "webhooks",
        "enabled": False,
        "value": False,
        "cheapest_plan": "team",
    }
    assert features["sso"]["cheapest_plan"] == "scale"
    assert features["audit_log_days"] == {"name": "audit_log_days", "enabled": True, "value": 7,
                                          "cheapest_plan": "starter"}  # fmt: skip


def test_set_plan_overrides_a_feature_and_refuses_unknown_or_mistyped_ones(capi, custom_app):
    signup = capi.signup("acme")
    h = capi.auth(signup)
    run = custom_cli(custom_app)
    for bad in ("webhook=true", "webhooks=1", "webhooks=yes", "audit_log_days=true", "custom_roles=maybe"):
        result = run("tenants", "set-plan", "acme", "none", "--limit", bad)
        assert result.exit_code == 2, (bad, result.output)
    assert audit_actions(capi.conn, signup["tenant"]["id"]) == []  # refused: nothing written
    result = run("tenants", "set-plan", "acme", "none", "--limit", "custom_roles=true", "--limit",
                 "audit_log_days=90", "--reason", "design partner")  # fmt: skip
    assert result.exit_code == 0, result.output
    r = capi.client.post(
        "/api/v1/roles", json={"name": "auditor", "permissions": ["members:read"]}, headers=h
    )
    assert r.status_code == 201, r.get_json()
    features = {f["name"]: f for f in capi.client.get("/api/v1/billing", headers=h).get_json()["features"]}
    assert features["custom_roles"]["enabled"] and features["audit_log_days"]["value"] == 90
    assert features["webhooks"]["enabled"] is False
    assert "billing.plan_overridden" in audit_actions(capi.conn, signup["tenant"]["id"])
    plans = {p["id"]: p for p in json.loads(run("billing", "plans", "--json").output)}
    assert list(plans) == ["starter", "team", "scale"] and plans["starter"]["default"]
    assert (plans["team"]["trial_days"], plans["team"]["payment_method_collection"]) == (14, "if_required")
    assert (plans["scale"]["trial_days"], plans["scale"]["payment_method_collection"]) == (7, "always")
    assert plans["team"]["prices"] == {"month": "price_team_month"}


# --- Checkout: trials, promotion codes, tax ------------------------------------------------------


def test_a_plans_trial_goes_to_checkout_without_a_card_once(capi, custom_app, fake_stripe):
    signup = capi.signup("acme")
    h = capi.auth(signup)
    r = capi.client.post("/api/v1/billing/checkout", json={"plan": "team"}, headers=h)
    assert r.status_code == 200, r.get_json()
    params = checkout_call(fake_stripe)
    assert params["subscription_data"]["trial_period_days"] == "14"
    assert params["payment_method_collection"] == "if_required"  # the plan's own setting
    assert params["subscription_data"]["trial_settings"] == {
        "end_behavior": {"missing_payment_method": "cancel"}
    }
    session_id = r.get_json()["url"].rsplit("/", 1)[1]
    fake_stripe.complete_checkout(session_id)
    r = capi.client.get(f"/api/v1/billing/checkout/{session_id}/sync", headers=h)
    doc = r.get_json()
    assert (doc["plan"], doc["status"]) == ("team", "trialing")
    sub = fake_stripe.subscriptions[fake_stripe.sessions[session_id]["subscription"]]
    assert datetime.fromisoformat(doc["trial_end"]) == datetime.fromtimestamp(sub["trial_end"], UTC)
    assert sub["trial_end"] - sub["created"] == 14 * 86400
    # canceled: a second subscription gets no second trial; scale's trial asks for a card (the setting)
    fake_stripe.update_subscription(sub["id"], status="canceled")
    assert deliver(capi.client, fake_stripe.event("customer.subscription.deleted", sub)).status_code == 200
    r = capi.client.post("/api/v1/billing/checkout", json={"plan": "scale"}, headers=h)
    assert r.status_code == 200, r.get_json()
    params = checkout_call(fake_stripe)
    assert (
        "trial_period_days" not in params["subscription_data"] and "payment_method_collection" not in params
    )


def test_a_trial_asks_for_a_card_per_the_setting(
    bapi, bclient, billing_app, fake_stripe, monkeypatch, tmp_path
):
    """The packaged catalogue has no trial; a plan's ``trial_days`` without its own
    ``payment_method_collection`` takes ``BILLING_TRIAL_PAYMENT_METHOD``."""
    from saas.billing import service

    handle = services(billing_app).billing
    trial_pro = ent.Plan("pro", "Pro", 25, 600, None, {}, True, {"month": "STRIPE_PRICE_PRO"}, trial_days=30)
    monkeypatch.setattr(ent, "plan", lambda plan_id: trial_pro)
    account = type("Account", (), {"stripe_customer_id": "cus_1", "stripe_subscription_id": None})()
    tenant = type("T", (), {"id": uuid.uuid4()})()
    for setting in ("always", "if_required"):
        monkeypatch.setattr(
            handle, "settings", handle.settings.with_overrides(billing_trial_payment_method=setting)
        )
        params = service.checkout_params(handle, tenant, account, "pro", "price_pro_month", 1, None)
        assert params["payment_method_collection"] == setting
        assert params["subscription_data"]["trial_period_days"] == 30
        assert ("trial_settings" in params["subscription_data"]) == (setting == "if_required")
        assert "allow_promotion_codes" not in params and "automatic_tax" not in params  # settings off


def test_promotion_codes_at_checkout(capi, custom_app, fake_stripe):
    signup = capi.signup("acme")
    h = capi.auth(signup)
    tenant_id = signup["tenant"]["id"]
    promo = fake_stripe.add_promotion_code("LAUNCH20")
    fake_stripe.add_promotion_code("EXPIRED", active=False)
    fake_stripe.add_promotion_code("VIPONLY", customer="cus_someone_else")
    # hostile or unknown codes: 422 on promotion_code, no customer, no session, no audit
    for code, stripe_calls in (("NOPE", 1), ("EXPIRED", 1), ("VIPONLY", 1), ("x'; drop", 0), ("", 0),
                               ("A" * 65, 0), (["LAUNCH20"], 0)):  # fmt: skip
        before = len(fake_stripe.calls("GET", "/v1/promotion_codes"))
        r = capi.client.post(
            "/api/v1/billing/checkout", json={"plan": "team", "promotion_code": code}, headers=h
        )
        body = assert_problem(r, 422)
        assert "promotion_code" in body["errors"], body
        assert len(fake_stripe.calls("GET", "/v1/promotion_codes")) - before == stripe_calls, code
    assert fake_stripe.customers == {} and fake_stripe.sessions == {}
    assert audit_actions(capi.conn, tenant_id) == []
    # a known code (any case): discounts, and no allow_promotion_codes (Stripe takes one of the two)
    r = capi.client.post(
        "/api/v1/billing/checkout", json={"plan": "team", "promotion_code": "launch20"}, headers=h
    )
    assert r.status_code == 200, r.get_json()
    params = checkout_call(fake_stripe)
    assert params["discounts"] == [{"promotion_code": promo["id"]}] and "allow_promotion_codes" not in params
    assert fake_stripe.calls("GET", "/v1/promotion_codes")[-1] == {"code": "launch20", "active": "true",
                                                                  "limit": "10"}  # fmt: skip
    # without a code: the promotion-code field (BILLING_ALLOW_PROMOTION_CODES)
    r = capi.client.post("/api/v1/billing/checkout", json={"plan": "scale"}, headers=h)
    assert r.status_code == 200 and checkout_call(fake_stripe)["allow_promotion_codes"] == "true"
    row = capi.conn.execute(
        text(f"SELECT data FROM t_{uuid.UUID(tenant_id).hex}.audit_events "  # noqa: S608
             "WHERE action = 'billing.checkout_started' ORDER BY occurred_at LIMIT 1")
    ).scalar_one()  # fmt: skip
    assert row["promotion_code"] == promo["id"] and row["trial_days"] == 14 and row["automatic_tax"] is True


def test_a_code_stripe_will_not_redeem_at_checkout_is_a_422(capi, fake_stripe, monkeypatch):
    """Stripe may refuse the discount only when the session is created (a code restricted to
    first-time customers...): a 422 on ``promotion_code``, no session."""
    h = capi.auth(capi.signup("acme"))
    promo = fake_stripe.add_promotion_code("FIRSTONLY")
    original = fake_stripe._check_session

    def refuse_discount(p):
        if p.get("discounts"):
            return 400, {"error": {"type": "invalid_request_error", "param": "discounts[0][promotion_code]",
                                   "message": "This promotion code cannot be redeemed."}}  # fmt: skip
        return original(p)

    monkeypatch.setattr(fake_stripe, "_check_session", refuse_discount)
    r = capi.client.post(
        "/api/v1/billing/checkout", json={"plan": "team", "promotion_code": "FIRSTONLY"}, headers=h
    )
    assert assert_problem(r, 422)["errors"] == {
        "promotion_code": ["Unknown, expired or inactive promotion code."]
    }
    assert fake_stripe.sessions == {} and promo["code"] == "FIRSTONLY"


def test_tax_at_checkout_follows_the_settings(capi, fake_stripe):
    h = capi.auth(capi.signup("acme"))
    r = capi.client.post("/api/v1/billing/checkout", json={"plan": "scale"}, headers=h)
    assert r.status_code == 200, r.get_json()  # the fake refuses tax settings without customer_update
    params = checkout_call(fake_stripe)
    assert params["automatic_tax"] == {"enabled": "true"} and params["tax_id_collection"] == {
        "enabled": "true"
    }
    assert params["customer_update"] == {"address": "auto", "name": "auto"}


def test_tax_is_off_by_default(bapi, bclient, fake_stripe):
    h = bapi.auth(bapi.signup("acme"))
    assert bclient.post("/api/v1/billing/checkout", json={"plan": "pro"}, headers=h).status_code == 200
    params = checkout_call(fake_stripe)
    for key in ("automatic_tax", "tax_id_collection", "customer_update", "allow_promotion_codes", "discounts",
                "payment_method_collection"):  # fmt: skip
        assert key not in params, key


# --- the customer's tax ids and address ----------------------------------------------------------


def test_tax_ids_and_address_are_synced_from_webhooks(bapi, bclient, bconn, billing_app, fake_stripe):
    tenant_id, h, _ = subscribed(bapi, bclient, fake_stripe)
    customer_id = account_of(billing_app, tenant_id).stripe_customer_id
    customer = fake_stripe.customers[customer_id]
    customer["address"] = {"line1": "1 Rue de Rivoli", "line2": None, "postal_code": "75001", "city": "Paris",
                           "state": None, "country": "FR"}  # fmt: skip
    assert (
        deliver(bclient, fake_stripe.event("customer.updated", customer)).get_json()["status"] == "processed"
    )
    vat = fake_stripe.add_tax_id(customer_id, "eu_vat", "FR12345678901", "FR")
    # created, then an older "deleted" of another id arrives: re-fetched, the order does not matter
    assert deliver(bclient, fake_stripe.event("customer.tax_id.created", vat)).status_code == 200
    ghost = {**vat, "id": "txi_gone"}
    assert (
        deliver(bclient, fake_stripe.event("customer.tax_id.deleted", ghost)).get_json()["status"]
        == "processed"
    )
    doc = bclient.get("/api/v1/billing", headers=h).get_json()
    assert doc["customer"]["address"] == {"line1": "1 Rue de Rivoli", "postal_code": "75001", "city": "Paris",
                                          "country": "FR"}  # fmt: skip
    assert doc["customer"]["tax_ids"] == [{"id": vat["id"], "type": "eu_vat", "value": "FR12345678901",
                                           "country": "FR", "verification": "pending"}]  # fmt: skip
    fake_stripe.tax_ids.pop(vat["id"])
    assert deliver(bclient, fake_stripe.event("customer.tax_id.deleted", vat)).status_code == 200
    assert bclient.get("/api/v1/billing", headers=h).get_json()["customer"]["tax_ids"] == []
    actions = audit_actions(bconn, tenant_id)
    assert actions.count("billing.customer_tax_ids_changed") == 2 and "billing.customer_updated" in actions
    # another Stripe customer's tax id changes nothing here
    stranger = fake_stripe.add_tax_id("cus_not_ours", "eu_vat", "DE1")
    assert (
        deliver(bclient, fake_stripe.event("customer.tax_id.created", stranger)).get_json()["status"]
        == "ignored"
    )
    assert account_of(billing_app, tenant_id).customer_tax_ids == []


# --- invoices ------------------------------------------------------------------------------------


def test_invoices_page_through_the_customers_invoices_only(bapi, bclient, bconn, billing_app, fake_stripe):
    tenant_id, h, _ = subscribed(bapi, bclient, fake_stripe)
    other_id, other_h, _ = subscribed(bapi, bclient, fake_stripe, slug="globex")
    customer = account_of(billing_app, tenant_id).stripe_customer_id
    other_customer = account_of(billing_app, other_id).stripe_customer_id
    for invoice_id in [
        i for i, inv in fake_stripe.invoices.items() if inv["customer"] in (customer, other_customer)
    ]:
        del fake_stripe.invoices[invoice_id]  # the checkouts' first invoices: only the ones made here
    base = 1_790_000_000
    for i in range(23):
        fake_stripe.add_invoice(customer, base + i * 86400, "open" if i == 22 else "paid", amount=1000 + i)
    foreign = fake_stripe.add_invoice(other_customer, base, "paid")
    seen, cursor, pages = [], None, 0
    while True:
        query = {"limit": 10, **({"starting_after": cursor} if cursor else {})}
        r = bclient.get("/api/v1/billing/invoices", query_string=query, headers=h)
        assert r.status_code == 200, r.get_json()
        page = r.get_json()
        pages += 1
        seen += page["data"]
        if not page["has_more"]:
            assert page["next_starting_after"] is None
            break
        cursor = page["next_starting_after"]
        assert cursor == page["data"][-1]["id"]
    assert pages == 3 and len(seen) == 23
    assert len({i["id"] for i in seen}) == 23 and foreign["id"] not in {i["id"] for i in seen}
    newest = seen[0]
    assert newest["status"] == "open" and newest["amount_due"] == 1022 and newest["currency"] == "usd"
    assert newest["hosted_invoice_url"].startswith("https://invoice.stripe.com/")
    assert newest["invoice_pdf"].endswith("/pdf") and newest["number"]
    assert datetime.fromisoformat(newest["period_end"]) == datetime.fromtimestamp(base + 22 * 86400, UTC)
    assert {c["customer"] for c in fake_stripe.calls("GET", "/v1/invoices")} == {customer}
    # another tenant's invoice as the cursor: 422, nothing of it shown
    r = bclient.get("/api/v1/billing/invoices", query_string={"starting_after": foreign["id"]}, headers=h)
    assert assert_problem(r, 422)["errors"] == {"starting_after": ["No such invoice in this tenant's list."]}
    calls = len(fake_stripe.calls("GET", "/v1/invoices"))
    for bad in ({"limit": 0}, {"limit": 101}, {"limit": "ten"}, {"starting_after": "cus_123"},
                {"starting_after": "in_../../v1/customers"}):  # fmt: skip
        assert_problem(bclient.get("/api/v1/billing/invoices", query_string=bad, headers=h), 422)
    assert len(fake_stripe.calls("GET", "/v1/invoices")) == calls  # refused before any Stripe call
    r = bclient.get("/api/v1/billing/invoices", headers=other_h)
    assert [i["id"] for i in r.get_json()["data"]] == [foreign["id"]]


def test_invoices_need_billing_manage_and_a_customer(bapi, bclient, billing_app, fake_stripe):
    signup = bapi.signup("acme")
    h = bapi.auth(signup)
    r = bclient.get("/api/v1/billing/invoices", headers=h)
    assert r.get_json() == {"data": [], "has_more": False, "next_starting_after": None}
    assert fake_stripe.calls("GET", "/v1/invoices") == []
    invite = bclient.post("/api/v1/members", json={"email": "admin@acme.test", "role": "admin"}, headers=h)
    assert invite.status_code == 201
    token = mailed_invitation_token(billing_app, "admin@acme.test")
    accepted = bclient.post(
        "/api/v1/invitations/accept", json={"token": token, "password": "another good pass"}
    )
    assert_problem(bclient.get("/api/v1/billing/invoices", headers=bapi.auth(accepted.get_json())), 403,
                   "permission_denied")  # fmt: skip
    assert_problem(bclient.get("/api/v1/billing/invoices"), 401)


def test_invoices_answer_503_without_billing(api, client):
    h = api.auth(api.signup("acme"))
    assert_problem(client.get("/api/v1/billing/invoices", headers=h), 503, "billing_not_configured")


# --- dunning -------------------------------------------------------------------------------------


def run_worker(app, inbox) -> None:
    from saas.worker import Worker, load_handlers

    load_handlers()
    settings = services(app).settings.with_overrides(smtp_url=inbox.url)
    outcome = Worker(services(app).database, settings, {"app": app}).run_until_idle()
    assert "failed" not in outcome and "retry" not in outcome, outcome


def outbox_topics(conn, tenant_id: str, topic: str) -> list[dict]:
    rows = conn.execute(
        text("SELECT payload FROM saas.outbox WHERE topic = :topic AND tenant_id = :t ORDER BY id"),
        {"topic": topic, "t": tenant_id},
    )
    return [r[0] for r in rows]


def test_payment_failed_mails_the_hosted_invoice_once(bapi, bclient, bconn, billing_app, cli, fake_stripe):
    from tests.peers import smtp_inbox

    tenant_id, h, sub_id = subscribed(bapi, bclient, fake_stripe)
    invoice = fake_stripe.renewal_failed(sub_id, finalized_at=1_790_000_000)
    event = fake_stripe.event("invoice.payment_failed", invoice)
    assert deliver(bclient, event).get_json()["status"] == "processed"
    assert deliver(bclient, event).get_json()["status"] == "duplicate"
    assert cli("billing", "replay", event["id"]).exit_code == 0  # re-applied, not mailed again
    (payload,) = outbox_topics(bconn, tenant_id, "mail.payment_failed")
    assert (
        payload["hosted_invoice_url"] == invoice["hosted_invoice_url"] and payload["event_id"] == event["id"]
    )
    doc = bclient.get("/api/v1/billing", headers=h).get_json()
    assert doc["status"] == "past_due" and doc["open_invoice_url"] == invoice["hosted_invoice_url"]
    # a failure of an invoice paid since is not mailed (Stripe's live invoice says paid)
    paid_later = fake_stripe.renewal_failed(sub_id, finalized_at=1_790_100_000)
    fake_stripe.invoices[paid_later["id"]]["status"] = "paid"
    assert deliver(bclient, fake_stripe.event("invoice.payment_failed", paid_later)).status_code == 200
    assert len(outbox_topics(bconn, tenant_id, "mail.payment_failed")) == 1
    with smtp_inbox() as inbox:
        run_worker(billing_app, inbox)
    (mail,) = [m for m in inbox.messages if m["Subject"] == "Payment failed for Acme"]
    assert mail["To"] == "owner@acme.test"
    body = mail.get_payload(decode=True).decode()
    assert invoice["hosted_invoice_url"] in body and "12.00 USD" in body and invoice["number"] in body
    assert mail["Message-ID"] == f"<payment-failed-{event['id']}@localhost>"


def test_the_end_of_grace_is_mailed_once_per_grace_period(
    bapi, bclient, bconn, billing_app, cli, fake_stripe
):
    from tests.peers import smtp_inbox

    tenant_id, _, sub_id = subscribed(bapi, bclient, fake_stripe)
    finalized = 1_790_000_000  # the unpaid invoice fell due then: the grace period runs 7 days from it
    invoice = fake_stripe.renewal_failed(sub_id, finalized_at=finalized)
    assert deliver(bclient, fake_stripe.event("invoice.payment_failed", invoice)).status_code == 200
    grace_end = datetime.fromtimestamp(finalized, UTC) + timedelta(days=7)
    assert account_of(billing_app, tenant_id).grace_until == grace_end

    def dunning(now: datetime) -> list[str]:
        result = cli("billing", "dunning", "--now", now.isoformat(), "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["mailed"]

    assert dunning(grace_end - timedelta(seconds=1)) == []
    assert dunning(grace_end) == ["acme"]
    assert dunning(grace_end + timedelta(hours=1)) == []  # once per grace period
    (payload,) = outbox_topics(bconn, tenant_id, "mail.grace_ended")
    assert payload == {
        "tenant": "acme",
        "subscription_id": sub_id,
        "grace_until": int(grace_end.timestamp()),
        "past_due_since": finalized,
        "hosted_invoice_url": invoice["hosted_invoice_url"],
    }
    assert audit_actions(bconn, tenant_id).count("billing.grace_ended") == 1
    with smtp_inbox() as inbox:
        run_worker(billing_app, inbox)
    (mail,) = [m for m in inbox.messages if "read-only" in m["Subject"]]
    assert (
        mail["Subject"] == "Acme is read-only until the invoice is paid" and mail["To"] == "owner@acme.test"
    )
    assert invoice["hosted_invoice_url"] in mail.get_payload(decode=True).decode()
    assert mail["Message-ID"] == f"<grace-ended-{sub_id}-{finalized}@localhost>"
    # paid, then a later invoice fails: a new grace period, mailed again at its end
    fake_stripe.update_subscription(sub_id, status="active")
    updated = fake_stripe.event("customer.subscription.updated", fake_stripe.subscriptions[sub_id])
    assert deliver(bclient, updated).status_code == 200
    later = fake_stripe.renewal_failed(sub_id, finalized_at=finalized + 40 * 86400)
    assert deliver(bclient, fake_stripe.event("invoice.payment_failed", later)).status_code == 200
    assert dunning(grace_end + timedelta(days=39)) == []
    assert dunning(grace_end + timedelta(days=40)) == ["acme"]
    assert len(outbox_topics(bconn, tenant_id, "mail.grace_ended")) == 2
    assert cli("billing", "dunning", "--now", "yesterday").exit_code == 2
    assert cli("billing", "dunning", "--now", "2027-01-04T09:30:00").exit_code == 2  # no time zone


def test_dunning_mails_go_to_the_billing_contact_and_owners(bapi, bclient, bconn, billing_app, fake_stripe):
    """The recipients of every billing mail (trial end, payment failed, grace over): the Stripe
    customer's email and the active owners, each once; members and admins are not told."""
    from saas.billing import dunning
    from tests.peers import smtp_inbox

    tenant_id, h, sub_id = subscribed(bapi, bclient, fake_stripe)
    invite = bclient.post("/api/v1/members", json={"email": "admin@acme.test", "role": "admin"}, headers=h)
    assert invite.status_code == 201
    customer = fake_stripe.customers[account_of(billing_app, tenant_id).stripe_customer_id]
    customer["email"] = "Billing@Acme.test"
    assert deliver(bclient, fake_stripe.event("customer.updated", customer)).status_code == 200
    invoice = fake_stripe.renewal_failed(sub_id, finalized_at=1_790_000_000)
    with billing_app.app_context():
        session = services(billing_app).database.session()
        from saas.identity.models import Tenant

        dunning.queue_payment_failed(
            session, session.get(Tenant, uuid.UUID(tenant_id)), invoice, "evt_manual"
        )
        session.commit()
        session.close()
    with smtp_inbox() as inbox:
        run_worker(billing_app, inbox)
    (envelope,) = [e for e in inbox.envelopes if b"Payment failed" in e.content]
    assert sorted(envelope.rcpt_tos) == ["Billing@Acme.test", "owner@acme.test"]
