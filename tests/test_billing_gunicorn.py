"""Billing depth through the real service (docs/billing.md): gunicorn with 2 workers and the
limiter on, billing on against the local Stripe fake (tests/stripe_fake.py, which the service's
``stripe`` SDK reaches over HTTP), an operator's catalogue in ``PLANS_FILE``, Stripe Tax and the
promotion-code field on, ``saas worker`` in its own process delivering mail to a real SMTP server
(aiosmtpd), ``saas billing dunning`` run as its schedule runs it, and ``requests`` as the client.

The walk: the catalogue's features and their 402, a checkout with a trial without a card, a
promotion code and tax, the return page, the trial-end mail, the customer's address and tax ids,
the invoices list, the payment-failed mail and the end-of-grace mail (once).

These tests commit for real (their own tenants in the run's database, dropped at the end, with
their webhook events).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
import requests
from sqlalchemy import text

from tests.conftest import _redis_url
from tests.helpers import drop_tenant, signup_over_http, verify_by_link
from tests.peers import ROOT, Inbox, gunicorn_server, smtp_inbox, stop
from tests.stripe_fake import FakeStripe, sign
from tests.test_billing_depth import CUSTOM_CATALOGUE, CUSTOM_PRICE_ENV, CUSTOM_PRICES

SECRET = "whsec_gunicorn_billing_0123456789"


@dataclass
class Stack:
    base: str
    env: dict[str, str]
    fake: FakeStripe
    inbox: Inbox
    tenants: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def deliver(self, event: dict) -> dict:
        """POST a Stripe event to the service, signed as Stripe signs it."""
        payload = json.dumps(event)
        r = requests.post(
            f"{self.base}/webhooks/stripe",
            data=payload,
            headers={"Stripe-Signature": sign(payload, SECRET), "Content-Type": "application/json"},
            timeout=30,
        )
        self.events.append(event["id"])
        assert r.status_code == 200, r.text
        return r.json()

    def mail(self, subject: str, count: int = 1) -> list:
        """The mails with ``subject``, waiting (20 s at most) for the worker process to send them."""
        deadline = time.monotonic() + 20
        while True:
            found = [m for m in self.inbox.messages if m["Subject"] == subject]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {subject!r} mail; got {[m['Subject'] for m in self.inbox.messages]}"
                )
            time.sleep(0.05)

    def cli(self, *args: str) -> str:
        """``saas <args>`` with the server's environment (its PLANS_FILE too); its stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "saas.cli", *args],
            cwd=ROOT, env=self.env, check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return done.stdout


