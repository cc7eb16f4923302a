"""Benchmark: one usage report run (``saas.billing.usage.report_usage``, what each worker runs
every ``USAGE_REPORT_INTERVAL``) over many billed tenants.

A throw-away PostgreSQL database gets ``--tenants`` tenants, each with a live subscription whose
period is 15th to 15th, and the Redis at ``REDIS_URL`` their usage counters; the real ``stripe``
SDK talks to the local Stripe-shaped server of the tests over loopback HTTP. Rows, in order:

* ``first run``: every tenant has usage: one slice and one meter event each;
* ``idle run``: nothing new anywhere (the steady cost of the schedule);
* ``10 % new``: a tenth of the tenants has new calls.

    REDIS_URL=redis://127.0.0.1:6379/4 .venv/bin/python bench/usage_report.py [--tenants 2000]

Prints one Markdown table (append it to docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from saas.billing import usage  # noqa: E402
from saas.billing.periods import label_of  # noqa: E402
from saas.billing.service import make_billing  # noqa: E402
from saas.db import Database  # noqa: E402
from saas.migrate import upgrade_shared  # noqa: E402
from saas.settings import Settings  # noqa: E402
from tests.stripe_fake import FakeStripe  # noqa: E402

PRICES = {"price_pro_month": {"interval": "month"}, "price_ent_month": {"interval": "month"}}
START, END = datetime(2026, 1, 15, 9, 30, tzinfo=UTC), datetime(2026, 2, 15, 9, 30, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=2000)
    args = parser.parse_args()
    server = os.environ.get("BENCH_DATABASE_SERVER", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    name = f"saas_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    fake = FakeStripe(PRICES)
    base = fake.start()
    try:
        import redis

        engine = create_engine(url, pool_size=5)
        upgrade_shared(engine)
        r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/4"))
        settings = Settings(
            env="test", database_url=url, secret_key="bench", stripe_secret_key="sk_test_bench",  # noqa: S106
            stripe_webhook_secrets=("whsec_bench",), stripe_api_base=base,
            stripe_prices={"STRIPE_PRICE_PRO": "price_pro_month",
                           "STRIPE_PRICE_ENTERPRISE": "price_ent_month"},
        )  # fmt: skip
        billing = make_billing(settings)
        assert billing is not None
        ids = [uuid.uuid4() for _ in range(args.tenants)]
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO saas.tenants (id, slug, name, status, plan, schema_name, settings, "
                    "created_at, updated_at) VALUES (:id, :slug, 'Bench', 'active', 'pro', :schema, '{}', "
                    "now(), now())"
                ),
                [{"id": t, "slug": f"b-{t.hex[:12]}", "schema": f"t_{t.hex}"} for t in ids],
            )
            conn.execute(
                text(
                    "INSERT INTO saas.billing_accounts (tenant_id, stripe_customer_id, "
                    "stripe_subscription_id, status, current_period_start, current_period_end, "
                    "cancel_at_period_end, created_at, updated_at) VALUES (:t, :c, :s, 'active', :a, :b, "
                    "false, now(), now())"
                ),
                [{"t": t, "c": f"cus_{t.hex[:14]}", "s": f"sub_{t.hex[:14]}", "a": START, "b": END}
                 for t in ids],
            )
        label = label_of(START)
        database = Database(engine)

        def counters(which: list[uuid.UUID], value: int) -> None:
            pipe = r.pipeline(transaction=False)
            for t in which:
                pipe.set(usage.usage_key(t, label), value)
            pipe.execute()

        rows = []
        now = datetime(2026, 1, 20, 10, 0, tzinfo=UTC)
        fake.clock = lambda: now.timestamp()
        for row, which, value in (
            ("first run", ids, 100),
            ("idle run", [], 0),
            ("10 % new", ids[:: 10], 150),
        ):  # fmt: skip
            counters(which, value)
            before = len(fake.meter_events)
            t0 = time.perf_counter()
            run = usage.report_usage(database, r, billing, now=now)
            seconds = time.perf_counter() - t0
            assert not run.failed, run.failed
            sent = len(fake.meter_events) - before
            assert sent == len(which), (sent, len(which))
            rows.append((row, args.tenants, sent, seconds))
        print("| run | tenants | meter events | seconds | ms per tenant |")
        print("|---|---|---|---|---|")
        for row, tenants, sent, seconds in rows:
            print(f"| {row} | {tenants} | {sent} | {seconds:.2f} | {seconds * 1000 / tenants:.2f} |")
        pipe = r.pipeline(transaction=False)
        for t in ids:
            pipe.delete(usage.usage_key(t, label))
        pipe.execute()
        engine.dispose()
    finally:
        fake.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
