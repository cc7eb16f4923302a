"""``saas db`` (the group): ``upgrade`` and ``check``; and ``saas tenants migrate``."""

from __future__ import annotations

import sys

import click

from saas.cli.helpers import CliError, Context, fail_cleanly, group_of, pass_ctx, print_json


@click.group()
def db() -> None:
    """Database schema: the shared track and every tenant schema."""


def register(main: click.Group) -> None:
    """Create ``saas db``; add ``migrate`` to ``saas tenants`` (:mod:`saas.ops.cli_tenants`)."""
    main.add_command(db)
    group_of(main, "tenants").add_command(tenants_migrate)


def run_tenant_migrations(
    ctx: Context,
    only: tuple[str, ...],
    parallel: int,
    as_json: bool,
    track: str | None = None,
    lock_timeout_ms: int | None = None,
    verify: bool = False,
) -> None:
    """Shared by ``saas tenants migrate`` and ``saas db upgrade``: exits 1 when a tenant failed.
    ``verify``: read each schema's own version (drift), see :func:`migrate_tenants`."""
    from saas.ops.migrations import TENANT_TRACK, migrate_tenants, tenants_behind, track_head

    engine = ctx.migration_engine

    location = track or TENANT_TRACK
    head = track_head(location)
    try:
        total, behind = tenants_behind(engine, head, only)
    except LookupError as exc:
        raise CliError(str(exc)) from None
    if as_json or not behind or verify:
        report = migrate_tenants(
            engine,
            only=only,
            parallel=parallel,
            script_location=location,
            lock_timeout_ms=lock_timeout_ms,
            verify=verify,
        )
    else:
        with click.progressbar(
            length=len(behind), label=f"tenants ({total - len(behind)} of {total} at head)", file=sys.stderr
        ) as bar:
            report = migrate_tenants(
                engine,
                only=only,
                parallel=parallel,
                script_location=location,
                progress=lambda r: bar.update(1),
                lock_timeout_ms=lock_timeout_ms,
            )
    if as_json:
        print_json(report.to_dict())
    else:
        click.echo(
            f"tenants at {report.head}: {len(report.migrated)} migrated, {report.at_head} already at head, "
            f"{len(report.failed)} failed ({report.seconds:.2f} s)"
        )
        if report.verified:
            click.echo(f"{len(report.drifted)} schemas drifted from saas.tenants.schema_version")
            for drift in report.drifted:
                click.echo(f"drifted {drift.describe()}")
        for result in report.failed:
            click.echo(f"failed {result.schema} ({result.tenant_id}): {result.error}", err=True)
    if not report.ok:
        sys.exit(1)


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
@fail_cleanly
def db_upgrade(ctx: Context, shared_only: bool, parallel: int, as_json: bool) -> None:
    """Apply the shared track, then bring every tenant schema to head (``saas tenants migrate``)."""
    from saas.migrate import shared_head_revision, upgrade_shared

    upgrade_shared(ctx.migration_engine)
    if not as_json:
        click.echo(f"shared schema at {shared_head_revision()}")
    if shared_only:
        return
    run_tenant_migrations(ctx, (), parallel, as_json)


@click.command("migrate")
@click.option(
    "--parallel",
    "-j",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="worker processes, each with its own connection",
)
@click.option("--tenant", "only", multiple=True, help="slug or id (repeatable); all tenants when omitted")
@click.option("--json", "as_json", is_flag=True)
@click.option("--track", hidden=True, help="another tenant track directory (benchmarks, rehearsals)")
@click.option(
    "--lock-timeout",
    "lock_timeout_ms",
    type=click.IntRange(0, 600_000),
    help="ms a tenant waits for a lock, then fails (default MIGRATE_LOCK_TIMEOUT_MS or 2000; 0: forever)",
)
@click.option(
    "--verify",
    is_flag=True,
    help="read each schema's own alembic_version, not only saas.tenants.schema_version (drift)",
)
@pass_ctx
@fail_cleanly
def tenants_migrate(
    ctx: Context,
    parallel: int,
    only: tuple[str, ...],
    as_json: bool,
    track: str | None,
    lock_timeout_ms: int | None,
    verify: bool,
) -> None:
    """Bring tenant schemas to the tenant track's head.

    Tenants already at head are skipped by one catalogue query; each other tenant is migrated in
    its own transaction; a failure is reported and the rest go on (exit code 1). Safe to re-run.
    With --verify, each schema's own version is read too: a schema whose version differs from
    the catalogue's is migrated from the version it really has (or its row corrected) and listed.
    """
    run_tenant_migrations(ctx, only, parallel, as_json, track, lock_timeout_ms, verify)


@db.command("check")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--migrations-only",
    is_flag=True,
    help="only: shared track at head and every tenant at head (cheap; what a release waits for)",
)
@click.option(
    "--wait",
    "wait_seconds",
    default=0,
    type=click.IntRange(0, 86400),
    help="re-check every 5 s for up to this many seconds until it passes (an initContainer)",
)
@pass_ctx
@fail_cleanly
def db_check(ctx: Context, as_json: bool, migrations_only: bool, wait_seconds: int) -> None:
    """Models and both migration tracks agree; every tenant schema at head (exit 1 otherwise)."""
    import time

    from saas.ops.dbcheck import check_database

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            results = check_database(ctx.engine, migrations_only=migrations_only)
        except Exception as exc:  # database not reachable yet: retried while waiting
            if time.monotonic() >= deadline:
                raise
            click.echo(f"waiting: {type(exc).__name__}", err=True)
        else:
            if all(r.ok for r in results) or time.monotonic() >= deadline:
                break
            click.echo("waiting: " + "; ".join(r.detail for r in results if not r.ok), err=True)
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
    if as_json:
        print_json([r.to_dict() for r in results])
    else:
        for r in results:
            click.echo(f"{'ok  ' if r.ok else 'FAIL'}  {r.name}: {r.detail}")
    if not all(r.ok for r in results):
        sys.exit(1)
