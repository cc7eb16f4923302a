"""The operator CLI, ``saas``.

Tables for people, ``--json`` for scripts. Exit codes: 0 ok, 1 the operation failed, 2 bad
usage or configuration; errors are one line on stderr.

:func:`create_main` makes the root group and asks each feature, in one explicit list, to add
its own commands with ``register(main)`` (as ``init_app`` adds a command in Flask's tutorial,
``flaskr/db.py``). ``main`` is made on first access (``from saas.cli import main``, the
``saas`` console script), so a feature module, which imports only :mod:`saas.cli.helpers`, can
be imported first without a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from saas.cli.helpers import CliError, Context, pass_ctx

if TYPE_CHECKING:
    main: click.Group

__all__ = ["CliError", "Context", "SaasGroup", "create_main", "main", "pass_ctx"]


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


def create_main() -> click.Group:
    """The ``saas`` group with every feature's commands.

    A group shared by several features is created by the first one listed here that names it
    (``tenants``, ``db``, ``users``); the others add to it (:func:`saas.cli.helpers.group_of`).
    """
    from saas.auth import cli as auth_cli
    from saas.billing import cli as billing_cli
    from saas.cli import dev
    from saas.limits import cli as limits_cli
    from saas.ops import cli_migrate, cli_ops, cli_tenants, cli_worker
    from saas.webhooks import cli as webhooks_cli

    @click.group(cls=SaasGroup)
    @click.version_option(package_name="saas-backend")
    def main() -> None:
        """Operate the multi-tenant SaaS backend."""

    for feature in (
        dev,  # dev
        cli_tenants,  # tenants (the group): create, list, show, suspend, resume, delete, purge, export, ...
        cli_migrate,  # db (the group): upgrade, check; tenants migrate
        cli_ops,  # users (the group): list, show, lock, unlock; audit; jobs; doctor
        cli_worker,  # worker
        auth_cli,  # keys, clients; users reset-mfa, rehash-recovery-codes
        billing_cli,  # billing; tenants set-plan
        limits_cli,  # limits
        webhooks_cli,  # webhooks
    ):
        feature.register(main)
    return main


def __getattr__(name: str) -> Any:
    """``main``, made once on first access (PEP 562)."""
    if name == "main":
        group = create_main()
        globals()["main"] = group
        return group
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
