"""Migrations: creating a tenant schema from the models and stamping it gives exactly the
catalogue that replaying the tenant track gives; the shared track is idempotent; tenants at
head are skipped."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from saas.db import SHARED_SCHEMA, schema_name_for
from saas.migrate import (
    current_shared_revision,
    shared_head_revision,
    tenant_head_revision,
    upgrade_shared,
    upgrade_tenant_schema,
)
from saas.services import services
from saas.tenancy.provisioning import create_tenant_schema


def catalogue(conn, schema: str) -> dict[str, list[tuple]]:
    """Columns (types, nullability, defaults), indexes and constraints of ``schema``, with the
    schema name taken out so two schemas compare equal."""
    p = {"s": schema}
    columns = conn.execute(
        text(
            """
            SELECT table_name, ordinal_position, column_name, data_type, udt_name,
                   character_maximum_length, numeric_precision, datetime_precision,
                   is_nullable, column_default, is_identity
            FROM information_schema.columns WHERE table_schema = :s
            ORDER BY table_name, ordinal_position
            """
        ),
        p,
    ).all()
    indexes = conn.execute(
        text("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = :s ORDER BY 1, 2"), p
    ).all()
    constraints = conn.execute(
        text(
            """
            SELECT cl.relname, c.conname, c.contype, pg_get_constraintdef(c.oid), c.condeferrable
            FROM pg_constraint c
            JOIN pg_class cl ON cl.oid = c.conrelid
            JOIN pg_namespace n ON n.oid = cl.relnamespace
            WHERE n.nspname = :s ORDER BY 1, 2
            """
        ),
        p,
    ).all()
    tables = conn.execute(
        text(
            "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :s ORDER BY 1"
        ),
        p,
    ).all()

    def scrub(rows):
        return [
            tuple(str(v).replace(f'"{schema}".', "S.").replace(f"{schema}.", "S.") for v in r) for r in rows
        ]

    return {
        "columns": scrub(columns),
        "indexes": scrub(indexes),
        "constraints": scrub(constraints),
        "relations": scrub(tables),
    }


def test_create_then_stamp_equals_replay(connection):
    created, replayed = schema_name_for(uuid.uuid4()), schema_name_for(uuid.uuid4())
    create_tenant_schema(connection, created)
    connection.exec_driver_sql(f'CREATE SCHEMA "{replayed}"')
    upgrade_tenant_schema(connection, replayed)
    a, b = catalogue(connection, created), catalogue(connection, replayed)
    assert a["columns"], "nothing was created"
    for part in ("columns", "indexes", "constraints", "relations"):
        assert a[part] == b[part], part
    version = "SELECT version_num FROM {}.alembic_version"
    assert connection.scalar(text(version.format(created))) == tenant_head_revision()
    assert connection.scalar(text(version.format(replayed))) == tenant_head_revision()


def test_created_schema_accepts_the_tenant_track_as_at_head(connection):
    """Alembic sees a created schema as already at head: upgrading it changes nothing."""
    schema = schema_name_for(uuid.uuid4())
    create_tenant_schema(connection, schema)
    before = catalogue(connection, schema)
    upgrade_tenant_schema(connection, schema)
    assert catalogue(connection, schema) == before


def test_shared_track_upgrade_is_idempotent(engine):
    assert current_shared_revision(engine) == shared_head_revision()
    with engine.connect() as conn:
        before = catalogue(conn, SHARED_SCHEMA)
    upgrade_shared(engine)
    upgrade_shared(engine)
    assert current_shared_revision(engine) == shared_head_revision()
    with engine.connect() as conn:
        assert catalogue(conn, SHARED_SCHEMA) == before


def test_shared_models_match_the_shared_track(engine):
    """The shared track at head matches the models (no autogenerate diff)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import saas.models  # noqa: F401
    from saas.db import shared_metadata

    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "include_schemas": True,
                "include_name": lambda name, type_, parent: type_ != "schema" or name == SHARED_SCHEMA,
                "compare_type": True,
                "version_table_schema": SHARED_SCHEMA,
            },
        )
        diff = compare_metadata(ctx, shared_metadata)
    assert diff == []


def test_tenant_models_match_the_tenant_track(connection):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import tenants.models  # noqa: F401
    from saas.db import tenant_metadata

    schema = schema_name_for(uuid.uuid4())
    connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    upgrade_tenant_schema(connection, schema)
    conn = connection.execution_options(schema_translate_map={"tenant": schema})
    ctx = MigrationContext.configure(
        conn,
        opts={
            "include_schemas": True,
            "include_name": lambda name, type_, parent: type_ != "schema" or name == schema,
            "compare_type": True,
            "version_table_schema": schema,
        },
    )
    # compare against a copy of the metadata in the real schema name
    from sqlalchemy import MetaData

    copy = MetaData()
    for table in tenant_metadata.sorted_tables:
        table.to_metadata(copy, schema=schema)
    assert compare_metadata(ctx, copy) == []


def test_upgrade_tenants_skips_tenants_at_head(app, engine):
    from saas.db import Database
    from saas.migrate import tenants_behind, upgrade_tenants
    from saas.tenancy.provisioning import provision_tenant
    from tests.helpers import drop_tenant

    db = Database(engine)
    with app.app_context(), db.transaction() as session:
        done = provision_tenant(
            session,
            services(app).passwords,
            slug="mig-skip",
            name="M",
            owner_email="o@mig-skip.test",
            owner_password=None,
        )
        tenant_id = done.tenant.id
    try:
        total, behind = tenants_behind(engine, only=["mig-skip"])
        assert (total, behind) == (1, [])
        report = upgrade_tenants(engine, only=["mig-skip"])
        assert report.ok and report.skipped == 1 and report.migrated == []
        # a tenant marked behind is migrated (a no-op at head) and marked current again
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE saas.tenants SET schema_version = NULL WHERE id = :i"), {"i": tenant_id}
            )
        report = upgrade_tenants(engine, only=[str(tenant_id)])
        assert report.ok and report.migrated == [schema_name_for(tenant_id)]
        assert tenants_behind(engine, only=["mig-skip"])[1] == []
    finally:
        drop_tenant(engine, tenant_id)
