"""The cross-tenant check behind PgBouncer in transaction mode, at the size of the hardening test.

Usage (PostgreSQL on 127.0.0.1:5432, user postgres, trust auth; Redis on 127.0.0.1:6379;
Debian's pgbouncer installed)::

    .venv/bin/python bench/pgbouncer_load.py [--tenants 20] [--threads 32] [--seconds 20]
        [--workers 4] [--pool-size 5] [--redis redis://127.0.0.1:6379/2] [--env NAME=VALUE ...]

It creates its own database (``saas_pgb_<random>``, dropped at the end) and migrates it
directly, starts PgBouncer (``pool_mode = transaction``) and gunicorn on free ports, signs up
the tenants through the API, runs the mixed load (list, search, create, get) and prints how
many rows of other tenants came back in 2xx responses and how many requests answered 5xx.
``--env DB_PREPARED_STATEMENTS=on`` shows what the start-up check does with prepared
statements behind this PgBouncer. The suite's version of this run is
``tests/pgbouncer/test_pgbouncer.py::test_concurrent_mixed_load_returns_only_own_rows``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saas.migrate import upgrade_shared
from tests.pgbouncer import harness


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pool-size", type=int, default=5)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/2")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the app processes")
    args = parser.parse_args()

    server = "postgresql+psycopg://postgres@127.0.0.1:5432"
    name = f"saas_pgb_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        direct = create_engine(f"{server}/{name}")
        upgrade_shared(direct)
        direct.dispose()
        with harness.pgbouncer("127.0.0.1", 5432, default_pool_size=args.pool_size) as bouncer:
            var = Path(tempfile.mkdtemp(prefix="saas-pgb-var-"))
            extra = dict(item.split("=", 1) for item in args.env)
            env = harness.app_env(bouncer.url(name), args.redis, var, **extra)
            print(f"{bouncer.version}, pool_mode=transaction, default_pool_size={args.pool_size}; "
                  f"gunicorn {args.workers} workers; {args.tenants} tenants, {args.threads} threads, "
                  f"{args.seconds:g} s; app env {extra or '{}'}")  # fmt: skip
            with harness.gunicorn(env, workers=args.workers) as server_:
                try:
                    tenants = harness.seed_tenants(server_.base, args.tenants, retries=20)
                except AssertionError as exc:
                    print(f"signup failed: {str(exc)[:300]}")
                    print(server_.log.read_text(errors="replace")[-1500:])
                    return 1
                result = harness.run_load(server_.base, tenants, args.seconds, threads=args.threads)
            print(result.summary())
            for example in result.examples:
                print("  " + example)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
