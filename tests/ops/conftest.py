"""Fixtures of the operations tests: committed tenants (the CLI and worker processes use their
own connections, so these tests commit and clean up after themselves) and a CLI runner."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from psycopg import sql as pgsql
from sqlalchemy import delete, select

from saas.cli import Context, main
from saas.db import Database, schema_name_for
from saas.identity.models import Membership, Tenant, User
from saas.migrate import tenant_head_revision
from saas.outbox import OutboxMessage
from saas.tenancy.provisioning import create_tenant_schema


class Committed:
    """Creates committed tenants (schema at head, an owner) and removes them at teardown."""

    def __init__(self, engine):
        self.engine = engine
        self.db = Database(engine)
        self.tenant_ids: set[uuid.UUID] = set()
        self.user_emails: set[str] = set()

    def tenant(self, slug: str | None = None, members: int = 1) -> Tenant:
        slug = slug or f"ops-{uuid.uuid4().hex[:10]}"
        tid = uuid.uuid4()
        schema = schema_name_for(tid)
        with self.db.transaction() as session:
            tenant = Tenant(
                id=tid,
                slug=slug,
                name=slug.title(),
                schema_name=schema,
                schema_version=tenant_head_revision(),
            )
            session.add(tenant)
            session.flush()
            create_tenant_schema(session.connection(), schema)
            for i in range(members):
                email = f"m{i}@{slug}.test"
                user = User(email=email, name=f"Member {i}", password_hash=None)
                session.add(user)
                session.flush()
                session.add(Membership(user_id=user.id, tenant_id=tid, role="owner" if i == 0 else "member"))
                self.user_emails.add(email)
        self.tenant_ids.add(tid)
        return tenant

    def track(self, tenant_id: uuid.UUID) -> None:
        self.tenant_ids.add(tenant_id)

    def cleanup(self) -> None:
        with self.db.transaction() as session:
            ids = set(self.tenant_ids)
            for schema in session.scalars(select(Tenant.schema_name).where(Tenant.id.in_(ids))):
                session.execute(_drop(schema))
            for tid in ids:
                session.execute(_drop(schema_name_for(tid)))
            session.execute(delete(Tenant).where(Tenant.id.in_(ids)))
            # mail queued for them (imports invite their members) has no foreign key to cascade
            session.execute(delete(OutboxMessage).where(OutboxMessage.tenant_id.in_(ids)))
            emails = {e.lower() for e in self.user_emails}
            if emails:
                from sqlalchemy import func

                session.execute(delete(User).where(func.lower(User.email).in_(emails)))


def _drop(schema: str):
    from sqlalchemy import text

    return text(
        pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pgsql.Identifier(schema)).as_string(None)
    )


@pytest.fixture()
def committed(engine, redis_client) -> Iterator[Committed]:
    redis_client.flushdb()
    helper = Committed(engine)
    try:
        yield helper
    finally:
        helper.cleanup()


@pytest.fixture()
def cli_settings(settings, redis_client):
    url = redis_client.connection_pool.connection_kwargs
    return settings.with_overrides(redis_url=f"redis://{url['host']}:{url['port']}/{url['db']}")


@pytest.fixture()
def run_cli(cli_settings, monkeypatch):
    """``run_cli("tenants", "list", "--json")`` -> click Result (stdout and stderr kept apart)."""
    monkeypatch.setenv("SAAS_OPERATOR", "op-tester")
    contexts: list[Context] = []

    def run(*args: str, input: str | None = None):
        ctx = Context()
        ctx._settings = cli_settings
        contexts.append(ctx)
        return CliRunner().invoke(main, list(args), obj=ctx, input=input, catch_exceptions=False)

    yield run
    for ctx in contexts:
        ctx.close()


@pytest.fixture()
def forget_committed(engine) -> Iterator[set[str]]:
    """For a test whose server commits for real (gunicorn): the tenant ids it adds to the set
    are dropped afterwards, and every outbox message queued meanwhile (a signup's verification
    mail...) is deleted, so no later worker test delivers it."""
    from tests.helpers import drop_tenant

    with engine.connect() as conn:
        mark = conn.scalar(select(OutboxMessage.id).order_by(OutboxMessage.id.desc()).limit(1)) or 0
    tenants: set[str] = set()
    try:
        yield tenants
    finally:
        for tenant_id in tenants:
            drop_tenant(engine, tenant_id)
        with engine.begin() as conn:
            conn.execute(delete(OutboxMessage).where(OutboxMessage.id > mark))
