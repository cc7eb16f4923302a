"""Fast tenant migrations: skip at head, parallel workers, one failing tenant, re-runs."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
from psycopg import sql as pgsql
from sqlalchemy import text

from saas.migrate import MIGRATIONS_DIR, tenant_head_revision
from saas.ops.migrations import migrate_tenants, tenants_behind

SCRATCH_REVISION = '''
"""scratch: nullable column and index

Revision ID: 9001
Revises: {down}
"""

import sqlalchemy as sa
from alembic import op

revision = "9001"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("contacts", sa.Column("nickname", sa.String(50), nullable=True), schema="tenant")
    op.create_index("ix_contacts_nickname", "contacts", ["nickname"], schema="tenant")


def downgrade() -> None:
    op.drop_index("ix_contacts_nickname", "contacts", schema="tenant")
    op.drop_column("contacts", "nickname", schema="tenant")
'''


@pytest.fixture()
def scratch_track(tmp_path):
    """A copy of the tenant track with one extra revision (never committed to the real one)."""
    track = tmp_path / "tenant"
    shutil.copytree(MIGRATIONS_DIR / "tenant", track, ignore=shutil.ignore_patterns("__pycache__"))
    (track / "versions" / "9001_scratch.py").write_text(
        textwrap.dedent(SCRATCH_REVISION).format(down=tenant_head_revision())
    )
    return track


def _columns(engine, schema: str) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.scalars(
                text(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema=:s AND table_name='contacts'"
                ),
                {"s": schema},
            )
        )


def _version(engine, schema: str) -> str:
    with engine.connect() as conn:
        return conn.scalar(text(f'SELECT version_num FROM "{schema}".alembic_version'))  # noqa: S608


def test_nothing_pending_opens_no_migration_context(engine, committed):
    tenants = [committed.tenant() for _ in range(3)]
    report = migrate_tenants(engine, only=[t.slug for t in tenants])
    assert report.total == 3 and report.at_head == 3 and report.results == [] and report.ok


@pytest.mark.parametrize("parallel", [1, 2])
def test_pending_revision_applied_everywhere_and_one_failure_isolated(
    engine, committed, scratch_track, parallel
):
    tenants = [committed.tenant() for _ in range(5)]
    broken = tenants[2]
    with engine.begin() as conn:  # break one tenant: its contacts table is gone
        conn.execute(
            text(
                pgsql.SQL("DROP TABLE {}.contacts")
                .format(pgsql.Identifier(broken.schema_name))
                .as_string(None)
            )
        )
    slugs = [t.slug for t in tenants]
    seen = []
    report = migrate_tenants(
        engine, only=slugs, parallel=parallel, script_location=scratch_track, progress=seen.append
    )
    assert report.head == "9001"
    assert len(seen) == 5
    assert [r.schema for r in report.failed] == [broken.schema_name], [r.error for r in report.failed]
    assert "UndefinedTable" in report.failed[0].error
    assert len(report.migrated) == 4
    for t in tenants:
        if t is broken:
            assert _version(engine, t.schema_name) == tenant_head_revision()  # rolled back entirely
            continue
        assert "nickname" in _columns(engine, t.schema_name)
        assert _version(engine, t.schema_name) == "9001"
    _total, behind = tenants_behind(engine, "9001", slugs)
    assert [schema for _, schema in behind] == [broken.schema_name]

    # re-run: only the broken one is attempted (and fails again); fixed, it goes through
    again = migrate_tenants(engine, only=slugs, parallel=parallel, script_location=scratch_track)
    assert again.at_head == 4 and [r.schema for r in again.failed] == [broken.schema_name]
    with engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{broken.schema_name}".contacts (id uuid primary key)'))
    fixed = migrate_tenants(engine, only=slugs, parallel=parallel, script_location=scratch_track)
    assert fixed.ok and len(fixed.migrated) == 1
    assert "nickname" in _columns(engine, broken.schema_name)


def test_stale_catalogue_row_is_corrected_without_migrating(engine, committed):
    tenant = committed.tenant()
    with engine.begin() as conn:
        conn.execute(text("UPDATE saas.tenants SET schema_version = 'old' WHERE id = :i"), {"i": tenant.id})
    report = migrate_tenants(engine, only=[tenant.slug])
    assert [r.status for r in report.results] == ["skipped"]
    assert tenants_behind(engine, tenant_head_revision(), [tenant.slug])[1] == []


def test_cli_tenants_migrate_and_db_check(committed, run_cli, engine):
    tenant = committed.tenant()
    result = run_cli("tenants", "migrate", "--tenant", tenant.slug, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["at_head"] == 1
    assert run_cli("tenants", "migrate", "--tenant", "no-such-tenant").exit_code == 1

    result = run_cli("db", "check")
    assert result.exit_code == 0, result.output
    assert "tenant models vs tenant track: no difference" in result.stdout
    assert "tenant models vs provisioning: no difference" in result.stdout
    assert "shared models vs database: no difference" in result.stdout

    with engine.begin() as conn:
        conn.execute(text("UPDATE saas.tenants SET schema_version = 'old' WHERE id = :i"), {"i": tenant.id})
    result = run_cli("db", "check", "--json")
    assert result.exit_code == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert not checks["tenant schemas at head"]["ok"]
    assert run_cli("db", "upgrade").exit_code == 0
    assert run_cli("db", "check").exit_code == 0


def test_track_head_matches_alembic(scratch_track):
    from saas.ops.migrations import TenantMigrator, track_head

    assert track_head() == tenant_head_revision() == TenantMigrator().head
    assert track_head(scratch_track) == "9001" == TenantMigrator(scratch_track).head


def test_nothing_pending_never_imports_alembic(engine, committed):
    import subprocess
    import sys

    committed.tenant()
    script = (
        "import sys\n"
        "from sqlalchemy import create_engine\n"
        "from saas.ops.migrations import migrate_tenants\n"
        "report = migrate_tenants(create_engine(sys.argv[1]))\n"
        "assert report.results == [] and report.at_head >= 1, report\n"
        "print(sorted(m for m in sys.modules if m.startswith('alembic')))\n"
    )
    url = engine.url.render_as_string(hide_password=False)
    out = subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_db_check_migrations_only_waits_for_the_migration(committed, run_cli, engine):
    """What the app's wait-for-migrations initContainer runs before a release serves."""
    tenant = committed.tenant()
    with engine.begin() as conn:
        conn.execute(text("UPDATE saas.tenants SET schema_version = 'old' WHERE id = :i"), {"i": tenant.id})
    result = run_cli("db", "check", "--migrations-only", "--wait", "1", "--json")
    assert result.exit_code == 1
    checks = {c["name"]: c["ok"] for c in json.loads(result.stdout)}
    assert checks == {"shared revision": True, "tenant schemas at head": False}
    assert "waiting:" in result.stderr
    assert run_cli("tenants", "migrate", "--tenant", tenant.slug).exit_code == 0
    result = run_cli("db", "check", "--migrations-only", "--wait", "30")
    assert result.exit_code == 0, result.output


