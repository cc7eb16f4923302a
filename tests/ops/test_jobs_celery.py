"""Background jobs on Celery: the outbox relay, real brokers (Redis and RabbitMQ), a Celery
worker started in-process (:func:`saas.worker.engine.in_process_worker`) or as ``saas
worker``, retries and dead letters kept in the outbox row, tenant context carried by each task,
the beat schedules.

These tests commit (the worker's thread has its own connections) and delete their rows after.
Waiting for a worker polls the outbox row with a generous deadline: no assertion depends on
how long anything took."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import redis as redis_lib
from sqlalchemy import delete, func, select, update

from saas import audit, outbox, worker
from saas.audit import AuditAction, AuditEvent
from saas.db import Database, utcnow
from saas.outbox import OutboxMessage
from saas.services import services
from saas.settings import Settings
from saas.worker.engine import (
    beat_schedule,
    import_function,
    in_process_worker,
    make_celery,
    publisher,
    run_scheduled,
)
from saas.worker.relay import OutboxTask, Relay
from tests.helpers import replace_services

ROOT = Path(__file__).resolve().parents[2]
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _redis_broker_url() -> str:
    """DB 8 of the test Redis (``REDIS_URL``'s host): the broker, apart from the suite's DB."""
    from urllib.parse import urlsplit, urlunsplit

    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    return urlunsplit(urlsplit(base)._replace(path="/8"))


def _amqp_reachable() -> bool:
    from kombu import Connection

    try:
        with Connection(AMQP_URL, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


#: ``memory``: what ``saas dev`` runs on (no REDIS_URL, no CELERY_BROKER_URL): nothing installed
BROKERS = {"redis": _redis_broker_url, "rabbitmq": lambda: AMQP_URL, "memory": lambda: "memory://"}


@pytest.fixture()
def job_app(app, engine, redis_client):
    """The session's app on the real engine (the tests' outer transaction is not used here)."""
    redis_client.flushdb()
    assert services(app).database.bind is not None
    return app


@pytest.fixture()
def clean_outbox(engine) -> Iterator[int]:
    with engine.connect() as conn:
        start = conn.scalar(select(func.coalesce(func.max(OutboxMessage.id), 0)))
    yield start
    with engine.begin() as conn:
        conn.execute(delete(OutboxMessage).where(OutboxMessage.id > start))


@pytest.fixture()
def handlers() -> Iterator[Callable]:
    """Register test handlers for the test only."""
    before = worker.handlers()
    yield worker.handler
    worker._handlers.clear()
    worker._handlers.update(before)


def celery_for(broker: str, app):
    """A Celery app on ``broker`` with a queue of its own. No AMQP heartbeats: a worker thread
    then stops at once instead of after its heartbeat interval."""
    celery = make_celery(
        services(app).settings, lambda: app, broker=broker, queue=f"saas-test-{uuid.uuid4().hex}"
    )
    celery.conf.broker_heartbeat = 0
    return celery


@contextmanager
def running(celery, *, pool: str = "solo", concurrency: int = 1):
    """A worker of ``celery`` in a thread of this process (solo pool: one task at a time), the one
    ``saas dev`` runs. Not ``celery.contrib.testing``'s ``start_worker``: it waits forever for a
    worker thread that died while starting; here the test's wait on the outbox row fails."""
    with in_process_worker(celery, pool=pool, concurrency=concurrency):
        yield celery


@contextmanager
def celery_on(broker: str, app, *, pool: str = "solo", concurrency: int = 1):
    """A Celery app on ``broker`` with a queue of its own, and a worker running it in a thread."""
    celery = celery_for(broker, app)
    with running(celery, pool=pool, concurrency=concurrency):
        yield celery
    if broker.startswith("amqp"):  # the per-test queue goes with the test
        with celery.connection_for_write() as conn:
            conn.default_channel.queue_delete(celery.conf.task_default_queue)


