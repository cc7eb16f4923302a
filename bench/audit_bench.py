"""The audit log's hash chain, export, verify and prune (docs/audit.md), measured. Loopback
only, bounded runs; asserts nothing.

    .venv/bin/python bench/audit_bench.py [--events 200000] [--appends 2000]

Setup: a fresh database (``BENCH_DB_NAME``, default ``saas_bench_audit``, created and dropped)
with the shared track, and tenants made as ``tests/ops/conftest.py`` makes them (a tenant row
and ``create_tenant_schema``). Rows:

* **append**: ``audit.record`` then ``COMMIT``, one event per transaction (a request's write),
  ``--appends`` times, median and p99; beside the floor of the same row inserted without the
  chain (one ``INSERT`` and ``COMMIT``);
* **contention**: 4 threads appending ``--appends`` events in all, to one tenant (the chain
  row's lock serialises them) and to 4 tenants (one each);
* **load**: ``--events`` events appended 5,000 per statement (``audit.append``), a tenant
  import's path;
* **export**: the CSV and JSON Lines bodies of ``GET /api/v1/audit-events/export`` generated
  in full (``saas.audit_api._csv/_jsonl`` over ``_export_rows``, 1,000 a page), under
  ``tracemalloc``: events/s (slowed by the tracing) and the peak of Python memory allocated
  while exporting 10 % of the events and all of them (bounded memory: about the same);
* **verify**: ``verify_chain`` over all events (one REPEATABLE READ snapshot);
* **prune**: every event pruned, 1,000 per transaction.

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_SERVER = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
DB_NAME = os.environ.get("BENCH_DB_NAME", "saas_bench_audit")


def _admin():
    from sqlalchemy import create_engine

    return create_engine(PG_SERVER.replace("postgresql://", "postgresql+psycopg://") + "/postgres",
                         isolation_level="AUTOCOMMIT")  # fmt: skip


def _tenant(db):
    from saas.db import schema_name_for
    from saas.identity.models import Tenant
    from saas.migrate import tenant_head_revision
    from saas.tenancy.provisioning import create_tenant_schema

    tid = uuid.uuid4()
    with db.transaction() as session:
        tenant = Tenant(id=tid, slug=f"b-{tid.hex[:10]}", name="Bench", schema_name=schema_name_for(tid),
                        schema_version=tenant_head_revision())  # fmt: skip
        session.add(tenant)
        session.flush()
        create_tenant_schema(session.connection(), tenant.schema_name)
    return tenant


def _event(when: datetime, i: int) -> dict:
    from saas.audit import AuditAction

    return {"id": uuid.uuid4(), "occurred_at": when, "actor_type": "user", "actor_id": str(uuid.uuid4()),
            "action": AuditAction.CONTACT_UPDATED, "target_type": "contact", "target_id": str(uuid.uuid4()),
            "ip": "192.0.2.10", "user_agent": "Mozilla/5.0 (bench)", "request_id": uuid.uuid4().hex,
            "data": {"fields": ["name", "company"], "n": i}}  # fmt: skip


def _ms(values: list[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"median {statistics.median(values) * 1000:.3f} ms, p99 {p99 * 1000:.3f} ms"


def bench(db, events: int, appends: int) -> None:
    from sqlalchemy import insert

    from saas import audit, audit_api
    from saas.audit import AuditAction, AuditEvent
    from saas.ops.audit_retention import prune_tenant

    now = datetime.now(UTC)
    t = _tenant(db)
    times = []
    for _ in range(appends):
        start = time.perf_counter()
        with db.transaction(t.schema_name) as session:
            audit.record(session, AuditAction.CONTACT_UPDATED, actor=audit.SYSTEM, target_type="contact",
                         target_id=uuid.uuid4(), data={"fields": ["name"]})  # fmt: skip
        times.append(time.perf_counter() - start)
    print(f"append (record + commit), chained: {_ms(times)}")
    floor = _tenant(db)
    times = []
    for i in range(appends):
        values = _event(now, i) | {"seq": i + 1, "prev_hash": "0" * 64, "hash": "0" * 64, "nonce": None}
        start = time.perf_counter()
        with db.transaction(floor.schema_name) as session:
            session.execute(insert(AuditEvent.__table__).values(**values))
        times.append(time.perf_counter() - start)
    print(f"floor: one INSERT + commit, no chain: {_ms(times)}")

    for label, tenants in (("one tenant", [_tenant(db)] * 4), ("4 tenants", [_tenant(db) for _ in range(4)])):
        barrier = threading.Barrier(4)

        def writer(tenant, n=appends // 4, barrier=barrier):
            barrier.wait()
            for _ in range(n):
                with db.transaction(tenant.schema_name) as session:
                    audit.record(session, AuditAction.CONTACT_UPDATED, actor=audit.SYSTEM)

        threads = [threading.Thread(target=writer, args=(tn,)) for tn in tenants]
        start = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - start
        print(f"contention, 4 threads, {label}: {appends / elapsed:,.0f} appends/s")

    big = _tenant(db)
    start = time.perf_counter()
    for first in range(0, events, 5000):
        with db.transaction(big.schema_name) as session:
            audit.append(session, [_event(now - timedelta(seconds=events - i), i)
                                   for i in range(first, min(events, first + 5000))])  # fmt: skip
    elapsed = time.perf_counter() - start
    print(f"load: {events:,} events, 5,000 per statement: {events / elapsed:,.0f} events/s")
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f'VACUUM ANALYZE "{big.schema_name}".audit_events')

    for fmt, encode in (("csv", audit_api._csv), ("jsonl", audit_api._jsonl)):
        for share in (0.1, 1.0):
            since = now - timedelta(seconds=int(events * share)) if share < 1 else None
            tracemalloc.start()
            start = time.perf_counter()
            size = n = 0
            for chunk in encode(audit_api._export_rows(db, big.schema_name, since, None, 1000)):
                size += len(chunk)
                n += 1
            elapsed = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            count = int(events * share)
            print(
                f"export {fmt}, {count:,} events: {count / elapsed:,.0f} events/s (traced), "
                f"{size / 2**20:.1f} MiB in {n} chunks, peak Python memory {peak / 2**20:.1f} MiB"
            )

    with db.transaction(big.schema_name) as session:
        from sqlalchemy import text

        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        session.execute(text("SET TRANSACTION READ ONLY"))
        start = time.perf_counter()
        report = audit.verify_chain(session)
        elapsed = time.perf_counter() - start
    print(f"verify: {report.checked:,} events, ok={report.ok}: {report.checked / elapsed:,.0f} events/s")

    start = time.perf_counter()
    result = prune_tenant(db, big.id, big.slug, big.schema_name, 0, now + timedelta(days=1))
    elapsed = time.perf_counter() - start
    rate = result.deleted / elapsed
    print(f"prune: {result.deleted:,} events in {result.batches} batches: {rate:,.0f} events/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--appends", type=int, default=2000)
    args = parser.parse_args()
    admin = _admin()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{DB_NAME}"')
        conn.exec_driver_sql(f'CREATE DATABASE "{DB_NAME}"')
    try:
        from saas.db import Database
        from saas.migrate import upgrade_shared

        db = Database.from_url(f"{PG_SERVER}/{DB_NAME}", pool_size=6)
        upgrade_shared(db.engine)
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        bench(db, args.events, args.appends)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        db.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


if __name__ == "__main__":
    main()
