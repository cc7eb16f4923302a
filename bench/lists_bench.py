"""List pages at 1,000, 100,000 and 1,000,000 contacts in one tenant, beside the one-row floor.
Loopback only, bounded runs.

    BENCH_DB_NAME=saas_bench_lists REDIS_URL=redis://127.0.0.1:6379/5 \\
        .venv/bin/python bench/lists_bench.py [--rounds 3] [--duration 10] [--before DIR]

Setup: a fresh database, three tenants made through the app (signup), their contacts
bulk-loaded by one ``INSERT ... SELECT generate_series`` each (the contacts indexes dropped
for the load and rebuilt from their own definitions, then ``VACUUM ANALYZE``: a tenant in
steady state), about a minute for the 1.1 million rows on 2 cores.

Measured, side by side: one gunicorn for the app (``bench.limits_wsgi:app``, 2 sync workers,
``infra/gunicorn.conf.py``, request log at INFO to /dev/null) and one for floor 2 (bare Flask,
one pooled primary-key SELECT: ``bench.limits_floors:pk_app``), both up for the whole run; ``wrk``
(one thread, 32 connections) runs each row for ``--duration`` seconds after a 2 s warm-up.
The rows of a round are interleaved (the order rotates from round to round, so no row is always
first or last) and each row's figures are the median of its rounds. Rows:

* floor 2;
* ``GET /api/v1/contacts?page_size=20``: the first page, an offset page with its total in
  ``X-Pagination`` (counted up to ``saas.pagination.COUNT_CAP`` rows past the page), at each size;
* ``GET /api/v1/contacts?page_size=20&cursor=<the middle of the tenant>``: a deep cursor page
  (position N/2 in the default order, newest first), at each size;
* with ``--before DIR`` (a checkout of an older commit, e.g. ``git archive <sha> | tar -x -C
  DIR``): that commit's app serving the first page at 1k in the same rounds, and at 100k and
  1M once after them with ``--slow-connections`` (4) connections (its requests take seconds
  there; at 32 connections the queue alone would set the latency).

Before each row the script waits until no statement of the database is running, so a slow
row's queued requests do not run into the next row.

Each row: req/s, p50, p99, and CPU per request of the app's workers and of the database's
PostgreSQL backends (``/proc``), steadier than req/s on a shared machine. Then the page
statements alone (through SQLAlchemy, 200 runs each, median), including ``count=exact``.

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust), Redis (``REDIS_URL``, flushed) and
``wrk`` (Debian package). Creates and drops the database ``BENCH_DB_NAME``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.limits_bench import PASSWORD, Server, _cpu_seconds, _to_ms, fresh_app, service_env  # noqa: E402

PG_SERVER = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
DB_NAME = os.environ.get("BENCH_DB_NAME", "saas_bench_lists")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/5")
SIZES = {"1k": 1_000, "100k": 100_000, "1M": 1_000_000}
PAGE = "/api/v1/contacts?page_size=20"

#: one tenant's contacts, generated in the database: distinct creation times one second apart
#: (the newest is row 1), realistic widths, a tenth without e-mail
_LOAD = """
INSERT INTO "{schema}".contacts
    (id, name, email, phone, company, tags, created_at, updated_at, created_by, version)
SELECT gen_random_uuid(), 'Contact ' || g,
       CASE WHEN g % 10 = 0 THEN NULL ELSE 'contact' || g || '@example.com' END,
       '+1 555 ' || lpad((g % 10000)::text, 4, '0'), 'Company ' || (g % 997), ARRAY['a', 'b'],
       now() - g * interval '1 second', now() - g * interval '1 second', NULL, 1