def _commit(engine, topic: str, payload: dict | None = None, tenant_id: uuid.UUID | None = None) -> int:
    with Database(engine).transaction() as session:
        outbox.enqueue(session, topic, payload or {}, tenant_id=tenant_id)
        session.flush()
        return session.scalars(select(func.max(OutboxMessage.id))).one()


def _row(engine, outbox_id: int) -> OutboxMessage:
    with Database(engine).transaction() as session:
        return session.get(OutboxMessage, outbox_id)


def _wait(
    engine, outbox_id: int, done: Callable[[OutboxMessage], bool], seconds: float = 30
) -> OutboxMessage:
    deadline = time.monotonic() + seconds
    while True:
        row = _row(engine, outbox_id)
        if done(row):
            return row
        assert time.monotonic() < deadline, f"outbox row {outbox_id} never reached the state: {row.__dict__}"
        time.sleep(0.05)


def _sent(row: OutboxMessage) -> bool:
    return row.sent_at is not None


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_committed_row_runs_through_the_relay_and_a_real_broker(
    broker, job_app, engine, clean_outbox, handlers
):
    if broker == "rabbitmq" and not _amqp_reachable():
        pytest.skip(f"no RabbitMQ at {AMQP_URL}")
    if broker == "memory":  # the default without a Redis: saas dev's embedded engine
        from saas.worker.engine import broker_url

        assert broker_url(services(job_app).settings.with_overrides(redis_url=None)) == "memory://"
    seen = []

    @handlers("test.celery")
    def handle(job, ctx):
        seen.append((job.id, job.payload, job.idempotency_key, job.attempts))

    with celery_on(BROKERS[broker](), job_app) as celery:
        relay = Relay(Database(engine), publisher(celery))
        with engine.connect() as conn, conn.begin() as uncommitted:  # invisible to the relay
            conn.execute(OutboxMessage.__table__.insert().values(topic="test.celery", payload={"n": 1}))
            assert relay.relay_once() == 0
            uncommitted.rollback()
        oid = _commit(engine, "test.celery", {"n": 2})
        assert relay.relay_once() == 1
        row = _wait(engine, oid, _sent)
    assert [s for s in seen if s[0] == oid] == [(oid, {"n": 2}, f"outbox-{oid}", 1)]
    assert row.attempts == 1 and row.payload == {} and row.last_error is None


def test_a_row_relayed_twice_runs_its_handler_once(job_app, engine, clean_outbox, handlers):
    runs = []

    @handlers("test.twice")
    def handle(job, ctx):
        runs.append(job.id)

    oid = _commit(engine, "test.twice")
    published: list[OutboxTask] = []
    celery = celery_for(_redis_broker_url(), job_app)
    real = publisher(celery)

    def crash_after_publishing(batch):
        real(batch)
        published.extend(batch)
        raise ConnectionError("relay killed between the publish and its mark")

    # 1. the relay published, then died before its mark committed: the row is still due
    with pytest.raises(ConnectionError):
        Relay(Database(engine), crash_after_publishing).relay_once()
    assert [t.outbox_id for t in published] == [oid]
    assert _row(engine, oid).available_at <= utcnow()
    # 2. the next round publishes it again, and marks it (a lease: not due for 300 s)
    relay = Relay(Database(engine), real)
    assert relay.relay_once() == 1
    assert relay.relay_once() == 0
    # 3. and a broker redelivers the message once more
    real([OutboxTask(oid, None, "test.twice", 0)])
    marker = _commit(engine, "test.twice")  # a later message: once it ran, the three had their turn
    assert relay.relay_once() == 1
    with running(celery):  # three messages for the row, one run
        _wait(engine, marker, _sent)
        row = _wait(engine, oid, _sent)
        # a lease that ran out on a row already sent publishes nothing
        with engine.begin() as conn:
            conn.execute(update(OutboxMessage).where(OutboxMessage.id == oid).values(available_at=utcnow()))
        assert relay.relay_once() == 0
    assert runs.count(oid) == 1 and runs.count(marker) == 1
    assert row.attempts == 1


