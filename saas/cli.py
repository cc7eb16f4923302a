"""The operator CLI, ``saas``.

Tables for people, ``--json`` for scripts. Exit codes: 0 ok, 1 the operation failed, 2 bad
usage or configuration; errors are one line on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from saas.services import services
from saas.settings import Settings, SettingsError

console = Console(stderr=False)
err_console = Console(stderr=True)


class CliError(click.ClickException):
    """A one-line failure (exit code 1)."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _fail_cleanly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn configuration errors and known app errors into one line and an exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from saas.errors import AppError

        try:
            return func(*args, **kwargs)
        except SettingsError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except AppError as exc:
            detail = exc.detail or exc.title
            extra = exc.extra.get("errors")
            raise CliError(f"{exc.code}: {detail}" + (f" {json.dumps(extra)}" if extra else "")) from None

    return wrapper


class Context:
    """Lazily built settings, database and app for the commands."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._app = None
        self._engine = None
        self._migration_engine = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            settings = Settings.from_env()
            if not settings.database_url:
                from saas.embedded import embedded_database_url

                settings = settings.with_overrides(database_url=embedded_database_url(settings.var_dir))
            self._settings = settings
        return self._settings

    @property
    def app(self):
        if self._app is None:
            from saas import create_app

            self._app = create_app(self.settings)
        return self._app

    @property
    def database(self):
        return services(self.app).database

    @property
    def engine(self):
        """The database engine without building the app (commands that only need the database
        start faster: ``saas tenants migrate`` with nothing pending)."""
        if self._app is not None:
            return self.database.engine
        if self._engine is None:
            from saas.db import Database

            self._engine = Database.from_url(
                self.settings.database_url or "",
                pool_size=2,
                max_overflow=2,
                prepared_statements=self.settings.db_prepared_statements,
            ).engine
        return self._engine

    @property
    def migration_engine(self):
        """The engine migrations run on: ``DATABASE_URL_DIRECT`` (PostgreSQL itself, not a
        pooler: long DDL transactions do not hold pooled server connections) when set, else
        :attr:`engine`."""
        if not self.settings.database_url_direct:
            return self.engine
        if self._migration_engine is None:
            from saas.db import Database

            self._migration_engine = Database.from_url(
                self.settings.database_url_direct,
                pool_size=2,
                max_overflow=2,
                prepared_statements=self.settings.db_prepared_statements,
                setting="DATABASE_URL_DIRECT",
            ).engine
        return self._migration_engine


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def emit_rows(rows: list[dict[str, Any]], as_json: bool, title: str, columns: dict[str, str]) -> None:
    """Print ``rows`` as JSON for scripts (``--json``) or as a table for people; ``columns``
    maps each column header to the row key it shows."""
    if as_json:
        _print_json(rows)
        return
    _table(title, list(columns), [[row.get(key) for key in columns.values()] for row in rows])


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


class SaasGroup(click.Group):
    """The root group: an unreachable database or Redis, in any command, is one line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        import logging

        import redis
        from sqlalchemy.exc import DBAPIError

        logging.getLogger("alembic").setLevel(logging.WARNING)  # no INFO chatter before results
        try:
            return super().invoke(ctx)
        except DBAPIError as exc:
            first = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc).strip() else ""
            raise CliError(f"database error: {type(exc.orig or exc).__name__}: {first}") from None
        except redis.RedisError as exc:
            raise CliError(f"redis unreachable: {type(exc).__name__}: {exc}") from None


@click.group(cls=SaasGroup)
@click.version_option(package_name="saas-backend")
def main() -> None:
    """Operate the multi-tenant SaaS backend."""