def test_a_locked_tenant_fails_fast_and_a_rerun_picks_it_up(engine, committed, scratch_track, run_cli):
    """Review defect: no lock_timeout, so a migration queued forever behind a long transaction
    (and every query on that table queued behind the migration)."""
    import time

    tenants = [committed.tenant() for _ in range(3)]
    blocked = tenants[1]
    slugs = [t.slug for t in tenants]
    holder = engine.connect()
    try:
        holder.begin()
        holder.execute(text(f'SELECT * FROM "{blocked.schema_name}".contacts LIMIT 1'))  # noqa: S608 - ACCESS SHARE
        start = time.perf_counter()
        report = migrate_tenants(engine, only=slugs, script_location=scratch_track, lock_timeout_ms=200)
        assert time.perf_counter() - start < 10
        assert [r.schema for r in report.failed] == [blocked.schema_name]
        assert "LockNotAvailable" in report.failed[0].error and len(report.migrated) == 2
    finally:
        holder.rollback()
        holder.close()
    assert _version(engine, blocked.schema_name) == tenant_head_revision()  # rolled back whole
    again = migrate_tenants(engine, only=slugs, script_location=scratch_track)
    assert again.ok and [r.schema for r in again.migrated] == [blocked.schema_name]

    result = run_cli("tenants", "migrate", "--lock-timeout", "-1")
    assert result.exit_code == 2  # a usage error, not a silent default


