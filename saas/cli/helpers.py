"""What every ``saas`` command uses: the lazily built :class:`Context` (settings, services, the
app for the few commands that need Flask), :data:`pass_ctx`, :func:`fail_cleanly`, output as JSON
or tables, the operator's audit identity and the one tenant lookup.

Feature modules (``saas/auth/cli.py``, ``saas/ops/cli_tenants.py``, ...) import this module
only, never :mod:`saas.cli` itself: each adds its commands with its own ``register(main)``,
called from the one list in :func:`saas.cli.create_main`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from saas.settings import Settings, SettingsError

if TYPE_CHECKING:
    from flask import Flask
    from sqlalchemy.orm import Session

    from saas.audit import Actor
    from saas.db import Database
    from saas.identity.models import Tenant
    from saas.services import Services

__all__ = [
    "CliError",
    "Context",
    "emit_rows",
    "fail_cleanly",
    "find_tenant",
    "group_of",
    "operator_actor",
    "pass_ctx",
    "print_json",
    "print_table",
]

console = Console(stderr=False)


class CliError(click.ClickException):
    """A one-line failure (exit code 1)."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def fail_cleanly(func: Callable[..., Any]) -> Callable[..., Any]:
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
    """Lazily built settings, services, database engines and app for the commands.

    A command that needs a service reads :attr:`services` (built once per invocation by
    :func:`saas.bootstrap.build_services`, no Flask app); only a command that needs Flask itself
    (serving, the worker's handlers, code that reads ``current_app``) reads :attr:`app`. Tests
    hand a context with ``_settings`` (and ``_app``: then :attr:`services` are that app's).
    """

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._services: Services | None = None
        self._app: Flask | None = None
        self._built_app = False
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
    def services(self) -> Services:
        """The platform's services: the app's when there is one, else built here once."""
        if self._app is not None:
            from saas.services import services

            return services(self._app)
        if self._services is None:
            self._services = _services_without_app(self.settings)
        return self._services

    @property
    def app(self) -> Flask:
        """The Flask app, for the commands that cannot do without one (``saas dev``,
        ``saas worker``, ``tenants import``, ``billing sync|replay``)."""
        if self._app is None:
            from saas import create_app

            self._app = create_app(self.settings)
            self._built_app = True
        return self._app

    @property
    def database(self) -> Database:
        return self.services.database

    @property
    def engine(self):
        """The database engine without building the services (commands that only need the
        database start faster: ``saas tenants migrate`` with nothing pending)."""
        if self._app is not None or self._services is not None:
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

    def close(self) -> None:
        """Dispose of what this context built (engines, services, an app it made itself; not an
        app a caller handed in). A process that exits need not call it; tests do."""
        if self._services is not None:
            self._services.database.dispose()
            self._services = None
        if self._built_app and self._app is not None:
            from saas.services import services

            services(self._app).database.dispose()
            self._app, self._built_app = None, False
        for name in ("_engine", "_migration_engine"):
            engine = getattr(self, name)
            if engine is not None:
                engine.dispose()
                setattr(self, name, None)


def _services_without_app(settings: Settings) -> Services:
    """:func:`saas.bootstrap.build_services` and what ``create_app`` does around it that a
    command relies on: log lines configured as the service's (JSON on the real stderr, never
    in ``--json`` output), and the process-wide ORM hooks that publish revocation markers
    (``revocation.init_app``) and invalidate cached tenants (``cache.init_app``) on commit."""
    from saas import observability
    from saas.auth import principals, revocation
    from saas.bootstrap import build_services

    observability.configure_logging(settings.log_level, settings.log_format)
    built = build_services(settings)
    revocation.install_hooks()
    if built.cache is not None:
        principals.install_hooks()
    return built


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def emit_rows(rows: list[dict[str, Any]], as_json: bool, title: str, columns: dict[str, str]) -> None:
    """Print ``rows`` as JSON for scripts (``--json``) or as a table for people; ``columns``
    maps each column header to the row key it shows."""
    if as_json:
        print_json(rows)
        return
    print_table(title, list(columns), [[row.get(key) for key in columns.values()] for row in rows])


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


def operator_actor(name: str | None = None) -> Actor:
    """The operator's identity for audit events: ``name`` (an ``--operator`` option), else
    ``SAAS_OPERATOR``, else the OS user."""
    import getpass

    from saas.audit import Actor

    return Actor("operator", (name or "").strip() or os.environ.get("SAAS_OPERATOR") or getpass.getuser())


def find_tenant(session: Session, ref: str, *, for_update: bool = False) -> Tenant:
    """The tenant with slug or id ``ref`` (:func:`saas.identity.models.find_tenant`, the one
    lookup; ``for_update`` locks its row).

    Raises:
        CliError: ``no tenant 'REF'`` (exit code 1).
    """
    from saas.errors import NotFound
    from saas.identity.models import find_tenant as lookup

    try:
        return lookup(session, ref, for_update=for_update)
    except NotFound:
        raise CliError(f"no tenant {ref!r}") from None


def group_of(main: click.Group, name: str) -> click.Group:
    """The group ``saas NAME`` that another feature created (each group is created in one
    place; a feature adding to it is registered after that one in :func:`saas.cli.create_main`).

    Raises:
        RuntimeError: no such group yet (the registration list is out of order).
    """
    group = main.commands.get(name)
    if not isinstance(group, click.Group):
        raise RuntimeError(f"`saas {name}` is created by a feature registered earlier (saas.cli.create_main)")
    return group
