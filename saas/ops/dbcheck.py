"""``saas db check``: the models and both migration tracks agree, and every tenant is at head.

* shared track: the database's ``saas`` schema is at the track's head and Alembic's
  autogenerate comparison (:func:`alembic.autogenerate.compare_metadata`) against
  ``shared_metadata`` finds nothing;
* tenant track: inside a transaction that is rolled back, a scratch schema is built by running
  the whole tenant track and another by :func:`~saas.tenancy.provisioning.create_tenant_schema`
  (what signup does); both must compare equal to ``tenant_metadata``;
* tenants: none behind the tenant head (one catalogue query), none whose schema is missing, and
  none whose schema's own ``alembic_version`` differs from ``saas.tenants.schema_version``
  (drift: :func:`saas.ops.migrations.drifted_schemas`; ``saas tenants migrate --verify`` repairs
  it).

``migrations_only=True`` (``saas db check --migrations-only``) runs only the two cheap checks a
new release needs before it serves (shared revision at head, every tenant's catalogue row at
head; it does not read each schema's version): the app's
``wait-for-migrations`` initContainer (infra/k8s/app.yaml) polls it with ``--wait``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from psycopg import sql as pgsql
from sqlalchemy import Engine, MetaData, text

from saas.db import SHARED_SCHEMA, shared_metadata

_SCRATCH_MIGRATED = "t_" + "0" * 31 + "a"
_SCRATCH_PROVISIONED = "t_" + "0" * 31 + "b"


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def _diff_text(diffs: list[Any], limit: int = 5) -> str:
    shown = []
    for diff in diffs[:limit]:
        item = diff[0] if isinstance(diff, list) else diff
        shown.append(" ".join(str(x) for x in item[:2]) if isinstance(item, tuple) else str(item))
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return "; ".join(shown) + more


def _compare(conn, metadata: MetaData, schema: str, version_table_schema: str) -> list[Any]:
    def include_name(name, type_, parent_names):
        if type_ == "schema":
            return name == schema
        return not (type_ == "table" and name == "alembic_version")

    context = MigrationContext.configure(
        connection=conn,
        opts={
            "target_metadata": metadata,
            "include_schemas": True,
            "include_name": include_name,
            "compare_type": True,
            "version_table_schema": version_table_schema,
        },
    )
    return compare_metadata(context, metadata)


def _tenant_metadata_in(schema: str) -> MetaData:
    from saas.product import tenant_tables

    copy = MetaData()
    for table in tenant_tables():
        table.to_metadata(copy, schema=schema)
    return copy


def check_database(engine: Engine, *, migrations_only: bool = False) -> list[CheckResult]:
    """Run every check; never raises for a failed check (each is a :class:`CheckResult`).

    ``migrations_only``: only "shared revision" and "tenant schemas at head" (two queries, no
    scratch schemas, no autogenerate comparison)."""
    import saas.models  # noqa: F401 - every shared table
    from saas.migrate import current_shared_revision, shared_head_revision
    from saas.ops.migrations import TenantMigrator

    results: list[CheckResult] = []
    shared_head = shared_head_revision()
    current = current_shared_revision(engine)
    results.append(
        CheckResult(
            "shared revision",
            current == shared_head,
            f"at {current}" if current == shared_head else f"at {current}, head is {shared_head}",
        )
    )
    migrator = TenantMigrator()
    if not migrations_only:
        _check_models(engine, migrator, results)
    _check_tenants(engine, migrator, results, read_schemas=not migrations_only)
    return results


def _check_models(engine: Engine, migrator: Any, results: list[CheckResult]) -> None:
    from saas.tenancy.provisioning import create_tenant_schema

    with engine.connect() as conn:
        diffs = _compare(conn, shared_metadata, SHARED_SCHEMA, SHARED_SCHEMA)
    results.append(
        CheckResult(
            "shared models vs database",
            not diffs,
            "no difference" if not diffs else f"{len(diffs)} differences: {_diff_text(diffs)}",
        )
    )

    with engine.connect() as conn:
        trans = conn.begin()
        try:
            quoted = pgsql.Identifier(_SCRATCH_MIGRATED).as_string(None)
            conn.exec_driver_sql(f"CREATE SCHEMA {quoted}")
            conn.exec_driver_sql(
                f"CREATE TABLE {quoted}.alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"
            )
            conn.exec_driver_sql(f"SET LOCAL search_path TO {quoted}")
            migrator.upgrade_schema(conn, _SCRATCH_MIGRATED, None)
            diffs = _compare(
                conn, _tenant_metadata_in(_SCRATCH_MIGRATED), _SCRATCH_MIGRATED, _SCRATCH_MIGRATED
            )
            results.append(
                CheckResult(
                    "tenant models vs tenant track",
                    not diffs,
                    f"no difference at {migrator.head}"
                    if not diffs
                    else f"{len(diffs)} differences: {_diff_text(diffs)}",
                )
            )
            create_tenant_schema(conn, _SCRATCH_PROVISIONED)
            diffs = _compare(
                conn, _tenant_metadata_in(_SCRATCH_PROVISIONED), _SCRATCH_PROVISIONED, _SCRATCH_PROVISIONED
            )
            results.append(
                CheckResult(
                    "tenant models vs provisioning",
                    not diffs,
                    "no difference" if not diffs else f"{len(diffs)} differences: {_diff_text(diffs)}",
                )
            )
        finally:
            trans.rollback()


def _check_tenants(
    engine: Engine, migrator: Any, results: list[CheckResult], *, read_schemas: bool = True
) -> None:
    from saas.ops.migrations import drifted_schemas, tenants_behind

    total, behind = tenants_behind(engine, migrator.head)
    with engine.connect() as conn:
        missing = (
            conn.execute(
                text(
                    f"SELECT t.schema_name FROM {SHARED_SCHEMA}.tenants t "  # noqa: S608 - constant schema
                    "LEFT JOIN pg_namespace n ON n.nspname = t.schema_name WHERE n.oid IS NULL"
                )
            )
            .scalars()
            .all()
        )
    # the catalogue column can be wrong (a schema restored or changed behind its back): read
    # each schema's own alembic_version too; a missing schema is reported above, not twice
    drifted = [d for d in drifted_schemas(engine)[1] if not d.schema_missing] if read_schemas else []
    ok = not behind and not missing and not drifted
    detail = f"{total} tenants at {migrator.head}"
    if behind:
        detail = f"{len(behind)} of {total} tenants behind {migrator.head} (run `saas tenants migrate`)"
    if missing:
        detail += f"; {len(missing)} schemas missing: {', '.join(missing[:3])}"
    if drifted:
        shown = ", ".join(d.describe() for d in drifted[:3])
        more = f" (+{len(drifted) - 3} more)" if len(drifted) > 3 else ""
        detail += (
            f"; {len(drifted)} schemas drifted from saas.tenants.schema_version: {shown}{more}"
            " (run `saas tenants migrate --verify`)"
        )
    results.append(CheckResult("tenant schemas at head", ok, detail))