@pytest.fixture(scope="module")
def stack(database_url, worker_id_str, redis_client, engine, tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("billing-gunicorn")
    plans = tmp / "plans.toml"
    # the limiter is on: the default plan's budget fits this walk
    plans.write_text(CUSTOM_CATALOGUE.replace("requests_per_minute = 30\n", "requests_per_minute = 600\n"))
    fake = FakeStripe(dict(CUSTOM_PRICES))
    fake_url = fake.start()
    redis_client.flushdb()
    stack = None
    try:
        with smtp_inbox() as inbox:
            env = {
                "SECRET_KEY": "gunicorn-billing-test",
                "RATELIMIT_ENABLED": "true",
                "SMTP_URL": inbox.url,
                "STRIPE_SECRET_KEY": "sk_test_gunicorn",
                "STRIPE_WEBHOOK_SECRET": SECRET,
                "STRIPE_API_BASE": fake_url,
                "PLANS_FILE": str(plans),
                "BILLING_ALLOW_PROMOTION_CODES": "true",
                "BILLING_AUTOMATIC_TAX": "true",
                "BILLING_TAX_ID_COLLECTION": "true",
                **CUSTOM_PRICE_ENV,
            }
            with (
                gunicorn_server(database_url, _redis_url(worker_id_str), tmp, env=env) as server,
                (tmp / "worker.stderr").open("wb") as w_err,
            ):
                worker = subprocess.Popen(
                    [sys.executable, "-m", "saas.cli", "worker", "--poll-interval", "0.1"],
                    cwd=ROOT, env=server.env, stdout=subprocess.DEVNULL, stderr=w_err,
                )  # fmt: skip
                try:
                    stack = Stack(server.base, server.env, fake, inbox)
                    yield stack
                finally:
                    stop(worker)  # by PID: this module's own process
    finally:
        fake.stop()
        if stack is not None:
            for tenant_id in stack.tenants:
                drop_tenant(engine, tenant_id)
            with engine.begin() as conn:
                conn.execute(
                    text("DELETE FROM saas.stripe_webhook_events WHERE id = ANY(:ids)"), {"ids": stack.events}
                )


def _owner(stack: Stack, engine, prefix: str) -> tuple[dict, dict, str]:
    slug = f"{prefix}-{uuid.uuid4().hex[:8]}"
    email = f"owner@{slug}.test"
    body = signup_over_http(stack.base, slug, email, name=prefix.title())
    stack.tenants.append(body["tenant"]["id"])
    verify_by_link(stack.base, engine, email)  # checkout and the portal need a verified email
    return body, {"Authorization": f"Bearer {body['token']['access_token']}"}, slug


def _problem(r: requests.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json"), r.headers
    assert r.json()["code"] == code, r.json()
    return r.json()


def test_billing_depth_through_gunicorn(stack: Stack, engine) -> None:
    base, fake = stack.base, stack.fake
    body, h, slug = _owner(stack, engine, "acme")
    name = "Acme"
    # the operator's catalogue: its features, the 402 naming its cheapest plan
    doc = requests.get(f"{base}/api/v1/billing", headers=h, timeout=30).json()
    assert doc["plan"] == "starter"
    features = {f["name"]: f for f in doc["features"]}
    assert features["webhooks"] == {
        "name": "webhooks",
        "enabled": False,
        "value": False,
        "cheapest_plan": "team",
    }
    role = {"name": "auditor", "permissions": ["members:read"]}
    denied = _problem(requests.post(f"{base}/api/v1/roles", json=role, headers=h, timeout=30), 402,
                      "entitlement_required")  # fmt: skip
    assert denied["plan"] == "team"
    # `saas` reads the same PLANS_FILE: the operator's plans, and a feature of theirs overridden
    plans = json.loads(stack.cli("billing", "plans", "--json"))
    assert [p["id"] for p in plans] == ["starter", "team", "scale"]
    stack.cli("tenants", "set-plan", slug, "none", "--limit", "webhooks=true", "--reason", "pilot")
    doc = requests.get(f"{base}/api/v1/billing", headers=h, timeout=30).json()
    assert {f["name"]: f["enabled"] for f in doc["features"]}["webhooks"] is True
    stack.cli("tenants", "set-plan", slug, "none")  # the override goes: the subscription decides
    # an unknown promotion code: 422, nothing created at Stripe
    promo = fake.add_promotion_code("LAUNCH20")
    r = requests.post(f"{base}/api/v1/billing/checkout", json={"plan": "team", "promotion_code": "NOPE"},
                      headers=h, timeout=30)  # fmt: skip
    assert _problem(r, 422, "validation_error")["errors"] == {
        "promotion_code": ["Unknown, expired or inactive promotion code."]
    }
    assert fake.customers == {} and fake.sessions == {}
    # checkout: the plan's trial without a card, the code, tax
    r = requests.post(f"{base}/api/v1/billing/checkout", json={"plan": "team", "promotion_code": "launch20"},
                      headers=h, timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    session_id = r.json()["url"].rsplit("/", 1)[1]
    (params,) = fake.calls("POST", "/v1/checkout/sessions")
    assert params["subscription_data"]["trial_period_days"] == "14"
    assert params["payment_method_collection"] == "if_required"
    assert params["discounts"] == [{"promotion_code": promo["id"]}]
    assert params["automatic_tax"] == {"enabled": "true"} and params["tax_id_collection"] == {
        "enabled": "true"
    }
    assert params["customer_update"] == {"address": "auto", "name": "auto"}
    fake.complete_checkout(session_id)
    doc = requests.get(f"{base}/api/v1/billing/checkout/{session_id}/sync", headers=h, timeout=30).json()
    assert (doc["plan"], doc["status"]) == ("team", "trialing") and doc["trial_end"]
    assert requests.post(f"{base}/api/v1/roles", json=role, headers=h, timeout=30).status_code == 201
    sub_id = fake.sessions[session_id]["subscription"]
    customer_id = fake.sessions[session_id]["customer"]
    # the trial ends in three days: Stripe says so, the owner is mailed
    trial_end = 1_799_055_000  # Monday 4 January 2027, 09:30 UTC
    ending = fake.event(
        "customer.subscription.trial_will_end", {**fake.subscriptions[sub_id], "trial_end": trial_end}
    )
    assert stack.deliver(ending)["status"] == "processed"
    (mail,) = stack.mail(f"Your {name} trial ends on 04 January 2027")
    assert mail["To"] == body["user"]["email"]
    # the customer's address and tax id (Checkout collected them), synced by webhooks
    customer = fake.customers[customer_id]
    customer["address"] = {
        "line1": "Unter den Linden 1",
        "postal_code": "10117",
        "city": "Berlin",
        "country": "DE",
    }
    assert stack.deliver(fake.event("customer.updated", customer))["status"] == "processed"
    vat = fake.add_tax_id(customer_id, "eu_vat", "DE123456789", "DE")
    assert stack.deliver(fake.event("customer.tax_id.created", vat))["status"] == "processed"
    doc = requests.get(f"{base}/api/v1/billing", headers=h, timeout=30).json()
    assert doc["customer"]["address"]["city"] == "Berlin"
    assert [(t["type"], t["value"]) for t in doc["customer"]["tax_ids"]] == [("eu_vat", "DE123456789")]
    # invoices, a page at a time; another tenant's invoice is no cursor here
    for i in range(11):
        fake.add_invoice(customer_id, 1_790_000_000 + i * 86400)
    seen, cursor = [], None
    while True:
        query = {"limit": 5, **({"starting_after": cursor} if cursor else {})}
        page = requests.get(f"{base}/api/v1/billing/invoices", params=query, headers=h, timeout=30).json()
        seen += page["data"]
        if not page["has_more"]:
            break
        cursor = page["next_starting_after"]
    assert len(seen) == 12 and len({i["id"] for i in seen}) == 12  # with the checkout's first invoice
    assert all(i["hosted_invoice_url"].startswith("https://invoice.stripe.com/") for i in seen)
    _, other_h, _ = _owner(stack, engine, "globex")
    assert requests.post(f"{base}/api/v1/billing/portal", headers=other_h, timeout=30).status_code == 200
    assert requests.get(f"{base}/api/v1/billing/invoices", headers=other_h, timeout=30).json()["data"] == []
    r = requests.get(f"{base}/api/v1/billing/invoices", params={"starting_after": seen[0]["id"]},
                     headers=other_h, timeout=30)  # fmt: skip
    assert "data" not in _problem(r, 422, "validation_error")
    # a renewal fails: the owner gets the invoice's link, once per event
    # the unpaid invoice fell due 8 days ago on the servers' clock (the same as this process's,
    # whatever date it is): its 7-day grace period is over
    finalized = int(time.time()) - 8 * 86400
    invoice = fake.renewal_failed(sub_id, finalized_at=finalized)
    failed = fake.event("invoice.payment_failed", invoice)
    assert stack.deliver(failed)["status"] == "processed"
    assert stack.deliver(failed)["status"] == "duplicate"
    (mail,) = stack.mail(f"Payment failed for {name}")
    assert invoice["hosted_invoice_url"] in mail.get_payload(decode=True).decode()
    # the grace period ends (7 days after the invoice fell due): the scheduled run mails once
    grace_end = datetime.fromtimestamp(finalized + 7 * 86400, UTC).isoformat()
    assert json.loads(stack.cli("billing", "dunning", "--now", grace_end, "--json"))["mailed"] == [slug]
    assert json.loads(stack.cli("billing", "dunning", "--now", grace_end, "--json"))["mailed"] == []
    (mail,) = stack.mail(f"{name} is read-only until the invoice is paid")
    assert invoice["hosted_invoice_url"] in mail.get_payload(decode=True).decode()
    r = requests.post(f"{base}/api/v1/contacts", json={"name": "Ada"}, headers=h, timeout=30)
    _problem(r, 402, "payment_required")  # read-only indeed
    with engine.connect() as conn:  # one message of each was ever queued (sent ones stay, blanked)
        topics = conn.execute(
            text("SELECT topic, count(*) FROM saas.outbox WHERE tenant_id = :t GROUP BY topic"),
            {"t": body["tenant"]["id"]},
        ).all()
    counts = dict(topics)
    assert (counts["mail.payment_failed"], counts["mail.grace_ended"], counts["mail.trial_will_end"]) == (
        1,
        1,
        1,
    )
