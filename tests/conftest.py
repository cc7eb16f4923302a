"""Test fixtures: one database per run (per xdist worker), migrated once; each test inside a
transaction rolled back at the end; Redis database flushed per test.

Servers: ``TEST_DATABASE_URL`` / ``REDIS_URL`` when set; else the local servers on 127.0.0.1
when reachable; else an embedded PostgreSQL (pgserver).
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis as redis_lib
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from saas import create_app
from saas.db import Database, _guard_search_path
from saas.migrate import upgrade_shared
from saas.services import services
from saas.settings import Settings

TEST_PASSWORD = "correct horse battery staple"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _server_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url.replace("postgresql://", "postgresql+psycopg://", 1)
    if _reachable("127.0.0.1", 5432):
        return "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    from saas.embedded import embedded_database_url

    return embedded_database_url(Path(tempfile.gettempdir()) / "saas-test-pg").replace(
        "postgresql://", "postgresql+psycopg://", 1
    )


def _redis_url(worker: str) -> str:
    """This run's (or xdist worker's) Redis database: the suite flushes it before every test, so
    two workers must never share one. ``REDIS_URL`` names the first; worker N uses the Nth next."""
    offset = int(worker[2:]) if worker.startswith("gw") else 0
    url = os.environ.get("REDIS_URL")
    if url:
        parsed = urlsplit(url)
        base = int(parsed.path.lstrip("/") or 0)
        return urlunsplit(parsed._replace(path=f"/{(base + offset) % 16}"))
    return f"redis://127.0.0.1:6379/{max(15 - offset, 1)}"


@pytest.fixture(scope="session")
def worker_id_str(request) -> str:
    return getattr(request.config, "workerinput", {}).get("workerid", "master")


@pytest.fixture(scope="session")
def database_url(worker_id_str) -> Iterator[str]:
    """A fresh database for this run (or worker), migrated to the shared head; dropped after."""
    server = make_url(_server_url())
    name = f"saas_test_{worker_id_str}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    upgrade_shared(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def engine(database_url):
    eng = create_engine(database_url, pool_size=5)
    _guard_search_path(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def redis_client(worker_id_str):
    client = redis_lib.Redis.from_url(_redis_url(worker_id_str), socket_timeout=2)
    client.ping()
    return client


@pytest.fixture(scope="session")
def settings(tmp_path_factory, database_url) -> Settings:
    var = tmp_path_factory.mktemp("var")
    return Settings(
        env="test",
        database_url=database_url,
        issuer="http://localhost:8000",
        secret_key="test-secret",
        var_dir=Path(var),
        # fast hashing in tests; production defaults are OWASP's (19 MiB, 2 iterations)
        argon2_memory_kib=8192,
        argon2_time_cost=1,
        # rate limits are tested with their own apps (tests/limits); other tests must not
        # depend on how many requests they make per minute
        ratelimit_enabled=False,
    )


@pytest.fixture(scope="session")
def app(settings, engine, redis_client):
    application = create_app(settings, database=Database(engine), redis=redis_client)
    application.testing = True
    return application


@pytest.fixture()
def connection(engine, app, redis_client) -> Iterator:
    """The test's outer transaction: everything the test does is rolled back."""
    with rolled_back(app, engine, redis_client) as conn:
        yield conn


@contextmanager
def rolled_back(app, engine, redis_client) -> Iterator:
    """Bind ``app``'s database to a connection inside an outer transaction, with an empty Redis
    database, and roll everything back on exit."""
    conn = engine.connect()
    outer = conn.begin()
    db = services(app).database
    previous = db.bind
    db.bind = conn
    redis_client.flushdb()
    try:
        yield conn
    finally:
        db.bind = previous
        if outer.is_active:
            outer.rollback()
        conn.close()


@pytest.fixture()
def steady_month(time_machine, redis_client):
    """Move the Python clock (running) to noon on the 15th of the Redis server's current month,
    and return that instant: a test that meters calls in "the current period" never straddles a
    month end, and the counter's expiry (its period's end + 62 days, ``EXPIREAT`` on the Redis
    clock) is in the future for Redis whatever the real date."""
    from tests.helpers import redis_now

    middle = redis_now(redis_client).replace(day=15, hour=12, minute=0, second=0, microsecond=0)
    time_machine.move_to(middle, tick=True)
    return middle


@pytest.fixture()
def client(app, connection):
    return app.test_client()


@pytest.fixture()
def db_session(app, connection):
    """A session on the test's transaction (shared tables only)."""
    session = services(app).database.session()
    yield session
    session.close()


class Api:
    """Small helpers over the Flask test client for the API's JSON conventions."""

    def __init__(self, client):
        self.client = client

    def signup(
        self,
        slug: str,
        email: str | None = None,
        password: str = TEST_PASSWORD,
        name: str = "Acme",
        *,
        verified: bool = True,
    ):
        """Sign a tenant up; with ``verified`` (the default) the owner's email is marked verified
        as if the mailed link had been used (inviting, clients and billing need it)."""
        email = email or f"owner@{slug}.test"
        response = self.client.post(
            "/api/v1/signup",
            json={"tenant": {"name": name, "slug": slug}, "owner": {"email": email, "password": password}},
        )
        assert response.status_code == 201, response.get_json()
        body = response.get_json()
        if verified:
            from tests.helpers import verify_email

            verify_email(self.client.application, body["user"]["id"])
        return body

    def login(self, email: str, password: str = TEST_PASSWORD, tenant: str | None = None):
        body = {"email": email, "password": password}
        if tenant:
            body["tenant"] = tenant
        return self.client.post("/api/v1/auth/login", json=body)

    @staticmethod
    def auth(token: str | dict) -> dict:
        if isinstance(token, dict):
            token = token["token"]["access_token"] if "token" in token else token["access_token"]
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture()
def api(client) -> Api:
    return Api(client)


@pytest.fixture()
def worker_handlers() -> Iterator[None]:
    """Every outbox topic's handler registered for the test (``saas.worker.load_handlers``), and
    the registry put back as it was afterwards (a test may register its own)."""
    from saas import worker

    worker.load_handlers()
    before = worker.handlers()
    yield
    worker._handlers.clear()
    worker._handlers.update(before)
