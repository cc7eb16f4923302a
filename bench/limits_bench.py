"""Hot-path benchmark of limits + cache (issue 5). Loopback only, bounded runs.

    .venv/bin/python bench/limits_bench.py [--duration 10] [--connections 32]

Runs, in one go, each under gunicorn (2 sync workers, ``infra/gunicorn.conf.py``) and measured
by ``wrk`` from a separate process on 127.0.0.1:

1. floor 1: bare Flask JSON endpoint;
2. floor 2: bare Flask with one pooled primary-key SELECT;
3. the app: authenticated ``GET /api/v1/contacts?page_size=20`` (20 rows) with all middleware
   on (JWT, cache, one Lua call for rate limits and quota, headers, unit of work); with
   ``--before DIR`` (a checkout of an older commit) that commit's app too, in the same run;
   with ``--api-key`` the same request with an API key of the same owner as the bearer (one
   cached lookup instead of the JWT's verification; the two rows swap places every other
   round); then floor 2 again, to show drift.
   ``--rounds N`` repeats these rows. Each row reports
   req/s, p50/p99, and the CPU per request of the gunicorn workers and of the database's
   PostgreSQL backends (``/proc``), steadier than req/s on a shared machine;
4. accuracy: 64 connections on a tenant with 600 requests/minute; admitted requests (the
   tenant's usage counter) against what GCRA allows in the measured time;
5. noisy neighbour: tenant B paced (~200 req/s) alone, then while tenant A (at its limit of
   600/min = 10/s) sends ~100 req/s, 10x its limit.

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and Redis (``REDIS_URL``, default
``redis://127.0.0.1:6379/5``, flushed). Creates and drops the database ``saas_bench_limits``.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_SERVER = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
DB_NAME = os.environ.get("BENCH_DB_NAME", "saas_bench_limits")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/5")
PASSWORD = "correct horse battery staple"  # noqa: S105 - a benchmark account


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def _to_ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        raise ValueError(value)
    n, unit = float(m[1]), m[2]
    return {"us": n / 1000, "ms": n, "s": n * 1000, "m": n * 60000}[unit]


def wrk(url: str, connections: int, duration: float, token: str | None = None, delay_ms: int = 0) -> dict:
    """Run wrk (one thread) and parse requests/s, p50, p99, total and non-2xx counts."""
    script = ""
    if token:
        script += f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    if delay_ms:
        script += f"function delay() return {delay_ms} end\n"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
        path = fh.name
    try:
        started = time.time()
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{round(duration)}s", "--latency", "-s", path, url],
            capture_output=True,
            text=True,
            timeout=duration + 30,
            check=True,
        ).stdout
        ended = time.time()
    finally:
        os.unlink(path)
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    total = int(re.search(r"(\d+) requests in", out)[1])
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        "p50": _to_ms(lat["50"]),
        "p99": _to_ms(lat["99"]),
        "total": total,
        "non2xx": int(non2xx[1]) if non2xx else 0,
        "socket_errors": errors[1] if errors else "",
        "started": started,
        "ended": ended,
    }


class Server:
    def __init__(self, target: str, env: dict[str, str], cwd: Path = ROOT):
        """gunicorn serving ``target`` from ``cwd`` (a checkout: its ``saas`` package is imported
        before the installed one, so ``--before`` can serve an older commit)."""
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "infra/gunicorn.conf.py", "-w", "2",
             "-b", f"127.0.0.1:{self.port}", target],
            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_port(self.port)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def workers(self) -> list[int]:
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as fh:
            return [int(p) for p in fh.read().split()]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    """user + system CPU seconds of each live process (``/proc/<pid>/stat`` fields 14 and 15)."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _backends() -> list[int]:
    """PostgreSQL backends connected to the benchmark database (the servers' pools)."""
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (DB_NAME,)).fetchall()
    return [r[0] for r in rows]


