"""Benchmark: Stripe webhook events applied per second and the time to answer one (p50/p99).

Runs the real app in-process (Flask test client: no HTTP server or gunicorn in the path) on a
throw-away PostgreSQL database and the Redis at ``REDIS_URL``, with the real ``stripe`` SDK
talking to the local Stripe-shaped server of the tests (each applied event re-fetches its
subscription over loopback HTTP, as in production it would from Stripe).

    REDIS_URL=redis://127.0.0.1:6379/4 .venv/bin/python bench/webhooks.py [--events 600] [--threads 1,4]

Prints one Markdown table (append it to docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
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
from saas.settings import Settings  # noqa: E402
from tests.stripe_fake import FakeStripe, sign  # noqa: E402

SECRET = "whsec_bench_0123456789"  # noqa: S105 - a local test secret
PRICES = {"price_pro_month": {"interval": "month"}, "price_ent_month": {"interval": "month"}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def deliver_all(app, batch: list[dict], threads: int, expected: str) -> tuple[float, list[float]]:
    """Deliver ``batch`` from ``threads`` threads; returns (events per second, latencies in s)."""
    latencies: list[float] = []
    lock = threading.Lock()
    queue = list(batch)

    def worker() -> None:
        c = app.test_client()
        while True:
            with lock:
                if not queue:
                    return
                ev = queue.pop(0)
            payload = json.dumps(ev)
            t0 = time.perf_counter()
            resp = c.post("/webhooks/stripe", data=payload, content_type="application/json",
                          headers={"Stripe-Signature": sign(payload, SECRET)})  # fmt: skip
            dt = time.perf_counter() - t0
            assert resp.status_code == 200 and resp.get_json()["status"] == expected, resp.get_json()
            with lock:
                latencies.append(dt)

    start = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return len(batch) / (time.perf_counter() - start), latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=600)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--threads", default="1,4")
    args = parser.parse_args()

    server = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    name = f"saas_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    fake = FakeStripe(PRICES)
    base = fake.start()
    try:
        engine = create_engine(url, pool_size=10, max_overflow=10)
        upgrade_shared(engine)
        import redis

        r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/4"))
        prices = {"STRIPE_PRICE_PRO": "price_pro_month", "STRIPE_PRICE_ENTERPRISE": "price_ent_month"}
        settings = Settings(
            env="test", database_url=url, secret_key="bench", var_dir=Path("/tmp/saas-bench-var"),  # noqa: S106
            argon2_memory_kib=8192, argon2_time_cost=1, stripe_secret_key="sk_test_bench",  # noqa: S106
            stripe_webhook_secrets=(SECRET,), stripe_api_base=base, stripe_prices=prices,
        )  # fmt: skip
        app = create_app(settings, database=Database(engine), redis=r)
        client = app.test_client()
        subs: list[str] = []
        for i in range(args.tenants):
            owner = {"email": f"o@bench-{i}.test", "password": "correct horse battery staple"}
            tenant = {"name": f"Bench {i}", "slug": f"bench-{i}"}
            signup = client.post("/api/v1/signup", json={"tenant": tenant, "owner": owner}).get_json()
            h = {"Authorization": f"Bearer {signup['token']['access_token']}"}
            sid = client.post("/api/v1/billing/checkout", json={"plan": "pro"}, headers=h).get_json()["url"]
            sid = sid.rsplit("/", 1)[1]
            fake.complete_checkout(sid)
            assert client.get(f"/api/v1/billing/checkout/{sid}/sync", headers=h).status_code == 200
            subs.append(fake.sessions[sid]["subscription"])

        rows = []
        for threads in [int(t) for t in args.threads.split(",")]:
            created = int(time.time())
            events = []
            for n in range(args.events):
                sub = subs[n % len(subs)]
                fake.update_subscription(sub, price="price_ent_month" if n % 2 else "price_pro_month")
                events.append(
                    fake.event("customer.subscription.updated", fake.subscriptions[sub], created + n)
                )
            for label, batch in (("applied", events), ("duplicate", events[: len(events) // 2])):
                rate, latencies = deliver_all(
                    app, batch, threads, "processed" if label == "applied" else "duplicate"
                )
                p50, p99 = statistics.median(latencies) * 1000, percentile(latencies, 0.99) * 1000
                rows.append((label, threads, len(batch), rate, p50, p99))
        print("| deliveries | threads | events | events/s | p50 ms | p99 ms |")
        print("|---|---|---|---|---|---|")
        for label, threads, n, rate, p50, p99 in rows:
            print(f"| {label} | {threads} | {n} | {rate:.0f} | {p50:.1f} | {p99:.1f} |")
        engine.dispose()
    finally:
        fake.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
