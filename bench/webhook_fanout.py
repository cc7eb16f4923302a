"""Benchmark: outgoing webhooks' fan-out (docs/webhooks.md): what an event costs at commit,
how many messages one worker delivers per second to a local receiver, and the delay from the
commit of a change to its delivery (p50, p99).

Runs the real app's services in-process on a throw-away PostgreSQL database and the Redis at
``REDIS_URL``, one ``saas.worker.Worker`` (the one ``saas worker`` runs, with the per-endpoint
rate on the limiter) and the tests' receiver (``tests/webhook_receiver.py``: a threaded
``http.server`` on loopback that verifies every signature with the ``standardwebhooks``
library) over http on 127.0.0.1 (``WEBHOOKS_ALLOW_PRIVATE``/``WEBHOOKS_ALLOW_HTTP``).

    REDIS_URL=redis://127.0.0.1:6379/1 .venv/bin/python bench/webhook_fanout.py --events 500 --endpoints 1,3

Three measures, each printed as one Markdown table (append them to docs/benchmarks.md):

1. **commit**: a change's transaction (one audit event) that calls ``emit`` once (the read of
   the tenant's subscriptions and the one outbox row), against the same without ``emit``.
2. **throughput**: ``--events`` events committed first, then one worker drains the outbox
   (fan-out rows and delivery rows): events and deliveries per second, per number of
   subscribed endpoints.
3. **latency**: the worker polling (``run_forever``, 50 ms idle poll) while events are committed
   one at a time at ``--rate`` per second: from the commit's return to the receiver's arrival.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from saas import create_app  # noqa: E402
from saas.db import Database  # noqa: E402
from saas.migrate import upgrade_shared  # noqa: E402
from saas.services import services  # noqa: E402
from saas.settings import Settings  # noqa: E402
from saas.webhooks.events import emit  # noqa: E402
from saas.worker import Worker, load_handlers  # noqa: E402
from tests.helpers import verify_email  # noqa: E402
from tests.webhook_receiver import Receiver  # noqa: E402

PASSWORD = "correct horse battery staple"  # noqa: S105 - a local bench account


class StatementCounter:
    """SQL statements sent on ``engine`` (a cost that does not move with the machine's load)."""

    def __init__(self, engine) -> None:
        from sqlalchemy import event

        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *args) -> None:
        self.count += 1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def contact(n: int) -> dict:
    return {
        "contact": {
            "id": str(uuid.uuid4()),
            "name": f"Contact {n}",
            "email": f"c{n}@example.test",
            "tags": [],
        }
    }


