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
    from saas.tenancy.provisioning import provision_tenant

    database = app.extensions["saas.db"]
    passwords = app.extensions["saas.passwords"]
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


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker_memory(env: dict[str, str], app, tenants: list[tuple[str, str, str]], max_requests: int) -> dict:
    """One gunicorn sync worker; one request per tenant; the worker's RSS before and after."""
    import requests

    port = free_port()
    genv = {
        **env,
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
    tokens = app.extensions["saas.tokens"]
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
        last = worker_pid()
        after = rss_kib(last)
        return {
            "max_requests": max_requests,
            "requests": len(tenants),
            "rss_start_mib": round(before / 1024, 1),
            "rss_end_mib": round(after / 1024, 1),
            "rss_peak_sampled_mib": round(max(peak, after) / 1024, 1),
            "recycled": first != last,
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
        upgrade_shared(app.extensions["saas.db"].engine)
        # the same signing key for this process and the gunicorn one
        tracks = {
            "a": scratch_track(work, ["9001"]),
            "b": scratch_track(work, ["9001", "9002"]),
            "c": scratch_track(work, ["9001", "9002", "9003"]),
        }
        tenants: list = []
        seconds, made = provision(app, sizes[0])
        tenants += made
        results["provision_first"] = {
            "tenants": len(made),
            "seconds": round(seconds, 2),
            "ms_per_tenant": round(seconds / len(made) * 1000, 2),
        }
        print("provisioned", results["provision_first"], flush=True)

        runs = [cli(env)[0] for _ in range(3)]
        results[f"noop_{len(tenants)}"] = {
            "median_s": round(statistics.median(runs), 3),
            "runs": [round(r, 3) for r in runs],
        }
        print("nothing pending", results[f"noop_{len(tenants)}"], flush=True)

        wall, report = cli(env, "--track", str(tracks["a"]), "--parallel", "1")
        results[f"one_revision_{len(tenants)}_p1"] = migration_result(wall, report)
        print("one revision p1", results[f"one_revision_{len(tenants)}_p1"], flush=True)
        wall, report = cli(env, "--track", str(tracks["b"]), "--parallel", "2")
        results[f"one_revision_{len(tenants)}_p2"] = migration_result(wall, report)
        print("one revision p2", results[f"one_revision_{len(tenants)}_p2"], flush=True)

        for mr in (0, 200):
            key = f"worker_memory_{len(tenants)}_max_requests_{mr}"
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
            wall, report = cli(env, "--track", str(tracks["b"]), "--parallel", "2")  # catch the new ones up
            results[f"catch_up_{len(made)}_two_revisions_p2"] = {
                "wall_s": round(wall, 2),
                "migrated": report["migrated"],
            }
            runs = [cli(env, "--track", str(tracks["b"]))[0] for _ in range(3)]
            results[f"noop_{size}"] = {
                "median_s": round(statistics.median(runs), 3),
                "runs": [round(r, 3) for r in runs],
            }
            print("nothing pending", results[f"noop_{size}"], flush=True)
            wall, report = cli(env, "--track", str(tracks["c"]), "--parallel", "2")
            results[f"one_revision_{size}_p2"] = migration_result(wall, report)
            print("one revision p2", results[f"one_revision_{size}_p2"], flush=True)
            for mr in (0, 1000):
                key = f"worker_memory_{size}_max_requests_{mr}"
                results[key] = worker_memory(env, app, tenants, mr)
                print(key, results[key], flush=True)
        app.extensions["saas.db"].dispose()
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
