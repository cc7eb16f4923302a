"""The outbox worker: real SMTP delivery (aiosmtpd), retries with backoff, dead letters, the
jobs commands, SKIP LOCKED between workers."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import delete, select, text

from saas import outbox, worker
from saas.db import Database, utcnow
from saas.outbox import OutboxMessage
from saas.services import services
from saas.worker import PermanentError, Worker
from tests.helpers import mailed_invitation_token
from tests.peers import free_port, smtp_inbox


@pytest.fixture()
def smtp_server():
    with smtp_inbox() as inbox:
        yield inbox


pytestmark = pytest.mark.usefixtures("worker_handlers")  # tests/conftest.py


def test_invitation_mail_arrives_and_token_is_blanked(api, client, app, settings, smtp_server, db_session):
    acme = api.signup("acme")
    w = Worker(
        services(app).database,
        settings.with_overrides(smtp_url=smtp_server.url, mail_from="ops@acme.test"),
    )
    assert w.run_until_idle() == {"sent": 1}  # the signup's verification link
    smtp_server.messages.clear()
    smtp_server.envelopes.clear()
    r = client.post(
        "/api/v1/members", json={"email": "linus@acme.test", "role": "member"}, headers=api.auth(acme)
    )
    assert r.status_code == 201, r.get_json()
    assert "invitation_token" not in r.get_json()
    token = mailed_invitation_token(app, "linus@acme.test")
    assert w.run_until_idle() == {"sent": 1}
    assert len(smtp_server.messages) == 1
    mail = smtp_server.messages[0]
    assert mail["To"] == "linus@acme.test" and mail["From"] == "ops@acme.test"
    assert smtp_server.envelopes[0].rcpt_tos == ["linus@acme.test"]
    assert token in mail.get_payload(decode=True).decode()
    row = db_session.scalars(select(OutboxMessage).where(OutboxMessage.topic == "mail.invitation")).one()
    assert mail["Message-ID"] == f"<outbox-{row.id}@localhost>"
    assert row.sent_at is not None and row.payload == {} and row.attempts == 1
    assert token not in json.dumps(row.payload)
    # the delivered token works
    accepted = client.post(
        "/api/v1/invitations/accept", json={"token": token, "password": "another good passphrase"}
    )
    assert accepted.status_code == 200, accepted.get_json()
    assert w.run_until_idle() == {}  # nothing sent twice


def test_retry_with_backoff_then_dead_letter(app, settings, db_session):
    calls = []

    @worker.handler("test.flaky")
    def flaky(job, ctx):
        calls.append(job.attempts)
        ctx.session.execute(text("UPDATE saas.outbox SET topic = 'tampered' WHERE id = :i"), {"i": job.id})
        raise RuntimeError("upstream 503")

    outbox.enqueue(db_session, "test.flaky", {"n": 1})
    db_session.flush()
    w = Worker(services(app).database, settings.with_overrides(outbox_max_attempts=2))
    before = utcnow()
    assert w.run_one() == "retry"
    row = db_session.scalars(select(OutboxMessage).where(OutboxMessage.payload["n"].as_integer() == 1)).one()
    db_session.refresh(row)
    assert row.topic == "test.flaky"  # the handler's writes were rolled back with its failure
    assert row.attempts == 1 and "upstream 503" in row.last_error and row.failed_at is None
    assert row.available_at >= before + timedelta(seconds=3)  # backoff: 5 s +- 20 %
    assert w.run_one() is None  # not due yet
    row.available_at = utcnow()
    db_session.flush()
    assert w.run_one() == "failed"
    db_session.refresh(row)
    assert row.failed_at is not None and row.attempts == 2 and calls == [1, 2]


def test_permanent_errors_and_unknown_topics_go_straight_to_dead_letter(app, settings, db_session):
    @worker.handler("test.bad")
    def bad(job, ctx):
        raise PermanentError("payload lacks to")

    outbox.enqueue(db_session, "test.bad", {})
    outbox.enqueue(db_session, "no.such.topic", {})
    outbox.enqueue(db_session, "mail.invitation", {"to": "x@example.test"})  # no token
    db_session.flush()
    w = Worker(services(app).database, settings)
    assert w.run_until_idle() == {"failed": 3}
    errors = sorted(r.last_error for r in db_session.scalars(select(OutboxMessage)))
    assert any("no handler" in e for e in errors) and any("lacks token" in e for e in errors)


def test_smtp_down_is_retried(app, settings, db_session):
    outbox.enqueue(db_session, "mail.security", {"to": "a@example.test", "event": "password_changed"})
    db_session.flush()
    w = Worker(services(app).database, settings.with_overrides(smtp_url=f"smtp://127.0.0.1:{free_port()}"))
    assert w.run_one() == "retry"


def test_backoff_grows_and_is_capped():
    assert 4 <= worker.backoff_seconds(1) <= 6
    assert 32 <= worker.backoff_seconds(4) <= 48
    assert worker.backoff_seconds(30) <= 3600 * 1.2


def test_lock_user_mails_and_jobs_commands(committed, run_cli, engine, settings, smtp_server):
    tenant = committed.tenant(members=1)
    user_email = f"m0@{tenant.slug}.test"
    start_id = _max_outbox_id(engine)
    try:
        r = run_cli("users", "lock", user_email, "--reason", "compromised", "--json")
        assert r.exit_code == 0, r.output
        assert run_cli("users", "lock", user_email, "--reason", "x").exit_code == 1
        shown = json.loads(run_cli("users", "show", user_email, "--json").stdout)
        assert shown["status"] == "locked" and shown["memberships"][0]["tenant"] == tenant.slug
        locked = json.loads(
            run_cli("users", "list", "--status", "locked", "--tenant", tenant.slug, "--json").stdout
        )
        assert [u["email"] for u in locked] == [user_email]
        audit = json.loads(run_cli("audit", tenant.slug, "--since", "1h", "--json").stdout)
        assert audit[0]["action"] == "user.locked" and audit[0]["actor"] == {
            "type": "operator",
            "id": "op-tester",
        }
        assert audit[0]["data"] == {"reason": "compromised"}

        pending = json.loads(run_cli("jobs", "list", "--json").stdout)
        mine = [j for j in pending if j["id"] > start_id]
        assert [(j["topic"], j["state"]) for j in mine] == [("mail.security", "pending")]
        assert "payload" not in mine[0]

        w = Worker(Database(engine), settings.with_overrides(smtp_url=smtp_server.url))
        w.run_until_idle()
        assert any(m["To"] == user_email and "locked" in m.get_payload() for m in smtp_server.messages)

        with engine.begin() as conn:
            dead = conn.scalar(
                text(
                    "INSERT INTO saas.outbox"
                    " (topic, payload, created_at, available_at, attempts, failed_at, last_error)"
                    " VALUES ('usage.report', '{}', :now, :now, 8, :now, 'HTTP 500') RETURNING id"
                ),
                {"now": utcnow()},  # the service's clock, not the database server's
            )
        failed = json.loads(run_cli("jobs", "list", "--failed", "--json").stdout)
        assert dead in [j["id"] for j in failed] and all(j["state"] == "failed" for j in failed)
        assert run_cli("jobs", "retry").exit_code == 2
        r = run_cli("jobs", "retry", str(dead), "--json")
        assert r.exit_code == 0 and json.loads(r.stdout)["retried"] == [dead]
        assert dead not in [j["id"] for j in json.loads(run_cli("jobs", "list", "--failed", "--json").stdout)]
        assert run_cli("jobs", "retry", str(dead)).exit_code == 1  # no longer a dead letter
        assert run_cli("users", "unlock", user_email).exit_code == 0
    finally:
        with engine.begin() as conn:
            conn.execute(delete(OutboxMessage).where(OutboxMessage.id > start_id))


def test_skip_locked_two_workers_never_share_a_message(committed, engine, settings):
    start_id = _max_outbox_id(engine)
    handled = []

    @worker.handler("test.once")
    def once(job, ctx):
        handled.append(job.id)

    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO saas.outbox (topic, payload, created_at, available_at, attempts)"
                    " VALUES ('test.once', '{}', :now, :now, 0)"
                ),
                {"now": utcnow()},  # the worker compares available_at with the service's clock
            )
        with engine.connect() as holder, holder.begin():
            holder.execute(text("SELECT id FROM saas.outbox WHERE id > :i FOR UPDATE"), {"i": start_id})
            # another worker holds the row: this one skips it instead of waiting
            assert Worker(Database(engine), settings).run_one() is None
        assert Worker(Database(engine), settings).run_one() == "sent"
        assert len(handled) == 1
    finally:
        with engine.begin() as conn:
            conn.execute(delete(OutboxMessage).where(OutboxMessage.id > start_id))


def _max_outbox_id(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(text("SELECT coalesce(max(id), 0) FROM saas.outbox"))


def test_billing_topics_are_delivered_through_the_worker(app, settings, db_session):
    from saas.billing.jobs import HANDLERS

    assert set(HANDLERS) <= set(worker.handlers())
    topic = next(iter(HANDLERS))
    outbox.enqueue(db_session, topic, {"no_tenant_id": True})  # malformed: parked at once
    db_session.flush()
    w = Worker(services(app).database, settings, services={"app": app})
    assert w.run_one() == "failed"
    row = db_session.scalars(select(OutboxMessage).where(OutboxMessage.topic == topic)).one()
    assert "malformed payload" in row.last_error and row.attempts == 1


def test_a_metrics_failure_never_undoes_a_delivery(app, settings, db_session, monkeypatch):
    """Review defect: metrics raised inside the delivery transaction (FileNotFoundError from a
    missing PROMETHEUS_MULTIPROC_DIR), rolling back a mail already sent: sent forever."""
    from saas.observability import metrics

    sent = []

    @worker.handler("test.side_effect")
    def side_effect(job, ctx):
        sent.append(job.id)

    def broken(*args, **kwargs):
        raise FileNotFoundError("/tmp/saas-metrics/counter_1.db")

    monkeypatch.setattr(metrics, "job_processed", broken)
    outbox.enqueue(db_session, "test.side_effect", {})
    db_session.flush()
    w = Worker(services(app).database, settings)
    assert w.run_one() == "sent"
    assert w.run_until_idle() == {}  # committed: never delivered again
    assert len(sent) == 1
    row = db_session.scalars(select(OutboxMessage).where(OutboxMessage.topic == "test.side_effect")).one()
    assert row.sent_at is not None


def test_worker_creates_the_multiprocess_metrics_dir(app, settings, tmp_path, monkeypatch):
    target = tmp_path / "not" / "yet"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(target))
    Worker(services(app).database, settings)
    assert target.is_dir()
