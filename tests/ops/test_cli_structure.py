"""The ``saas`` package's structure: every feature adds its own commands with ``register(main)``
(called once, from the one list in ``saas.cli.create_main``), the command tree is the one
pinned here (as it was when ``saas/cli.py`` became a package), feature modules never import the
entry module, commands that need only services build no Flask app, and every command that
takes a tenant answers an unknown one with the same line."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import saas.cli
from saas.cli import Context, create_main

ROOT = Path(__file__).resolve().parents[2]

#: the command tree: a command is None, a group the sorted names of its commands
TREE = {
    "audit": ["list", "prune", "verify"],
    "beat": None,
    "billing": ["dunning", "events", "plans", "replay", "report-usage", "show", "sync"],
    "clients": ["create", "list"],
    "db": ["check", "upgrade"],
    "dev": None,
    "doctor": None,
    "jobs": ["list", "retry"],
    "keys": ["list", "rotate"],
    "limits": ["reset", "show"],
    "tenants": [
        "create", "delete", "export", "import", "list", "migrate", "purge", "rename-slug", "resume",
        "set-plan", "show", "suspend",
    ],
    "users": ["impersonate", "list", "lock", "rehash-recovery-codes", "reset-mfa", "show", "unlock"],
    "webhooks": ["prune"],
    "worker": None,
}  # fmt: skip

#: the modules that add commands, in saas.cli.create_main's order
FEATURES = [
    "saas.cli.dev",
    "saas.ops.cli_tenants",
    "saas.ops.cli_migrate",
    "saas.ops.cli_ops",
    "saas.ops.cli_worker",
    "saas.auth.cli",
    "saas.billing.cli",
    "saas.limits.cli",
    "saas.webhooks.cli",
]


def _tree(group: click.Group) -> dict[str, list[str] | None]:
    return {
        name: sorted(command.commands) if isinstance(command, click.Group) else None
        for name, command in sorted(group.commands.items())
    }


def _feature_files() -> dict[str, Path]:
    """Every module that can hold commands: ``saas/**/cli.py``, ``saas/**/cli_*.py`` and
    ``saas/cli/*.py``, but the entry module and the helpers."""
    files = {p for p in (ROOT / "saas").rglob("*.py") if p.name == "cli.py" or p.name.startswith("cli_")}
    files |= set((ROOT / "saas" / "cli").glob("*.py"))
    skip = {"__init__.py", "__main__.py", "helpers.py"}
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts): p
        for p in files
        if not (p.parent.name == "cli" and p.name in skip)
    }


def test_the_command_tree_is_unchanged():
    assert _tree(saas.cli.main) == TREE
    assert _tree(create_main()) == TREE  # a fresh one, the same


def test_every_feature_registers_once(monkeypatch):
    import importlib

    calls: dict[str, int] = {}
    for name in FEATURES:
        module = importlib.import_module(name)
        original = module.register

        def counted(main, name=name, original=original):
            calls[name] = calls.get(name, 0) + 1
            return original(main)

        monkeypatch.setattr(module, "register", counted)
    main = create_main()
    assert calls == dict.fromkeys(FEATURES, 1)
    assert list(calls) == FEATURES  # in the listed order: groups before the features adding to them
    assert _tree(main) == TREE


def test_the_feature_list_is_every_module_with_commands():
    """A new module with commands (a ``register``) must be in ``create_main``'s list (and here)."""

    def has_register(path: Path) -> bool:
        body = ast.parse(path.read_text()).body
        return any(isinstance(n, ast.FunctionDef) and n.name == "register" for n in body)

    with_register = {name for name, path in _feature_files().items() if has_register(path)}
    assert with_register == set(FEATURES)


@pytest.mark.parametrize("name", FEATURES)
def test_feature_modules_import_only_the_helpers(name):
    """Never the entry module (``saas.cli``): only ``saas.cli.helpers``."""
    path = ROOT / Path(*name.split(".")).with_suffix(".py")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            assert node.module != "saas.cli", f"{name} imports saas.cli"
            if node.module == "saas":
                assert "cli" not in {a.name for a in node.names}, f"{name} imports saas.cli"
        elif isinstance(node, ast.Import):
            assert "saas.cli" not in {a.name for a in node.names}, f"{name} imports saas.cli"


def test_no_group_is_made_twice():
    """Each group object is the one its feature created (not one made or reused by chance)."""
    from saas.limits import cli as limits_cli
    from saas.ops import cli_migrate, cli_ops, cli_tenants

    main = create_main()
    assert main.commands["tenants"] is cli_tenants.tenants
    assert main.commands["db"] is cli_migrate.db
    assert main.commands["users"] is cli_ops.users
    assert main.commands["jobs"] is cli_ops.jobs
    assert main.commands["limits"] is limits_cli.limits


def test_a_feature_module_imported_first_has_no_cycle():
    code = (
        "import saas.billing.cli, saas.limits.cli, saas.ops.cli_ops;"
        "from saas.cli import main; print(len(main.commands))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(len(TREE))


# --- services without an app --------------------------------------------------------------------


@pytest.fixture()
def no_app(monkeypatch):
    """``create_app`` refuses: a command that builds the app fails."""
    import saas

    def refuse(*args, **kwargs):
        raise AssertionError("this command builds the Flask app")

    monkeypatch.setattr(saas, "create_app", refuse)


def test_service_commands_build_no_app(committed, cli_settings, no_app, monkeypatch):
    monkeypatch.setenv("SAAS_OPERATOR", "op-tester")
    t = committed.tenant()
    commands = [
        ["tenants", "list", "--json"],
        ["tenants", "show", t.slug, "--json"],
        ["users", "list", "--tenant", t.slug, "--json"],
        ["audit", t.slug, "--json"],
        ["audit", "verify", t.slug, "--json"],
        ["audit", "prune", "--tenant", t.slug, "--json"],
        ["limits", "show", t.slug, "--json"],
        ["limits", "reset", t.slug],
        ["billing", "show", t.slug, "--json"],
        ["tenants", "set-plan", t.slug, "pro"],
        ["tenants", "set-plan", t.slug, "none"],
        ["jobs", "list", "--json"],
        ["clients", "list", "--json"],
    ]
    for args in commands:
        ctx = Context()
        ctx._settings = cli_settings
        try:
            result = CliRunner().invoke(saas.cli.main, args, obj=ctx, catch_exceptions=False)
            assert result.exit_code == 0, (args, result.output)
            assert ctx._app is None and ctx._services is not None, args
        finally:
            ctx.close()


@pytest.mark.parametrize(
    "args",
    [
        ["tenants", "show", "nope"],
        ["tenants", "suspend", "nope", "--reason", "x"],
        ["tenants", "rename-slug", "nope", "nope-two"],
        ["tenants", "export", "nope", "--out", "-"],
        ["tenants", "set-plan", "nope", "pro"],
        ["users", "list", "--tenant", "nope"],
        ["audit", "nope"],
        ["audit", "verify", "nope"],
        ["audit", "prune", "--tenant", "nope"],
        ["clients", "list", "--tenant", "nope"],
        ["limits", "show", "nope"],
        ["billing", "show", "nope"],
    ],
)
def test_an_unknown_tenant_is_the_same_line_everywhere(run_cli, args):
    """One tenant lookup (``saas.identity.models.find_tenant``) behind every command."""
    result = run_cli(*args)
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == ["error: no tenant 'nope'"]
    assert result.stdout == ""


def test_doctor_builds_services_not_the_app(run_cli, monkeypatch, cli_settings, no_app):
    monkeypatch.setenv("SAAS_ENV", "test")
    monkeypatch.setenv("REDIS_URL", cli_settings.redis_url)
    r = run_cli("doctor", "--json")
    names = [v["name"] for v in json.loads(r.stdout)]
    assert "app" not in names and "signing keys" in names


def test_a_lock_in_a_process_without_an_app_still_revokes(committed, cli_settings, engine, redis_client):
    """The services path installs the ORM hooks ``create_app`` would: ``saas users lock`` in a
    fresh process (no app ever built there) still writes the session's revocation marker."""
    import os
    from datetime import timedelta

    from sqlalchemy import delete, func, select

    from saas.auth.models import RefreshToken
    from saas.db import Database, utcnow
    from saas.identity.models import User
    from saas.outbox import OutboxMessage

    tenant = committed.tenant(members=1)
    email = f"m0@{tenant.slug}.test"
    db = Database(engine)
    now, later = utcnow(), utcnow() + timedelta(days=1)
    with db.transaction() as session:
        user = session.scalars(select(User).where(User.email == email)).one()
        session.add(
            RefreshToken(
                family_id=user.id, token_hash=user.id.hex * 2, user_id=user.id, tenant_id=tenant.id,
                client_id="saas-api", auth_time=now, amr=["pwd"], created_at=now, expires_at=later,
                family_expires_at=later,
            )
        )  # fmt: skip
        start_id = session.scalar(select(func.coalesce(func.max(OutboxMessage.id), 0)))
    env = {
        **os.environ,
        "DATABASE_URL": cli_settings.database_url,
        "REDIS_URL": cli_settings.redis_url,
        "SAAS_ENV": "test",
        "SAAS_VAR_DIR": str(cli_settings.var_dir),
        "SAAS_OPERATOR": "op-tester",
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "saas.cli", "users", "lock", email, "--reason", "lost laptop", "--json"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["revoked_sessions"] == 1
    finally:  # the lock's security mail is committed: leave no job for the worker tests
        with db.transaction() as session:
            session.execute(delete(OutboxMessage).where(OutboxMessage.id > start_id))
    assert redis_client.exists(f"{{t:{tenant.id}}}:rv:s:{user.id}")
