"""Benchmark: background jobs on Celery against the former outbox poller, side by side.

One process, a throw-away PostgreSQL database, the real handler registry and delivery
(:func:`saas.worker.deliver`), a handler that does nothing or sleeps ``--work-ms`` (an SMTP or
HTTP call's wait). For each engine:

* throughput: ``--jobs`` rows committed first, then the engine started; jobs/s until all are
  sent;
* commit-to-run delay: ``--paced`` rows committed one at a time at ``--rate`` per second while
  the engine runs; the delay is the handler's start minus the commit's return (one clock: the
  same process), p50 and p99.

Engines: the poller (``Worker.run_forever``, one or ``--threads`` threads) and Celery
(``saas.worker.engine``: the relay thread plus an in-process worker, ``threads`` pool,
``--threads`` task threads) on Redis (``REDIS_URL``'s server, DB 8) and, when reachable,
RabbitMQ (``AMQP_URL``). The poller and the relay both wait ``--poll`` seconds when idle.

    REDIS_URL=redis://127.0.0.1:6379/7 .venv/bin/python bench/jobs.py [--jobs 2000] [--work-ms 0,5]

Prints one Markdown table (append it to docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis as redis_lib  # noqa: E402
from sqlalchemy import create_engine, func, insert, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from saas import create_app, worker  # noqa: E402
from saas.db import Database  # noqa: E402
from saas.migrate import upgrade_shared  # noqa: E402
from saas.outbox import OutboxMessage  # noqa: E402
from saas.settings import Settings  # noqa: E402
from saas.worker.engine import in_process_worker, make_celery, publisher  # noqa: E402
from saas.worker.relay import Relay  # noqa: E402

TOPIC = "bench.job"
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Probe:
    """The benchmark's handler: records when each job started, by outbox id."""

    def __init__(self, work_seconds: float):
        self.work = work_seconds
        self.started: dict[int, float] = {}
        self.lock = threading.Lock()

    def __call__(self, job, ctx) -> None:
        now = time.perf_counter()
        with self.lock:
            self.started.setdefault(job.id, now)
        if self.work:
            time.sleep(self.work)


def _pending(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).where(OutboxMessage.sent_at.is_(None)))


def _wait_sent(engine, deadline_s: float = 600) -> None:
    end = time.monotonic() + deadline_s
    while _pending(engine):
        if time.monotonic() > end:
            raise RuntimeError("jobs left undelivered")
        time.sleep(0.02)


def _clear(engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE saas.outbox"))


@contextmanager
def poller(database: Database, settings: Settings, threads: int, poll: float):
    workers = [worker.Worker(database, settings) for _ in range(threads)]
    pool = [
        threading.Thread(
            target=w.run_forever, kwargs={"poll_seconds": poll, "heartbeat": None, "signals": False}
        )
        for w in workers
    ]
    for t in pool:
        t.start()
    try:
        yield
    finally:
        for w in workers:
            w.stopping.set()
        for t in pool:
            t.join()


@contextmanager
def celery_engine(app, database: Database, broker: str, threads: int, poll: float):
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    celery = make_celery(_settings(app), lambda: app, broker=broker, queue=queue)
    relay = Relay(database, publisher(celery))
    with in_process_worker(celery, pool="threads", concurrency=threads):
        loop = threading.Thread(target=relay.run_forever, kwargs={"poll_seconds": poll})
        loop.start()
        try:
            yield
        finally:
            relay.stopping.set()
            loop.join()
    if broker.startswith("amqp"):
        with celery.connection_for_write() as conn:
            conn.default_channel.queue_delete(celery.conf.task_default_queue)


def _settings(app) -> Settings:
    from saas.services import services

    return services(app).settings


def throughput(engine, start: Callable, jobs: int) -> float:
    _clear(engine)
    with engine.begin() as conn:
        conn.execute(insert(OutboxMessage), [{"topic": TOPIC, "payload": {"i": i}} for i in range(jobs)])
    t0 = time.perf_counter()
    with start():
        _wait_sent(engine)
        elapsed = time.perf_counter() - t0
    return jobs / elapsed


def delays(engine, database: Database, start: Callable, probe: Probe, n: int, rate: float) -> list[float]:
    _clear(engine)
    committed: dict[int, float] = {}
    with start():
        time.sleep(0.5)  # the engine is up and idle
        for i in range(n):
            with database.transaction() as session:
                row = OutboxMessage(topic=TOPIC, payload={"i": i})
                session.add(row)
                session.flush()
                oid = row.id
            committed[oid] = time.perf_counter()
            time.sleep(1 / rate)
        _wait_sent(engine)
    return [probe.started[oid] - at for oid, at in committed.items()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--paced", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0, help="paced commits per second")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--work-ms", default="0,5")
    args = parser.parse_args()

    server = make_url(
        os.environ.get("BENCH_DATABASE_SERVER", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    )
    name = f"saas_bench_jobs_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/7")
    broker = urlunsplit(urlsplit(redis_url)._replace(path="/8"))
    try:
        engine = create_engine(url, pool_size=args.threads + 4)
        upgrade_shared(engine)
        var = Path(tempfile.gettempdir()) / "saas-bench-jobs"
        settings = Settings(  # the engines measured, not their logs: warnings only
            env="test", database_url=url, secret_key="bench", var_dir=var, log_level="WARNING"  # noqa: S106
        )
        database = Database(engine)
        app = create_app(settings, database=database, redis=redis_lib.Redis.from_url(redis_url))
        redis_lib.Redis.from_url(broker).flushdb()
        engines: list[tuple[str, Callable]] = [
            ("poller x1", lambda: poller(database, settings, 1, args.poll)),
            (f"poller x{args.threads}", lambda: poller(database, settings, args.threads, args.poll)),
            (
                f"Celery, Redis, {args.threads} threads",
                lambda: celery_engine(app, database, broker, args.threads, args.poll),
            ),
        ]
        try:
            from kombu import Connection

            with Connection(AMQP_URL, connect_timeout=2) as conn:
                conn.ensure_connection(max_retries=1)
            engines.append(
                (f"Celery, RabbitMQ, {args.threads} threads",
                 lambda: celery_engine(app, database, AMQP_URL, args.threads, args.poll))
            )  # fmt: skip
        except Exception:
            print("(RabbitMQ unreachable: skipped)", file=sys.stderr)
        rows = []
        for work_ms in [float(w) for w in args.work_ms.split(",")]:
            probe = Probe(work_ms / 1000)
            worker.register(TOPIC, probe)
            for label, start in engines:
                jobs_s = throughput(engine, start, args.jobs)
                probe.started.clear()
                d = delays(engine, database, start, probe, args.paced, args.rate)
                rows.append(
                    (work_ms, label, jobs_s, percentile(d, 0.5), percentile(d, 0.99), statistics.mean(d))
                )
                print(f"done: {work_ms} ms, {label}", file=sys.stderr)
        load = os.getloadavg()
        print(
            f"\n{args.jobs} jobs queued for the throughput, {args.paced} commits at {args.rate:g}/s for"
            f" the delay; idle wait {args.poll:g} s; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n"
        )
        print("| handler work | engine | jobs/s (backlog) | commit-to-run p50 | p99 | mean |")
        print("|---|---|---:|---:|---:|---:|")
        for work_ms, label, jobs_s, p50, p99, mean in rows:
            print(f"| {work_ms:g} ms | {label} | {jobs_s:,.0f} | {p50 * 1000:,.0f} ms | {p99 * 1000:,.0f} ms"
                  f" | {mean * 1000:,.0f} ms |")  # fmt: skip
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
