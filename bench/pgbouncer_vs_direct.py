"""Throughput and p99 through PgBouncer (transaction mode) against direct PostgreSQL, in one run.

Usage (PostgreSQL on 127.0.0.1:5432, user postgres, trust auth; Redis on 127.0.0.1:6379;
Debian's pgbouncer installed)::

    .venv/bin/python bench/pgbouncer_vs_direct.py [--tenants 10] [--threads 16] [--seconds 10]
        [--rounds 2] [--workers 4] [--pool-size 5] [--redis redis://127.0.0.1:6379/2]
        [--json bench/results-pgbouncer.json]

One database (``saas_pgbvd_<random>``, dropped at the end), migrated directly; one PgBouncer
(``pool_mode = transaction``, ``default_pool_size`` ``--pool-size``) started as
``tests/pgbouncer`` does (``tests/pgbouncer/harness.py``); the tenants signed up once through the
API. Two gunicorns (``--workers`` sync workers each) run side by side for the whole run: one on
``DATABASE_URL`` through PgBouncer, one on PostgreSQL directly. After a warm-up of each (not
measured), ``--rounds`` rounds each run the same tenant-isolation load (the mixed list, search,
create and get of ``harness.run_load``: ``--threads`` client threads over every tenant, each 2xx
body checked to hold only its tenant's rows) for ``--seconds`` against one target, then the
other, the order alternating between rounds, so that the machine's other load falls on both
alike; the median over rounds of PgBouncer's figure over direct's is reported beside the totals.

Per target it records: requests, requests per second, p50 and p99 latency (client side, per
request), rows of other tenants in 2xx answers (must be 0), 5xx answers, and other errors; the
results are printed as a Markdown table and written to ``--json``. Recorded in
docs/benchmarks.md ("PgBouncer against direct PostgreSQL") and docs/scaling.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saas.migrate import upgrade_shared
from tests.pgbouncer import harness

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


def _combine(results: list[harness.LoadResult]) -> harness.LoadResult:
    total = harness.LoadResult()
    for r in results:
        total.requests += r.requests
        total.foreign_rows += r.foreign_rows
        total.server_errors += r.server_errors
        total.other_errors += r.other_errors
        total.by_kind.update(r.by_kind)
        total.errors.update(r.errors)
        total.examples += r.examples
        total.latencies_ms += r.latencies_ms
        total.seconds += r.seconds
    return total


def _row(name: str, r: harness.LoadResult) -> dict:
    return {
        "target": name,
        "requests": r.requests,
        "requests_per_second": round(r.throughput, 1),
        "p50_ms": round(r.percentile(50), 1),
        "p99_ms": round(r.percentile(99), 1),
        "cross_tenant_rows": r.foreign_rows,
        "5xx": r.server_errors,
        "other_errors": r.other_errors,
        "errors": dict(r.errors.most_common(5)),
    }


def _server_connections(database: str) -> int:
    """Backends connected to ``database`` now (the pool each target holds)."""
    admin = create_engine(f"{SERVER}/postgres")
    try:
        with admin.connect() as conn:
            return conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"), {"d": database}
            ).scalar_one()
    finally:
        admin.dispose()


def _pgbouncer_server_connections(port: int, database: str) -> int:
    """The server connections PgBouncer holds to ``database`` (its admin console's ``SHOW SERVERS``)."""
    import psycopg

    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/pgbouncer", autocommit=True) as admin:
        cursor = admin.execute("SHOW SERVERS")
        columns = [c.name for c in cursor.description]
        rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    return sum(1 for row in rows if row["database"] == database)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pool-size", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/2")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()

    name = f"saas_pgbvd_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    runs: dict[str, list[harness.LoadResult]] = {"pgbouncer": [], "direct": []}
    connections: dict[str, int] = {}
    try:
        direct = create_engine(f"{SERVER}/{name}")
        upgrade_shared(direct)
        direct.dispose()
        var = Path(tempfile.mkdtemp(prefix="saas-pgbvd-var-"))  # one signing key for both targets
        with contextlib.ExitStack() as stack:
            bouncer = stack.enter_context(
                harness.pgbouncer("127.0.0.1", 5432, default_pool_size=args.pool_size)
            )
            urls = {"pgbouncer": bouncer.url(name), "direct": f"{SERVER}/{name}"}
            print(
                f"{bouncer.version}, pool_mode=transaction, default_pool_size={args.pool_size}; "
                f"gunicorn {args.workers} sync workers each, DB_POOL_SIZE 10; {args.tenants} tenants, "
                f"{args.threads} threads, {args.rounds} rounds x {args.seconds:g} s per target"
            )
            # both servers up for the whole run; the signing key is made by the first one
            servers = {}
            for target in ("pgbouncer", "direct"):
                env = harness.app_env(urls[target], args.redis, var)
                servers[target] = stack.enter_context(harness.gunicorn(env, workers=args.workers))
            tenants = harness.seed_tenants(servers["pgbouncer"].base, args.tenants)
            for server in servers.values():  # warm-up, not measured
                harness.run_load(server.base, tenants, args.warmup, threads=args.threads)
            for round_ in range(args.rounds):
                # alternate the order too: neither target always follows the other
                order = ("pgbouncer", "direct") if round_ % 2 == 0 else ("direct", "pgbouncer")
                for target in order:
                    base = servers[target].base
                    result = harness.run_load(base, tenants, args.seconds, threads=args.threads)
                    runs[target].append(result)
                    print(f"round {round_ + 1}, {target}: {result.summary()}", flush=True)
                    for example in result.examples:
                        print("  " + example)
            total = _server_connections(name)
            pooled = _pgbouncer_server_connections(bouncer.port, name)
            connections = {"through_pgbouncer": pooled, "direct": total - pooled}
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    rows = [_row(target, _combine(results)) for target, results in runs.items()]
    # per round, PgBouncer's figure over direct's: the machine's load moves both within a round
    pairs = list(zip(runs["pgbouncer"], runs["direct"], strict=True))
    ratios = {
        "throughput": statistics.median(b.throughput / d.throughput for b, d in pairs),
        "p99": statistics.median(b.percentile(99) / d.percentile(99) for b, d in pairs),
    }
    print()
    print("| target | requests | req/s | p50 ms | p99 ms | cross-tenant rows | 5xx | other errors |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['target']} | {row['requests']:,} | {row['requests_per_second']} | {row['p50_ms']} "
            f"| {row['p99_ms']} | {row['cross_tenant_rows']} | {row['5xx']} | {row['other_errors']} |"
        )
    print(
        f"median per-round ratio, PgBouncer / direct: throughput {ratios['throughput']:.2f}, "
        f"p99 {ratios['p99']:.2f}; server connections to the database at the end: {connections}"
    )
    if args.json:
        load = os.getloadavg()
        Path(args.json).write_text(json.dumps({
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in load],
                        "python": platform.python_version()},
            "pgbouncer": subprocess.run([harness.pgbouncer_binary() or "pgbouncer", "--version"],
                                        capture_output=True, text=True).stdout.split("\n")[0],
            "arguments": vars(args),
            "results": rows,
            "median_round_ratio_pgbouncer_over_direct": {k: round(v, 3) for k, v in ratios.items()},
            "database_connections": connections,
            "rounds": {t: [_row(t, r) for r in results] for t, results in runs.items()},
        }, indent=2) + "\n")  # fmt: skip
    bad = any(row["cross_tenant_rows"] or row["5xx"] for row in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