def measure(server: Server, url: str, connections: int, duration: float, token: str | None) -> dict:
    """:func:`wrk`, plus the CPU per request the gunicorn workers and the database's backends
    spent (ms): less sensitive to a noisy machine than requests per second."""
    workers, backends = server.workers(), _backends()
    before = _cpu_seconds(workers) | _cpu_seconds(backends)
    result = wrk(url, connections, duration, token)
    backends = sorted(set(backends) | set(_backends()))
    after_w, after_b = _cpu_seconds(workers), _cpu_seconds(backends)
    n = max(result["total"], 1)
    result["worker_ms"] = 1000 * sum(t - before.get(p, 0.0) for p, t in after_w.items()) / n
    result["pg_ms"] = 1000 * sum(t - before.get(p, 0.0) for p, t in after_b.items()) / n
    return result


def fresh_app(env: dict[str, str], pg_server: str, db_name: str) -> tuple[Any, Any]:
    """A new database ``db_name`` on ``pg_server`` (dropped first), a signing key in
    ``SAAS_SIGNING_KEY_PATH``, the shared track applied, and the app of ``env``: (app, engine)."""
    from sqlalchemy import create_engine, text

    from saas import create_app
    from saas.auth.keys import KeyStore
    from saas.migrate import upgrade_shared
    from saas.settings import Settings

    admin = create_engine(pg_server.replace("postgresql://", "postgresql+psycopg://") + "/postgres",
                          isolation_level="AUTOCOMMIT")  # fmt: skip
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    admin.dispose()
    KeyStore(Path(env["SAAS_SIGNING_KEY_PATH"]), generate=True)
    engine = create_engine(env["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://"))
    upgrade_shared(engine)
    return create_app(Settings.from_env(env)), engine


def setup(env: dict[str, str]) -> dict:
    """Database, tenants, 20 contacts, tokens (through the app itself)."""
    import redis
    from sqlalchemy import text

    app, engine = fresh_app(env, PG_SERVER, DB_NAME)
    client = app.test_client()
    out = {}
    for slug in ("bench-a", "bench-b", "bench-n", "bench-acc"):
        r = client.post("/api/v1/signup", json={"tenant": {"name": slug, "slug": slug},
                        "owner": {"email": f"owner@{slug}.test", "password": PASSWORD}})  # fmt: skip
        assert r.status_code == 201, r.get_json()
        body = r.get_json()
        out[slug] = {
            "token": body["token"]["access_token"],
            "id": body["tenant"]["id"],
            "user": body["user"]["id"],
        }
        if slug == "bench-a":  # an API key of the same owner, for the API-key rows (``--api-key``)
            out[slug]["api_key"] = _api_key(client, engine, body)
        if slug in ("bench-a", "bench-b"):
            h = {"Authorization": "Bearer " + out[slug]["token"]}
            for i in range(20):
                contact = {
                    "name": f"Contact {i}",
                    "email": f"c{i}@example.com",
                    "company": "Example",
                    "tags": ["a"],
                }
                c = client.post("/api/v1/contacts", headers=h, json=contact)
                assert c.status_code == 201, c.get_json()
                out[slug]["contact"] = c.get_json()["id"]
    with engine.begin() as conn:
        plans = {"bench-a": "bench", "bench-b": "bench", "bench-n": "pro", "bench-acc": "pro"}
        for slug, plan in plans.items():
            conn.execute(text("UPDATE saas.tenants SET plan = :p WHERE slug = :s"), {"p": plan, "s": slug})
        schema_sql = text("SELECT schema_name FROM saas.tenants WHERE slug = 'bench-a'")
        out["schema_a"] = conn.execute(schema_sql).scalar()
    engine.dispose()
    redis.Redis.from_url(REDIS_URL).flushdb()  # fresh limits; cache refilled from the new plans
    return out


