"""Outgoing webhooks (docs/webhooks.md): the endpoints API, the catalogue, the fan-out on the
outbox, delivery to a real receiver that verifies with the ``standardwebhooks`` library, the
retry schedule, disabling, secret rotation, replays and tests, egress rules, the per-endpoint
rate, audit streaming, retention, hostile input and tenant isolation. Through the Flask test
client and the real worker, rolled back; gunicorn is in tests/test_webhooks_gunicorn.py."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import jsonschema
import pytest
from sqlalchemy import func, select

from saas.audit import AuditEvent
from saas.db import schema_name_for, translate_map
from saas.outbox import OutboxMessage
from saas.services import services
from saas.webhooks import catalogue, delivery, signing
from saas.webhooks.events import DELIVER_TOPIC, FANOUT_TOPIC
from saas.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookMessage
from saas.worker import Worker
from saas.worker.webhooks import rate_check_for
from tests.helpers import PROBLEM, assert_problem, replace_services, role_headers
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.usefixtures("worker_handlers")  # tests/conftest.py

BASE = "/api/v1/webhooks"


@pytest.fixture()
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture()
def local(app, settings, monkeypatch):
    """The app's settings for a receiver on 127.0.0.1 over http (development's switches)."""
    changed = settings.with_overrides(
        webhooks_allow_private=True, webhooks_allow_http=True, webhooks_timeout_seconds=2.0
    )
    replace_services(monkeypatch, app, settings=changed)
    return changed


@pytest.fixture()
def org(api):
    body = api.signup("hooks-acme")
    return body, api.auth(body)


def _worker(app, settings) -> Worker:
    return Worker(services(app).database, settings, services={"app": app})


def _create(client, h, url, events=("contact.*",), status=201, **fields):
    r = client.post(f"{BASE}/endpoints", json={"url": url, "events": list(events), **fields}, headers=h)
    assert r.status_code == status, r.get_json()
    return r.get_json()


def _count(db_session, model) -> int:
    return db_session.scalar(select(func.count()).select_from(model))


def _outbox(db_session, topic) -> list[OutboxMessage]:
    return list(
        db_session.scalars(
            select(OutboxMessage).where(OutboxMessage.topic == topic).order_by(OutboxMessage.id)
        )
    )


def _audit(db_session, tenant_id, action) -> list[AuditEvent]:
    return list(
        db_session.scalars(
            select(AuditEvent).where(AuditEvent.action == action),
            execution_options={"schema_translate_map": translate_map(schema_name_for(uuid.UUID(tenant_id)))},
        )
    )


def _message(r) -> dict:
    body = json.loads(r.body)
    jsonschema.validate(body["data"], catalogue.schema_of(body["type"]))
    return body


# --- the catalogue and the API's shape ---------------------------------------------------------


def test_event_types_list_the_catalogue_with_schemas(client, org, app):
    body, h = org
    r = client.get(f"{BASE}/event-types", headers=h)
    assert r.status_code == 200
    names = {e["name"] for e in r.get_json()}
    required = {
        "contact.created", "contact.updated", "contact.deleted", "member.invited", "member.joined",
        "member.role_changed", "member.removed", "subscription.updated", "tenant.updated", "audit.*",
    }  # fmt: skip
    assert required <= names
    for entry in r.get_json():
        jsonschema.Draft202012Validator.check_schema(entry["schema"])
        assert "tenant_id" in entry["schema"]["required"]
    _, member = role_headers(app, body["tenant"]["id"], "member")
    assert_problem(client.get(f"{BASE}/event-types", headers=member), 403, "permission_denied")
    assert_problem(client.get(f"{BASE}/endpoints", headers=member), 403, "permission_denied")


def test_create_shows_the_secret_once_sealed_at_rest_and_audited(client, org, local, db_session, app):
    body, h = org
    created = _create(client, h, "http://127.0.0.1:9/hook", description="CRM sync")
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    assert created["status"] == "enabled" and created["events"] == ["contact.*"]
    assert created["rate_limit"] == local.webhooks_rate_limit
    for r in (
        client.get(f"{BASE}/endpoints/{created['id']}", headers=h),
        client.get(f"{BASE}/endpoints", headers=h),
    ):
        assert r.status_code == 200 and "secret" not in json.dumps(r.get_json()).replace("secrets_expire", "")
        assert secret not in r.get_data(as_text=True)
    row = db_session.get(WebhookEndpoint, uuid.UUID(created["id"]))
    assert secret not in row.secret_sealed
    with app.app_context():
        assert signing.unseal_secret(row.id, row.secret_sealed) == secret
    events = _audit(db_session, body["tenant"]["id"], "webhook.endpoint_created")
    assert len(events) == 1 and secret not in json.dumps(events[0].data)


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.215.14/hook",  # http outside development
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://169.254.169.254/latest/meta-data/",  # the cloud metadata address
        "https://10.0.0.7/hook",
        "https://192.168.1.1/hook",
        "https://100.100.100.200/hook",  # shared address space (a metadata service's)
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
        "https://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 of 169.254.169.254
        "https://2130706433/hook",  # 127.0.0.1 as one number
        "https://224.0.0.1/hook",  # multicast: "global" to Python's ipaddress, refused here
        "https://user:pw@93.184.215.14/hook",
        "ftp://93.184.215.14/hook",
        "https://93.184.215.14/hook#frag",
        "https://no-such-host.invalid/hook",
        "not a url",
        "https://93.184.215.14:99999/hook",
    ],
)
def test_refused_urls_are_422_and_write_nothing(client, org, db_session, url):
    _, h = org
    r = client.post(f"{BASE}/endpoints", json={"url": url, "events": ["contact.*"]}, headers=h)
    problem = assert_problem(r, 422, "validation_error")
    assert "url" in problem["errors"]
    assert _count(db_session, WebhookEndpoint) == 0


def test_one_422_names_every_refused_field(client, org, db_session):
    _, h = org
    body = {"url": "https://127.0.0.1/x", "events": ["nope.*"], "description": "d" * 501, "rate_limit": 0}
    problem = assert_problem(client.post(f"{BASE}/endpoints", json=body, headers=h), 422, "validation_error")
    assert set(problem["errors"]) == {"url", "events", "description", "rate_limit"}
    assert _count(db_session, WebhookEndpoint) == 0
    created = _create(client, h, "https://93.184.215.14/hook")
    r = client.patch(f"{BASE}/endpoints/{created['id']}", json={"url": "ftp://x", "rate_limit": 0}, headers=h)
    assert set(assert_problem(r, 422, "validation_error")["errors"]) == {"url", "rate_limit"}


def test_a_public_https_url_is_accepted_and_a_patch_to_a_private_one_is_refused(client, org, db_session):
    _, h = org
    created = _create(client, h, "https://93.184.215.14/hook")  # an address literal: no DNS needed
    r = client.patch(f"{BASE}/endpoints/{created['id']}", json={"url": "https://127.0.0.1/x"}, headers=h)
    assert_problem(r, 422, "validation_error")
    assert db_session.get(WebhookEndpoint, uuid.UUID(created["id"])).url == "https://93.184.215.14/hook"


def test_hostile_bodies_are_problems_and_write_nothing(client, org, local, db_session, app):
    body, h = org
    url = "http://127.0.0.1:9/hook"
    cases = [
        (
            client.post(
                f"{BASE}/endpoints", data=b"{not json", headers={**h, "Content-Type": "application/json"}
            ),
            400,
        ),
        (client.post(f"{BASE}/endpoints", json={"url": url, "events": ["x" * 2_000_000]}, headers=h), 413),
        (client.post(f"{BASE}/endpoints", json={"url": url, "events": "contact.*"}, headers=h), 422),
        (client.post(f"{BASE}/endpoints", json={"url": url, "events": []}, headers=h), 422),
        (client.post(f"{BASE}/endpoints", json={"url": url, "events": ["contact.nope"]}, headers=h), 422),
        (client.post(f"{BASE}/endpoints", json={"url": url, "events": ["nope.*"]}, headers=h), 422),
        (
            client.post(
                f"{BASE}/endpoints", json={"url": url, "events": ["contact.*"], "admin": True}, headers=h
            ),
            422,
        ),
        (
            client.post(
                f"{BASE}/endpoints", json={"url": url, "events": ["contact.*"], "rate_limit": 0}, headers=h
            ),
            422,
        ),
        (
            client.post(
                f"{BASE}/endpoints",
                json={"url": url, "events": ["contact.*"], "rate_limit": 10**6},
                headers=h,
            ),
            422,
        ),
        (
            client.post(
                f"{BASE}/endpoints",
                json={"url": url, "events": ["contact.*"], "description": "d" * 501},
                headers=h,
            ),
            422,
        ),
        (
            client.post(
                f"{BASE}/endpoints", json={"url": url, "events": [f"e{i}.x" for i in range(60)]}, headers=h
            ),
            422,
        ),
        (client.post(f"{BASE}/messages/{'m' * 300}/replay", json={}, headers=h), 404),
        (client.get(f"{BASE}/endpoints/{uuid.uuid4()}/attempts?limit=1000", headers=h), 422),
    ]
    for response, status in cases:
        assert response.status_code == status, (status, response.get_json())
        assert response.mimetype == PROBLEM
    assert _count(db_session, WebhookEndpoint) == 0
    # a group whose data the caller may not read: a custom role holding only webhooks:manage
    from saas.identity.models import CustomRole

    db_session.add(
        CustomRole(tenant_id=uuid.UUID(body["tenant"]["id"]), name="hooks", permissions=["webhooks:manage"])
    )
    db_session.commit()
    _, hooks = role_headers(app, body["tenant"]["id"], "hooks")
    for events in (["audit.*"], ["contact.created"], ["member.*"]):
        r = client.post(f"{BASE}/endpoints", json={"url": url, "events": events}, headers=hooks)
        assert (
            assert_problem(r, 403, "permission_denied")["permission"]
            == catalogue.GROUP_PERMISSIONS[events[0].split(".")[0]]
        )
    assert _count(db_session, WebhookEndpoint) == 0
    assert _create(client, hooks, url, events=["webhook.test"])["events"] == ["webhook.test"]


def test_another_tenants_ids_are_404_and_change_nothing(client, api, org, local, receiver, db_session, app):
    _, h = org
    created = _create(client, h, receiver.url + "/ok")
    eid = created["id"]
    client.post("/api/v1/contacts", json={"name": "Ada"}, headers=h)
    _worker(app, local).run_until_idle()
    message_id = db_session.scalars(select(WebhookMessage.id)).one()
    other = api.auth(api.signup("hooks-other"))
    for method, path, payload in [
        ("get", f"{BASE}/endpoints/{eid}", None),
        ("patch", f"{BASE}/endpoints/{eid}", {"description": "mine now", "enabled": False}),
        ("delete", f"{BASE}/endpoints/{eid}", None),
        ("post", f"{BASE}/endpoints/{eid}/secret/rotate", {}),
        ("post", f"{BASE}/endpoints/{eid}/test", None),
        ("get", f"{BASE}/endpoints/{eid}/attempts", None),
        ("post", f"{BASE}/messages/{message_id}/replay", {}),
    ]:
        r = (
            getattr(client, method)(path, json=payload, headers=other)
            if payload is not None
            else getattr(client, method)(path, headers=other)
        )
        assert_problem(r, 404, "not_found")
    assert client.get(f"{BASE}/endpoints", headers=other).get_json() == []
    row = db_session.get(WebhookEndpoint, uuid.UUID(eid))
    db_session.refresh(row)
    assert row.status == "enabled" and row.description == "" and row.previous_secrets == []
    assert _count(db_session, WebhookDelivery) == 1
    # the other tenant's own endpoint cannot be the target of a replay of this tenant's message
    mine = _create(client, other, receiver.url + "/ok")
    r = client.post(f"{BASE}/messages/{message_id}/replay", json={"endpoint_id": mine["id"]}, headers=h)
    assert_problem(r, 404, "not_found")


# --- delivery -------------------------------------------------------------------------------------


def test_a_change_is_one_outbox_row_fanned_out_signed_and_verified(
    client, org, local, receiver, db_session, app
):
    body, h = org
    first = _create(client, h, receiver.url + "/ok/1", events=["contact.*"])
    second = _create(client, h, receiver.url + "/ok/2", events=["contact.created"])
    _create(client, h, receiver.url + "/ok/3", events=["member.*"])  # not subscribed to contacts
    receiver.secrets["/ok/1"] = [first["secret"]]
    receiver.secrets["/ok/2"] = [second["secret"]]
    r = client.post("/api/v1/contacts", json={"name": "Ada", "email": "ada@example.test"}, headers=h)
    assert r.status_code == 201
    assert len(_outbox(db_session, FANOUT_TOPIC)) == 1  # one row whatever the number of endpoints
    assert _outbox(db_session, DELIVER_TOPIC) == []  # the fan-out is the worker's
    _worker(app, local).run_until_idle()
    assert len(_outbox(db_session, DELIVER_TOPIC)) == 2  # one per subscribed endpoint
    got = receiver.on("/ok/1") + receiver.on("/ok/2")
    assert len(got) == 2 and receiver.on("/ok/3") == []
    assert len({g.headers["webhook-id"] for g in got}) == 1  # one message, two deliveries
    assert all(g.verified for g in got)  # each with its own endpoint's secret
    assert got[0].body == got[1].body
    receiver.secrets["/ok/1"] = [second["secret"]]
    assert not receiver.verify("/ok/1", got[0].body, got[0].headers)  # not with the other's
    message = _message(got[0])
    assert message["type"] == "contact.created"
    assert (
        message["data"]["contact"]["name"] == "Ada" and message["data"]["tenant_id"] == body["tenant"]["id"]
    )
    assert got[0].headers["webhook-id"].startswith("msg_")
    assert got[0].headers["content-type"] == "application/json"
    attempts = client.get(f"{BASE}/endpoints/{first['id']}/attempts", headers=h).get_json()
    assert len(attempts) == 1
    assert attempts[0]["outcome"] == "delivered" and attempts[0]["status_code"] == 204
    assert attempts[0]["latency_ms"] >= 0 and attempts[0]["message_id"] == got[0].headers["webhook-id"]
    assert _count(db_session, WebhookDelivery) == 2
    assert set(db_session.scalars(select(WebhookDelivery.status))) == {"delivered"}


def test_no_subscriber_writes_nothing_at_commit(client, org, local, db_session):
    _, h = org
    client.post("/api/v1/contacts", json={"name": "Nobody listens"}, headers=h)
    created = _create(client, h, "http://127.0.0.1:9/x", events=["member.*"])
    client.post("/api/v1/contacts", json={"name": "Still nobody"}, headers=h)
    assert _outbox(db_session, FANOUT_TOPIC) == []
    client.patch(f"{BASE}/endpoints/{created['id']}", json={"enabled": False}, headers=h)
    client.post("/api/v1/members", json={"email": "x@example.test", "role": "member"}, headers=h)
    assert _outbox(db_session, FANOUT_TOPIC) == []  # a disabled endpoint subscribes to nothing


def test_contact_member_and_tenant_events_match_their_schemas(client, org, local, receiver, app):
    _, h = org
    created = _create(client, h, receiver.url + "/ok", events=["contact.*", "member.*", "tenant.*"])
    receiver.secrets["/ok"] = [created["secret"]]
    contact = client.post("/api/v1/contacts", json={"name": "Ada"}, headers=h).get_json()
    client.patch(f"/api/v1/contacts/{contact['id']}", json={"company": "Engines"}, headers=h)
    client.delete(f"/api/v1/contacts/{contact['id']}", headers=h)
    assert (
        client.post(
            "/api/v1/members", json={"email": "new@example.test", "role": "member"}, headers=h
        ).status_code
        == 201
    )
    assert client.patch("/api/v1/tenant", json={"name": "Acme Hooks"}, headers=h).status_code == 200
    _worker(app, local).run_until_idle()
    messages = [_message(r) for r in receiver.on("/ok")]
    assert all(r.verified for r in receiver.on("/ok"))
    assert [m["type"] for m in messages] == [
        "contact.created", "contact.updated", "contact.deleted", "member.invited", "tenant.updated",
    ]  # fmt: skip
    assert messages[1]["data"]["changed"] == ["company"]
    assert messages[3]["data"]["email"] == "new@example.test"
    assert messages[4]["data"]["tenant"]["name"] == "Acme Hooks" and messages[4]["data"]["changed"] == [
        "name"
    ]


def test_audit_streaming_sends_every_audit_event(client, org, local, receiver, app):
    _, h = org
    created = _create(client, h, receiver.url + "/ok", events=["audit.*"])
    receiver.secrets["/ok"] = [created["secret"]]
    client.post("/api/v1/contacts", json={"name": "Ada"}, headers=h)
    client.post("/api/v1/members", json={"email": "new@example.test", "role": "member"}, headers=h)
    _worker(app, local).run_until_idle()
    messages = [_message(r) for r in receiver.on("/ok")]
    # the endpoint's own creation is an audit event too, in the same transaction
    assert [m["type"] for m in messages] == [
        "audit.webhook.endpoint_created", "audit.contact.created", "audit.member.invited",
    ]  # fmt: skip
    assert messages[2]["data"]["action"] == "member.invited"
    assert messages[2]["data"]["data"]["email"] == "new@example.test"
    assert messages[2]["data"]["actor"]["type"] == "user"


def test_rotation_signs_with_the_old_and_the_new_secret(client, org, local, receiver, db_session, app):
    body, h = org
    created = _create(client, h, receiver.url + "/ok", events=["contact.*"])
    old = created["secret"]
    r = client.post(f"{BASE}/endpoints/{created['id']}/secret/rotate", json={}, headers=h)
    assert r.status_code == 200
    new = r.get_json()["secret"]
    assert new != old and new.startswith("whsec_")
    expires = datetime.fromisoformat(r.get_json()["previous_secret_expires_at"])
    assert timedelta(hours=23, minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=24)
    shown = client.get(f"{BASE}/endpoints/{created['id']}", headers=h).get_json()
    assert len(shown["previous_secrets_expire_at"]) == 1 and new not in json.dumps(shown)
    client.post("/api/v1/contacts", json={"name": "Ada"}, headers=h)
    _worker(app, local).run_until_idle()
    got = receiver.on("/ok")[-1]
    assert len(got.headers["webhook-signature"].split(" ")) == 2  # v1,<new> v1,<old>
    receiver.secrets["/ok"] = [old]
    assert receiver.verify("/ok", got.body, got.headers)
    receiver.secrets["/ok"] = [new]
    assert receiver.verify("/ok", got.body, got.headers)
    assert _audit(db_session, body["tenant"]["id"], "webhook.secret_rotated")
    # a leaked secret: rotate with no overlap, the old one stops signing at once
    r = client.post(
        f"{BASE}/endpoints/{created['id']}/secret/rotate", json={"keep_previous_seconds": 0}, headers=h
    )
    newest = r.get_json()["secret"]
    assert r.get_json()["previous_secret_expires_at"] is None
    client.post("/api/v1/contacts", json={"name": "Bob"}, headers=h)
    _worker(app, local).run_until_idle()
    got = receiver.on("/ok")[-1]
    signatures = got.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2  # the newest, and the first (rotated a day from now), not the second
    receiver.secrets["/ok"] = [new]
    assert not receiver.verify("/ok", got.body, got.headers)
    receiver.secrets["/ok"] = [newest]
    assert receiver.verify("/ok", got.body, got.headers)
    assert_problem(
        client.post(
            f"{BASE}/endpoints/{created['id']}/secret/rotate",
            json={"keep_previous_seconds": 90000},
            headers=h,
        ),
        422,
    )


def _failing_endpoint(client, h, receiver, path="/fail"):
    created = _create(client, h, receiver.url + path, events=["contact.*"])
    client.post("/api/v1/contacts", json={"name": "Ada"}, headers=h)
    return created


def test_a_failure_is_recorded_capped_and_retried_on_the_schedule(
    client, org, local, receiver, db_session, app
):
    _, h = org
    created = _failing_endpoint(client, h, receiver)
    before = datetime.now(UTC)
    _worker(app, local).run_until_idle()
    attempt = db_session.scalars(select(WebhookAttempt)).one()
    assert attempt.status_code == 500 and attempt.outcome == "failed" and attempt.error == "HTTP 500"
    assert attempt.response_body == "x" * 1024  # the first KiB of 4
    queued = _outbox(db_session, DELIVER_TOPIC)[-1]
    assert queued.sent_at is None
    delay = (queued.available_at - before).total_seconds()
    assert 5 * 0.9 - 1 <= delay <= 5 * 1.1 + 1  # the first retry: 5 s, +-10 %
    # the rest of the schedule, with a clock of the test's own
    config = delivery.DeliveryConfig.from_settings(local)
    row = db_session.scalars(select(WebhookDelivery)).one()
    now = before
    rng = random.Random(7)
    delays = []
    while True:
        now = now + timedelta(seconds=1)
        at = row.next_attempt_at
        outcome = delivery.deliver(db_session, row.id, config, max(now, at), rng=rng)
        db_session.flush()
        if outcome != "retry":
            break
        delays.append((row.next_attempt_at - max(now, at)).total_seconds())
        now = row.next_attempt_at
    assert outcome == "failed" and row.status == "failed" and row.attempts == 8
    assert len(delays) == 6  # retries 2..7 (the first was the worker's)
    for got, want in zip(delays, delivery.SCHEDULE[1:], strict=True):
        assert want * 0.9 <= got <= want * 1.1
    attempts = client.get(f"{BASE}/endpoints/{created['id']}/attempts?limit=3", headers=h).get_json()
    assert [a["attempt"] for a in attempts] == [8, 7, 6]
    page = client.get(
        f"{BASE}/endpoints/{created['id']}/attempts?before={attempts[-1]['id']}", headers=h
    ).get_json()
    assert [a["attempt"] for a in page] == [5, 4, 3, 2, 1]


def test_410_disables_the_endpoint_and_mails_the_admins(
    client, org, local, receiver, db_session, app, smtp_inbox_url
):
    body, h = org
    admin, _ = role_headers(app, body["tenant"]["id"], "admin")
    created = _failing_endpoint(client, h, receiver, "/gone")
    _worker(app, local.with_overrides(smtp_url=smtp_inbox_url[0])).run_until_idle()
    row = db_session.get(WebhookEndpoint, uuid.UUID(created["id"]))
    db_session.refresh(row)
    assert row.status == "disabled" and row.disabled_reason == "gone"
    assert db_session.scalars(select(WebhookAttempt.outcome)).one() == "gone"
    assert _audit(db_session, body["tenant"]["id"], "webhook.endpoint_disabled")[0].data["reason"] == "gone"
    mails = [m for m in smtp_inbox_url[1].messages if m["Subject"] == "A webhook endpoint was disabled"]
    assert sorted(m["To"] for m in mails) == sorted([body["user"]["email"], admin.email])
    assert all(created["url"] in m.get_payload() and "410" in m.get_payload() for m in mails)
    # disabled: a change queues nothing, a test is 409, and re-enabling resets the clock
    client.post("/api/v1/contacts", json={"name": "Bob"}, headers=h)
    assert len(_outbox(db_session, FANOUT_TOPIC)) == 1
    assert_problem(
        client.post(f"{BASE}/endpoints/{created['id']}/test", headers=h), 409, "webhook_endpoint_disabled"
    )
    r = client.patch(f"{BASE}/endpoints/{created['id']}", json={"enabled": True}, headers=h)
    assert r.get_json()["status"] == "enabled" and r.get_json()["disabled_reason"] is None


@pytest.fixture()
def smtp_inbox_url():
    from tests.peers import smtp_inbox

    with smtp_inbox() as inbox:
        yield inbox.url, inbox


def test_five_days_of_failures_disable_the_endpoint(client, org, local, receiver, db_session, app):
    body, h = org
    created = _failing_endpoint(client, h, receiver)
    _worker(app, local).run_until_idle()  # the first attempt, failed: the clock starts
    row = db_session.get(WebhookEndpoint, uuid.UUID(created["id"]))
    db_session.refresh(row)
    start = row.failing_since
    assert start is not None and row.status == "enabled"
    config = delivery.DeliveryConfig.from_settings(local)
    # another message, four days later: still failing, still enabled
    client.post("/api/v1/contacts", json={"name": "Bob"}, headers=h)
    fanned = _outbox(db_session, FANOUT_TOPIC)[-1]
    delivery.fan_out(db_session, uuid.UUID(body["tenant"]["id"]), fanned.payload, start + timedelta(days=4))
    db_session.flush()
    second = db_session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.status == "pending")
        .order_by(WebhookDelivery.created_at.desc())
    ).first()
    assert delivery.deliver(db_session, second.id, config, start + timedelta(days=4)) == "retry"
    assert row.status == "enabled"
    # five days after the first failure, with no success between: disabled, the admins told
    assert delivery.deliver(db_session, second.id, config, start + timedelta(days=5, seconds=1)) == "failed"
    db_session.flush()
    assert row.status == "disabled" and row.disabled_reason == "failing"
    mails = _outbox(db_session, delivery.DISABLED_MAIL_TOPIC)
    assert [m.payload["to"] for m in mails] == [body["user"]["email"]]
    # a success resets the clock
    r = client.patch(
        f"{BASE}/endpoints/{created['id']}", json={"enabled": True, "url": receiver.url + "/any"}, headers=h
    )
    assert r.get_json()["failing_since"] is None


def test_redirects_are_not_followed_and_slow_receivers_time_out(
    client, org, local, receiver, db_session, app
):
    _, h = org
    _create(client, h, receiver.url + "/redirect", events=["contact.*"])
    _create(client, h, receiver.url + "/slow", events=["contact.*"])
    client.post("/api/v1/contacts", json={"name": "Ada"}, headers=h)
    _worker(app, local.with_overrides(webhooks_timeout_seconds=0.3)).run_until_idle()
    receiver.release.set()
    attempts = {a.endpoint_id: a for a in db_session.scalars(select(WebhookAttempt))}
    by_url = {e.url: attempts[e.id] for e in db_session.scalars(select(WebhookEndpoint))}
    redirected = by_url[receiver.url + "/redirect"]
    assert redirected.status_code == 302 and redirected.outcome == "failed"
    assert "redirects are not followed" in redirected.error
    assert receiver.on("/ok") == []  # the Location was never requested
    slow = by_url[receiver.url + "/slow"]
    assert slow.status_code is None and slow.error == "timeout" and slow.outcome == "failed"


def test_the_address_is_checked_again_at_connect_time(
    client, org, local, receiver, db_session, app, settings
):
    _, h = org
    _create(client, h, receiver.url + "/ok", events=["contact.*"])  # accepted in development...
    client.post("/api/v1/contacts", json={"name": "Ada"}, headers=h)
    # ...delivered by a worker that refuses private addresses, as DNS rebinding would look
    _worker(app, settings.with_overrides(webhooks_allow_http=True)).run_until_idle()
    attempt = db_session.scalars(select(WebhookAttempt)).one()
    assert (
        attempt.status_code is None and attempt.error == "refused: the host resolves to a non-public address"
    )
    assert receiver.received == []


def test_the_per_endpoint_rate_puts_attempts_off_without_counting_them(
    client, org, local, receiver, db_session, app
):
    _, h = org
    created = _create(client, h, receiver.url + "/any", events=["contact.*"], rate_limit=1)
    for name in ("Ada", "Bob", "Cy"):
        client.post("/api/v1/contacts", json={"name": name}, headers=h)
    worker = Worker(
        services(app).database,
        local,
        services={"app": app, "webhook_rate_check": rate_check_for(services(app).limiter)},
    )
    worker.run_until_idle()
    assert len(receiver.on("/any")) == 1  # 1 a second: the two others wait
    pending = list(db_session.scalars(select(WebhookDelivery).where(WebhookDelivery.status == "pending")))
    assert len(pending) == 2 and all(d.attempts == 0 for d in pending)
    assert all(d.next_attempt_at > datetime.now(UTC) for d in pending)
    assert _count(db_session, WebhookAttempt) == 1
    assert db_session.get(WebhookEndpoint, uuid.UUID(created["id"])).rate_limit == 1


def test_test_messages_and_replays(client, org, local, receiver, db_session, app):
    body, h = org
    created = _create(client, h, receiver.url + "/ok", events=["contact.*"])
    receiver.secrets["/ok"] = [created["secret"]]
    r = client.post(f"{BASE}/endpoints/{created['id']}/test", headers=h)
    assert r.status_code == 202
    test_id = r.get_json()["message_id"]
    client.post("/api/v1/contacts", json={"name": "Ada"}, headers=h)
    _worker(app, local).run_until_idle()
    first, second = receiver.on("/ok")
    assert _message(first)["type"] == "webhook.test" and first.headers["webhook-id"] == test_id
    assert first.verified and second.verified
    r = client.post(f"{BASE}/messages/{second.headers['webhook-id']}/replay", json={}, headers=h)
    assert r.status_code == 202 and len(r.get_json()["deliveries"]) == 1
    _worker(app, local).run_until_idle()
    replayed = receiver.on("/ok")[-1]
    assert replayed.headers["webhook-id"] == second.headers["webhook-id"] and replayed.body == second.body
    assert replayed.verified
    kinds = sorted(db_session.scalars(select(WebhookDelivery.kind)))
    assert kinds == ["event", "replay", "test"]
    assert _audit(db_session, body["tenant"]["id"], "webhook.message_replayed")
    assert _audit(db_session, body["tenant"]["id"], "webhook.test_sent")
    client.patch(f"{BASE}/endpoints/{created['id']}", json={"enabled": False}, headers=h)
    r = client.post(f"{BASE}/messages/{second.headers['webhook-id']}/replay", json={}, headers=h)
    assert_problem(r, 409, "webhook_endpoint_disabled")


def test_delete_takes_deliveries_and_attempts_and_queued_attempts_find_nothing(
    client, org, local, receiver, db_session, app
):
    body, h = org
    created = _failing_endpoint(client, h, receiver)
    _worker(app, local).run_until_idle()
    assert _count(db_session, WebhookAttempt) == 1
    assert client.delete(f"{BASE}/endpoints/{created['id']}", headers=h).status_code == 204
    assert _count(db_session, WebhookAttempt) == 0 and _count(db_session, WebhookDelivery) == 0
    queued = _outbox(db_session, DELIVER_TOPIC)[-1]
    config = delivery.DeliveryConfig.from_settings(local)
    assert (
        delivery.deliver(db_session, uuid.UUID(queued.payload["delivery_id"]), config, datetime.now(UTC))
        == "skipped"
    )
    assert _audit(db_session, body["tenant"]["id"], "webhook.endpoint_deleted")


def test_prune_keeps_thirty_days(client, org, local, receiver, db_session, app):
    _, h = org
    _failing_endpoint(client, h, receiver)
    _worker(app, local).run_until_idle()
    now = datetime.now(UTC)
    assert delivery.prune(db_session, now + timedelta(days=29), 30) == {
        "attempts": 0,
        "deliveries": 0,
        "messages": 0,
    }
    counts = delivery.prune(db_session, now + timedelta(days=31), 30)
    assert counts["attempts"] == 1
    assert counts["messages"] == 0  # its delivery is still pending (a retry queued)
    row = db_session.scalars(select(WebhookDelivery)).one()
    row.status, row.finished_at = "failed", now
    db_session.flush()
    assert delivery.prune(db_session, now + timedelta(days=31), 30) == {
        "attempts": 0,
        "deliveries": 1,
        "messages": 1,
    }


def test_signature_header_is_the_spec_scheme():
    """The library's scheme (spec "Signature scheme"): base64 HMAC-SHA256 of id.timestamp.body."""
    import base64
    import hashlib
    import hmac

    secret = signing.new_secret()
    key = base64.b64decode(secret.removeprefix("whsec_"))
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    header = signing.signature_header([secret], "msg_1", at, '{"a":1}')
    want = base64.b64encode(
        hmac.new(key, f'msg_1.{int(at.timestamp())}.{{"a":1}}'.encode(), hashlib.sha256).digest()
    )
    assert header == "v1," + want.decode()
    assert len(key) == 32


