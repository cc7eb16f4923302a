"""A real PgBouncer (Debian's package) and a real gunicorn, started on free loopback ports.

Used by the suite in this package and by ``bench/pgbouncer_load.py``. PgBouncer refuses to
run as root, so as root it is started with ``-u postgres`` (the user Debian's PostgreSQL runs
as; ``nobody`` without it); its files then belong to that user.
"""

from __future__ import annotations

import math
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]


def pgbouncer_binary() -> str | None:
    """Debian installs it in /usr/sbin, which is not on every PATH."""
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, log: Path, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(
        f"port {port} not listening after {seconds} s: {log.read_text(errors='replace')[-2000:]}"
    )


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class PgBouncer:
    """One running PgBouncer: ``url(database)`` is a URL through it."""

    port: int
    user: str
    directory: Path
    process: subprocess.Popen
    version: str

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        return (self.directory / "pgbouncer.log").read_text(errors="replace")


@contextmanager
def pgbouncer(
    server_host: str,
    server_port: int,
    user: str = "postgres",
    *,
    pool_mode: str = "transaction",
    default_pool_size: int = 5,
    extra: dict[str, str] | None = None,
) -> Iterator[PgBouncer]:
    """Start PgBouncer in front of ``server_host:server_port`` (every database, ``auth_type =
    trust``: the test server trusts loopback too) and stop it on exit."""
    binary = pgbouncer_binary()
    if binary is None:
        raise FileNotFoundError("pgbouncer is not installed (apt-get install pgbouncer)")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    directory = Path(tempfile.mkdtemp(prefix="saas-pgbouncer-"))
    port = free_port()
    settings = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(port),
        "unix_socket_dir": "",
        "auth_type": "trust",
        "auth_file": str(directory / "users.txt"),
        "pool_mode": pool_mode,
        "default_pool_size": str(default_pool_size),
        "max_client_conn": "1000",
        "admin_users": user,
        "logfile": str(directory / "pgbouncer.log"),
        **(extra or {}),
    }
    ini = f"[databases]\n* = host={server_host} port={server_port}\n\n[pgbouncer]\n" + "".join(
        f"{key} = {value}\n" for key, value in settings.items()
    )
    (directory / "pgbouncer.ini").write_text(ini)
    (directory / "users.txt").write_text(f'"{user}" ""\n')
    (directory / "pgbouncer.log").write_text("")
    command = [binary, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
        os.chmod(directory, 0o755)  # noqa: S103 - the postgres user reads its ini
        for path in directory.iterdir():
            os.chown(path, account.pw_uid, account.pw_gid)
        command[1:1] = ["-u", account.pw_name]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, process, directory / "pgbouncer.log")
        yield PgBouncer(port, user, directory, process, version)
    finally:
        _stop(process, signal.SIGINT)  # SIGINT: safe shutdown
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Gunicorn:
    base: str
    process: subprocess.Popen
    log: Path


@contextmanager
def gunicorn(env: dict[str, str], workers: int = 4, threads: int = 1) -> Iterator[Gunicorn]:
    """``gunicorn -c infra/gunicorn.conf.py wsgi:app`` on a free port with ``env`` added."""
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="saas-gunicorn-"))
    log = directory / "gunicorn.log"
    full_env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(directory / "metrics"),
        "GUNICORN_WORKERS": str(workers),
        "GUNICORN_THREADS": str(threads),
        "GUNICORN_MAX_REQUESTS": "0",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "infra/gunicorn.conf.py",
                "-b",
                f"127.0.0.1:{port}",
                "wsgi:app",
            ],
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_port(port, process, log, seconds=60)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # a worker booted (it answers once the app is built)
            if process.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited with {process.returncode}: {log.read_text(errors='replace')[-3000:]}"
                )
            try:
                if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        yield Gunicorn(base, process, log)
    finally:
        _stop(process)
        shutil.rmtree(directory, ignore_errors=True)


