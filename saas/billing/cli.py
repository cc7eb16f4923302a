"""Operator commands: ``saas billing plans|show|sync|events|replay|report-usage|dunning`` and
``saas tenants set-plan``. Added to ``saas`` by :func:`register`."""

from __future__ import annotations

import click
from sqlalchemy import select

from saas.cli.helpers import (
    CliError,
    Context,
    fail_cleanly,
    find_tenant,
    group_of,
    operator_actor,
    pass_ctx,
    print_json,
    print_table,
)


def register(main: click.Group) -> None:
    """Add ``saas billing``; add ``set-plan`` to ``saas tenants`` (:mod:`saas.ops.cli_tenants`)."""
    main.add_command(billing)
    group_of(main, "tenants").add_command(set_plan_cmd)


def _billing(ctx: Context):
    from saas.billing.service import BillingNotConfigured

    handle = ctx.services.billing
    if handle is None:
        raise BillingNotConfigured()
    return handle


def _catalogue(ctx: Context):
    """The catalogue of this invocation's ``PLANS_FILE`` (validated; a bad one is one line, exit 1),
    made the process's: a command that reads it before any service is built sees the operator's."""
    from saas.billing import entitlements as ent

    return ent.use_catalogue(ctx.settings.plans_file)


@click.group()
def billing() -> None:
    """Billing: plans, tenant state, reconciliation with Stripe, webhook events, usage."""


@billing.command("plans")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def plans_cmd(ctx: Context, as_json: bool) -> None:
    """The plan catalogue in force (PLANS_FILE, else the packaged one): entitlements, trials and
    configured Stripe prices."""
    default, plans = _catalogue(ctx)
    prices = ctx.settings.stripe_prices
    rows = [
        {
            "id": p.id,
            "name": p.name,
            "default": p.id == default,
            "seats": p.seats,
            "requests_per_minute": p.requests_per_minute,
            "monthly_api_calls": p.monthly_api_calls,
            "per_seat": p.per_seat,
            "trial_days": p.trial_days,
            "payment_method_collection": p.payment_method_collection
            or (ctx.settings.billing_trial_payment_method if p.trial_days else None),
            "features": dict(p.features),
            "prices": {interval: prices.get(env) for interval, env in p.price_env.items()},
        }
        for p in plans.values()
    ]
    if as_json:
        print_json(rows)
        return
    print_table(
        "plans",
        ["id", "name", "seats", "req/min", "API calls/month", "trial", "features", "prices"],
        [
            [
                r["id"] + (" (default)" if r["default"] else ""),
                r["name"],
                r["seats"] if r["seats"] is not None else "unlimited",
                r["requests_per_minute"],
                r["monthly_api_calls"] if r["monthly_api_calls"] is not None else "unlimited",
                f"{r['trial_days']} d ({r['payment_method_collection']})" if r["trial_days"] else "-",
                ", ".join(f"{k}={v}" for k, v in r["features"].items()),
                ", ".join(f"{k}: {v or '-'}" for k, v in r["prices"].items()),
            ]
            for r in rows
        ],
    )


@billing.command("show")
@click.argument("tenant")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def show_cmd(ctx: Context, tenant: str, as_json: bool) -> None:
    """A tenant's plan, subscription, seats, usage and entitlements."""
    from saas.billing import service, usage
    from saas.billing.models import BillingOverride

    with ctx.database.transaction() as session:
        t = find_tenant(session, tenant)
        period = usage.current_period(t)
        data = service.describe(session, t, usage.read_usage(ctx.services.redis, t.id, period.label), period)
        account = service.get_account(session, t.id)
        override = session.get(BillingOverride, t.id)
        data = {
            "tenant": t.slug,
            **data,
            "stripe_customer_id": account.stripe_customer_id if account else None,
            "stripe_subscription_id": account.stripe_subscription_id if account else None,
            "override": {"plan": override.plan, "limits": override.limits, "reason": override.reason,
                         "set_by": override.set_by} if override else None,
        }  # fmt: skip
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        click.echo(f"{key:>22}: {value}")


