"""The operator CLI through click's CliRunner: tenants create|list|show, db upgrade, exit codes
and one-line errors. The CLI commits for real, so created tenants are dropped afterwards."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from saas.cli import main
from saas.identity.models import Tenant
from tests.helpers import drop_tenant, schema_exists

PASSWORD = "operator chosen password"


@pytest.fixture()
def cli_env(monkeypatch, settings, database_url, redis_client):
    kwargs = redis_client.connection_pool.connection_kwargs
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs['db']}",
        "SAAS_ENV": "test",
        "SAAS_VAR_DIR": str(settings.var_dir),
        "ARGON2_MEMORY_KIB": "8192",
        "ARGON2_TIME_COST": "1",
        "SAAS_OPERATOR": "ops-alice",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SAAS_OWNER_PASSWORD", raising=False)
    return env


@pytest.fixture()
def run(cli_env):
    def invoke(*args, input=None):
        return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)

    return invoke


@pytest.fixture()
def cleanup(engine):
    slugs: list[str] = []
    yield slugs
    with engine.connect() as conn:
        ids = list(conn.scalars(select(Tenant.id).where(Tenant.slug.in_(slugs))))
    for tenant_id in ids:
        drop_tenant(engine, tenant_id)


def _one_line_error(result, code=1):
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_create_list_show(run, cleanup, engine):
    cleanup.append("cli-acme")
    r = run(
        "tenants",
        "create",
        "--slug",
        "cli-acme",
        "--name",
        "CLI Acme",
        "--owner-email",
        "ops@cli-acme.test",
        input=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert r.exit_code == 0, r.output
    assert "created tenant cli-acme" in r.stdout
    with engine.connect() as conn:
        tenant = conn.execute(select(Tenant).where(Tenant.slug == "cli-acme")).one()
        assert schema_exists(conn, tenant.schema_name)
        actor = conn.scalar(
            text(
                f'SELECT actor_id FROM "{tenant.schema_name}".audit_events '  # noqa: S608
                "WHERE action = 'tenant.created_by_operator'"
            )
        )
        assert actor == "ops-alice"

    r = run("tenants", "list", "--json")
    assert r.exit_code == 0
    rows = {t["slug"]: t for t in json.loads(r.stdout)}
    assert rows["cli-acme"]["members"] == 1 and rows["cli-acme"]["schema"] == tenant.schema_name
    r = run("tenants", "list")
    assert r.exit_code == 0 and "cli-acme" in r.stdout and "slug" in r.stdout
    r = run("tenants", "list", "--status", "suspended", "--json")
    assert "cli-acme" not in {t["slug"] for t in json.loads(r.stdout)}

    r = run("tenants", "show", "cli-acme", "--json")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["members"] == [{"email": "ops@cli-acme.test", "role": "owner", "status": "active"}]
    assert data["schema_version"] and data["id"] == str(tenant.id)
    r = run("tenants", "show", str(tenant.id))
    assert r.exit_code == 0 and "cli-acme" in r.stdout and "ops@cli-acme.test" in r.stdout


def test_create_json_and_password_from_env(run, cleanup, monkeypatch, engine):
    cleanup.append("cli-json")
    monkeypatch.setenv("SAAS_OWNER_PASSWORD", PASSWORD)
    r = run(
        "tenants", "create", "--slug", "cli-json", "--name", "J", "--owner-email", "o@cli-json.test", "--json"
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert (
        data["slug"] == "cli-json" and data["owner"] == "o@cli-json.test" and data["schema"].startswith("t_")
    )
    assert PASSWORD not in r.output
    # the owner's password is the one given (argon2id hash, verified)
    from saas.identity.models import User
    from saas.identity.passwords import Passwords

    with engine.connect() as conn:
        stored = conn.scalar(select(User.password_hash).where(User.email == "o@cli-json.test"))
    assert stored.startswith("$argon2id$") and Passwords(8192, 1, 1).verify(stored, PASSWORD)


def test_unknown_tenant_is_exit_1_one_line(run):
    line = _one_line_error(run("tenants", "show", "no-such-tenant"))
    assert "no-such-tenant" in line
    _one_line_error(run("tenants", "show", "00000000-0000-0000-0000-000000000000", "--json"))


def test_create_errors_are_one_line(run, cleanup):
    cleanup.append("cli-dup")
    line = _one_line_error(
        run(
            "tenants",
            "create",
            "--slug",
            "www",
            "--name",
            "W",
            "--owner-email",
            "w@w.test",
            "--owner-password",
            PASSWORD,
        )
    )
    assert "validation_error" in line and "reserved" in line
    line = _one_line_error(
        run(
            "tenants",
            "create",
            "--slug",
            "cli-bad",
            "--name",
            "W",
            "--owner-email",
            "nope",
            "--owner-password",
            PASSWORD,
        )
    )
    assert "email" in line
    ok = run(
        "tenants",
        "create",
        "--slug",
        "cli-dup",
        "--name",
        "D",
        "--owner-email",
        "d@cli-dup.test",
        "--owner-password",
        PASSWORD,
    )
    assert ok.exit_code == 0
    line = _one_line_error(
        run(
            "tenants",
            "create",
            "--slug",
            "cli-dup",
            "--name",
            "D",
            "--owner-email",
            "e@cli-dup.test",
            "--owner-password",
            PASSWORD,
        )
    )
    assert "slug_taken" in line


def test_bad_configuration_is_exit_2(run, monkeypatch):
    monkeypatch.setenv("ACCESS_TOKEN_TTL", "ten minutes")
    line = _one_line_error(run("tenants", "list"), code=2)
    assert "ACCESS_TOKEN_TTL" in line


def test_usage_error_is_exit_2(run):
    r = run("tenants", "create", "--slug", "x")
    assert r.exit_code == 2


def test_db_upgrade(run, cleanup):
    cleanup.append("cli-up")
    assert (
        run(
            "tenants",
            "create",
            "--slug",
            "cli-up",
            "--name",
            "U",
            "--owner-email",
            "u@cli-up.test",
            "--owner-password",
            PASSWORD,
        ).exit_code
        == 0
    )
    r = run("db", "upgrade")
    assert r.exit_code == 0, r.output
    assert "shared schema at" in r.stdout
    assert "0 migrated" in r.stdout and "already at head" in r.stdout
    r = run("db", "upgrade", "--shared-only")
    assert r.exit_code == 0 and "tenants:" not in r.stdout


def test_version(run):
    r = run("--version")
    assert r.exit_code == 0 and "version" in r.stdout


def test_unreachable_database_is_one_line_and_exit_1(settings):
    """Any command meeting a database it cannot reach prints one line, no traceback."""
    from click.testing import CliRunner

    from saas.cli import Context, main

    ctx = Context()
    ctx._settings = settings.with_overrides(database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    r = CliRunner().invoke(main, ["tenants", "list"], obj=ctx)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert r.stderr.strip().splitlines()[-1].startswith("error: database error: OperationalError")