def test_saas_webhooks_prune_command(monkeypatch, settings, database_url, redis_client):
    """``saas webhooks prune`` (the daily schedule `webhooks.prune`) on the run's database: counts as JSON."""
    from click.testing import CliRunner

    from saas.cli import main

    kwargs = redis_client.connection_pool.connection_kwargs
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs['db']}")
    monkeypatch.setenv("SAAS_ENV", "test")
    monkeypatch.setenv("SAAS_VAR_DIR", str(settings.var_dir))
    r = CliRunner().invoke(main, ["webhooks", "prune", "--days", "30"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"days": 30, "deleted": {"attempts": 0, "deliveries": 0, "messages": 0}}
    r = CliRunner().invoke(main, ["webhooks", "prune", "--days", "0"])
    assert r.exit_code == 2  # out of range: click's usage error


def test_a_subscription_change_is_a_message(client, org, local, receiver, db_session, app):
    """``apply_subscription`` (Stripe's webhooks and ``billing sync`` both end there) emits
    ``subscription.updated`` with the state before and after, only when something changed."""
    from saas.billing.service import Billing, apply_subscription, ensure_account

    body, h = org
    created = _create(client, h, receiver.url + "/ok", events=["subscription.*"])
    receiver.secrets["/ok"] = [created["secret"]]
    billing = Billing(local, None, {"price_pro_month": ("pro", "month")})  # no Stripe call on this path
    sub = {
        "id": "sub_hooks",
        "status": "active",
        "customer": "cus_hooks",
        "items": {"data": [{"id": "si_1", "price": {"id": "price_pro_month"}, "quantity": 1}]},
    }
    with app.test_request_context():
        account = ensure_account(db_session, uuid.UUID(body["tenant"]["id"]))
        assert apply_subscription(db_session, billing, account, sub, source="customer.subscription.updated")
        assert not apply_subscription(
            db_session, billing, account, sub, source="sync"
        )  # unchanged: no message
        db_session.commit()
    _worker(app, local).run_until_idle()
    (only,) = receiver.on("/ok")
    message = _message(only)
    assert only.verified and message["type"] == "subscription.updated"
    assert (
        message["data"]["subscription"]["plan"] == "pro"
        and message["data"]["subscription"]["status"] == "active"
    )
    assert message["data"]["previous"]["plan"] is None
    assert message["data"]["source"] == "customer.subscription.updated"


def test_a_rolled_back_change_sends_nothing(client, org, local, receiver, db_session, app, monkeypatch):
    """The message rides the change's transaction: a change that fails after emitting (here, a
    500 from the view after the contact's flush) leaves no outbox row, so nothing is sent."""
    _, h = org
    _create(client, h, receiver.url + "/any", events=["contact.*"])
    from tenants import contacts

    def boom(*args, **kwargs):
        raise RuntimeError("injected after the change")

    monkeypatch.setattr(contacts, "etag_of", boom)  # runs after the audit event and the emit
    r = client.post("/api/v1/contacts", json={"name": "Never"}, headers=h)
    assert r.status_code == 500
    assert _outbox(db_session, FANOUT_TOPIC) == []
    _worker(app, local).run_until_idle()
    assert receiver.on("/any") == []


def test_a_tenant_has_at_most_twenty_endpoints(client, org, local, db_session):
    from saas.webhooks.endpoints import MAX_ENDPOINTS

    _, h = org
    for _ in range(MAX_ENDPOINTS):
        _create(client, h, "http://127.0.0.1:9/x")
    r = client.post(
        f"{BASE}/endpoints", json={"url": "http://127.0.0.1:9/x", "events": ["contact.*"]}, headers=h
    )
    assert assert_problem(r, 409, "webhook_endpoint_limit")["limit"] == MAX_ENDPOINTS
    assert _count(db_session, WebhookEndpoint) == MAX_ENDPOINTS