def test_parallel_worker_death_is_reported_not_hung(engine, committed, scratch_track, monkeypatch):
    """Review defect: Pool.imap_unordered waited forever for a result from a dead worker."""
    import os

    from saas.ops import migrations

    tenants = [committed.tenant() for _ in range(4)]
    doomed = tenants[0].schema_name
    real = migrations.TenantMigrator.migrate

    def dying(self, conn, tenant_id, schema):
        if schema == doomed:
            os._exit(9)  # what an OOM kill looks like to the parent (fork: the patch is inherited)
        return real(self, conn, tenant_id, schema)

    monkeypatch.setattr(migrations.TenantMigrator, "migrate", dying)
    report = migrate_tenants(
        engine, only=[t.slug for t in tenants], parallel=2, script_location=scratch_track
    )
    assert not report.ok and len(report.results) == 4
    assert doomed in {r.schema for r in report.failed}
    assert all("worker process died" in r.error for r in report.failed)
    monkeypatch.setattr(migrations.TenantMigrator, "migrate", real)
    again = migrate_tenants(engine, only=[t.slug for t in tenants], parallel=2, script_location=scratch_track)
    assert again.ok and again.at_head + len(again.migrated) == 4


def test_parallel_connection_failure_is_a_per_tenant_failure(engine, committed, scratch_track, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from saas.ops import migrations

    tenants = [committed.tenant() for _ in range(3)]

    def refused(*args, **kwargs):
        raise OperationalError("connect", {}, Exception("connection refused"))

    monkeypatch.setattr(migrations, "create_engine", refused)
    report = migrate_tenants(
        engine, only=[t.slug for t in tenants], parallel=2, script_location=scratch_track
    )
    assert len(report.failed) == 3 and all("connection failed" in r.error for r in report.failed)


def test_serial_connection_failure_is_a_per_tenant_failure(engine, committed, scratch_track, monkeypatch):
    from sqlalchemy.exc import OperationalError

    tenants = [committed.tenant() for _ in range(2)]
    real = engine.connect
    calls = []

    def second_call_refused():
        calls.append(1)
        if len(calls) == 2:  # 1: who is behind; 2: the migration connection
            raise OperationalError("connect", {}, Exception("too many clients"))
        return real()

    monkeypatch.setattr(engine, "connect", second_call_refused)
    report = migrate_tenants(engine, only=[t.slug for t in tenants], script_location=scratch_track)
    assert len(report.failed) == 2 and all("connection failed" in r.error for r in report.failed)


def _set_schema_version(engine, schema: str, version: str | None) -> None:
    """Change a schema's own alembic_version behind saas.tenants.schema_version's back."""
    table = pgsql.SQL("{}.alembic_version").format(pgsql.Identifier(schema)).as_string(None)
    with engine.begin() as conn:
        conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - quoted identifier
        if version is not None:
            conn.execute(text(f"INSERT INTO {table} (version_num) VALUES (:v)"), {"v": version})  # noqa: S608


def test_db_check_reports_a_schema_whose_own_version_drifted(committed, run_cli, engine, monkeypatch):
    from saas.ops import migrations

    monkeypatch.setattr(migrations, "VERSION_QUERY_CHUNK", 2)  # several version queries
    tenants = [committed.tenant() for _ in range(3)]
    head = tenant_head_revision()
    assert run_cli("db", "check").exit_code == 0
    _set_schema_version(engine, tenants[1].schema_name, "ffff0000")  # e.g. restored from elsewhere
    _set_schema_version(engine, tenants[2].schema_name, None)
    assert tenants_behind(engine, head, [t.slug for t in tenants])[1] == []  # the catalogue cannot see it

    result = run_cli("db", "check", "--json")
    assert result.exit_code == 1, result.output
    check = {c["name"]: c for c in json.loads(result.stdout)}["tenant schemas at head"]
    assert not check["ok"]
    assert "2 schemas drifted" in check["detail"]
    assert f"{tenants[1].schema_name} (schema at ffff0000, recorded {head})" in check["detail"]
    assert f"{tenants[2].schema_name} (schema at None, recorded {head})" in check["detail"]
    assert tenants[0].schema_name not in check["detail"]
    assert "saas tenants migrate --verify" in check["detail"]
    result = run_cli("db", "check")
    assert result.exit_code == 1 and "FAIL  tenant schemas at head" in result.stdout

    _set_schema_version(engine, tenants[1].schema_name, head)
    _set_schema_version(engine, tenants[2].schema_name, head)
    assert run_cli("db", "check").exit_code == 0


def test_migrate_verify_reads_each_schemas_own_version(committed, run_cli, engine, scratch_track):
    """The catalogue says the tenant is at the scratch head (9001) while its schema is at the
    real head: a plain run skips it, --verify migrates it from the version it really has."""
    tenant, other = committed.tenant(), committed.tenant()
    with engine.begin() as conn:
        conn.execute(text("UPDATE saas.tenants SET schema_version = '9001' WHERE id = :i"), {"i": tenant.id})
    track = str(scratch_track)
    slugs = ["--tenant", tenant.slug, "--tenant", other.slug]
    blind = run_cli("tenants", "migrate", *slugs, "--track", track, "--json")
    assert blind.exit_code == 0, blind.output
    assert json.loads(blind.stdout)["migrated"] == 1  # only the other tenant, behind by its row
    assert "nickname" not in _columns(engine, tenant.schema_name)  # never seen as behind

    verified = run_cli("tenants", "migrate", *slugs, "--track", track, "--verify", "--json")
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.stdout)
    assert report["migrated"] == 1 and report["at_head"] == 1
    assert report["drifted"] == [
        {
            "tenant_id": str(tenant.id),
            "schema": tenant.schema_name,
            "recorded": "9001",
            "schema_revision": tenant_head_revision(),
            "schema_missing": False,
        }
    ]
    assert "nickname" in _columns(engine, tenant.schema_name)
    assert _version(engine, tenant.schema_name) == "9001"

    again = run_cli("tenants", "migrate", *slugs, "--track", track, "--verify")
    assert again.exit_code == 0, again.output
    assert "0 schemas drifted" in again.stdout and "0 migrated, 2 already at head" in again.stdout


def test_migrate_verify_corrects_a_stale_row_and_reports_a_lost_version(engine, committed):
    tenant, lost = committed.tenant(), committed.tenant()
    head = tenant_head_revision()
    with engine.begin() as conn:
        conn.execute(text("UPDATE saas.tenants SET schema_version = 'old' WHERE id = :i"), {"i": tenant.id})
    _set_schema_version(engine, lost.schema_name, None)  # the version row is gone
    report = migrate_tenants(engine, only=[tenant.slug, lost.slug], verify=True)
    assert {(d.schema, d.recorded, d.schema_revision) for d in report.drifted} == {
        (tenant.schema_name, "old", head),
        (lost.schema_name, head, None),
    }
    by_schema = {r.schema: r for r in report.results}
    assert by_schema[tenant.schema_name].status == "skipped"  # the row corrected, nothing run
    # no version row: the whole track would run on existing tables; it fails and says so
    assert by_schema[lost.schema_name].status == "failed" and not report.ok
    assert tenants_behind(engine, head, [tenant.slug])[1] == []