def _api_key(client: Any, engine: Any, signup: dict) -> str:
    """An API key of the signed-up owner holding ``contacts:read`` (the email verified straight
    in the database, the signup's fresh token as the step-up)."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("UPDATE saas.users SET email_verified_at = now() WHERE id = :u"),
                     {"u": signup["user"]["id"]})  # fmt: skip
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    r = client.post(
        "/api/v1/api-keys",
        json={"name": "bench", "permissions": ["contacts:read"], "expires_at": expires},
        headers={"Authorization": "Bearer " + signup["token"]["access_token"]},
    )
    assert r.status_code == 201, r.get_json()
    return r.get_json()["key"]


def service_env(database_url: str, redis_url: str, keydir: str) -> dict[str, str]:
    """The environment of the app under benchmark: production settings, a throwaway signing key
    directory, long-lived tokens, the principal's full share of the tenant's rate, 2 gunicorn
    sync workers never recycled, the request log at ``BENCH_LOG_LEVEL`` (default ``INFO``)."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": "bench-secret",
        "SAAS_ENV": "production",
        "SAAS_SIGNING_KEY_PATH": keydir,
        "ACCESS_TOKEN_TTL": "7200",
        "RATELIMIT_PRINCIPAL_SHARE": "1.0",
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),
        "GUNICORN_MAX_REQUESTS": "0",
        "GUNICORN_WORKERS": "2",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--accuracy-duration", type=float, default=20)
    parser.add_argument("--only", choices=["throughput", "accuracy", "noisy"], action="append")
    parser.add_argument("--rounds", type=int, default=1, help="throughput rows, this many times over")
    parser.add_argument(
        "--before",
        type=Path,
        help="a checkout of an older commit (e.g. `git archive <sha> | tar -x -C DIR`): its app is "
        "measured in the same run, next to this tree's",
    )
    parser.add_argument(
        "--api-key",
        action="store_true",
        help="add the app's row with the same owner's API key as the bearer, next to the JWT row",
    )
    args = parser.parse_args()
    only = set(args.only or ["throughput", "accuracy", "noisy"])
    keydir = tempfile.mkdtemp(prefix="bench-keys-")
    env = {
        **os.environ,
        **service_env(f"{PG_SERVER}/{DB_NAME}", REDIS_URL, keydir),
    }
    data = setup(env)
    env["BENCH_PK_SCHEMA"] = data["schema_a"]
    env["BENCH_PK_ID"] = data["bench-a"]["contact"]
    d, c = args.duration, args.connections
    if "throughput" in only:
        app_path, token_a = "/api/v1/contacts?page_size=20", data["bench-a"]["token"]
        rows = [
            ("floor 1: bare Flask JSON", "bench.limits_floors:json_app", "/floor", None, ROOT),
            ("floor 2: bare Flask + pooled PK SELECT", "bench.limits_floors:pk_app", "/floor", None, ROOT),
        ]
        if args.before:
            rows.append(("app before (--before)", "bench.limits_wsgi:app", app_path, token_a, args.before))
        rows.append(("app: GET /api/v1/contacts (20 rows)", "bench.limits_wsgi:app", app_path, token_a, ROOT))
        if args.api_key:
            key_a = data["bench-a"]["api_key"]
            api_row = ("app, API key bearer (same request)", "bench.limits_wsgi:app", app_path, key_a, ROOT)
            rows.append(api_row)
        rows.append(("floor 2 again (drift check)", "bench.limits_floors:pk_app", "/floor", None, ROOT))
        for round_ in range(1, args.rounds + 1):
            results = {}
            ordered = list(rows)
            if args.api_key and round_ % 2 == 0:  # every other round the API-key row goes first
                i = next(n for n, row in enumerate(ordered) if row[0].startswith("app: GET"))
                ordered[i], ordered[i + 1] = ordered[i + 1], ordered[i]
            for name, target, path, token, cwd in ordered:
                server = Server(target, env, cwd)
                try:
                    wrk(server.url(path), c, 3, token)  # warm-up
                    results[name] = measure(server, server.url(path), c, d, token)
                finally:
                    server.stop()
            floor2 = results["floor 2: bare Flask + pooled PK SELECT"]["rps"]
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            print(f"\nround {round_}: {when}, load average {os.getloadavg()[0]:.2f} (1 min) after it")
            head = f"{c} connections, 2 sync workers, {d:.0f} s"
            cols = "req/s | p50 ms | p99 ms | non-2xx | vs floor 2 | worker CPU ms/req | PG CPU ms/req"
            print(f"| {head} | {cols} |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|")
            for name, r in results.items():
                ratio = r["rps"] / floor2
                row = f"{r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['non2xx']} | {ratio:.2f}"
                row += f" | {r['worker_ms']:.2f} | {r['pg_ms']:.2f}"
                print(f"| {name} | {row} |", flush=True)
    if "accuracy" in only or "noisy" in only:
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        server = Server("bench.limits_wsgi:app", env)
        try:
            if "accuracy" in only:
                acc = data["bench-acc"]
                month = time.strftime("%Y-%m", time.gmtime())
                key = f"{{t:{acc['id']}}}:usage:{month}"
                url = server.url("/api/v1/contacts?page_size=20")
                seen: list[tuple[float, int]] = []
                stop = threading.Event()

                def poll() -> None:  # the server-side window: first and last admitted request
                    while not stop.is_set():
                        value = int(r.get(key) or 0)
                        if not seen or value != seen[-1][1]:
                            seen.append((time.time(), value))
                        time.sleep(0.01)

                poller = threading.Thread(target=poll)
                poller.start()
                res = wrk(url, 64, args.accuracy_duration, acc["token"])
                stop.set()
                poller.join()
                admitted = int(r.get(key) or 0)
                if admitted != seen[-1][1]:  # admitted after the last poll: counted as of now
                    seen.append((time.time(), admitted))
                first = next(t for t, v in seen if v > 0)
                last = seen[-1][0]
                elapsed = last - first
                limit, per_second = 600, 600 / 60
                expected = limit + elapsed * per_second
                deviation = 100 * (admitted - expected) / expected
                print(
                    f"\naccuracy: 64 connections, {elapsed:.2f} s between the first and the last "
                    f"admitted request, {res['total']} requests, "
                    f"{res['total'] - res['non2xx']} 2xx; admitted (usage counter) {admitted}; "
                    f"GCRA allows {expected:.0f} ({limit} burst + {per_second:.0f}/s); "
                    f"deviation {deviation:+.2f}%"
                )
            if "noisy" in only:
                url = server.url("/api/v1/contacts?page_size=20")
                b = data["bench-b"]["token"]
                wrk(url, 8, 3, b, delay_ms=40)  # warm-up
                alone = wrk(url, 8, d, b, delay_ms=40)
                _exhaust(r, data["bench-n"], 600)  # A starts at its limit: the flood is all excess
                noisy = subprocess.Popen(
                    [sys.executable, __file__, "--_noisy", url, data["bench-n"]["token"], str(d + 2)],
                    stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                time.sleep(1)
                with_a = wrk(url, 8, d, b, delay_ms=40)
                a_out = noisy.communicate(timeout=d + 60)[0].strip()
                again = wrk(url, 8, d, b, delay_ms=40)
                print(
                    f"\nnoisy neighbour: tenant B paced, 8 connections x 40 ms; A (pro, 10/s) sends {a_out}"
                )
                print("| tenant B | req/s | p50 ms | p99 ms | non-2xx |\n|---|---:|---:|---:|---:|")
                for label, res in (("alone", alone), ("while A floods", with_a), ("alone again", again)):
                    row = f"{res['rps']:.0f} | {res['p50']:.2f} | {res['p99']:.2f} | {res['non2xx']}"
                    print(f"| {label} | {row} |")
        finally:
            server.stop()
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_SERVER.replace("postgresql://", "postgresql+psycopg://") + "/postgres",
                          isolation_level="AUTOCOMMIT")  # fmt: skip
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
    admin.dispose()


def _exhaust(client, tenant: dict, limit: int) -> None:
    """Use a tenant's whole per-minute allowance (tenant and user policies) through the script."""
    import uuid

    from saas.cache.namespace import TenantKeys
    from saas.limits.gcra import Check, run

    keys = TenantKeys(uuid.UUID(tenant["id"]))
    checks = [
        Check("tenant", keys.rate("tenant"), limit, 60),
        Check("user", keys.rate("user", uuid.UUID(tenant["user"]).hex), limit, 60),
    ]
    for _ in range(limit):
        run(client, checks, None)


def _noisy(url: str, token: str, duration: float) -> None:
    """Tenant A: 4 connections paced at 40 ms ~ 100 req/s = 10x its 10 req/s."""
    res = wrk(url, 4, duration, token, delay_ms=40)
    print(f"{res['rps']:.0f} req/s ({res['total']} requests, {res['total'] - res['non2xx']} admitted, "
          f"{res['non2xx']} refused with 429)")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_noisy":
        _noisy(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        main()
