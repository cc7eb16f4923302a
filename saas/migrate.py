"""Running the two Alembic tracks: the shared schema, then every tenant schema.

Tenants already at the tenant track's head are skipped with one query on
``saas.tenants.schema_version`` (no migration context is opened for them). Each tenant is
migrated in its own transaction; a failing tenant is reported and the others go on.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg import sql as pgsql
from sqlalchemy import Engine, select, text, update

from saas.db import SHARED_SCHEMA, check_schema_name, connect_args
from saas.memo import memoize

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(track: str) -> Config:
    """An Alembic config for ``track`` (``shared`` or ``tenant``), with no ini file."""
    if track not in ("shared", "tenant"):
        raise ValueError(f"unknown migration track {track!r}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR / track))
    return cfg


@memoize("migrate.tenant_head", maxsize=1)
def tenant_head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("tenant")).get_current_head()
    if head is None:
        raise RuntimeError("the tenant migration track has no revision")
    return head


@memoize("migrate.shared_head", maxsize=1)
def shared_head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("shared")).get_current_head()
    if head is None:
        raise RuntimeError("the shared migration track has no revision")
    return head


def upgrade_shared(engine: Engine, revision: str = "head") -> None:
    """Bring the shared schema to ``revision`` in one transaction."""
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {SHARED_SCHEMA}")
        cfg = alembic_config("shared")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def upgrade_tenant_schema(conn, schema: str, revision: str = "head") -> None:
    """Run the tenant track on one schema inside the caller's transaction."""
    cfg = alembic_config("tenant")
    cfg.attributes["connection"] = conn
    cfg.attributes["schema"] = check_schema_name(schema)
    command.upgrade(cfg, revision)


def current_shared_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        exists = conn.scalar(text("SELECT to_regclass(:t)"), {"t": f"{SHARED_SCHEMA}.alembic_version"})
        if not exists:
            return None
        return conn.scalar(text(f"SELECT version_num FROM {SHARED_SCHEMA}.alembic_version"))  # noqa: S608 - constant schema


@dataclass
class TenantMigrationReport:
    total: int = 0
    skipped: int = 0
    migrated: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def tenants_behind(
    engine: Engine, only: Iterable[str] | None = None
) -> tuple[int, list[tuple[uuid.UUID, str]]]:
    """(number of tenants considered, [(id, schema)] of those not at head): one query."""
    from saas.identity.models import Tenant

    head = tenant_head_revision()
    query = select(Tenant.id, Tenant.schema_name, Tenant.schema_version, Tenant.slug)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    wanted = set(only or ())
    if wanted:
        rows = [r for r in rows if r.slug in wanted or str(r.id) in wanted]
    return len(rows), [(r.id, r.schema_name) for r in rows if r.schema_version != head]


def upgrade_tenants(
    engine: Engine,
    only: Iterable[str] | None = None,
    progress: Callable[[str, bool], None] | None = None,
) -> TenantMigrationReport:
    """Migrate every tenant schema that is behind, one transaction each."""
    from saas.identity.models import Tenant

    head = tenant_head_revision()
    total, behind = tenants_behind(engine, only)
    report = TenantMigrationReport(total=total, skipped=total - len(behind))
    for tenant_id, schema in behind:
        try:
            with engine.begin() as conn:
                upgrade_tenant_schema(conn, schema)
                conn.execute(update(Tenant).where(Tenant.id == tenant_id).values(schema_version=head))
            report.migrated.append(schema)
            ok = True
        except Exception as exc:
            report.failed[schema] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ok = False
        if progress:
            progress(schema, ok)
    return report


def drop_schema_sql(schema: str) -> str:
    return f"DROP SCHEMA IF EXISTS {pgsql.Identifier(check_schema_name(schema)).as_string(None)} CASCADE"


def main(argv: list[str] | None = None) -> int:
    """``python -m saas.migrate revision shared|tenant -m MESSAGE``: autogenerate a revision
    against the database in ``DATABASE_URL`` (use a scratch database at head)."""
    import argparse
    import os

    from sqlalchemy import create_engine

    parser = argparse.ArgumentParser(prog="python -m saas.migrate")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision")
    rev.add_argument("track", choices=["shared", "tenant"])
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--schema", help="tenant schema to compare against (tenant track)")
    args = parser.parse_args(argv)
    url = os.environ.get("DATABASE_URL")
    if not url:
        print("DATABASE_URL: required", file=sys.stderr)
        return 2
    engine = create_engine(
        url.replace("postgresql://", "postgresql+psycopg://", 1), connect_args=connect_args()
    )
    with engine.begin() as conn:
        cfg = alembic_config(args.track)
        cfg.attributes["connection"] = conn
        if args.track == "tenant":
            if not args.schema:
                print("--schema: required for the tenant track", file=sys.stderr)
                return 2
            cfg.attributes["schema"] = args.schema
        command.revision(cfg, message=args.message, autogenerate=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
