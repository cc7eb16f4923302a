"""The service through a real PgBouncer in transaction mode (Debian's package, started by the
``bouncer`` fixture): signup, every tenant endpoint, migrations, the outbox worker, the start-up
check of ``DB_PREPARED_STATEMENTS``, and a concurrent mixed load over 20 tenants under
gunicorn where every response must hold only its tenant's rows.

These tests commit for real (their own tenants in the run's database, dropped at the end).
Tests that need PostgreSQL directly say so in their name and use ``database_url``.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, delete, select, text
from sqlalchemy.engine import make_url

from saas import SettingsError, create_app
from saas.cli import Context, main
from saas.db import Database, connect_args, prepared_statements_verdict, verify_prepared_statements
from saas.migrate import MIGRATIONS_DIR, tenant_head_revision
from saas.outbox import OutboxMessage
from saas.services import services
from saas.worker import Worker, load_handlers
from tests.conftest import TEST_PASSWORD
from tests.helpers import drop_tenant, mailed_invitation_token, verification_token
from tests.pgbouncer import harness
from tests.pgbouncer.conftest import DEFAULT_POOL_SIZE

ROUNDS = 7  # more than psycopg's prepare_threshold (5): a statement would be prepared by now
INVITES = 2  # the free plan's seats, beside the owner


@pytest.fixture(scope="module")
def direct_engine(database_url):
    """PostgreSQL itself, for setting up and checking what the tests did through the pooler."""
    eng = create_engine(database_url, pool_size=2)
    yield eng
    eng.dispose()


def _drop(engine, tenant_ids) -> None:
    """Drop committed tenants and the outbox messages they left (invitation mails, seat syncs),
    which other tests of the run would otherwise see."""
    from saas.identity.models import Tenant, User

    ids = [uuid.UUID(str(t)) for t in tenant_ids]
    with engine.begin() as conn:
        slugs = conn.scalars(select(Tenant.slug).where(Tenant.id.in_(ids))).all()
        conn.execute(delete(OutboxMessage).where(OutboxMessage.tenant_id.in_(ids)))
    for tenant_id in ids:
        drop_tenant(engine, tenant_id)
    with engine.begin() as conn:  # members removed in a test have no membership left to find
        for slug in slugs:
            conn.execute(delete(User).where(User.email.like(f"%@{slug}.test")))


@pytest.fixture()
def cleanup(direct_engine):
    tenant_ids: list[str] = []
    yield tenant_ids
    _drop(direct_engine, tenant_ids)


def _signup(client, slug: str) -> dict:
    r = client.post(
        "/api/v1/signup",
        json={
            "tenant": {"name": slug.title(), "slug": slug},
            "owner": {"email": f"owner@{slug}.test", "password": TEST_PASSWORD},
        },
    )
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    # inviting and clients need a verified owner: the mailed link's token
    token = verification_token(client.application, f"owner@{slug}.test")
    assert client.post("/api/v1/auth/email/verify", json={"token": token}).status_code == 204
    return {
        "slug": slug,
        "id": body["tenant"]["id"],
        "user_id": body["user"]["id"],
        "email": f"owner@{slug}.test",
        "h": {"Authorization": f"Bearer {body['token']['access_token']}"},
    }


def _own_contacts(tenant: dict, rows: list[dict]) -> None:
    assert rows, "no rows"
    assert {row["company"] for row in rows} == {tenant["slug"]}, rows


# --- prepared statements: off on every connection the application makes -------------------------


def test_every_engine_of_the_application_has_prepared_statements_off(
    pooled_apps, pooled_settings, monkeypatch
):
    """psycopg prepares a statement after 5 executions unless ``prepare_threshold`` is None; the
    app's engine (request sessions), the CLI's, the migration engine
    on ``DATABASE_URL_DIRECT`` and the tenant migration workers' must all have it off."""
    from saas.ops import migrations

    def threshold(engine) -> object:
        with engine.connect() as conn:
            return conn.connection.driver_connection.prepare_threshold

    assert threshold(services(pooled_apps[0]).database.engine) is None
    with pooled_apps[0].test_request_context("/"):
        from flask import g

        from saas import db

        g.db_tenant_schema = None
        conn = db.session().connection()  # the request's unit of work (lazy begin)
        assert conn.connection.driver_connection.prepare_threshold is None
    ctx = Context()
    ctx._settings = pooled_settings.with_overrides(database_url_direct=pooled_settings.database_url)
    assert threshold(ctx.engine) is None and threshold(ctx.migration_engine) is None
    ctx.engine.dispose()
    ctx.migration_engine.dispose()
    seen = {}
    real = migrations.create_engine

    def spy(url, **kwargs):
        seen.update(kwargs)
        return real(url, **kwargs)

    monkeypatch.setattr(migrations, "create_engine", spy)
    monkeypatch.setattr(migrations, "_parent_engine", None)  # this process is no forked worker
    monkeypatch.setattr(migrations, "_worker", None)
    migrations._init_worker(pooled_settings.database_url, str(migrations.TENANT_TRACK), 2000)
    assert seen["connect_args"]["prepare_threshold"] is None
    migrations._worker[1].close()


