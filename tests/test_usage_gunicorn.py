"""Usage billed in the subscription's own period, through gunicorn (2 sync workers) and
``requests``, with the ``stripe`` SDK of the server and of ``saas billing report-usage`` talking
to the local Stripe fake: a tenant subscribed over a period that is no calendar month is capped
by its ``monthly_api_calls`` in that period (the quota's 429 names it and resets at its end), and
the calls both workers counted reach Stripe's meter once, however often the report runs.

It commits for real (its own tenant in the run's database, dropped at the end).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests

from saas.billing.periods import label_of
from saas.billing.usage import usage_key
from tests.conftest import _redis_url
from tests.helpers import drop_tenant, signup_over_http, verify_by_link
from tests.peers import gunicorn_server, saas_cli
from tests.stripe_fake import FakeStripe
from tests.test_billing import OLD_SECRET, PRICE_ENV, PRICES, SECRET


@pytest.fixture()
def stripe_peer():
    fake = FakeStripe(PRICES)
    fake.url = fake.start()
    yield fake
    fake.stop()


@pytest.fixture()
def tenants(engine):
    made: list[str] = []
    yield made
    for tenant_id in made:
        drop_tenant(engine, tenant_id)


def test_usage_is_capped_and_billed_in_the_subscription_period_through_gunicorn(
    database_url, worker_id_str, redis_client, engine, tmp_path, stripe_peer, tenants
):
    redis_client.flushdb()  # this run's own Redis database
    env = {
        "STRIPE_SECRET_KEY": "sk_test_gunicorn",
        "STRIPE_WEBHOOK_SECRET": f"{SECRET},{OLD_SECRET}",
        "STRIPE_API_BASE": stripe_peer.url,
        **PRICE_ENV,
    }
    with gunicorn_server(database_url, _redis_url(worker_id_str), tmp_path, env=env) as server:
        base = server.base
        slug = f"usage-{uuid.uuid4().hex[:8]}"
        email = f"owner@{slug}.test"
        body = signup_over_http(base, slug, email)
        tenant_id = body["tenant"]["id"]
        tenants.append(tenant_id)
        verify_by_link(base, engine, email)  # checkout needs a verified email
        h = {"Authorization": f"Bearer {body['token']['access_token']}"}
        r = requests.post(f"{base}/api/v1/billing/checkout", json={"plan": "pro"}, headers=h, timeout=30)
        assert r.status_code == 200, r.text
        session_id = r.json()["url"].rsplit("/", 1)[1]
        # billed from its anniversary two days and a few hours ago, for 30 days: no calendar month
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2, hours=7)
        end = start + timedelta(days=30)
        stripe_peer.complete_checkout(session_id, period=(int(start.timestamp()), int(end.timestamp())))
        r = requests.get(f"{base}/api/v1/billing/checkout/{session_id}/sync", headers=h, timeout=30)
        assert r.status_code == 200, r.text
        label = label_of(start)
        assert r.json()["api_calls"]["period"] == label
        saas_cli(server.env, "tenants", "set-plan", slug, "pro", "--limit", "monthly_api_calls=6")
        with requests.Session() as http:
            answers = [http.get(f"{base}/api/v1/contacts", headers=h, timeout=30) for _ in range(8)]
        assert [a.status_code for a in answers] == [200] * 6 + [429] * 2
        refused = answers[-1].json()
        assert refused["code"] == "quota_exceeded" and refused["period"] == label
        assert refused["reset"] == end.isoformat().replace("+00:00", "Z")
        assert redis_client.get(usage_key(tenant_id, label)) == b"6"  # refused calls are not counted
        # the report, as an operator (or the worker) runs it, twice: one meter event
        saas_cli(server.env, "billing", "report-usage", slug)
        saas_cli(server.env, "billing", "report-usage")
    (event,) = stripe_peer.meter_events
    assert event["identifier"] == f"usage-{tenant_id}-{label}-1"
    assert event["payload"]["value"] == "6"
    assert int(start.timestamp()) <= event["timestamp"] < int(end.timestamp())
    assert event["payload"]["stripe_customer_id"] == stripe_peer.sessions[session_id]["customer"]