def app_env(database_url: str, redis_url: str, var_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of an app process in these tests: fast hashing, no rate limits."""
    return {
        "SAAS_ENV": "test",
        "DATABASE_URL": database_url.replace("postgresql+psycopg://", "postgresql://", 1),
        "REDIS_URL": redis_url,
        "SECRET_KEY": "pgbouncer-test-secret",
        "SAAS_VAR_DIR": str(var_dir),
        "ARGON2_MEMORY_KIB": "8192",
        "ARGON2_TIME_COST": "1",
        "RATELIMIT_ENABLED": "false",
        **extra,
    }


# --- the mixed load ----------------------------------------------------------------------------

PASSWORD = "correct horse battery staple"


@dataclass
class Tenant:
    slug: str
    headers: dict[str, str]
    contact_ids: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _post(url: str, body: dict[str, Any], headers: dict[str, str] | None, retries: int) -> requests.Response:
    """POST, repeated up to ``retries`` more times on a 5xx (only the benchmark's "before" run
    needs that, to get its tenants in at all)."""
    for _ in range(retries + 1):
        r = requests.post(url, json=body, headers=headers, timeout=30)
        if r.status_code < 500:
            break
    return r


def signup(base: str, slug: str, retries: int = 0) -> Tenant:
    body = {
        "tenant": {"name": slug.title(), "slug": slug},
        "owner": {"email": f"owner@{slug}.test", "password": PASSWORD},
    }
    r = _post(f"{base}/api/v1/signup", body, None, retries)
    assert r.status_code == 201, r.text
    return Tenant(slug, {"Authorization": f"Bearer {r.json()['token']['access_token']}"})


def contact_body(tenant: Tenant, n: int) -> dict[str, Any]:
    """Every contact of a tenant names its tenant: ``company`` is the slug."""
    return {
        "name": f"{tenant.slug} person {n}",
        "email": f"p{n}@{tenant.slug}.test",
        "company": tenant.slug,
        "tags": [tenant.slug],
    }


@dataclass
class LoadResult:
    requests: int = 0
    foreign_rows: int = 0
    server_errors: int = 0
    other_errors: int = 0
    by_kind: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    #: every request's time to its answer, in milliseconds (client side: the request sent, the
    #: body read), and the load's length in seconds (``perf_counter``)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile of :attr:`latencies_ms` (nearest rank), 0 without requests."""
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1]

    @property
    def throughput(self) -> float:
        """Requests answered per second of the load."""
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"{self.requests} requests ({self.throughput:.1f}/s, p50 {self.percentile(50):.1f} ms, "
            f"p99 {self.percentile(99):.1f} ms), {self.foreign_rows} rows of other tenants in 2xx "
            f"responses, {self.server_errors} 5xx, {self.other_errors} other errors; by kind "
            f"{dict(self.by_kind)}; errors {dict(self.errors.most_common(5))}"
        )


def _foreign(tenant: Tenant, rows: list[dict[str, Any]]) -> int:
    """Rows that are not this tenant's: another company, or an id this tenant never created."""
    return sum(
        1
        for row in rows
        if row.get("company") != tenant.slug or not str(row.get("name", "")).startswith(tenant.slug)
    )


def run_load(
    base: str, tenants: list[Tenant], seconds: float, threads: int = 32, seed: int = 7
) -> LoadResult:
    """``threads`` threads of mixed list, search, create and get over ``tenants`` for
    ``seconds``; every 2xx body is checked to hold only its tenant's rows."""
    result = LoadResult()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(index: int) -> None:
        rnd = random.Random(seed + index)
        http = requests.Session()
        while time.monotonic() < stop_at:
            tenant = rnd.choice(tenants)
            kind = rnd.choices(("list", "search", "create", "get"), (4, 3, 1, 3))[0]
            foreign = 0
            sent = time.perf_counter()
            try:
                if kind == "list":
                    r = http.get(
                        f"{base}/api/v1/contacts",
                        params={"page_size": 50},
                        headers=tenant.headers,
                        timeout=30,
                    )
                    rows = r.json() if r.status_code == 200 else []
                elif kind == "search":
                    r = http.get(
                        f"{base}/api/v1/contacts", params={"q": "person"}, headers=tenant.headers, timeout=30
                    )
                    rows = r.json() if r.status_code == 200 else []
                elif kind == "create":
                    body = contact_body(tenant, rnd.randrange(10**6))
                    r = http.post(f"{base}/api/v1/contacts", json=body, headers=tenant.headers, timeout=30)
                    rows = [r.json()] if r.status_code == 201 else []
                    if r.status_code == 201:
                        with tenant.lock:
                            tenant.contact_ids.add(r.json()["id"])
                else:
                    with tenant.lock:
                        known = list(tenant.contact_ids)
                    if not known:
                        continue
                    r = http.get(
                        f"{base}/api/v1/contacts/{rnd.choice(known)}", headers=tenant.headers, timeout=30
                    )
                    rows = [r.json()] if r.status_code == 200 else []
                foreign = _foreign(tenant, rows)
                status = r.status_code
                detail = (
                    ""
                    if status < 400
                    else (
                        r.json().get("code", "") if r.headers.get("content-type", "").endswith("json") else ""
                    )
                )
            except requests.RequestException as exc:
                status, detail = 599, type(exc).__name__
            elapsed_ms = (time.perf_counter() - sent) * 1000
            with lock:
                result.requests += 1
                result.latencies_ms.append(elapsed_ms)
                result.by_kind[kind] += 1
                result.foreign_rows += foreign
                if foreign and len(result.examples) < 5:
                    result.examples.append(f"{kind} of {tenant.slug} held {foreign} foreign rows")
                if status >= 500:
                    result.server_errors += 1
                    result.errors[f"{status} {detail}"] += 1
                elif status >= 400:
                    result.other_errors += 1
                    result.errors[f"{status} {detail}"] += 1

    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    result.seconds = time.perf_counter() - began
    return result


def seed_tenants(
    base: str, count: int, contacts_each: int = 3, prefix: str | None = None, retries: int = 0
) -> list[Tenant]:
    """``count`` tenants signed up through the API, each with ``contacts_each`` contacts."""
    prefix = prefix or f"pgb{uuid.uuid4().hex[:6]}"
    tenants = [signup(base, f"{prefix}-{i:02d}", retries) for i in range(count)]
    for tenant in tenants:
        for n in range(contacts_each):
            r = _post(f"{base}/api/v1/contacts", contact_body(tenant, n), tenant.headers, retries)
            assert r.status_code == 201, r.text
            tenant.contact_ids.add(r.json()["id"])
    return tenants
