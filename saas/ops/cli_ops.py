"""Operator commands: ``saas users`` (the group) ``list|show|lock|unlock|impersonate``,
``saas audit [list] TENANT|prune|verify TENANT``, ``saas jobs list|retry``, ``saas doctor``."""

from __future__ import annotations

import re
import sys
import uuid
from datetime import datetime, timedelta

import click
from click_default_group import DefaultGroup

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
def users() -> None:
    """Users: list, show, lock, unlock, impersonate, reset MFA."""


@click.group("audit", cls=DefaultGroup, default="list")
def audit_group() -> None:
    """Audit logs: list a tenant's (``saas audit TENANT`` is ``saas audit list TENANT``), prune
    them to each plan's retention, verify a tenant's hash chain."""


@click.group()
def jobs() -> None:
    """Background jobs (the outbox): pending, failed, retry."""


def register(main: click.Group) -> None:
    """Create ``saas users`` (``reset-mfa`` and ``rehash-recovery-codes`` join it from
    :mod:`saas.auth.cli`) and ``saas jobs``; add ``saas audit`` and ``saas doctor``."""
    for command in (users, audit_group, jobs, doctor):
        main.add_command(command)


_RELATIVE = re.compile(r"^(\d+)([smhd])$")


def parse_since(raw: str) -> datetime:
    """``24h``, ``7d``, ``30m``, ``90s`` (ago) or an ISO 8601 timestamp (UTC when no offset).

    Raises:
        click.BadParameter: neither.
    """
    from datetime import UTC

    from saas.db import utcnow

    match = _RELATIVE.fullmatch(raw.strip())
    if match:
        n, unit = int(match.group(1)), match.group(2)
        return utcnow() - timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: n})
    try:
        value = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise click.BadParameter("expected 24h, 7d, 30m or an ISO 8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _find_user(session, ref: str):
    from sqlalchemy import func, select

    from saas.identity.models import User

    try:
        user = session.get(User, uuid.UUID(ref))
    except ValueError:
        user = session.scalar(select(User).where(func.lower(User.email) == ref.strip().lower()))
    if user is None:
        raise CliError(f"no user {ref!r}")
    return user


# --- users -------------------------------------------------------------------------------------


@users.command("list")
@click.option("--tenant", help="members of this tenant (slug or id)")
@click.option("--status", type=click.Choice(["active", "locked"]))
@click.option("--email", "email_like", help="substring of the email")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def users_list(ctx: Context, tenant: str | None, status: str | None, email_like: str | None, limit: int,
               as_json: bool) -> None:  # fmt: skip
    """List users with their number of tenants."""
    from sqlalchemy import func, select

    from saas.identity.models import Membership, User

    with ctx.database.transaction() as session:
        query = (
            select(User, func.count(Membership.id))
            .outerjoin(Membership, Membership.user_id == User.id)
            .group_by(User.id)
            .order_by(User.email)
            .limit(limit)
        )
        if tenant:
            t = find_tenant(session, tenant)
            query = query.where(User.id.in_(select(Membership.user_id).where(Membership.tenant_id == t.id)))
        if status:
            query = query.where(User.status == status)
        if email_like:
            query = query.where(User.email.ilike(f"%{email_like}%"))
        rows = [
            {**u.to_public(), "status": u.status, "tenants": n, "last_login_at": u.last_login_at}
            for u, n in session.execute(query)
        ]
    emit_rows(
        rows,
        as_json,
        f"{len(rows)} users",
        {
            "email": "email",
            "name": "name",
            "status": "status",
            "tenants": "tenants",
            "last login": "last_login_at",
        },
    )


@users.command("show")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def users_show(ctx: Context, user: str, as_json: bool) -> None:
    """Show a user (email or id): status, tenants and roles, live sessions."""
    from sqlalchemy import func, select

    from saas.auth.models import RefreshToken
    from saas.db import utcnow
    from saas.identity.models import Membership, Tenant

    with ctx.database.transaction() as session:
        u = _find_user(session, user)
        memberships = [
            {"tenant": t.slug, "role": m.role, "status": m.status, "since": m.created_at}
            for m, t in session.execute(
                select(Membership, Tenant).join(Tenant, Tenant.id == Membership.tenant_id)
                .where(Membership.user_id == u.id).order_by(Tenant.slug)
            )
        ]  # fmt: skip
        sessions = session.scalar(
            select(func.count()).where(
                RefreshToken.user_id == u.id,
                RefreshToken.revoked_at.is_(None),
                RefreshToken.expires_at > utcnow(),
            )
        )
        data = {**u.to_public(), "status": u.status, "last_login_at": u.last_login_at,
                "has_password": u.password_hash is not None, "live_sessions": sessions,
                "memberships": memberships}  # fmt: skip
    if as_json:
        print_json(data)
        return
    for key in (
        "id",
        "email",
        "name",
        "status",
        "has_password",
        "live_sessions",
        "last_login_at",
        "created_at",
    ):
        click.echo(f"{key:>14}: {data[key]}")
    print_table("tenants", ["tenant", "role", "status", "since"],
           [[m["tenant"], m["role"], m["status"], m["since"]] for m in memberships])  # fmt: skip


def _set_user_status(ctx: Context, user: str, status: str, reason: str | None) -> dict:
    from sqlalchemy import select

    from saas import audit
    from saas.audit import AuditAction
    from saas.auth.models import RefreshToken
    from saas.identity.models import Membership

    actor = operator_actor()
    with ctx.database.transaction() as session:
        u = _find_user(session, user)
        if u.status == status:
            raise CliError(f"{u.email} is already {status}")
        u.status = status
        revoked = 0
        if status == "locked":
            from saas.auth import browser_sessions
            from saas.auth.sessions import revoke_tokens

            revoked = revoke_tokens(session, RefreshToken.user_id == u.id, reason="user_locked")
            browser_sessions.end_for_user(session, u.id, "user_locked")
        action = AuditAction.USER_LOCKED if status == "locked" else AuditAction.USER_UNLOCKED
        tenant_ids = session.scalars(select(Membership.tenant_id).where(Membership.user_id == u.id)).all()
        # cached principals of every tenant the user is in must see the new status at once
        session.info.setdefault("saas.cache.touched", set()).update(tenant_ids)
        from saas import outbox

        event = "account_locked" if status == "locked" else "account_unlocked"
        outbox.enqueue(session, "mail.security", {"to": u.email, "event": event})
        # each tenant the user belongs to sees it in its audit log; in tenant id order, as every
        # writer to many tenants' logs takes their chain rows (saas.auth.accounts.audit_account_event)
        for tenant_id in sorted(tenant_ids):
            audit.record(
                session,
                action,
                target_type="user",
                target_id=u.id,
                data={"reason": reason} if reason else {},
                actor=actor,
                tenant_id=tenant_id,
            )
        return {"id": str(u.id), "email": u.email, "status": status, "revoked_sessions": revoked}


@users.command("lock")
@click.argument("user")
@click.option("--reason", required=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def users_lock(ctx: Context, user: str, reason: str, as_json: bool) -> None:
    """Lock a user: logins and refreshes refused, every refresh token revoked."""
    data = _set_user_status(ctx, user, "locked", reason)
    if as_json:
        print_json(data)
    else:
        click.echo(f"locked {data['email']} ({data['revoked_sessions']} sessions revoked)")


@users.command("unlock")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def users_unlock(ctx: Context, user: str, as_json: bool) -> None:
    """Unlock a user."""
    data = _set_user_status(ctx, user, "active", None)
    if as_json:
        print_json(data)
    else:
        click.echo(f"unlocked {data['email']}")


@users.command("impersonate")
@click.argument("user")
@click.option("--tenant", required=True, help="the tenant (slug or id) to act in")
@click.option("--reason", required=True, help="why (shown in the tenant's audit log)")
@click.option("--minutes", default=15, show_default=True, type=int, help="lifetime, at most 60")
@click.option("--operator", help="who acts (default: SAAS_OPERATOR, else the OS user)")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def users_impersonate(ctx: Context, user: str, tenant: str, reason: str, minutes: int, operator: str | None,
                      as_json: bool) -> None:  # fmt: skip
    """Issue a short access token to act as USER (email or id) in a tenant, for support.

    The token (RFC 9068, no refresh token) carries ``act: {"sub": OPERATOR}`` (RFC 8693
    section 4.1); every request made with it is in the tenant's audit log with both actors, and
    it cannot change passwords, MFA, passkeys, SSO, API keys, clients or billing. Refused when
    the tenant sets ``allow_impersonation: false``, the user is not an active member or is
    locked, or MINUTES is not 1..60. Prints the token alone (or ``--json``).
    """
    from saas.actions import ActionContext
    from saas.auth import impersonation

    actor = operator_actor(operator)
    with ctx.database.transaction() as session:
        t = find_tenant(session, tenant)
        u = _find_user(session, user)
        issued = impersonation.start(
            ActionContext.for_operator(session, actor), ctx.services.tokens,
            user=u, tenant=t, reason=reason, minutes=minutes,
        )  # fmt: skip
        data = {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "act": issued.claims["act"],
            "user": {"id": str(u.id), "email": u.email},
            "tenant": {"id": str(t.id), "slug": t.slug},
        }
    if as_json:
        print_json(data)
    else:
        click.echo(issued.token)
        click.echo(f"acting as {u.email} in {t.slug} for {minutes} min as {actor.id} (audited)", err=True)


# --- audit -------------------------------------------------------------------------------------


@audit_group.command("list")
@click.argument("tenant")
@click.option("--since", "since_raw", help="24h, 7d, 30m or an ISO 8601 time")
@click.option("--action", help="exact action, e.g. tenant.suspended")
@click.option("--actor", help="actor id (user id, client id or operator name)")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def audit_cmd(ctx: Context, tenant: str, since_raw: str | None, action: str | None, actor: str | None,
              limit: int, as_json: bool) -> None:  # fmt: skip
    """A tenant's audit log, newest first (``saas audit TENANT`` for short)."""
    from sqlalchemy import select

    from saas.audit import AuditEvent

    since = parse_since(since_raw) if since_raw else None
    with ctx.database.transaction() as session:
        schema = find_tenant(session, tenant).schema_name
    with ctx.database.transaction(schema) as session:
        query = select(AuditEvent).order_by(AuditEvent.occurred_at.desc()).limit(limit)
        if since:
            query = query.where(AuditEvent.occurred_at >= since)
        if action:
            query = query.where(AuditEvent.action == action)
        if actor:
            query = query.where(AuditEvent.actor_id == actor)
        rows = [e.to_public() for e in session.scalars(query)]
    if as_json:
        print_json(rows)
        return
    print_table(
        f"{len(rows)} events",
        ["when", "actor", "action", "target", "data"],
        [[r["occurred_at"], f"{r['actor']['type']}:{r['actor']['id'] or ''}", r["action"],
          f"{r['target']['type'] or ''}:{r['target']['id'] or ''}", r["data"] or ""] for r in rows],
    )  # fmt: skip


@audit_group.command("prune")
@click.option("--tenant", "only", multiple=True, help="only this tenant (slug or id); repeatable")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100000),
              help="events deleted per transaction")  # fmt: skip
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def audit_prune(ctx: Context, only: tuple[str, ...], batch_size: int, as_json: bool) -> None:
    """Delete audit events older than each tenant's plan allows (``audit_log_days``), in
    batches; each tenant's hash chain stays verifiable (its anchor moves). Exit 1 when a
    tenant failed (the others are still pruned)."""
    from saas.ops.audit_retention import prune_expired

    if only:
        with ctx.database.transaction() as session:
            for ref in only:
                find_tenant(session, ref)
    results = prune_expired(ctx.database, only=set(only) or None, batch_size=batch_size)
    rows = [r.to_dict() for r in results]
    if as_json:
        print_json(rows)
    else:
        pruned = [r for r in rows if r["deleted"]]
        click.echo(f"pruned {sum(r['deleted'] for r in rows)} events in {len(pruned)} of {len(rows)} tenants")
        for r in pruned:
            click.echo(f"  {r['slug']}: {r['deleted']} older than {r['retention_days']} days")
        for r in rows:
            if r["error"]:
                click.echo(f"error: {r['slug']}: {r['error']}", err=True)
    if any(r["error"] for r in rows):
        sys.exit(1)


