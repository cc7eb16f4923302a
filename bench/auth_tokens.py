"""Benchmark: tokens issued per second at ``POST /oauth/token`` (refresh grant) and the cost of
verifying an access token per request.

Starts gunicorn (``infra/gunicorn.conf.py``) on a fresh database, signs a user up, opens one
refresh-token family per client thread (each thread rotates its own family, as real clients do),
then hammers the refresh grant for ``--seconds``. The verification cost is measured in-process
on :meth:`saas.auth.tokens.TokenService.verify` (RS256 and ES256).

    .venv/bin/python bench/auth_tokens.py --workers 2 --threads 4 --seconds 10

Needs PostgreSQL (``--pg``, default the local server) and Redis (``REDIS_URL``).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from saas.auth.keys import KeyStore  # noqa: E402
from saas.auth.tokens import TokenService  # noqa: E402
from saas.migrate import upgrade_shared  # noqa: E402

PASSWORD = "correct horse battery staple"  # noqa: S105 - a benchmark account


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def verify_cost(alg: str, n: int = 3000) -> float:
    """Microseconds per :meth:`TokenService.verify` call."""
    with tempfile.TemporaryDirectory() as tmp:
        service = TokenService(KeyStore(Path(tmp), alg), "http://bench", "saas-api", 600)
        token = service.issue(
            subject=str(uuid.uuid4()),
            tenant_id=str(uuid.uuid4()),
            roles=["member"],
            scope="api",
            client_id="c",
        ).token
        for _ in range(200):
            service.verify(token)
        start = time.perf_counter()
        for _ in range(n):
            service.verify(token)
        return (time.perf_counter() - start) / n * 1e6


def run_refresh_load(base: str, threads: int, seconds: float) -> dict:
    slug = f"bench-{uuid.uuid4().hex[:8]}"
    email = f"owner@{slug}.test"
    r = requests.post(
        f"{base}/api/v1/signup",
        json={"tenant": {"name": "Bench", "slug": slug}, "owner": {"email": email, "password": PASSWORD}},
        timeout=30,
    )
    r.raise_for_status()
    families = []
    for _ in range(threads):
        login = requests.post(
            f"{base}/api/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=30
        )
        login.raise_for_status()
        families.append(login.json()["refresh_token"])
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    deadline = time.perf_counter() + seconds

    def worker(i: int) -> None:
        session = requests.Session()
        token = families[i]
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            resp = session.post(
                f"{base}/oauth/token",
                data={"grant_type": "refresh_token", "refresh_token": token},
                timeout=30,
            )
            latencies[i].append(time.perf_counter() - start)
            if resp.status_code != 200:
                errors[i] += 1
                break
            token = resp.json()["refresh_token"]

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    flat = sorted(x for per in latencies for x in per)
    ok = len(flat) - sum(errors)
    return {
        "requests": len(flat),
        "errors": sum(errors),
        "tokens_per_second": ok / elapsed,
        "p50_ms": statistics.median(flat) * 1000,
        "p99_ms": flat[int(len(flat) * 0.99) - 1] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="client threads (one refresh family each)")
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()

    print("verify cost (in-process, per request):")
    for alg in ("RS256", "ES256"):
        print(f"  {alg}: {verify_cost(alg):.0f} µs")

    name = f"bench_auth_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.pg.rsplit("/", 1)[0] + f"/{name}"
    engine = create_engine(url)
    upgrade_shared(engine)
    engine.dispose()
    port = free_port()
    var = tempfile.mkdtemp(prefix="bench-auth-")
    env = {
        **os.environ,
        "DATABASE_URL": url.replace("postgresql+psycopg://", "postgresql://"),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/3"),
        "SECRET_KEY": "bench",
        "SAAS_VAR_DIR": var,
        "SAAS_ISSUER": f"http://127.0.0.1:{port}",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": str(args.workers),
        "LOG_LEVEL": "WARNING",
    }
    # generate the signing key once, before the workers start
    KeyStore(Path(var) / "keys")
    server = subprocess.Popen(
        [str(ROOT / ".venv/bin/gunicorn"), "-c", str(ROOT / "infra/gunicorn.conf.py"), "wsgi:app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if requests.get(f"{base}/.well-known/jwks.json", timeout=5).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        result = run_refresh_load(base, args.threads, args.seconds)
        print(
            f"refresh grant, gunicorn {args.workers} sync workers, {args.threads} client threads, "
            f"{args.seconds:.0f} s: {result['tokens_per_second']:.0f} tokens/s "
            f"(p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
            f"{result['requests']} requests, {result['errors']} errors)"
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
