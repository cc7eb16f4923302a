"""Outgoing webhooks end to end (docs/webhooks.md): the API under gunicorn (2 workers) with
``requests``, the real ``saas worker --once`` process delivering to a real receiver that verifies
every message with the ``standardwebhooks`` library, across a secret rotation; the attempts
read back over HTTP; another tenant's ids are 404.

These tests commit for real (their own tenants in the run's database, dropped at the end).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import _redis_url
from tests.helpers import drop_tenant, signup_over_http, verify_by_link
from tests.peers import gunicorn_server, saas_cli
from tests.webhook_receiver import Receiver


@pytest.fixture()
def tenants(engine) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for tenant_id in made:
        drop_tenant(engine, tenant_id)


@pytest.fixture()
def receiver():
    r = Receiver()
    yield r
    r.close()


def _signup(base: str, engine, made: list[str]) -> dict:
    slug = f"hooks-{uuid.uuid4().hex[:8]}"
    body = signup_over_http(base, slug, f"o@{slug}.test")
    made.append(body["tenant"]["id"])
    verify_by_link(base, engine, f"o@{slug}.test")
    return {"Authorization": f"Bearer {body['token']['access_token']}"}


def test_webhooks_through_gunicorn_and_the_worker_process(
    database_url, worker_id_str, redis_client, tmp_path, engine, tenants, receiver
):
    redis_client.flushdb()
    env = {"WEBHOOKS_ALLOW_PRIVATE": "1", "WEBHOOKS_ALLOW_HTTP": "1", "RATELIMIT_ENABLED": "false"}
    with gunicorn_server(database_url, _redis_url(worker_id_str), tmp_path, env=env) as server:
        base = server.base
        h = _signup(base, engine, tenants)
        r = requests.post(
            f"{base}/api/v1/webhooks/endpoints",
            json={"url": receiver.url + "/ok", "events": ["contact.*", "audit.*"], "description": "e2e"},
            headers=h,
            timeout=30,
        )
        assert r.status_code == 201, r.text
        endpoint = r.json()
        old = endpoint["secret"]
        r = requests.post(f"{base}/api/v1/contacts", json={"name": "Ada"}, headers=h, timeout=30)
        assert r.status_code == 201
        r = requests.post(
            f"{base}/api/v1/webhooks/endpoints/{endpoint['id']}/secret/rotate", json={}, headers=h, timeout=30
        )
        new = r.json()["secret"]
        r = requests.post(f"{base}/api/v1/contacts", json={"name": "Bob"}, headers=h, timeout=30)
        assert r.status_code == 201

        receiver.secrets["/ok"] = [old]  # the receiver still knows only the first secret
        saas_cli(server.env, "worker", "--once")  # the real worker process, its own app

        got = receiver.on("/ok")
        assert sorted(json.loads(m.body)["type"] for m in got) == sorted([
            "audit.webhook.endpoint_created", "contact.created", "audit.contact.created",
            "audit.webhook.secret_rotated", "contact.created", "audit.contact.created",
        ])  # fmt: skip
        # every attempt came after the rotation: signed with the new secret and the old one
        assert all(m.verified for m in got)
        assert all(len(m.headers["webhook-signature"].split(" ")) == 2 for m in got)
        receiver.secrets["/ok"] = [new]
        assert all(receiver.verify("/ok", m.body, m.headers) for m in got)
        assert len({m.headers["webhook-id"] for m in got}) == 6

        attempts = requests.get(
            f"{base}/api/v1/webhooks/endpoints/{endpoint['id']}/attempts", headers=h, timeout=30
        ).json()
        assert len(attempts) == 6
        assert {a["outcome"] for a in attempts} == {"delivered"}  # 204: signed with the old secret too
        assert {a["status_code"] for a in attempts} == {204}

        other = _signup(base, engine, tenants)
        for path in (
            f"/api/v1/webhooks/endpoints/{endpoint['id']}",
            f"/api/v1/webhooks/endpoints/{endpoint['id']}/attempts",
        ):
            r = requests.get(base + path, headers=other, timeout=30)
            assert r.status_code == 404 and r.headers["Content-Type"] == "application/problem+json"
        r = requests.post(
            f"{base}/api/v1/webhooks/messages/{attempts[0]['message_id']}/replay",
            json={},
            headers=other,
            timeout=30,
        )
        assert r.status_code == 404


def test_deleting_an_endpoint_during_an_attempt_waits_for_it(
    database_url, worker_id_str, redis_client, tmp_path, engine, tenants, receiver, settings
):
    """The API's deletion takes the endpoint's deliveries before the endpoint, the order a
    worker's attempt holds them: a DELETE during a (slow) attempt waits for it and answers 204,
    neither side deadlocks, and nothing of the endpoint is left."""
    import threading

    from sqlalchemy import func, select

    from saas.db import Database
    from saas.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
    from saas.worker import Worker, load_handlers

    redis_client.flushdb()
    env = {"WEBHOOKS_ALLOW_PRIVATE": "1", "WEBHOOKS_ALLOW_HTTP": "1", "RATELIMIT_ENABLED": "false"}
    with gunicorn_server(database_url, _redis_url(worker_id_str), tmp_path, env=env) as server:
        base = server.base
        h = _signup(base, engine, tenants)
        r = requests.post(
            f"{base}/api/v1/webhooks/endpoints",
            json={"url": receiver.url + "/slow", "events": ["contact.*"]},
            headers=h,
            timeout=30,
        )
        endpoint_id = r.json()["id"]
        assert (
            requests.post(f"{base}/api/v1/contacts", json={"name": "Ada"}, headers=h, timeout=30).status_code
            == 201
        )
        load_handlers()
        worker_settings = settings.with_overrides(
            secret_key="gunicorn-test", webhooks_allow_private=True, webhooks_allow_http=True
        )
        worker = Worker(Database(engine), worker_settings)
        outcome: dict[str, object] = {}
        thread = threading.Thread(target=lambda: outcome.update(counts=worker.run_until_idle()), daemon=True)
        thread.start()
        assert receiver.wait_for(1)  # the attempt is in flight, its delivery locked
        answer: dict[str, int] = {}
        deleting = threading.Thread(
            target=lambda: answer.update(
                status=requests.delete(
                    f"{base}/api/v1/webhooks/endpoints/{endpoint_id}", headers=h, timeout=60
                ).status_code
            ),
            daemon=True,
        )
        deleting.start()
        deleting.join(timeout=1.0)
        assert deleting.is_alive()  # waiting on the attempt's lock, not failing
        receiver.release.set()
        thread.join(timeout=60)
        deleting.join(timeout=60)
        assert answer["status"] == 204
        assert outcome["counts"].get("failed", 0) == 0
        with engine.connect() as conn:
            for model in (WebhookEndpoint, WebhookDelivery, WebhookAttempt):
                assert (
                    conn.scalar(
                        select(func.count())
                        .select_from(model)
                        .where(model.tenant_id == uuid.UUID(tenants[0]))
                    )
                    == 0
                )