def commit_cost(database, tenant_id, rounds: int) -> tuple[float, float]:
    """p50 ms of a change's transaction (its audit event, as every change writes one) with one
    ``emit`` and without it."""
    from saas import audit

    with_emit, without = [], []
    for n in range(rounds):
        for sink, call in ((with_emit, True), (without, False)):
            t0 = time.perf_counter()
            with database.transaction() as session:
                audit.record(session, "contact.created", actor=audit.SYSTEM, tenant_id=tenant_id)
                if call:
                    emit(session, tenant_id, "contact.created", contact(n))
            sink.append(time.perf_counter() - t0)
    return statistics.median(with_emit) * 1000, statistics.median(without) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--endpoints", default="1,3")
    parser.add_argument("--latency-events", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0, help="events per second in the latency run")
    args = parser.parse_args()

    server = os.environ.get("BENCH_DATABASE_SERVER", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    name = f"saas_bench_hooks_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    receiver = Receiver()
    try:
        engine = create_engine(url, pool_size=10, max_overflow=10)
        upgrade_shared(engine)
        statements = StatementCounter(engine)
        import redis

        r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/1"))
        settings = Settings(
            env="test", database_url=url, secret_key="bench", var_dir=Path("/tmp/saas-bench-var"),  # noqa: S106
            argon2_memory_kib=8192, argon2_time_cost=1, webhooks_allow_private=True,
            webhooks_allow_http=True, webhooks_rate_limit=10_000, log_level="WARNING",
        )  # fmt: skip
        app = create_app(settings, database=Database(engine), redis=r)
        database = services(app).database
        client = app.test_client()
        load_handlers()
        tables = []
        for count in [int(c) for c in args.endpoints.split(",")]:
            slug = f"bench-{count}-{uuid.uuid4().hex[:6]}"
            owner = {"email": f"o@{slug}.test", "password": PASSWORD}
            signup = client.post(
                "/api/v1/signup", json={"tenant": {"name": slug, "slug": slug}, "owner": owner}
            )
            body = signup.get_json()
            tenant_id = uuid.UUID(body["tenant"]["id"])
            verify_email(app, body["user"]["id"])  # creating an endpoint needs a verified email
            h = {"Authorization": f"Bearer {body['token']['access_token']}"}
            for i in range(count):  # each endpoint its own path, verified with its own secret
                path = f"/ok/{count}/{i}"
                created = client.post(
                    "/api/v1/webhooks/endpoints",
                    json={"url": receiver.url + path, "events": ["contact.*"], "rate_limit": 10_000},
                    headers=h,
                ).get_json()
                receiver.secrets[path] = [created["secret"]]
            worker = Worker(database, settings, services={"app": app})
            worker.run_until_idle()  # the signup's mail and the endpoints' audit messages
            receiver.received.clear()

            p50_emit, p50_plain = commit_cost(database, tenant_id, 200)
            worker.run_until_idle()
            receiver.received.clear()

            before = statements.count
            for n in range(args.events):
                with database.transaction() as session:
                    emit(session, tenant_id, "contact.created", contact(n))
            at_commit = (statements.count - before) / args.events
            before = statements.count
            t0 = time.perf_counter()
            worker.run_until_idle(limit=10 * args.events * (count + 1))
            elapsed = time.perf_counter() - t0
            in_worker = (statements.count - before) / args.events
            delivered = sum(m.verified for m in receiver.received)
            assert delivered == args.events * count, (delivered, args.events * count)
            tables.append((count, args.events, elapsed, delivered, p50_emit, p50_plain, at_commit, in_worker))
            receiver.received.clear()

            if count == 1:
                latencies = latency_run(database, settings, app, receiver, tenant_id, args)
        print(
            "| endpoints | events | events/s | deliveries/s | commit with emit, p50 ms | without, p50 ms "
            "| SQL statements per event: transaction with emit / worker |"
        )
        print("|---|---|---|---|---|---|---|")
        for count, events, elapsed, delivered, p50_emit, p50_plain, at_commit, in_worker in tables:
            print(
                f"| {count} | {events} | {events / elapsed:.0f} | {delivered / elapsed:.0f} "
                f"| {p50_emit:.2f} | {p50_plain:.2f} | {at_commit:.1f} / {in_worker:.1f} |"
            )
        print()
        print("| commit to delivery (1 endpoint) | events | rate/s | p50 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|---|")
        print(
            f"| one worker, 50 ms idle poll | {len(latencies)} | {args.rate:.0f} "
            f"| {statistics.median(latencies) * 1000:.1f} | {percentile(latencies, 0.99) * 1000:.1f} "
            f"| {max(latencies) * 1000:.1f} |"
        )
        engine.dispose()
    finally:
        receiver.close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def latency_run(database, settings, app, receiver, tenant_id, args) -> list[float]:
    """Commit one event every 1/rate s while a worker polls; commit-return to arrival, seconds."""
    worker = Worker(database, settings, services={"app": app})
    thread = threading.Thread(
        target=worker.run_forever,
        kwargs={"poll_seconds": 0.05, "heartbeat": None, "signals": False},
        daemon=True,
    )
    thread.start()
    committed: dict[str, float] = {}
    try:
        for n in range(args.latency_events):
            with database.transaction() as session:
                message_id = emit(session, tenant_id, "contact.created", contact(n))
            committed[message_id] = time.time()
            time.sleep(1 / args.rate)
        receiver.wait_for(args.latency_events, timeout=60)
    finally:
        worker.stopping.set()
        thread.join(timeout=10)
    arrived = {m.headers["webhook-id"]: m.at for m in receiver.received if m.verified}
    return [arrived[m] - at for m, at in committed.items() if m in arrived]


if __name__ == "__main__":
    main()