# --- signup and every tenant endpoint ------------------------------------------------------------


def test_signup_and_every_tenant_endpoint_through_the_pooler(pooled_apps, direct_engine, cleanup):
    """Two tenants, each endpoint called ``ROUNDS`` times per tenant, alternating between two
    applications (two processes' client connections on PgBouncer's shared server connections).
    Every response is a success holding only the caller's tenant."""
    clients = [application.test_client() for application in pooled_apps]
    prefix = f"pgb{uuid.uuid4().hex[:6]}"
    tenants = [_signup(clients[i], f"{prefix}-{i}") for i in range(2)]
    cleanup.extend(t["id"] for t in tenants)
    with direct_engine.connect() as conn:  # signup committed both schemas (seen directly)
        schemas = set(conn.scalars(text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 't\\_%'")))
    assert {"t_" + uuid.UUID(t["id"]).hex for t in tenants} <= schemas

    for n in range(ROUNDS):
        for i, tenant in enumerate(tenants):
            c, h = clients[(n + i) % 2], tenant["h"]
            body = harness.contact_body(harness.Tenant(tenant["slug"], h), n)
            r = c.post("/api/v1/contacts", json=body, headers=h)
            assert r.status_code == 201, r.get_json()
            contact = r.get_json()
            _own_contacts(tenant, [contact])
            r = c.get(f"/api/v1/contacts/{contact['id']}", headers=h)
            assert r.status_code == 200, r.get_json()
            _own_contacts(tenant, [r.get_json()])
            r = c.patch(
                f"/api/v1/contacts/{contact['id']}",
                json={"phone": f"+1555000{n}"},
                headers={**h, "If-Match": r.headers["ETag"]},
            )
            assert r.status_code == 200, r.get_json()
            assert r.get_json()["phone"] == f"+1555000{n}"
            for params in ({}, {"q": "person"}, {"tag": tenant["slug"]}, {"sort": "name"}):
                r = c.get("/api/v1/contacts", query_string=params, headers=h)
                assert r.status_code == 200, r.get_json()
                _own_contacts(tenant, r.get_json())
                assert len(r.get_json()) == n + 1
            r = c.get("/api/v1/members", headers=h)
            assert r.status_code == 200 and [m["user_id"] for m in r.get_json()] == [tenant["user_id"]]
            r = c.get("/api/v1/audit-events", headers=h)
            assert r.status_code == 200 and r.get_json()
            assert {e["actor"]["id"] for e in r.get_json()} == {tenant["user_id"]}
            r = c.get("/api/v1/tenant", headers=h)
            assert r.status_code == 200 and r.get_json()["slug"] == tenant["slug"]
            r = c.patch("/api/v1/tenant", json={"name": f"{tenant['slug']} round {n}"}, headers=h)
            assert r.status_code == 200 and r.get_json()["name"] == f"{tenant['slug']} round {n}"
            r = c.get("/api/v1/me", headers=h)
            assert r.status_code == 200 and r.get_json()["tenant"]["id"] == tenant["id"]
            r = c.get("/api/v1/billing", headers=h)
            assert r.status_code == 200, r.get_json()
            r = c.get("/api/v1/me/sessions", headers=h)
            assert r.status_code == 200, r.get_json()
            r = c.get("/api/v1/clients", headers=h)
            assert r.status_code == 200, r.get_json()
            r = c.post("/api/v1/auth/login", json={"email": tenant["email"], "password": TEST_PASSWORD})
            assert r.status_code == 200, r.get_json()

    for i, tenant in enumerate(tenants):
        c, h = clients[i], tenant["h"]
        r = c.post(
            "/api/v1/members", json={"email": f"new@{tenant['slug']}.test", "role": "member"}, headers=h
        )
        assert r.status_code == 201, r.get_json()
        token = mailed_invitation_token(c.application, f"new@{tenant['slug']}.test")
        r = clients[1 - i].post(
            "/api/v1/invitations/accept", json={"token": token, "password": "another good passphrase"}
        )
        assert r.status_code == 200 and r.get_json()["tenant"]["id"] == tenant["id"], r.get_json()
        member_id = r.get_json()["user"]["id"]
        r = c.patch(f"/api/v1/members/{member_id}", json={"role": "admin"}, headers=h)
        assert r.status_code == 200 and r.get_json()["role"] == "admin", r.get_json()
        r = c.delete(f"/api/v1/members/{member_id}", headers=h)
        assert r.status_code == 204, r.get_json()
        r = c.post(
            "/api/v1/clients",
            json={"name": "pooled app", "redirect_uris": ["https://app.test/cb"]},
            headers=h,
        )
        assert r.status_code == 201, r.get_json()
        client_id = r.get_json()["client_id"]
        assert clients[1 - i].get(f"/api/v1/clients/{client_id}", headers=h).status_code == 200
        assert c.delete(f"/api/v1/clients/{client_id}", headers=h).status_code == 204
        listed = c.get("/api/v1/contacts", headers=h).get_json()
        r = c.delete(f"/api/v1/contacts/{listed[0]['id']}", headers=h)
        assert r.status_code == 204
        assert c.get(f"/api/v1/contacts/{listed[0]['id']}", headers=h).status_code == 404
    # another tenant's contact id is a 404 through the pooler too
    other = clients[0].get("/api/v1/contacts", headers=tenants[1]["h"]).get_json()[0]["id"]
    assert clients[1].get(f"/api/v1/contacts/{other}", headers=tenants[0]["h"]).status_code == 404


# --- the outbox worker -----------------------------------------------------------------------------


def test_outbox_worker_through_the_pooler(pooled_apps, pooled_settings, direct_engine, cleanup):
    """An invitation enqueues ``mail.invitation``; the worker, on an engine made from the pooled
    URL as ``saas worker`` makes it, takes it (``FOR UPDATE SKIP LOCKED``) and marks it sent."""
    from aiosmtpd.controller import Controller

    received = []

    class Inbox:
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope)
            return "250 OK"

    client = pooled_apps[0].test_client()
    tenant = _signup(client, f"pgb{uuid.uuid4().hex[:6]}-w")
    cleanup.append(tenant["id"])
    for n in range(INVITES):
        r = client.post(
            "/api/v1/members",
            json={"email": f"m{n}@{tenant['slug']}.test", "role": "member"},
            headers=tenant["h"],
        )
        assert r.status_code == 201, r.get_json()
    port = harness.free_port()
    controller = Controller(Inbox(), hostname="127.0.0.1", port=port)
    controller.start()
    load_handlers()
    database = Database.from_url(pooled_settings.database_url, pool_size=2, max_overflow=0)
    try:
        w = Worker(database, pooled_settings.with_overrides(smtp_url=f"smtp://127.0.0.1:{port}"))
        assert w.run_until_idle().get("sent", 0) >= INVITES
    finally:
        controller.stop()
        database.dispose()
    invited = [e.rcpt_tos[0] for e in received if tenant["slug"] in e.rcpt_tos[0]]
    assert sorted(
        a for a in invited if a != tenant["email"]
    ) == sorted(  # the owner got its verification link
        f"m{n}@{tenant['slug']}.test" for n in range(INVITES)
    )
    with direct_engine.connect() as conn:
        pending = conn.scalar(
            select(OutboxMessage.id).where(
                OutboxMessage.topic == "mail.invitation", OutboxMessage.sent_at.is_(None)
            )
        )
    assert pending is None


# --- migrations ------------------------------------------------------------------------------------

SCRATCH_REVISION = '''
"""scratch: a nullable column

Revision ID: 9101
Revises: {down}
"""

import sqlalchemy as sa
from alembic import op

revision = "9101"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("contacts", sa.Column("pooled_note", sa.String(50), nullable=True), schema="tenant")


def downgrade() -> None:
    op.drop_column("contacts", "pooled_note", schema="tenant")
'''


def _cli(settings, *args: str):
    ctx = Context()
    ctx._settings = settings
    try:
        return CliRunner().invoke(main, list(args), obj=ctx, catch_exceptions=False)
    finally:
        ctx.close()


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_migrations_run_through_the_pooler(
    pooled_apps, pooled_settings, direct_engine, cleanup, tmp_path, parallel
):
    """``saas db upgrade`` and ``saas tenants migrate`` (serial and with worker processes) work
    through PgBouncer in transaction mode: each tenant is one transaction whose search path and
    lock timeout are ``SET LOCAL``. (The migration Job still uses ``DATABASE_URL_DIRECT``: long
    DDL transactions should not hold pooled server connections.)"""
    client = pooled_apps[0].test_client()
    tenants = [_signup(client, f"pgb{uuid.uuid4().hex[:6]}-m{i}") for i in range(3)]
    cleanup.extend(t["id"] for t in tenants)
    track = tmp_path / "tenant"
    shutil.copytree(MIGRATIONS_DIR / "tenant", track, ignore=shutil.ignore_patterns("__pycache__"))
    (track / "versions" / "9101_scratch.py").write_text(
        textwrap.dedent(SCRATCH_REVISION).format(down=tenant_head_revision())
    )
    upgraded = _cli(pooled_settings, "db", "upgrade", "--shared-only")
    assert upgraded.exit_code == 0, upgraded.output
    args = ["tenants", "migrate", "--json", "--track", str(track), "-j", parallel]
    for tenant in tenants:
        args += ["--tenant", tenant["slug"]]
    result = _cli(pooled_settings, *args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["migrated"] == 3 and report["failed"] == [], report
    with direct_engine.connect() as conn:
        for tenant in tenants:
            schema = "t_" + uuid.UUID(tenant["id"]).hex
            assert conn.scalar(text(f'SELECT version_num FROM "{schema}".alembic_version')) == "9101"  # noqa: S608
            assert conn.scalar(
                text(
                    "SELECT 1 FROM information_schema.columns"
                    " WHERE table_schema=:s AND column_name='pooled_note'"
                ),
                {"s": schema},
            )


def test_export_through_the_pooler(pooled_apps, pooled_settings, cleanup, tmp_path):
    """``saas tenants export``: a REPEATABLE READ, read-only transaction streaming rows through
    a server-side cursor, all inside one transaction, so one server connection."""
    client = pooled_apps[0].test_client()
    tenant = _signup(client, f"pgb{uuid.uuid4().hex[:6]}-e")
    cleanup.append(tenant["id"])
    for n in range(3):
        body = harness.contact_body(harness.Tenant(tenant["slug"], tenant["h"]), n)
        assert client.post("/api/v1/contacts", json=body, headers=tenant["h"]).status_code == 201
    out = tmp_path / "export.jsonl"
    result = _cli(pooled_settings, "tenants", "export", tenant["slug"], "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    companies = [json.dumps(line) for line in lines if '"company"' in json.dumps(line)]
    assert len(companies) == 3 and all(tenant["slug"] in c for c in companies)


def test_migrations_use_database_url_direct(pooled_settings, database_url):
    """``DATABASE_URL_DIRECT`` is what ``saas db upgrade`` and ``saas tenants migrate`` connect
    to: with ``DATABASE_URL`` pointing at a port where nothing listens, they still succeed."""
    dead = make_url(database_url).set(port=harness.free_port()).render_as_string(hide_password=False)
    settings = pooled_settings.with_overrides(database_url=dead, database_url_direct=database_url)
    for args in (("db", "upgrade", "--json"), ("tenants", "migrate", "--json")):
        result = _cli(settings, *args)
        assert result.exit_code == 0, result.output
    # and without it, the same commands use DATABASE_URL (which is dead here)
    result = _cli(settings.with_overrides(database_url_direct=None), "tenants", "migrate", "--json")
    assert result.exit_code == 1 and "database error" in result.output


# --- the start-up check of DB_PREPARED_STATEMENTS --------------------------------------------------


def test_prepared_statements_on_through_the_pooler_refuses_to_start(pooled_settings, redis_client):
    """PgBouncer 1.18 does not track prepared statements: ``create_app`` refuses to start with
    one line naming the setting."""
    with pytest.raises(SettingsError) as refused:
        create_app(pooled_settings.with_overrides(db_prepared_statements=True), redis=redis_client)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("DB_PREPARED_STATEMENTS: on, but ") and "DATABASE_URL" in message


def test_prepared_statements_on_needs_a_direct_connection(database_url, settings, redis_client):
    """Needs PostgreSQL directly: there, the check proves it (the backend that announced
    itself at connection start runs every transaction) and psycopg prepares as usual."""
    application = create_app(settings.with_overrides(db_prepared_statements=True), redis=redis_client)
    engine = services(application).database.engine
    try:
        assert verify_prepared_statements(engine) == "direct"
        with engine.connect() as conn:
            assert conn.connection.driver_connection.prepare_threshold == 5
    finally:
        engine.dispose()


def test_prepared_statements_verdict():
    """The decision itself, including the PgBouncer >= 1.21 case this machine cannot run
    (it renames prepared statements ``PGBOUNCER_<n>`` on the server)."""
    assert prepared_statements_verdict(41, {41}, {"_pg3_0"}) == "direct"
    assert prepared_statements_verdict(-7734, {52, 53}, {"PGBOUNCER_3", "PGBOUNCER_9"}) == "tracking pooler"
    assert prepared_statements_verdict(-7734, {52}, {"_pg3_0"}) is None  # pass-through pooler
    assert prepared_statements_verdict(41, {41, 42}, {"_pg3_0"}) is None  # pid reused by a pooler?
    assert prepared_statements_verdict(41, {41}, set()) is None  # nothing prepared: nothing proven


def test_cli_refuses_prepared_statements_through_the_pooler(pooled_settings):
    result = _cli(pooled_settings.with_overrides(db_prepared_statements=True), "tenants", "migrate", "--json")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: DB_PREPARED_STATEMENTS: on, but "), lines


def test_gunicorn_refuses_prepared_statements_through_the_pooler(pooled_url, redis_client, tmp_path):
    """gunicorn stops at start (worker boot error) and logs the one line, no traceback."""
    kwargs = redis_client.connection_pool.connection_kwargs
    redis_url = f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs['db']}"
    env = harness.app_env(pooled_url, redis_url, tmp_path, DB_PREPARED_STATEMENTS="on")
    with pytest.raises(RuntimeError) as stopped, harness.gunicorn(env, workers=1):
        pass
    log = str(stopped.value)
    assert "error: DB_PREPARED_STATEMENTS: on, but " in log and "Traceback" not in log


# --- the concurrent mixed load ---------------------------------------------------------------------


def test_concurrent_mixed_load_returns_only_own_rows(pooled_url, redis_client, tmp_path, direct_engine):
    """gunicorn (4 workers) through PgBouncer (transaction mode, ``default_pool_size`` 5), 20
    tenants, 32 threads of mixed list, search, create and get for 10 s: every 2xx body holds
    only the caller's tenant's rows, and nothing answers 5xx. (Before prepared statements were
    turned off, the same run returned rows of other tenants and hundreds of 5xx.)"""
    kwargs = redis_client.connection_pool.connection_kwargs
    redis_url = f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs['db']}"
    env = harness.app_env(pooled_url, redis_url, tmp_path)
    with harness.gunicorn(env, workers=4) as server:
        tenants = harness.seed_tenants(server.base, 20, contacts_each=2)
        try:
            result = harness.run_load(server.base, tenants, seconds=10, threads=32)
        finally:
            with direct_engine.connect() as conn:
                ids = conn.scalars(
                    text("SELECT id FROM saas.tenants WHERE slug = ANY(:s)"), {"s": [t.slug for t in tenants]}
                ).all()
            _drop(direct_engine, ids)
    print(result.summary(), file=sys.stderr)
    assert result.requests >= 100, result.summary()  # a load, also on a slow machine
    assert result.by_kind["create"] and result.by_kind["get"] and result.by_kind["search"]
    assert result.foreign_rows == 0, result.examples
    assert result.server_errors == 0, result.summary()
    assert result.other_errors == 0, result.summary()


def test_no_server_connection_carries_tenant_state(pooled_apps, pooled_url, cleanup):
    """After tenant requests through PgBouncer, every server connection of the pool (all five
    held at once, so each is a different one) has the default search path and no tenant schema."""
    client = pooled_apps[0].test_client()
    tenant = _signup(client, f"pgb{uuid.uuid4().hex[:6]}-s")
    cleanup.append(tenant["id"])
    for n in range(ROUNDS):
        body = harness.contact_body(harness.Tenant(tenant["slug"], tenant["h"]), n)
        assert client.post("/api/v1/contacts", json=body, headers=tenant["h"]).status_code == 201
        assert client.get("/api/v1/contacts", headers=tenant["h"]).status_code == 200
    eng = create_engine(pooled_url, pool_size=DEFAULT_POOL_SIZE, max_overflow=0, connect_args=connect_args())
    conns = [eng.connect() for _ in range(DEFAULT_POOL_SIZE)]
    try:
        seen = set()
        for conn in conns:
            conn.begin()  # held open: PgBouncer gives each its own server connection
            seen.add(conn.scalar(text("SELECT pg_backend_pid()")))
            assert conn.scalar(text("SHOW search_path")) == '"$user", public'
            assert "t_" not in conn.scalar(text("SELECT current_schemas(false)::text"))
            assert conn.scalar(text("SELECT count(*) FROM pg_prepared_statements")) == 0
        assert len(seen) == DEFAULT_POOL_SIZE
    finally:
        for conn in conns:
            conn.close()
        eng.dispose()


def test_k8s_migrations_connect_directly():
    """The secret template carries ``DATABASE_URL_DIRECT`` (PostgreSQL, not the pooler) next to
    ``DATABASE_URL`` (PgBouncer); the migrate Job gets both and the CLI picks the direct one;
    the app's config keeps prepared statements off."""
    import yaml

    infra = Path(__file__).resolve().parents[2] / "infra" / "k8s"
    secret = next(yaml.safe_load_all((infra / "secret.template.yaml").read_text()))["stringData"]
    assert make_url(secret["DATABASE_URL"]).port == 6432
    assert make_url(secret["DATABASE_URL_DIRECT"]).port == 5432
    job = yaml.safe_load((infra / "migrate" / "job.yaml").read_text())["spec"]["template"]["spec"]
    container = job["containers"][0]
    assert {"secretRef": {"name": "saas-secrets"}} in container["envFrom"]
    assert all(e["name"] != "DATABASE_URL" for e in container.get("env", []))  # not overridden
    config = yaml.safe_load((infra / "configmap.yaml").read_text())["data"]
    assert config["DB_PREPARED_STATEMENTS"] == "off"


def test_settings_of_the_pooled_deployment():
    from saas.settings import Settings

    s = Settings.from_env(
        {"DATABASE_URL_DIRECT": "postgres://u@db:5432/saas", "DB_PREPARED_STATEMENTS": "on"}
    )
    assert s.database_url_direct == "postgresql://u@db:5432/saas" and s.db_prepared_statements is True
    assert Settings.from_env({}).db_prepared_statements is False
    with pytest.raises(SettingsError, match=r"^DATABASE_URL_DIRECT: "):
        Settings.from_env({"DATABASE_URL_DIRECT": "mysql://u:secret@db/saas"})
    with pytest.raises(SettingsError, match=r"^DB_PREPARED_STATEMENTS: "):
        Settings.from_env({"DB_PREPARED_STATEMENTS": "sometimes"})
