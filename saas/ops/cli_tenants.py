"""``saas tenants``: the group and its commands ``create|list|show`` and the lifecycle
``suspend|resume|delete|purge|export|import|rename-slug``.

Each change is audited in the tenant's own log with the operator (``SAAS_OPERATOR`` or the OS
user; :func:`saas.cli.helpers.operator_actor`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from saas.cli.helpers import (
    CliError,
    Context,
    emit_rows,
    fail_cleanly,
    find_tenant,
    operator_actor,
    pass_ctx,
    print_json,
    print_table,
)


@click.group()
def tenants() -> None:
    """Tenants: provisioning, lifecycle, export and import, migrations."""


def register(main: click.Group) -> None:
    """Create ``saas tenants`` (``tenants migrate`` and ``tenants set-plan`` join it from
    :mod:`saas.ops.cli_migrate` and :mod:`saas.billing.cli`)."""
    main.add_command(tenants)


# --- create, list, show ------------------------------------------------------------------------


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
@fail_cleanly
def tenants_create(
    ctx: Context, slug: str, name: str, owner_email: str, owner_password: str, owner_name: str, as_json: bool
) -> None:
    """Provision a tenant (row, schema at head, owner) in one transaction."""
    from saas import audit
    from saas.audit import AuditAction
    from saas.tenancy.provisioning import provision_tenant, validate_signup

    slug, name, email, _, owner_name = validate_signup(
        {"slug": slug, "name": name},
        {"email": owner_email, "password": owner_password, "name": owner_name},
    )
    with ctx.database.transaction() as session:
        done = provision_tenant(
            session,
            ctx.services.passwords,
            slug=slug,
            name=name,
            owner_email=email,
            owner_password=owner_password,
            owner_name=owner_name,
        )
        audit.record(
            session,
            AuditAction.TENANT_CREATED_BY_OPERATOR,
            target_type="tenant",
            target_id=done.tenant.id,
            actor=operator_actor(),
            tenant_id=done.tenant.id,
        )
        result = {**done.tenant.to_public(), "schema": done.tenant.schema_name, "owner": done.owner.email}
    if as_json:
        print_json(result)
    else:
        click.echo(f"created tenant {result['slug']} ({result['id']}) in schema {result['schema']}")


@tenants.command("list")
@click.option(
    "--status",
    type=click.Choice(["active", "suspended", "deleted"]),
    help="deleted = suspended and scheduled for purge",
)
@click.option("--plan", help="plan id (see saas/billing/plans.toml)")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def tenants_list(ctx: Context, status: str | None, plan: str | None, as_json: bool) -> None:
    """List tenants with their member counts."""
    from sqlalchemy import func, select

    from saas.identity.models import Membership, Tenant
    from saas.ops.lifecycle import lifecycle_state

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
@fail_cleanly
def tenants_show(ctx: Context, tenant: str, as_json: bool) -> None:
    """Show one tenant (by slug or id): schema and its size, members, plan, usage, last activity."""
    from saas.ops.lifecycle import tenant_overview

    with ctx.database.transaction() as session:
        data = tenant_overview(session, find_tenant(session, tenant))
    if as_json:
        print_json(data)
        return
    keys = ("id", "slug", "name", "state", "plan", "schema", "schema_version", "schema_bytes",
            "suspended_reason", "purge_after", "last_activity_at", "created_at")  # fmt: skip
    for key in keys:
        if data.get(key) is not None:
            click.echo(f"{key:>17}: {data[key]}")
    if data["usage"]:
        click.echo(f"{'usage':>17}: " + ", ".join(f"{k} {v}" for k, v in data["usage"].items()))
    print_table(
        "members",
        ["email", "role", "status"],
        [[m["email"], m["role"], m["status"]] for m in data["members"]],
    )


# --- lifecycle ---------------------------------------------------------------------------------


def _done(as_json: bool, data: dict, message: str) -> None:
    if as_json:
        print_json(data)
    else:
        click.echo(message)


@tenants.command("suspend")
@click.argument("tenant")
@click.option("--reason", required=True, help="recorded in the audit log and shown by `tenants show`")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def tenants_suspend(ctx: Context, tenant: str, reason: str, as_json: bool) -> None:
    """Suspend a tenant: its requests and token refreshes are refused, refresh tokens revoked."""
    from saas.ops.lifecycle import suspend

    with ctx.database.transaction() as session:
        t = suspend(session, find_tenant(session, tenant, for_update=True), reason, operator_actor())
        data = {"slug": t.slug, "id": str(t.id), "status": t.status, "reason": t.suspended_reason}
    _done(as_json, data, f"suspended {data['slug']}")


@tenants.command("resume")
@click.argument("tenant")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def tenants_resume(ctx: Context, tenant: str, as_json: bool) -> None:
    """Reactivate a suspended tenant (also cancels a scheduled deletion)."""
    from saas.ops.lifecycle import resume

    with ctx.database.transaction() as session:
        t = resume(session, find_tenant(session, tenant, for_update=True), operator_actor())
        data = {"slug": t.slug, "id": str(t.id), "status": t.status}
    _done(as_json, data, f"resumed {data['slug']}")


def _default_export_path(ctx: Context, slug: str) -> Path | None:
    """``<SAAS_EXPORT_DIR>/<slug>-<time>.jsonl``, or None when no durable directory is set."""
    from saas.db import utcnow

    if ctx.settings.export_dir is None:
        return None
    return ctx.settings.export_dir / f"{slug}-{utcnow():%Y%m%dT%H%M%SZ}.jsonl"


@tenants.command("delete")
@click.argument("tenant")
@click.option(
    "--retention-days",
    default=30,
    show_default=True,
    type=click.IntRange(0, 3650),
    help="days before `saas tenants purge` drops it",
)
@click.option("--now", "at_once", is_flag=True, help="export, then drop the schema and rows at once")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="export file for --now (required unless SAAS_EXPORT_DIR names a durable directory)",
)
@click.option("--yes", is_flag=True, help="confirm --now")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def tenants_delete(ctx: Context, tenant: str, retention_days: int, at_once: bool, out: Path | None,
                   yes: bool, as_json: bool) -> None:  # fmt: skip
    """Soft-delete a tenant: suspended now, purged after the retention period.

    With --now --yes: export it, then drop its schema and shared rows at once (irreversible).
    """
    from saas.ops.export import export_to_file
    from saas.ops.lifecycle import drop_tenant, schedule_deletion

    if not at_once:
        with ctx.database.transaction() as session:
            t = schedule_deletion(session, find_tenant(session, tenant, for_update=True), operator_actor(),
                                  retention_days)  # fmt: skip
            data = {"slug": t.slug, "id": str(t.id), "state": "deleted", "purge_after": t.purge_after}
        _done(as_json, data, f"deleted {data['slug']}: suspended, purged after {data['purge_after']}")
        return
    if not yes:
        raise click.UsageError("--now drops the tenant at once: add --yes to confirm")
    if out is None and ctx.settings.export_dir is None:
        raise click.UsageError(
            "--now drops the tenant after exporting it: give --out FILE on durable storage "
            "(or set SAAS_EXPORT_DIR to a durable directory)"
        )
    from saas.ops.lifecycle import resume, suspend

    engine = ctx.database.engine
    actor = operator_actor()
    # 1. suspended (no request or refresh gets through) but NOT scheduled for deletion: if the
    #    export fails, nothing is dropped, by us or by the purge schedule
    with ctx.database.transaction() as session:
        t = find_tenant(session, tenant, for_update=True)
        was_active = t.status == "active" and t.deleted_at is None
        if t.status == "active":
            suspend(session, t, "deletion in progress (saas tenants delete --now)", actor)
        slug, tid = t.slug, t.id
    path = out or _default_export_path(ctx, slug)
    assert path is not None
    # 2. the export, streamed from one snapshot, written to a temporary name and renamed whole
    try:
        counts = export_to_file(engine, str(tid), path)
    except BaseException as exc:
        if was_active:  # back as it was: the operator retries once the cause is fixed
            with ctx.database.transaction() as session:
                resume(session, find_tenant(session, str(tid), for_update=True), actor)
        if isinstance(exc, Exception):
            state = "resumed" if was_active else "left as it was"
            raise CliError(
                f"export to {path} failed ({type(exc).__name__}: {exc}); "
                f"nothing was deleted, the tenant {state}"
            ) from exc
        raise
    # 3. only now: the schema and the shared rows go, in one transaction
    with ctx.database.transaction() as session:
        drop_tenant(session, find_tenant(session, str(tid), for_update=True))
    import logging

    logging.getLogger("saas.ops").warning(
        "tenant dropped", extra={"tenant_id": str(tid), "slug": slug, "operator": operator_actor().id}
    )
    data = {"slug": slug, "id": str(tid), "state": "dropped", "export": str(path), "rows": counts}
    _done(as_json, data, f"dropped {slug}; export in {path}")


@tenants.command("purge")
@click.option("--tenant", "only", multiple=True, help="only these (slug or id) among those due")
@click.option("--dry-run", is_flag=True, help="list what is due, drop nothing")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def tenants_purge(ctx: Context, only: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Drop every soft-deleted tenant whose retention period is over (one transaction each)."""
    from sqlalchemy import select

    from saas.db import utcnow
    from saas.identity.models import Tenant
    from saas.ops.lifecycle import purge_due

    engine = ctx.database.engine
    if dry_run:
        with engine.connect() as conn:
            due = conn.execute(
                select(Tenant.slug, Tenant.purge_after).where(Tenant.purge_after <= utcnow())
            ).all()
        rows = [{"slug": s, "purge_after": p} for s, p in due]
        _done(as_json, {"due": rows}, "\n".join(f"due {r['slug']} ({r['purge_after']})" for r in rows)
              or "nothing due")  # fmt: skip
        return
    results = purge_due(engine, only=set(only) or None)
    data = {"purged": [r.slug for r in results if r.ok],
            "failed": [{"slug": r.slug, "error": r.error} for r in results if not r.ok]}  # fmt: skip
    _done(as_json, data, f"purged {len(data['purged'])} tenants" +
          "".join(f"\nfailed {f['slug']}: {f['error']}" for f in data["failed"]))  # fmt: skip
    if data["failed"]:
        sys.exit(1)