FROM generate_series(1, :n) AS g
"""


def _admin():
    from sqlalchemy import create_engine

    url = PG_SERVER.replace("postgresql://", "postgresql+psycopg://") + "/postgres"
    return create_engine(url, isolation_level="AUTOCOMMIT")


def setup(env: dict[str, str]) -> dict:
    """Database, one tenant per size (signup through the app), contacts bulk-loaded."""
    import redis
    from sqlalchemy import text

    app, engine = fresh_app(env, PG_SERVER, DB_NAME)
    client = app.test_client()
    tenants: dict[str, dict] = {}
    for label in SIZES:
        slug = f"lists-{label.lower()}"
        r = client.post("/api/v1/signup", json={"tenant": {"name": slug, "slug": slug},
                        "owner": {"email": f"owner@{slug}.test", "password": PASSWORD}})  # fmt: skip
        assert r.status_code == 201, r.get_json()
        body = r.get_json()
        tenants[label] = {"token": body["token"]["access_token"], "id": body["tenant"]["id"], "slug": slug}
    started = time.monotonic()
    with engine.begin() as conn:
        for label, tenant in tenants.items():
            conn.execute(
                text("UPDATE saas.tenants SET plan = 'bench' WHERE slug = :s"), {"s": tenant["slug"]}
            )
            schema = conn.execute(
                text("SELECT schema_name FROM saas.tenants WHERE slug = :s"), {"s": tenant["slug"]}
            ).scalar_one()
            tenant["schema"] = schema
            indexes = conn.execute(
                text(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = :s AND tablename = "
                    "'contacts' AND indexname NOT LIKE 'pk_%'"
                ),
                {"s": schema},
            ).all()
            for name, _ in indexes:
                conn.execute(text(f'DROP INDEX "{schema}"."{name}"'))
            conn.execute(text(_LOAD.format(schema=schema)), {"n": SIZES[label]})
            for _, definition in indexes:
                conn.execute(text(definition))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for tenant in tenants.values():
            conn.execute(text(f'VACUUM ANALYZE "{tenant["schema"]}".contacts'))
    print(f"loaded {sum(SIZES.values()):,} contacts in {time.monotonic() - started:.0f} s", flush=True)
    _middle_cursors(app, engine, tenants)
    engine.dispose()
    redis.Redis.from_url(REDIS_URL).flushdb()  # fresh limits; cache refilled from the new plans
    return tenants


def _middle_cursors(app, engine, tenants: dict) -> None:
    """Each tenant's cursor at its middle row in the default order: the cursor a client would
    hold after walking half the list (made by the listing itself, for that tenant)."""
    from flask import g
    from sqlalchemy import text

    from tenants.contacts import CONTACTS

    with engine.connect() as conn:
        for label, tenant in tenants.items():
            row = conn.execute(
                text(
                    f'SELECT created_at, id FROM "{tenant["schema"]}".contacts '  # noqa: S608 - ours
                    "ORDER BY created_at DESC, id DESC OFFSET :n LIMIT 1"
                ),
                {"n": SIZES[label] // 2},
            ).one()
            with app.test_request_context("/"):
                g.db_tenant_schema = tenant["schema"]
                tenant["middle"] = CONTACTS.cursor_at(CONTACTS.default_sort, dict(row._mapping))
            pk = conn.execute(text(f'SELECT id FROM "{tenant["schema"]}".contacts LIMIT 1')).scalar_one()  # noqa: S608
            tenant["pk"] = str(pk)  # the floor's row


def _backends() -> list[int]:
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (DB_NAME,)).fetchall()
    return [r[0] for r in rows]


def wrk(url: str, connections: int, duration: float, token: str | None, timeout: int = 30) -> dict:
    """wrk (one thread) with a ``timeout`` long enough that a slow row's requests are measured,
    not dropped as timeouts (wrk's default is 2 s): req/s, p50, p99, totals."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(f'wrk.headers["Authorization"] = "Bearer {token}"\n' if token else "")
        script = fh.name
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{round(duration)}s", f"--timeout={timeout}s", "--latency",
             "-s", script, url],
            capture_output=True, text=True, timeout=duration + timeout + 30, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script)
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        "p50": _to_ms(latency["50"]) if latency else float("nan"),
        "p99": _to_ms(latency["99"]) if latency else float("nan"),
        "total": int(re.search(r"(\d+) requests in", out)[1]),
        "non2xx": int(non2xx[1]) if non2xx else 0,
        "socket_errors": errors[1] if errors else "",
    }