@billing.command("sync")
@click.argument("tenant", required=False)
@click.option("--all", "all_tenants", is_flag=True, help="every tenant with a Stripe customer")
@pass_ctx
@fail_cleanly
def sync_cmd(ctx: Context, tenant: str | None, all_tenants: bool) -> None:
    """Reconcile local billing state from Stripe (repairs drift after missed webhooks)."""
    from saas.billing import service
    from saas.billing.models import BillingAccount
    from saas.identity.models import Tenant

    if bool(tenant) == all_tenants:
        raise click.UsageError("give a TENANT or --all")
    app = ctx.app  # applying a subscription drops the cached state through current_app's Redis
    handle = _billing(ctx)
    with app.app_context():
        with ctx.database.transaction() as session:
            if tenant:
                ids = [find_tenant(session, tenant).id]
            else:
                ids = list(session.scalars(
                    select(BillingAccount.tenant_id).where(BillingAccount.stripe_customer_id.is_not(None))
                ))  # fmt: skip
        failures = 0
        for tenant_id in ids:
            try:
                with ctx.database.transaction() as session:
                    t = session.get(Tenant, tenant_id)
                    assert t is not None
                    outcome = service.sync_tenant(session, handle, t, actor=operator_actor())
                click.echo(f"{t.slug}: {outcome}")
            except service.AppError as exc:
                failures += 1
                click.echo(f"{tenant_id}: failed: {exc.detail or exc.title}", err=True)
    if failures:
        raise CliError(f"{failures} of {len(ids)} tenants failed to sync")


@billing.command("events")
@click.option("--failed", is_flag=True, help="only events whose processing failed")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def events_cmd(ctx: Context, failed: bool, limit: int, as_json: bool) -> None:
    """Stored Stripe webhook events, newest first."""
    from saas.billing.models import WebhookEvent

    with ctx.database.transaction() as session:
        query = select(WebhookEvent).order_by(WebhookEvent.received_at.desc()).limit(limit)
        if failed:
            query = query.where(WebhookEvent.status == "failed")
        rows = [
            {"id": e.id, "type": e.type, "created": e.created, "status": e.status, "attempts": e.attempts,
             "tenant_id": e.tenant_id, "error": e.error, "processed_at": e.processed_at}
            for e in session.scalars(query)
        ]  # fmt: skip
    if as_json:
        print_json(rows)
        return
    print_table(
        f"{len(rows)} events",
        ["id", "type", "status", "attempts", "created", "error"],
        [
            [r["id"], r["type"], r["status"], r["attempts"], r["created"], (r["error"] or "")[:60]]
            for r in rows
        ],
    )


@billing.command("replay")
@click.argument("event_id")
@pass_ctx
@fail_cleanly
def replay_cmd(ctx: Context, event_id: str) -> None:
    """Apply a stored event again (it re-fetches live state from Stripe, so it never regresses)."""
    from saas.billing import webhooks

    app = ctx.app  # applying the event drops the cached state through current_app's Redis
    handle = _billing(ctx)
    with app.app_context():
        try:
            outcome = webhooks.replay(ctx.database, handle, event_id)
        except KeyError:
            raise CliError(f"no stored event {event_id!r}") from None
    click.echo(f"{event_id}: {outcome.status}" + (f" ({outcome.detail})" if outcome.detail else ""))


@billing.command("report-usage")
@click.argument("tenant", required=False)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def report_usage_cmd(ctx: Context, tenant: str | None, as_json: bool) -> None:
    """Send API-call usage to Stripe Billing Meters now (what the worker does every
    USAGE_REPORT_INTERVAL): each billed tenant's calls since the last report, in its
    subscription's period, and the final slice of periods that ended. Safe to rerun."""
    from saas.billing import usage

    handle = _billing(ctx)
    ids = None
    if tenant:
        with ctx.database.transaction() as session:
            ids = [find_tenant(session, tenant).id]
    run = usage.report_usage(ctx.database, ctx.services.redis, handle, tenant_ids=ids)
    if as_json:
        print_json({"sent": run.sent, "closed": run.closed, "unchanged": run.unchanged, "failed": run.failed})
    else:
        click.echo(
            f"{sum(run.sent.values())} API calls reported for {len(run.sent)} periods, "
            f"{len(run.closed)} periods closed, {len(run.unchanged)} unchanged, {len(run.failed)} failed"
        )
    for name, error in run.failed.items():
        click.echo(f"failed {name}: {error}", err=True)
    if run.failed:
        raise CliError("some usage reports failed; rerun to retry them (what was sent is never sent twice)")