# --- dev server --------------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers", default=1, show_default=True, type=int, help="gunicorn workers (1 = Flask dev server)"
)
@pass_ctx
@_fail_cleanly
def dev(ctx: Context, host: str, port: int, workers: int) -> None:
    """Run the service on the configured servers, or an embedded PostgreSQL and Redis stand-in.

    Applies pending migrations first, so a fresh clone serves the API at once, and delivers the
    outbox as ``saas worker`` does: without ``SMTP_URL`` every outgoing mail (invitations and
    their tokens included) is printed to this console.
    """
    os.environ.setdefault("SAAS_ENV", "development")
    settings = ctx.settings
    from saas.migrate import upgrade_shared
    from saas.ops.migrations import migrate_tenants

    app = ctx.app
    upgrade_shared(ctx.migration_engine)
    migrate_tenants(ctx.migration_engine)
    click.echo(f"serving on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    mail = "printed here" if not settings.smtp_url else "sent over SMTP_URL"
    click.echo(f"delivering the outbox (mail {mail})")
    if workers > 1:
        if not settings.redis_url:
            raise CliError("several workers need REDIS_URL (the in-process stand-in is per process)")
        os.environ["DATABASE_URL"] = settings.database_url or ""
        # the outbox worker in a child process sharing this console; gunicorn replaces this one
        import subprocess

        subprocess.Popen([sys.executable, "-c", "from saas.cli import main; main(['worker'])"])
        os.execvp(  # noqa: S606 - replaces this process with gunicorn
            sys.executable,
            [sys.executable, "-m", "gunicorn", "-c", "infra/gunicorn.conf.py", "-b", f"{host}:{port}",
             "-w", str(workers), "wsgi:app"],
        )  # fmt: skip
    _deliver_outbox_in_background(app)
    app.run(host=host, port=port, debug=False, use_reloader=False, threaded=True)


def _deliver_outbox_in_background(app) -> None:
    """Run the outbox worker in a daemon thread of ``saas dev``'s single process (the embedded
    Redis stand-in is per process, and the mail then prints to the same console)."""
    import threading

    from saas.worker import Worker, load_handlers

    load_handlers()
    worker = Worker(services(app).database, services(app).settings, services={"app": app})

    def run() -> None:
        with app.app_context():
            worker.run_forever(heartbeat=None, signals=False)

    threading.Thread(target=run, name="outbox-worker", daemon=True).start()


# --- database ----------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema: the shared track and every tenant schema."""


@db.command("upgrade")
@click.option("--shared-only", is_flag=True, help="skip the tenant schemas")
@click.option(
    "--parallel",
    "-j",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="tenant migration worker processes",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@_fail_cleanly
def db_upgrade(ctx: Context, shared_only: bool, parallel: int, as_json: bool) -> None:
    """Apply the shared track, then bring every tenant schema to head (``saas tenants migrate``)."""
    from saas.migrate import shared_head_revision, upgrade_shared
    from saas.ops.cli_migrate import run_tenant_migrations

    upgrade_shared(ctx.migration_engine)
    if not as_json:
        click.echo(f"shared schema at {shared_head_revision()}")
    if shared_only:
        return
    run_tenant_migrations(ctx, (), parallel, as_json)


# --- tenants -----------------------------------------------------------------------------------


@main.group()
def tenants() -> None:
    """Tenants: provisioning, lifecycle, export and import, migrations."""


def _find_tenant(session, ref: str):
    import uuid as uuid_mod

    from sqlalchemy import select

    from saas.tenancy.models import Tenant

    query = select(Tenant)
    try:
        query = query.where(Tenant.id == uuid_mod.UUID(ref))
    except ValueError:
        query = query.where(Tenant.slug == ref.strip().lower())
    tenant = session.scalars(query).first()
    if tenant is None:
        raise CliError(f"no tenant {ref!r}")
    return tenant


@tenants.command("create")
@click.option("--slug", required=True)
@click.option("--name", required=True)
@click.option("--owner-email", required=True)
@click.option(
    "--owner-password",
    envvar="SAAS_OWNER_PASSWORD",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="or SAAS_OWNER_PASSWORD (asked for when neither is given)",
)
@click.option("--owner-name", default="")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@_fail_cleanly
def tenants_create(
    ctx: Context, slug: str, name: str, owner_email: str, owner_password: str, owner_name: str, as_json: bool
) -> None:
    """Provision a tenant (row, schema at head, owner) in one transaction."""
    from saas import audit
    from saas.tenancy.provisioning import provision_tenant, validate_signup

    app = ctx.app
    with app.app_context():
        slug, name, email, _, owner_name = validate_signup(
            {"slug": slug, "name": name},
            {"email": owner_email, "password": owner_password, "name": owner_name},
        )
        with ctx.database.transaction() as session:
            done = provision_tenant(
                session,
                services(app).passwords,
                slug=slug,
                name=name,
                owner_email=email,
                owner_password=owner_password,
                owner_name=owner_name,
            )
            audit.record(
                session,
                "tenant.created_by_operator",
                target_type="tenant",
                target_id=done.tenant.id,
                actor=operator_actor(),
                schema=done.tenant.schema_name,
            )
            result = {**done.tenant.to_public(), "schema": done.tenant.schema_name, "owner": done.owner.email}
    if as_json:
        _print_json(result)
    else:
        click.echo(f"created tenant {result['slug']} ({result['id']}) in schema {result['schema']}")


def operator_actor():
    """The operator's identity for audit events: ``SAAS_OPERATOR`` or the OS user."""
    import getpass

    from saas.audit import Actor

    return Actor("operator", os.environ.get("SAAS_OPERATOR") or getpass.getuser())


@tenants.command("list")
@click.option(
    "--status",
    type=click.Choice(["active", "suspended", "deleted"]),
    help="deleted = suspended and scheduled for purge",
)
@click.option("--plan", help="plan id (see saas/billing/plans.toml)")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@_fail_cleanly
def tenants_list(ctx: Context, status: str | None, plan: str | None, as_json: bool) -> None:
    """List tenants with their member counts."""
    from sqlalchemy import func, select

    from saas.ops.lifecycle import lifecycle_state
    from saas.tenancy.models import Membership, Tenant

    with ctx.database.transaction() as session:
        query = (
            select(Tenant, func.count(Membership.id))
            .outerjoin(Membership, Membership.tenant_id == Tenant.id)
            .group_by(Tenant.id)
            .order_by(Tenant.created_at)
        )
        if status == "deleted":
            query = query.where(Tenant.deleted_at.is_not(None))
        elif status == "suspended":
            query = query.where(Tenant.status == "suspended", Tenant.deleted_at.is_(None))
        elif status:
            query = query.where(Tenant.status == status)
        if plan:
            query = query.where(Tenant.plan == plan)
        rows = [
            {**t.to_public(), "state": lifecycle_state(t), "schema": t.schema_name, "members": n,
             "purge_after": t.purge_after}
            for t, n in session.execute(query)
        ]  # fmt: skip
    emit_rows(
        rows,
        as_json,
        f"{len(rows)} tenants",
        {
            "slug": "slug",
            "name": "name",
            "state": "state",
            "plan": "plan",
            "members": "members",
            "created": "created_at",
        },
    )


@tenants.command("show")
@click.argument("tenant")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@_fail_cleanly
def tenants_show(ctx: Context, tenant: str, as_json: bool) -> None:
    """Show one tenant (by slug or id): schema and its size, members, plan, usage, last activity."""
    from saas.ops.lifecycle import find_tenant, tenant_overview

    with ctx.database.transaction() as session:
        data = tenant_overview(session, find_tenant(session, tenant))
    if as_json:
        _print_json(data)
        return
    keys = ("id", "slug", "name", "state", "plan", "schema", "schema_version", "schema_bytes",
            "suspended_reason", "purge_after", "last_activity_at", "created_at")  # fmt: skip
    for key in keys:
        if data.get(key) is not None:
            click.echo(f"{key:>17}: {data[key]}")
    if data["usage"]:
        click.echo(f"{'usage':>17}: " + ", ".join(f"{k} {v}" for k, v in data["usage"].items()))
    _table(
        "members",
        ["email", "role", "status"],
        [[m["email"], m["role"], m["status"]] for m in data["members"]],
    )


from saas.auth.cli import register as _register_auth_commands  # noqa: E402 - needs main above
from saas.billing import cli as _billing_cli  # noqa: E402, F401 - registers `saas billing`, `tenants set-plan`

_register_auth_commands(main)

from saas.limits.cli import limits as _limits  # noqa: E402 - registers `saas limits`
from saas.ops import cli as _ops_cli  # noqa: E402, F401 - registers the operations commands

main.add_command(_limits)


if __name__ == "__main__":  # pragma: no cover
    main()