def test_retries_follow_the_backoff_then_a_dead_letter_then_jobs_retry(
    job_app, engine, clean_outbox, handlers, run_cli, monkeypatch
):
    attempts = []
    healthy = []

    @handlers("test.flaky")
    def flaky(job, ctx):
        attempts.append(job.attempts)
        if not healthy:
            raise RuntimeError("upstream 503")

    settings = services(job_app).settings
    replace_services(monkeypatch, job_app, settings=settings.with_overrides(outbox_max_attempts=2))
    oid = _commit(engine, "test.flaky")
    with celery_on(_redis_broker_url(), job_app) as celery:
        relay = Relay(Database(engine), publisher(celery))
        before = utcnow()
        assert relay.relay_once() == 1
        row = _wait(engine, oid, lambda r: r.attempts == 1)
        assert row.failed_at is None and "upstream 503" in row.last_error
        assert row.available_at >= before + timedelta(seconds=3)  # the backoff: 5 s +- 20 %
        assert relay.relay_once() == 0  # not due yet
        with engine.begin() as conn:  # the backoff has passed
            conn.execute(update(OutboxMessage).where(OutboxMessage.id == oid).values(available_at=utcnow()))
        assert relay.relay_once() == 1
        row = _wait(engine, oid, lambda r: r.failed_at is not None)
        assert row.attempts == 2 and row.sent_at is None
        assert relay.relay_once() == 0  # a dead letter is never relayed
        failed = json.loads(run_cli("jobs", "list", "--failed", "--json").stdout)
        assert [(j["id"], j["state"], j["attempts"]) for j in failed if j["id"] == oid] == [
            (oid, "failed", 2)
        ]
        assert "upstream 503" in next(j["last_error"] for j in failed if j["id"] == oid)
        healthy.append(True)
        r = run_cli("jobs", "retry", str(oid), "--json")
        assert r.exit_code == 0 and json.loads(r.stdout)["retried"] == [oid]
        assert relay.relay_once() == 1
        row = _wait(engine, oid, _sent)
    assert attempts == [1, 2, 1] and row.failed_at is None and row.last_error is None


def test_a_task_for_tenant_a_never_sees_tenant_b(committed, job_app, engine, clean_outbox, handlers):
    a, b = committed.tenant(), committed.tenant()
    db = Database(engine)
    for tenant in (a, b):
        with db.transaction() as session:
            audit.record(session, AuditAction.TENANT_UPDATED, target_type="tenant", target_id=tenant.slug,
                         actor=audit.SYSTEM, tenant_id=tenant.id)  # fmt: skip
    seen: dict[int, tuple] = {}

    @handlers("test.tenant_probe")
    def probe(job, ctx):
        # the tenant table through the handler's session: mapped to the task's tenant schema
        seen[job.id] = (ctx.tenant_schema, sorted(ctx.session.scalars(select(AuditEvent.target_id))))

    with celery_on(_redis_broker_url(), job_app) as celery:  # solo pool: one thread runs B, then A
        relay = Relay(db, publisher(celery))
        for_b = _commit(engine, "test.tenant_probe", tenant_id=b.id)
        assert relay.relay_once() == 1
        _wait(engine, for_b, _sent)
        for_a = _commit(engine, "test.tenant_probe", tenant_id=a.id)
        assert relay.relay_once() == 1
        _wait(engine, for_a, _sent)
        # a message whose tenant is not its row's is refused, never run in the other schema
        forged = _commit(engine, "test.tenant_probe", tenant_id=a.id)
        publisher(celery)([OutboxTask(forged, b.id, "test.tenant_probe", 0)])
        row = _wait(engine, forged, lambda r: r.failed_at is not None)
    assert seen[for_b] == (b.schema_name, [b.slug])
    assert seen[for_a] == (a.schema_name, [a.slug])
    assert forged not in seen and "tenant does not match" in row.last_error


