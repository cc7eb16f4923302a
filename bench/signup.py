"""Benchmark: tenant signup and provisioning, split into password hashing, DDL and the rest.

Usage (PostgreSQL on 127.0.0.1:5432, user postgres, trust auth)::

    .venv/bin/python bench/signup.py [--n 50] [--extra-revisions 50] [--cli-processes 5]

What it measures, interleaved round by round in one run (this machine is noisy):

* ``POST /api/v1/signup`` through the WSGI app (Flask test client), n times;
* ``saas tenants create`` in-process (click runner on a built app: the provisioning service path),
  n times; and, for scale, a few real ``saas tenants create`` processes (interpreter start-up,
  imports and ``create_app`` included);
* each of the two with the real tenant track and with a temporary copy of it carrying
  ``--extra-revisions`` more small revisions (a ``COMMENT ON TABLE`` each), to show that
  provisioning (create from the models, stamp the head) does not grow with the track's history;
* floors: the same DDL sent raw with psycopg (one round trip, and one round trip per statement),
  and replaying the Alembic tenant track (real and long) on a fresh schema.

Splits: ``hash`` = ``Passwords.hash`` (argon2id, parameters from ``saas.settings.Settings``
defaults: 19 MiB, 2 iterations, 1 lane); ``ddl`` = ``create_tenant_schema`` (CREATE SCHEMA, tables,
indexes, version stamp; inside the transaction); ``rest`` = total - hash - ddl (HTTP and JSON,
validation, queries, inserts, audit row, tokens, and the COMMIT, also shown on its own).

The script creates its own database (``saas_bench_<random>``) and drops it at the end.
It is a benchmark, not a test: it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import saas.migrate as migrate  # noqa: E402
import saas.tenancy.provisioning as provisioning  # noqa: E402
from saas import create_app  # noqa: E402
from saas.cli import Context  # noqa: E402
from saas.cli import main as cli_main  # noqa: E402
from saas.db import Database, schema_name_for  # noqa: E402
from saas.services import services  # noqa: E402
from saas.settings import Settings  # noqa: E402

PASSWORD = "correct horse battery staple"  # noqa: S105 - a benchmark account
HTTP_SIGNUP = "POST /api/v1/signup over HTTP to gunicorn (1 sync worker; total only)"
CLI_VERSION = "saas --version (whole process: interpreter and CLI start-up only)"
RAW_PER_STATEMENT = "floor: raw DDL via psycopg, 1 round trip per statement"
SERVER = os.environ.get("BENCH_DATABASE_SERVER", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


# --- timing ------------------------------------------------------------------------------------


class Splits:
    """Accumulates the time spent in instrumented functions during one operation."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)

    def reset(self) -> None:
        self.current = defaultdict(float)

    def wrap(self, name: str, func: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.current[name] += time.perf_counter() - start

        return timed


splits = Splits()
results: dict[str, list[dict[str, float]]] = defaultdict(list)


@contextmanager
def measure(label: str) -> Iterator[None]:
    splits.reset()
    start = time.perf_counter()
    yield
    total = time.perf_counter() - start
    row = {"total": total, **splits.current}
    results[label].append(row)


def instrument(app) -> None:
    passwords = services(app).passwords
    passwords.hash = splits.wrap("hash", passwords.hash)
    provisioning.create_tenant_schema = splits.wrap("ddl", provisioning.create_tenant_schema)
    Session.commit = splits.wrap("commit", Session.commit)


# --- tracks ------------------------------------------------------------------------------------

REVISION = '''"""bench filler revision {n}"""

from alembic import op

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("COMMENT ON TABLE contacts IS 'bench revision {n}'")


def downgrade() -> None:
    op.execute("COMMENT ON TABLE contacts IS NULL")
'''


def long_track(extra: int) -> Path:
    """A temporary copy of ``migrations/`` whose tenant track has ``extra`` more revisions."""
    tmp = Path(tempfile.mkdtemp(prefix="saas-bench-migrations-"))
    shutil.copytree(migrate.MIGRATIONS_DIR / "shared", tmp / "shared")
    shutil.copytree(migrate.MIGRATIONS_DIR / "tenant", tmp / "tenant")
    versions = tmp / "tenant" / "versions"
    down = migrate.tenant_head_revision()
    for n in range(1, extra + 1):
        rev = f"bench{n:04d}"
        (versions / f"{rev}_filler.py").write_text(REVISION.format(n=n, rev=rev, down=down))
        down = rev
    return tmp


head_load_seconds: dict[str, list[float]] = defaultdict(list)


def use_track(name: str, directory: Path) -> None:
    """Point the code at a migrations directory, as a fresh process would see it. The head is
    resolved once per process (cached); that one-time cost is recorded apart."""
    migrate.MIGRATIONS_DIR = directory
    migrate.tenant_head_revision.cache_clear()
    start = time.perf_counter()
    migrate.tenant_head_revision()
    head_load_seconds[name].append(time.perf_counter() - start)


# --- the operations ----------------------------------------------------------------------------


def signup(client, label: str, i: int) -> None:
    slug = f"b{uuid.uuid4().hex[:12]}"
    body = {
        "tenant": {"name": f"Bench {i}", "slug": slug},
        "owner": {"email": f"owner-{slug}@bench.test", "password": PASSWORD, "name": "Bench"},
    }
    with measure(label):
        response = client.post("/api/v1/signup", json=body)
    if response.status_code != 201:
        raise SystemExit(f"signup failed: {response.status_code} {response.get_data(as_text=True)}")


def cli_create(ctx: Context, runner, label: str) -> None:
    slug = f"c{uuid.uuid4().hex[:12]}"
    email = f"owner-{slug}@bench.test"
    args = ["tenants", "create", "--slug", slug, "--name", "Bench", "--owner-email", email]
    with measure(label):
        result = runner.invoke(cli_main, args, obj=ctx, env={"SAAS_OWNER_PASSWORD": PASSWORD})
    if result.exit_code != 0:
        raise SystemExit(f"saas tenants create failed: {result.output} {result.exception!r}")


def raw_ddl(conn: psycopg.Connection, label: str, one_round_trip: bool) -> None:
    """The statements ``create_tenant_schema`` sends, sent with psycopg directly on a warm
    connection (as the app's pooled ones are)."""
    schema = schema_name_for(uuid.uuid4())
    quoted = f'"{schema}"'
    statements = [f"CREATE SCHEMA {quoted}"]
    placeholder = f'"{provisioning._SENTINEL}".'
    statements += [s.replace(placeholder, quoted + ".") for s in provisioning._tenant_ddl()]
    statements.append(f"CREATE TABLE {quoted}.alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    with measure(label):
        with conn.cursor() as cur:
            ddl_start = time.perf_counter()
            if one_round_trip:
                cur.execute(";\n".join(statements).encode())
            else:
                for statement in statements:
                    cur.execute(statement.encode())
            cur.execute(
                f"INSERT INTO {quoted}.alembic_version (version_num) VALUES (%s)".encode(),  # noqa: S608
                (migrate.tenant_head_revision(),),
            )
            splits.current["ddl"] += time.perf_counter() - ddl_start
        commit_start = time.perf_counter()
        conn.commit()
        splits.current["commit"] += time.perf_counter() - commit_start


def alembic_replay(engine, label: str) -> None:
    schema = schema_name_for(uuid.uuid4())
    with measure(label), engine.connect() as conn:
        ddl_start = time.perf_counter()
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        migrate.upgrade_tenant_schema(conn, schema)
        splits.current["ddl"] += time.perf_counter() - ddl_start
        commit_start = time.perf_counter()
        conn.commit()
        splits.current["commit"] += time.perf_counter() - commit_start


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """One sync gunicorn worker serving ``wsgi:app`` on a free port (stopped by the caller)."""
    port = free_port()
    args = [sys.executable, "-m", "gunicorn", "-c", "infra/gunicorn.conf.py"]
    args += ["-b", f"127.0.0.1:{port}", "-w", "1", "wsgi:app"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(base + "/healthz", timeout=5).ok:
                return proc, base
        except requests.RequestException:
            time.sleep(0.2)
    proc.terminate()
    proc.wait(timeout=30)
    raise SystemExit("gunicorn did not start")


def http_signup(http, base: str, label: str, i: int) -> None:
    slug = f"h{uuid.uuid4().hex[:12]}"
    body = {
        "tenant": {"name": f"Bench {i}", "slug": slug},
        "owner": {"email": f"owner-{slug}@bench.test", "password": PASSWORD, "name": "Bench"},
    }
    with measure(label):
        response = http.post(base + "/api/v1/signup", json=body, timeout=10)
    if response.status_code != 201:
        raise SystemExit(f"signup over HTTP failed: {response.status_code} {response.text}")


def cli_process(env: dict[str, str], label: str, argv: list[str] | None) -> None:
    """``saas tenants create`` (or ``saas *argv``) as a new process, as an operator runs it."""
    slug = f"p{uuid.uuid4().hex[:12]}"
    saas = Path(sys.executable).parent / "saas"
    email = f"owner-{slug}@bench.test"
    argv = argv or ["tenants", "create", "--slug", slug, "--name", "Bench", "--owner-email", email]
    args = [str(saas), *argv]
    with measure(label):
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"saas tenants create (process) failed: {done.stderr.strip()}")


# --- report ------------------------------------------------------------------------------------


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f}" if values else "-"


def report(order: list[str]) -> str:
    lines = [
        "| operation | n | total median | p90 | hash | DDL | rest | (commit, in rest) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in order:
        rows = results[label]
        if not rows:
            continue
        totals = sorted(r["total"] for r in rows)
        p90 = totals[min(len(totals) - 1, int(0.9 * len(totals)))]
        rest = [r["total"] - r.get("hash", 0.0) - r.get("ddl", 0.0) for r in rows]
        hashing = ms([r.get("hash", 0.0) for r in rows])
        ddl = ms([r.get("ddl", 0.0) for r in rows])
        commit = ms([r.get("commit", 0.0) for r in rows])
        lines.append(
            f"| {label} | {len(rows)} | **{ms(totals)}** | {p90 * 1000:.1f} | {hashing} | {ddl}"
            f" | {ms(rest)} | {commit} |"
        )
    return "\n".join(lines)


def environment(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        fsync = conn.execute("SHOW fsync").fetchone()[0]
        sync = conn.execute("SHOW synchronous_commit").fetchone()[0]
    from importlib.metadata import version as package_version

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average"
        f" {os.getloadavg()[0]:.2f}; Python {platform.python_version()}; PostgreSQL {version}"
        f" (fsync={fsync}, synchronous_commit={sync}) over TCP 127.0.0.1;"
        f" argon2-cffi {package_version('argon2-cffi')}"
    )


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="measured operations per kind")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--extra-revisions", type=int, default=50)
    parser.add_argument("--cli-processes", type=int, default=5, help="real `saas tenants create` processes")
    args = parser.parse_args()

    server = make_url(SERVER)
    name = f"saas_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
    real_dir = migrate.MIGRATIONS_DIR
    long_dir = long_track(args.extra_revisions)
    var_dir = Path(tempfile.mkdtemp(prefix="saas-bench-var-"))
    try:
        engine = create_engine(url, pool_size=5)
        migrate.upgrade_shared(engine)
        defaults = Settings()
        settings = Settings(
            env="test",
            database_url=url,
            redis_url=os.environ.get("REDIS_URL"),
            secret_key="bench",  # noqa: S106 - a throwaway database
            var_dir=var_dir,
            log_level="WARNING",
        )
        assert (settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism) == (
            defaults.argon2_memory_kib,
            defaults.argon2_time_cost,
            defaults.argon2_parallelism,
        )
        app = create_app(settings, database=Database(engine))
        instrument(app)
        client = app.test_client()
        ctx = Context()
        ctx._settings = settings
        ctx._app = app
        from click.testing import CliRunner

        runner = CliRunner()
        tracks = {"real": real_dir, "long": long_dir}
        n_long = args.extra_revisions + 1

        def label(kind: str, track: str) -> str:
            revs = 1 if track == "real" else n_long
            return f"{kind}, tenant track of {revs} revision{'s' if revs > 1 else ''}"

        env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "SECRET_KEY": "bench",
            "SAAS_VAR_DIR": str(var_dir),
            "SAAS_OWNER_PASSWORD": PASSWORD,
            "LOG_LEVEL": "WARNING",
        }
        raw_conn = psycopg.connect(dsn)
        gunicorn, base = start_gunicorn(env)
        import requests

        http = requests.Session()

        def one_round(i: int) -> None:
            http_signup(http, base, HTTP_SIGNUP, i)
            # alternate which track goes first, so neither always follows the other's DDL
            order = list(tracks.items()) if i % 2 == 0 else list(reversed(tracks.items()))
            for track, directory in order:
                use_track(track, directory)
                signup(client, label("POST /api/v1/signup", track), i)
                cli_create(ctx, runner, label("saas tenants create (in-process)", track))
                if track == "real":
                    raw_ddl(raw_conn, "floor: raw DDL via psycopg, 1 round trip", one_round_trip=True)
                    raw_ddl(raw_conn, RAW_PER_STATEMENT, one_round_trip=False)
                alembic_replay(engine, label("floor: Alembic replay", track))
            use_track("real", real_dir)

        for i in range(args.warmup):
            one_round(-i)
        results.clear()
        head_load_seconds.clear()
        try:
            for i in range(args.n):
                one_round(i)
        finally:
            gunicorn.terminate()
            gunicorn.wait(timeout=30)
            raw_conn.close()
        for _ in range(args.cli_processes):
            cli_process(env, CLI_VERSION, ["--version"])
        for _ in range(args.cli_processes):
            cli_process(env, "saas tenants create (whole process, real track)", None)

        order = [
            label("POST /api/v1/signup", "real"),
            label("POST /api/v1/signup", "long"),
            HTTP_SIGNUP,
            label("saas tenants create (in-process)", "real"),
            label("saas tenants create (in-process)", "long"),
            "saas tenants create (whole process, real track)",
            CLI_VERSION,
            "floor: raw DDL via psycopg, 1 round trip",
            RAW_PER_STATEMENT,
            label("floor: Alembic replay", "real"),
            label("floor: Alembic replay", "long"),
        ]
        print(f"Environment: {environment(dsn)}")
        print(f"Times in ms, medians unless noted; {args.n} of each, interleaved round by round.\n")
        print(report(order))
        print(
            "\nTenant head resolution (once per process, cached): "
            + ", ".join(f"{track} track {ms(values)} ms" for track, values in head_load_seconds.items())
        )
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(long_dir, ignore_errors=True)
        shutil.rmtree(var_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