@audit_group.command("verify")
@click.argument("tenant")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def audit_verify(ctx: Context, tenant: str, as_json: bool) -> None:
    """Check a tenant's audit hash chain from its anchor to its head in one snapshot. Prints
    the head (seq and hash: keep it elsewhere to detect a rewrite of the whole chain) or the
    first broken link; exit 1 on a break."""
    from sqlalchemy import text

    from saas.audit import verify_chain

    with ctx.database.transaction() as session:
        schema = find_tenant(session, tenant).schema_name
    with ctx.database.transaction(schema) as session:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        session.execute(text("SET TRANSACTION READ ONLY"))
        report = verify_chain(session)
    if as_json:
        print_json(report.to_dict())
    elif report.ok:
        click.echo(f"ok: {report.checked} events (seq {report.anchor_seq + 1} to {report.head_seq}), "
                   f"{report.redacted} redacted; head {report.head_hash}")  # fmt: skip
    else:
        event = f" (event {report.broken_id})" if report.broken_id else ""
        click.echo(f"broken at seq {report.broken_seq}{event}: {report.reason}; "
                   f"{report.checked} events verified before it")  # fmt: skip
    if not report.ok:
        sys.exit(1)


# --- jobs --------------------------------------------------------------------------------------


def _job_row(m) -> dict:
    state = "sent" if m.sent_at else "failed" if m.failed_at else "pending"
    return {
        "id": m.id,
        "topic": m.topic,
        "tenant_id": str(m.tenant_id) if m.tenant_id else None,
        "state": state,
        "attempts": m.attempts,
        "created_at": m.created_at,
        "available_at": m.available_at,
        "failed_at": m.failed_at,
        "last_error": m.last_error,
    }  # the payload is never shown: it may carry a token until delivered