def test_a_platform_message_cannot_reach_tenant_tables(job_app, engine, clean_outbox, handlers):
    @handlers("test.platform")
    def platform(job, ctx):
        ctx.session.scalars(select(AuditEvent.id)).all()

    oid = _commit(engine, "test.platform")
    svc = services(job_app)
    assert worker.deliver(svc.database, svc.settings, {}, oid, tenant_id=None, attempt=0) == "retry"
    assert _row(engine, oid).last_error  # the placeholder schema does not exist: no fallback


def test_beat_schedules_every_job_in_one_list(run_cli):
    from saas.schedules import SCHEDULES, Schedule

    names = [s.name for s in SCHEDULES]
    assert len(names) == len(set(names))
    assert {
        "tenants.purge", "billing.reconcile", "auth.expired_tokens", "outbox.prune", "billing.report_usage",
        "billing.dunning", "audit.retention", "webhooks.prune",
    } <= set(names)  # fmt: skip
    for entry in SCHEDULES:
        assert callable(import_function(entry.function)), entry.function
    celery_beat = beat_schedule()
    assert set(celery_beat) == set(names)
    purge = celery_beat["tenants.purge"]
    assert purge["task"] == "saas.schedule.run" and purge["kwargs"] == {"name": "tenants.purge"}
    cron = purge["schedule"]
    assert cron.minute == {17} and cron.hour == {3} and len(cron.day_of_month) == 31  # the old CronJob's
    assert beat_schedule([Schedule("x.y", "m:f", every=30)])["x.y"]["schedule"].run_every == timedelta(
        seconds=30
    )
    # the usage report follows USAGE_REPORT_INTERVAL, and 0 turns it off
    usage_entry = [Schedule("u.r", "m:f", every_setting="usage_report_interval_seconds")]
    on = beat_schedule(usage_entry, settings=Settings.from_env({"USAGE_REPORT_INTERVAL": "120"}))
    assert on["u.r"]["schedule"].run_every == timedelta(seconds=120)
    assert beat_schedule(usage_entry, settings=Settings.from_env({"USAGE_REPORT_INTERVAL": "0"})) == {}
    with pytest.raises(ValueError):
        Schedule("bad", "m:f", every=1, cron="* * * * *")
    listed = json.loads(run_cli("beat", "--list").stdout)
    assert [e["name"] for e in listed] == names


def test_a_schedule_runs_under_its_lock(job_app, redis_client, monkeypatch):
    from saas import schedules

    calls = []
    monkeypatch.setattr(
        schedules,
        "SCHEDULES",
        [
            schedules.Schedule(
                "test.job", "tests.ops.test_jobs_celery:_job", every=60, kwargs={"calls": calls}
            )
        ],
    )
    assert run_scheduled(job_app, "test.job") == "done"
    held = services(job_app).redis.lock("saas:schedule:test.job", timeout=60)
    assert held.acquire(blocking=False)
    assert run_scheduled(job_app, "test.job") is None  # another run holds it: skipped
    held.release()
    assert len(calls) == 1 and calls[0] is job_app
    with pytest.raises(KeyError):
        run_scheduled(job_app, "no.such")


def _job(app, calls):
    from flask import current_app

    calls.append(current_app._get_current_object())
    return "done"


def test_the_outbox_prune_schedule_keeps_what_is_not_old_and_sent(job_app, engine, clean_outbox):
    old, recent, pending = (_commit(engine, "test.prune") for _ in range(3))
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            update(OutboxMessage).where(OutboxMessage.id == old).values(sent_at=now - timedelta(days=8))
        )
        conn.execute(update(OutboxMessage).where(OutboxMessage.id == recent).values(sent_at=now))
    assert run_scheduled(job_app, "outbox.prune") >= 1
    assert (
        _row(engine, old) is None and _row(engine, recent) is not None and _row(engine, pending) is not None
    )


