"""Benchmark of tenant operations at 1,000 and 5,000 tenant schemas (results: docs/benchmarks.md).

    .venv/bin/python bench/tenants_ops.py [--server postgresql://postgres@127.0.0.1:5432/postgres]
                                          [--redis redis://127.0.0.1:6379/6] [--sizes 1000,5000]

Uses a dedicated database (``saas_bench_ops``, created and dropped), temporary copies of the
tenant track with extra revisions (never the real track), and a gunicorn process on a free port.

Measures:
1. provisioning N tenants (``provision_tenant``: row, schema at head, owner, membership, audit;
   owners without a password, so argon2 is not part of it), one transaction each;
2. ``saas tenants migrate`` wall time (a subprocess: interpreter start included) with nothing
   pending, median of 3;
3. one pending revision (nullable column + index on ``contacts``) over every tenant, with
   ``--parallel 1`` and ``--parallel 2``;
4. a gunicorn worker's RSS after one authenticated request to every tenant
   (``GET /api/v1/contacts``), with ``max_requests`` off and with recycling.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DB = "saas_bench_ops"

REVISION = '''
"""bench {rev}: nullable column and index"""

import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("contacts", sa.Column("bench_{rev}", sa.String(50), nullable=True), schema="tenant")
    op.create_index("ix_contacts_bench_{rev}", "contacts", ["bench_{rev}"], schema="tenant")


def downgrade() -> None:
    op.drop_index("ix_contacts_bench_{rev}", "contacts", schema="tenant")
    op.drop_column("contacts", "bench_{rev}", schema="tenant")
'''


def scratch_track(base: Path, revisions: list[str]) -> Path:
    """A copy of the real tenant track plus ``revisions`` chained after its head."""
    from saas.migrate import MIGRATIONS_DIR, tenant_head_revision

    track = base / ("tenant-" + "-".join(revisions))
    shutil.copytree(MIGRATIONS_DIR / "tenant", track, ignore=shutil.ignore_patterns("__pycache__"))
    down = tenant_head_revision()
    for rev in revisions:
        (track / "versions" / f"{rev}_bench.py").write_text(
            textwrap.dedent(REVISION).format(rev=rev, down=down)
        )
        down = rev
    return track


def cli(env: dict[str, str], *args: str) -> tuple[float, dict]:
    start = time.perf_counter()
    out = subprocess.run(
        [str(ROOT / ".venv/bin/saas"), "tenants", "migrate", "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(out.stderr or out.stdout)
    return wall, json.loads(out.stdout)


def provision(app, n: int) -> tuple[float, list[tuple[str, str, str]]]:
    """Provision ``n`` tenants, one transaction each; returns (seconds, [(tenant id, user id, role)])."""
    from saas.services import services
    from saas.tenancy.provisioning import provision_tenant

    database = services(app).database
    passwords = services(app).passwords
    made = []
    start = time.perf_counter()
    with app.app_context():
        for _ in range(n):
            tag = uuid.uuid4().hex[:12]
            with database.transaction() as session:
                done = provision_tenant(
                    session,
                    passwords,
                    slug=f"b-{tag}",
                    name=f"Bench {tag}",
                    owner_email=f"owner@{tag}.bench",
                    owner_password=None,
                )
                made.append((str(done.tenant.id), str(done.owner.id), done.membership.role))
    return time.perf_counter() - start, made


def migration_result(wall: float, report: dict) -> dict:
    return {
        "wall_s": round(wall, 2),
        "in_process_s": report["seconds"],
        "migrated": report["migrated"],
        "failed": len(report["failed"]),
        "ms_per_tenant": round(report["seconds"] / max(1, report["migrated"]) * 1000, 2),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def backend_anon_mib(app) -> list[float]:
    """Private memory (RssAnon: catalogue caches, not shared buffers) of the PostgreSQL backends
    serving the gunicorn worker (application_name ``bench-gunicorn``; same machine)."""
    from sqlalchemy import text

    from saas.services import services

    with services(app).database.engine.connect() as conn:
        pids = conn.scalars(
            text("SELECT pid FROM pg_stat_activity WHERE application_name = 'bench-gunicorn'")
        ).all()
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            out.append(round(rss_kib(pid, "RssAnon") / 1024, 1))
    return sorted(out)


def worker_memory(env: dict[str, str], app, tenants: list[tuple[str, str, str]], max_requests: int) -> dict:
    """One gunicorn sync worker; one request per tenant; the worker's RSS before and after."""
    import requests

    from saas.services import services

    port = free_port()
    sep = "&" if "?" in env["DATABASE_URL"] else "?"
    genv = {
        **env,
        "DATABASE_URL": env["DATABASE_URL"] + sep + "application_name=bench-gunicorn",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "1",
        "GUNICORN_MAX_REQUESTS": str(max_requests),
        "GUNICORN_MAX_REQUESTS_JITTER": "50" if max_requests else "0",
        "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="bench-metrics-"),
        "LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/gunicorn"), "-c", "infra/gunicorn.conf.py", "wsgi:app"],
        env=genv,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tokens = services(app).tokens
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if requests.get(base + "/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)

        def worker_pid() -> int:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            return int(children[0])

        http = requests.Session()
        first = worker_pid()
        before = rss_kib(first)
        peak = before
        start = time.perf_counter()
        for i, (tid, uid, role) in enumerate(tenants):
            token = tokens.issue(
                subject=uid, tenant_id=tid, roles=[role], scope="api", client_id="saas-api"
            ).token
            r = http.get(base + "/api/v1/contacts", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code} {r.text[:200]}")
            if i % 250 == 0:
                with contextlib.suppress(OSError, IndexError):
                    peak = max(peak, rss_kib(worker_pid()))
        seconds = time.perf_counter() - start
        time.sleep(0.5)
        backends = backend_anon_mib(app)
        last = worker_pid()
        after = rss_kib(last)
        return {
            "max_requests": max_requests,
            "requests": len(tenants),
            "rss_start_mib": round(before / 1024, 1),
            "rss_end_mib": round(after / 1024, 1),
            "rss_peak_sampled_mib": round(max(peak, after) / 1024, 1),
            "recycled": first != last,
            "pg_backends_private_mib": backends,
            "ms_per_request": round(seconds / len(tenants) * 1000, 2),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(genv["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/6"))
    parser.add_argument("--sizes", default="1000,5000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from saas import create_app
    from saas.migrate import upgrade_shared
    from saas.services import services
    from saas.settings import Settings

    server = make_url(args.server.replace("postgresql://", "postgresql+psycopg://", 1))
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DB}"'))
    url = server.set(database=DB).render_as_string(hide_password=False).replace("+psycopg", "")
    work = Path(tempfile.mkdtemp(prefix="bench-ops-"))
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": args.redis,
        "SECRET_KEY": "bench",
        "SAAS_ENV": "test",
        "SAAS_VAR_DIR": str(work / "var"),
        "LOG_LEVEL": "WARNING",
    }
    results: dict = {"sizes": sizes, "cpus": os.cpu_count()}
    try:
        settings = Settings.from_env(env)
        app = create_app(settings)
        upgrade_shared(services(app).database.engine)
        # chained scratch tracks: track(k) = the real track + revisions 9001..900k
        revs = [f"90{i:02d}" for i in range(1, 8)]
        tracks = {k: str(scratch_track(work, revs[:k])) for k in range(1, 8)}

        def noop(key: str, track: str | None) -> None:
            runs = [cli(env, *(("--track", track) if track else ()))[0:2] for _ in range(3)]
            walls = [w for w, _ in runs]
            results[key] = {
                "median_wall_s": round(statistics.median(walls), 3),
                "runs_wall_s": [round(w, 3) for w in walls],
                "in_process_s": [r["seconds"] for _, r in runs],
            }
            print(key, results[key], flush=True)

        def one_revision(key: str, k: int, parallel: int) -> None:
            wall, report = cli(env, "--track", tracks[k], "--parallel", str(parallel))
            results[key] = migration_result(wall, report)
            print(key, results[key], flush=True)

        tenants: list = []
        seconds, made = provision(app, sizes[0])
        tenants += made
        n = len(tenants)
        results[f"provision_{n}"] = {
            "tenants": len(made),
            "seconds": round(seconds, 2),
            "ms_per_tenant": round(seconds / len(made) * 1000, 2),
        }
        print("provisioned", results[f"provision_{n}"], flush=True)
        noop(f"noop_{n}", None)
        # alternate --parallel 1 and 2 (one new revision each time): load on the shared machine
        # varies, so each setting is measured twice
        for k, parallel in ((1, 1), (2, 2), (3, 1), (4, 2)):
            one_revision(f"one_revision_{n}_p{parallel}_run{(k + 1) // 2}", k, parallel)
        for mr in (0, 200):
            key = f"worker_memory_{n}_max_requests_{mr}"
            results[key] = worker_memory(env, app, tenants, mr)
            print(key, results[key], flush=True)

        for size in sizes[1:]:
            seconds, made = provision(app, size - len(tenants))
            tenants += made
            results[f"provision_to_{size}"] = {
                "tenants": len(made),
                "seconds": round(seconds, 2),
                "ms_per_tenant": round(seconds / len(made) * 1000, 2),
            }
            print("provisioned", results[f"provision_to_{size}"], flush=True)
            wall, report = cli(env, "--track", tracks[4], "--parallel", "2")  # catch the new ones up
            results[f"catch_up_{len(made)}_four_revisions_p2"] = migration_result(wall, report)
            noop(f"noop_{size}", tracks[4])
            one_revision(f"one_revision_{size}_p2_run1", 5, 2)
            one_revision(f"one_revision_{size}_p1_run1", 6, 1)
            one_revision(f"one_revision_{size}_p2_run2", 7, 2)
            for mr in (0, 1000):
                key = f"worker_memory_{size}_max_requests_{mr}"
                results[key] = worker_memory(env, app, tenants, mr)
                print(key, results[key], flush=True)
        services(app).database.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    out = ROOT / "bench" / "results-tenants-ops.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