@jobs.command("list")
@click.option("--failed", is_flag=True, help="only dead letters")
@click.option("--topic")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def jobs_list(ctx: Context, failed: bool, topic: str | None, limit: int, as_json: bool) -> None:
    """Undelivered outbox messages (pending and failed), oldest first; payloads are not shown."""
    from sqlalchemy import select

    from saas.outbox import OutboxMessage as M

    with ctx.database.transaction() as session:
        query = select(M).where(M.sent_at.is_(None)).order_by(M.id).limit(limit)
        if failed:
            query = query.where(M.failed_at.is_not(None))
        if topic:
            query = query.where(M.topic == topic)
        rows = [_job_row(m) for m in session.scalars(query)]
    if as_json:
        print_json(rows)
        return
    print_table(
        f"{len(rows)} jobs",
        ["id", "topic", "state", "attempts", "next try", "last error"],
        [[r["id"], r["topic"], r["state"], r["attempts"], r["available_at"], (r["last_error"] or "")[:80]]
         for r in rows],
    )  # fmt: skip


@jobs.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all-failed", is_flag=True, help="every dead letter")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def jobs_retry(ctx: Context, ids: tuple[int, ...], all_failed: bool, as_json: bool) -> None:
    """Put dead letters back in the queue (attempts reset, due now)."""
    from sqlalchemy import update

    from saas.db import utcnow
    from saas.outbox import OutboxMessage as M

    if not ids and not all_failed:
        raise click.UsageError("give job ids or --all-failed")
    with ctx.database.transaction() as session:
        query = update(M).where(M.failed_at.is_not(None), M.sent_at.is_(None))
        if ids:
            query = query.where(M.id.in_(ids))
        result = session.execute(
            query.values(failed_at=None, attempts=0, available_at=utcnow()).returning(M.id)
        )
        retried = sorted(result.scalars().all())
    missing = sorted(set(ids) - set(retried))
    if as_json:
        print_json({"retried": retried, "not_failed": missing})
    else:
        click.echo(f"requeued {len(retried)} jobs")
        if missing:
            click.echo(f"not dead letters (or unknown): {', '.join(map(str, missing))}", err=True)
    if missing:
        sys.exit(1)


# --- doctor ------------------------------------------------------------------------------------


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def doctor(ctx: Context, as_json: bool) -> None:
    """Check configuration, database, Redis, Stripe, SMTP, migrations, outbox and signing keys.

    One line each; exit code 1 when any check fails.
    """
    from saas.ops.doctor import run_all

    def factory(settings):
        if ctx._settings is None:
            if not settings.database_url:
                raise RuntimeError("DATABASE_URL: not set")
            ctx._settings = settings
        return ctx.services

    verdicts = run_all(factory)
    if as_json:
        print_json([v.to_dict() for v in verdicts])
    else:
        marks = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "skip": "skip"}
        for v in verdicts:
            click.echo(f"{marks[v.status]}  {v.name:<13} {v.detail}")
    if any(v.status == "fail" for v in verdicts):
        sys.exit(1)