def test_saas_worker_subprocess_delivers_a_signup_mail_from_gunicorn(
    engine, database_url, tmp_path, clean_outbox
):
    """The whole path with real peers: a signup through gunicorn (``requests``) commits its
    verification mail to the outbox; ``saas worker`` (a subprocess: the relay and the Celery
    worker, Redis DB 9 the broker) delivers it to a real SMTP server."""
    import requests

    from tests.conftest import TEST_PASSWORD
    from tests.helpers import drop_tenant
    from tests.peers import gunicorn_server, smtp_inbox, stop

    broker = _redis_broker_url().rsplit("/", 1)[0] + "/9"
    redis_lib.Redis.from_url(broker).flushdb()
    app_redis = _redis_broker_url().rsplit("/", 1)[0] + "/7"
    slug = f"celery-{uuid.uuid4().hex[:8]}"
    tenant_id = None
    with smtp_inbox() as inbox, gunicorn_server(database_url, app_redis, tmp_path, workers=1) as server:
        env = {**server.env, "CELERY_BROKER_URL": broker, "CELERY_QUEUE": f"saas-test-{slug}",
               "SMTP_URL": inbox.url, "WORKER_CONCURRENCY": "2"}  # fmt: skip
        log = (tmp_path / "worker.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "saas.cli", "worker", "--poll-interval", "0.1"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            r = requests.post(
                f"{server.base}/api/v1/signup",
                json={"tenant": {"name": "Celery", "slug": slug},
                      "owner": {"email": f"owner@{slug}.test", "password": TEST_PASSWORD}},
                timeout=10,
            )  # fmt: skip
            assert r.status_code == 201, r.text
            tenant_id = r.json()["tenant"]["id"]
            deadline = time.monotonic() + 60
            while not inbox.to(f"owner@{slug}.test"):
                assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
                time.sleep(0.1)
            [mail] = inbox.to(f"owner@{slug}.test")
            assert mail["Subject"] == "Verify your email address"
            with engine.connect() as conn:
                row = conn.execute(
                    select(OutboxMessage.id, OutboxMessage.sent_at, OutboxMessage.attempts).where(
                        OutboxMessage.tenant_id == uuid.UUID(tenant_id)
                    )
                ).one()
            assert mail["Message-ID"].startswith(f"<outbox-{row.id}@")
        finally:
            stop(proc)  # SIGTERM: a warm shutdown
            log.close()
            if tenant_id:
                drop_tenant(engine, tenant_id)
    assert proc.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]


def test_queue_depth_and_age_are_gauges(engine, clean_outbox):
    from saas.observability.metrics import DatabaseCollector

    oid = _commit(engine, "test.gauge")
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == oid)
            .values(created_at=now - timedelta(seconds=90))
        )
    families = {f.name: f for f in DatabaseCollector(engine, clock=lambda: now).collect()}
    [age] = families["saas_outbox_oldest_pending_age_seconds"].samples
    assert age.value >= 90
    pending = {s.labels["state"]: s.value for s in families["saas_outbox_messages"].samples}
    assert pending["pending"] >= 1


def test_expired_tokens_are_deleted_and_live_ones_kept(app, db_session, api):
    from saas.auth.cleanup import delete_expired
    from saas.auth.models import AccountToken, RefreshToken

    body = api.signup(f"tok-{uuid.uuid4().hex[:6]}")
    user_id = uuid.UUID(body["user"]["id"])
    now = utcnow()
    for days, tag in ((-3, "old"), (3, "live")):
        expires = now + timedelta(days=days)
        db_session.add(AccountToken(user_id=user_id, purpose="password_reset", token_hash=tag * 16,
                                    email="x@example.test", expires_at=expires))  # fmt: skip
    db_session.flush()
    families_before = db_session.scalar(select(func.count()).select_from(RefreshToken))
    assert families_before >= 1  # the signup's session
    counts = delete_expired(services(app).database, now=now)
    assert counts["account_tokens"] == 1 and counts["refresh_tokens"] == 0
    left = db_session.scalars(select(AccountToken.token_hash).where(AccountToken.user_id == user_id)).all()
    assert "live" * 16 in left and "old" * 16 not in left
    later = delete_expired(services(app).database, now=now + timedelta(days=400))
    assert later["refresh_tokens"] == families_before
    assert db_session.scalar(select(func.count()).select_from(RefreshToken)) == 0