@billing.command("dunning")
@click.option("--now", "now_text", metavar="ISO-8601",
              help="the time to check against (default: now), e.g. 2027-01-04T09:30:00+00:00")  # fmt: skip
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def dunning_cmd(ctx: Context, now_text: str | None, as_json: bool) -> None:
    """Mail the tenants whose grace period (past_due) has ended, once per grace period.

    Run it on a schedule (every few minutes); a rerun mails nobody twice."""
    from datetime import UTC, datetime

    from saas.billing import dunning
    from saas.identity.models import Tenant

    now = datetime.now(UTC)
    if now_text:
        try:
            now = datetime.fromisoformat(now_text)
        except ValueError:
            raise click.BadParameter("expected an ISO-8601 time", param_hint="--now") from None
        if now.tzinfo is None:
            raise click.BadParameter("give the time zone (e.g. +00:00 or Z)", param_hint="--now")
    with ctx.database.transaction() as session:
        queued = dunning.notify_grace_ended(session, now)
        slugs = [t.slug for t in (session.get(Tenant, tenant_id) for tenant_id in queued) if t]
    if as_json:
        print_json({"now": now.isoformat(), "mailed": slugs})
        return
    names = f" ({', '.join(slugs)})" if slugs else ""
    click.echo(f"grace period ended: {len(slugs)} tenant(s) mailed{names}")


@click.command("set-plan")
@click.argument("tenant")
@click.argument("plan")
@click.option("--reason", default=None, help="why (kept with the override and in the audit log)")
@click.option("--limit", "limits", multiple=True, metavar="KEY=VALUE",
              help="override one limit or feature, e.g. seats=50 or sso=true (-1: unlimited)")  # fmt: skip
@pass_ctx
@fail_cleanly
def set_plan_cmd(ctx: Context, tenant: str, plan: str, reason: str | None, limits: tuple[str, ...]) -> None:
    """Operator override of a tenant's plan (PLAN ``none`` removes the override). Audited."""
    import json

    from saas import audit
    from saas.audit import AuditAction
    from saas.billing import entitlements as ent
    from saas.billing.models import BillingOverride
    from saas.db import utcnow

    _, plans = _catalogue(ctx)
    if plan != "none" and plan not in plans:
        raise click.BadParameter(f"one of: {', '.join(plans)}, none", param_hint="PLAN")
    parsed: dict[str, object] = {}
    for item in limits:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter("expected KEY=VALUE", param_hint="--limit")
        try:
            parsed[key] = json.loads(raw)
        except ValueError:
            parsed[key] = raw
        if key in ent.LIMIT_KEYS:
            if not ent.valid_limit(parsed[key]):
                raise click.BadParameter(f"{key}: expected an integer >= -1", param_hint="--limit")
            continue
        kinds = ent.feature_kinds()
        if key not in kinds:
            known = ", ".join([*ent.LIMIT_KEYS, *kinds])
            raise click.BadParameter(f"{key}: not a limit or a feature of the catalogue ({known})",
                                     param_hint="--limit")  # fmt: skip
        kind = kinds[key]
        if kind is str:
            parsed[key] = raw
        elif not isinstance(parsed[key], kind) or (kind is int and isinstance(parsed[key], bool)):
            expected = "true or false" if kind is bool else "an integer"
            raise click.BadParameter(f"{key}: expected {expected}", param_hint="--limit")
    actor = operator_actor()
    with ctx.database.transaction() as session:
        t = find_tenant(session, tenant)
        override = session.get(BillingOverride, t.id, with_for_update=True)
        before = {"plan": override.plan, "limits": override.limits} if override else None
        if plan == "none" and not parsed:
            if override is not None:
                session.delete(override)
            after = None
        else:
            if override is None:
                override = BillingOverride(tenant_id=t.id, limits={})
                session.add(override)
            override.plan = None if plan == "none" else plan
            override.limits = parsed
            override.reason = reason
            override.set_by = actor.id
            override.set_at = utcnow()
            after = {"plan": override.plan, "limits": parsed}
        session.flush()
        t.plan = ent.effective_plan_id(None, ent.load_state(session, t.id)) if after or before else t.plan
        audit.record(
            session,
            AuditAction.BILLING_PLAN_OVERRIDDEN,
            target_type="tenant",
            target_id=t.id,
            data={"from": before, "to": after, "reason": reason},
            actor=actor,
            tenant_id=t.id,
        )
        ent.invalidate(session, t.id, redis=ctx.services.redis)  # the API's cached state goes now
        slug, effective = t.slug, t.plan
    click.echo(f"{slug}: override {'removed' if after is None else after}; plan now {effective}")