@tenants.command("export")
@click.argument("tenant")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON Lines file (format in docs/operations.md); '-' for stdout",
)
@pass_ctx
@fail_cleanly
def tenants_export(ctx: Context, tenant: str, out: Path) -> None:
    """Export a tenant's schema data and shared rows (format saas.tenant-export v1)."""
    from saas.ops.export import export_tenant, export_to_file

    with ctx.database.transaction() as session:
        find_tenant(session, tenant)  # an unknown one is the same one line as in every command
    if str(out) == "-":
        export_tenant(ctx.database.engine, tenant, sys.stdout)
        return
    counts = export_to_file(ctx.database.engine, tenant, out)
    click.echo(f"exported {sum(counts.values())} rows to {out}", err=True)


class BadImportFile(CliError):
    """A refused import file: one line naming its line and field (exit code 2, bad input)."""

    exit_code = 2


TRUSTED_SAYS = "trusted import: plan, overrides, secrets and ids taken from the file"
UNTRUSTED_SAYS = (
    "untrusted import: no plan, overrides, secrets, consents, audit history or ids taken from the "
    "file (--trusted takes them); members invited"
)


@tenants.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--slug", required=True, help="slug of the NEW tenant")
@click.option("--name", help="name of the new tenant (default: the exported one)")
@click.option(
    "--trusted",
    is_flag=True,
    help="only for a file of this service's own export, kept safe: also take its plan, billing "
    "overrides, secrets (password hashes, client secrets, MFA factors and recovery codes), "
    "consents, audit history and user and client ids (still checked by the API's rules; "
    "existing accounts are still only invited)",
)
@click.option(
    "--reuse-stripe-customer",
    is_flag=True,
    help="with --trusted: attach the export's Stripe customer and subscription (only once no "
    "tenant holds them)",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def tenants_import(ctx: Context, file, slug: str, name: str | None, trusted: bool,
                   reuse_stripe_customer: bool, as_json: bool) -> None:  # fmt: skip
    """Restore an export into a NEW tenant (new id, schema and slug), in one transaction.

    Every line is checked with the API's own rules; a bad one is refused as one line naming
    its line and field (exit 2), and nothing is written. Without --trusted the file's plan,
    overrides, secrets, consents, audit history and ids are not taken (each is named in the
    output). Members whose account exists already are invited, never linked; without
    --trusted every member is. Stripe ids are not attached unless --trusted
    --reuse-stripe-customer (docs/operations.md).
    """
    from saas.ops.export import ImportFileError, import_tenant

    if reuse_stripe_customer and not trusted:
        raise click.UsageError("--reuse-stripe-customer takes Stripe ids from the file: add --trusted")
    notes: list[str] = []
    try:  # an app context: the invitations read the tenant's entitlements and queue their mail
        with ctx.app.app_context(), ctx.database.transaction() as session:
            t, counts = import_tenant(session, iter(file), slug=slug, name=name, actor=operator_actor(),
                                      trusted=trusted, reuse_stripe_customer=reuse_stripe_customer,
                                      invitation_ttl_seconds=ctx.settings.invitation_ttl_seconds,
                                      notes=notes)  # fmt: skip
            data = {"slug": t.slug, "id": str(t.id), "schema": t.schema_name, "trusted": trusted,
                    "rows": counts, "notes": notes}  # fmt: skip
    except ImportFileError as exc:
        raise BadImportFile(exc.detail or exc.title) from None
    says = TRUSTED_SAYS if trusted else UNTRUSTED_SAYS
    _done(as_json, data, f"{says}\nimported into {data['slug']} ({data['id']}): {sum(counts.values())} rows"
          + "".join(f"\nnote: {n}" for n in notes))  # fmt: skip


@tenants.command("rename-slug")
@click.argument("tenant")
@click.argument("new_slug")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def tenants_rename_slug(ctx: Context, tenant: str, new_slug: str, as_json: bool) -> None:
    """Change a tenant's slug (its schema does not move; tokens keep working: they carry the id)."""
    from saas.ops.lifecycle import rename_slug

    with ctx.database.transaction() as session:
        t = find_tenant(session, tenant, for_update=True)
        old = t.slug
        rename_slug(session, t, new_slug, operator_actor())
        data = {"id": str(t.id), "old": old, "slug": t.slug}
    _done(as_json, data, f"renamed {old} -> {data['slug']}")