def quiesce(limit: float = 120) -> None:
    """Wait until no statement of the benchmark database is running: a slow row's requests
    still queued in a server must not run into the next row's measurement."""
    import psycopg

    deadline = time.monotonic() + limit
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        while time.monotonic() < deadline:
            busy = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'active'", (DB_NAME,)
            ).fetchone()[0]
            if not busy:
                return
            time.sleep(0.2)


def measure(server: Server, path: str, connections: int, duration: float, token: str | None) -> dict:
    """wrk on ``path``, plus CPU per request (ms) of ``server``'s workers and the backends."""
    workers, backends = server.workers(), _backends()
    before = _cpu_seconds(workers) | _cpu_seconds(backends)
    result = wrk(server.url(path), connections, duration, token)
    backends = sorted(set(backends) | set(_backends()))
    after_w, after_b = _cpu_seconds(workers), _cpu_seconds(backends)
    n = max(result["total"], 1)
    result["worker_ms"] = 1000 * sum(t - before.get(p, 0.0) for p, t in after_w.items()) / n
    result["pg_ms"] = 1000 * sum(t - before.get(p, 0.0) for p, t in after_b.items()) / n
    return result


def statements(env: dict[str, str], tenants: dict, runs: int = 200) -> None:
    """The page statements alone, as the app sends them (SQLAlchemy, the tenant's schema map,
    no prepared statements): median of ``runs``."""
    from sqlalchemy import create_engine

    from saas.db import connect_args, translate_map
    from tenants.contacts import CONTACTS

    engine = create_engine(
        env["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://"), connect_args=connect_args()
    )
    sort = CONTACTS.default_sort
    offset, exact, keyset = (CONTACTS._statement(kind, sort, (), v) for kind, v in
                             (("offset", False), ("offset", True), ("keyset", "value")))  # fmt: skip

    def page(first: int) -> dict:
        return {"page_first": first, "page_size": 20, "page_window": first + 20 + CONTACTS.count_cap}

    cases = {
        "first page, total counted to the cap": (offset, page(0)),
        "first page, count=exact": (exact, page(0)),
        "cursor page at N/2": (keyset, None),
        "offset page 50 (offset 980)": (offset, page(980)),
    }
    print(f"\nstatements alone (ms, median of {runs}; {time.strftime('%H:%M UTC', time.gmtime())})")
    print("| statement | " + " | ".join(SIZES) + " |\n|---|" + "---:|" * len(SIZES))
    results: dict[str, list[str]] = {name: [] for name in cases}
    for label, tenant in tenants.items():
        with engine.connect().execution_options(schema_translate_map=translate_map(tenant["schema"])) as conn:
            for name, (statement, params) in cases.items():
                if params is None:
                    row = conn.execute(
                        CONTACTS._statement("offset", sort, (), True),
                        {"page_first": SIZES[label] // 2, "page_size": 1, "page_window": 0},
                    ).one()
                    params = {
                        "page_size": 21,
                        "after_value": row._mapping["created_at"],
                        "after_tie": row._mapping["id"],
                    }
                slow = "exact" in name and SIZES[label] >= 100_000
                for _ in range(2 if slow else 20):
                    conn.execute(statement, params).all()
                times = []
                for _ in range(5 if slow else runs):
                    t = time.perf_counter()
                    conn.execute(statement, params).all()
                    times.append(time.perf_counter() - t)
                results[name].append(f"{1000 * statistics.median(times):.2f}")
                conn.rollback()
    for name, cells in results.items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--before", type=Path, help="a checkout of an older commit, measured in the same rounds"
    )
    parser.add_argument("--no-statements", action="store_true")
    parser.add_argument(
        "--slow-connections",
        type=int,
        default=4,
        help="connections of the --before rows at 100k and 1M (once)",
    )
    args = parser.parse_args()
    keydir = tempfile.mkdtemp(prefix="bench-keys-")
    env = {
        **os.environ,
        **service_env(f"{PG_SERVER}/{DB_NAME}", REDIS_URL, keydir),
    }
    tenants = setup(env)
    env["BENCH_PK_SCHEMA"] = tenants["1k"]["schema"]
    env["BENCH_PK_ID"] = tenants["1k"]["pk"]
    servers = {
        "app": Server("bench.limits_wsgi:app", env),
        "floor": Server("bench.limits_floors:pk_app", env),
    }
    if args.before:
        servers["before"] = Server("bench.limits_wsgi:app", env, args.before)
    rows: list[tuple[str, str, str, str | None]] = [
        ("floor 2: bare Flask + pooled PK SELECT", "floor", "/floor", None)
    ]
    for label, tenant in tenants.items():
        rows.append((f"first page, {label} contacts", "app", PAGE, tenant["token"]))
    for label, tenant in tenants.items():
        rows.append(
            (
                f"cursor page at N/2, {label} contacts",
                "app",
                f"{PAGE}&cursor={tenant['middle']}",
                tenant["token"],
            )
        )
    slow: list[tuple[str, str, str, str | None]] = []
    if args.before:
        rows.append(("before: first page, 1k contacts", "before", PAGE, tenants["1k"]["token"]))
        for label in ("100k", "1M"):  # seconds per request: apart, once, few connections
            slow.append((f"before: first page, {label} contacts", "before", PAGE, tenants[label]["token"]))
    results: dict[str, list[dict]] = {name: [] for name, *_ in rows + slow}
    c, d = args.connections, args.duration

    def run(name: str, server: str, path: str, token: str | None, connections: int) -> None:
        quiesce()
        wrk(servers[server].url(path), connections, 2, token)  # warm-up
        quiesce()
        result = measure(servers[server], path, connections, d, token)
        if result["non2xx"] or result["socket_errors"]:
            print(f"  {name}: {result['non2xx']} non-2xx, socket errors {result['socket_errors']!r}")
        results[name].append(result)

    try:
        for round_ in range(args.rounds):
            order = rows[round_ % len(rows) :] + rows[: round_ % len(rows)]
            for name, server, path, token in order:
                run(name, server, path, token, c)
            print(f"round {round_ + 1} done, load average {os.getloadavg()[0]:.2f}", flush=True)
        for name, server, path, token in slow:
            run(name, server, path, token, args.slow_connections)
    finally:
        for server in servers.values():
            server.stop()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\n{when}: {args.rounds} rounds, medians; {c} connections, 2 sync workers, {d:.0f} s per row")
    if slow:
        print(
            f"(the --before rows at 100k and 1M: once, after the rounds, {args.slow_connections} connections)"
        )
    floor = statistics.median(r["rps"] for r in results[rows[0][0]])
    print("| row | req/s | p50 ms | p99 ms | vs floor 2 | worker CPU ms/req | PG CPU ms/req |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    medians = {}
    for name, runs in results.items():
        m = {
            key: statistics.median(r[key] for r in runs)
            for key in ("rps", "p50", "p99", "worker_ms", "pg_ms")
        }
        medians[name] = m
        print(
            f"| {name} | {m['rps']:,.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['rps'] / floor:.2f} "
            f"| {m['worker_ms']:.2f} | {m['pg_ms']:.2f} |"
        )
    for kind in ("first page", "cursor page at N/2"):
        small, large = medians[f"{kind}, 1k contacts"], medians[f"{kind}, 1M contacts"]
        print(f"{kind}: p50 at 1M / p50 at 1k = {large['p50'] / small['p50']:.2f}")
    print(f"first page at 1k: req/s / floor 2 = {medians['first page, 1k contacts']['rps'] / floor:.2f}")
    if not args.no_statements:
        statements(env, tenants)
    admin = _admin()
    from sqlalchemy import text

    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
    admin.dispose()


if __name__ == "__main__":
    main()
