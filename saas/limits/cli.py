"""``saas limits show TENANT`` and ``saas limits reset TENANT``. Added to ``saas`` by
:func:`register`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from saas.cli.helpers import (
    CliError,
    Context,
    fail_cleanly,
    find_tenant,
    operator_actor,
    pass_ctx,
    print_json,
    print_table,
)

if TYPE_CHECKING:
    from saas.services import Services


def register(main: click.Group) -> None:
    main.add_command(limits)


@click.group()
def limits() -> None:
    """Rate limits and quotas of a tenant."""


def tenant_limits(svc: Services, tenant: Any, max_subjects: int = 1000) -> dict[str, Any]:
    """Current usage of ``tenant`` against each of its policies (reads only; consumes nothing).

    Returns ``{"tenant", "plan", "policies": [{policy, subject, limit, window, remaining,
    reset_seconds}], "quota": {...} | None}``.

    Raises:
        CliError: Redis unavailable.
    """
    from saas.billing.entitlements import entitlements_for
    from saas.cache.guard import RedisUnavailable
    from saas.cache.namespace import TenantKeys
    from saas.limits.gcra import Check
    from saas.limits.policies import tenant_checks

    limiter = svc.limiter
    guard = svc.redis_guard
    ent = entitlements_for(tenant)
    ent_data = ent.to_dict() if hasattr(ent, "to_dict") else dict(vars(ent))
    keys = TenantKeys(tenant.id)
    base = tenant_checks(tenant.id, ent_data, None, None, limiter.share)
    principal_checks = tenant_checks(tenant.id, ent_data, tenant.id, None, limiter.share)
    per_principal = principal_checks[1] if len(principal_checks) > 1 else None  # None: unlimited
    try:
        found: list[bytes] = []

        def scan(r: Any, pattern: str) -> list[bytes]:
            out = []
            for key in r.scan_iter(pattern, 500):
                out.append(key)
                if len(out) >= max_subjects:
                    break
            return out

        for kind in ("user", "client") if per_principal is not None else ():
            found += guard.call("limits", lambda r, p=keys.rate(kind, "*"): scan(r, p), key=keys.tag)
        checks = list(base)
        for raw in sorted(found):
            key = raw.decode()
            kind = key.split(":rl:", 1)[1].split(":", 1)[0]
            assert per_principal is not None
            checks.append(Check(kind, key, per_principal.limit, per_principal.period))
        decision = limiter.hit(checks, limiter.quota_for(tenant.id, ent_data), cost=0, peek=True)
    except RedisUnavailable as exc:
        raise CliError(f"redis unavailable: {exc}") from None
    rows = []
    for state in decision.states:
        key = state.check.key
        rows.append(
            {
                "policy": state.check.policy,
                "subject": _subject_of(key),
                "limit": state.check.limit,
                "window": state.check.period,
                "remaining": state.remaining,
                "reset_seconds": state.reset_seconds,
            }
        )
    quota = None
    if decision.quota is not None:
        q = decision.quota
        quota = {
            "period": q.period_label,
            "used": decision.quota_used,
            "limit": q.limit,
            "remaining": None if q.limit is None else max(0, q.limit - decision.quota_used),
            "key": q.key,
        }
    return {"tenant": tenant.slug, "plan": ent_data.get("plan"), "policies": rows, "quota": quota}


def _subject_of(key: str) -> str:
    """``{t:<id>}:rl:user:<hex>`` -> ``<hex>``; ``{t:<id>}:rl:tenant`` -> ``tenant``."""
    parts = key.split(":rl:", 1)[1].split(":", 1)
    return parts[1] if len(parts) == 2 else "tenant"


def reset_tenant_limits(svc: Services, tenant: Any, include_quota: bool = False) -> int:
    """Delete the tenant's rate-limit state (and the current period's usage counter when
    ``include_quota``); returns how many keys were deleted.

    Raises:
        CliError: Redis unavailable.
    """
    from saas.cache.guard import RedisUnavailable
    from saas.cache.namespace import TenantKeys

    limiter = svc.limiter
    guard = svc.redis_guard
    keys = TenantKeys(tenant.id)

    def delete(r: Any) -> int:
        doomed = list(r.scan_iter(keys.pattern("rl:"), 500))
        if include_quota:
            ent = svc.entitlements(tenant)
            ent_data = ent.to_dict() if hasattr(ent, "to_dict") else dict(vars(ent))
            doomed.append(keys.usage(limiter.period_for(tenant.id, limiter.clock(), ent_data).label))
        deleted = 0
        for start in range(0, len(doomed), 500):
            deleted += r.delete(*doomed[start : start + 500])
        return deleted

    try:
        return guard.call("limits", delete, key=keys.tag)
    except RedisUnavailable as exc:
        raise CliError(f"redis unavailable: {exc}") from None


@limits.command("show")
@click.argument("tenant")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def show(ctx: Context, tenant: str, as_json: bool) -> None:
    """Current usage of TENANT (slug or id) against each policy and its monthly quota."""
    with ctx.database.transaction() as session:
        data = tenant_limits(ctx.services, find_tenant(session, tenant))
    if as_json:
        print_json(data)
        return
    print_table(
        f"limits of {data['tenant']} (plan {data['plan']})",
        ["policy", "subject", "limit", "window s", "remaining", "full in s"],
        [
            [p["policy"], p["subject"], p["limit"], p["window"], p["remaining"], p["reset_seconds"]]
            for p in data["policies"]
        ],
    )
    q = data["quota"]
    if q and q["limit"] is not None:
        click.echo(f"monthly quota {q['period']}: {q['used']} of {q['limit']} used ({q['remaining']} left)")
    elif q:
        click.echo(f"monthly quota {q['period']}: {q['used']} used (unlimited)")


@limits.command("reset")
@click.argument("tenant")
@click.option("--quota", "include_quota", is_flag=True, help="also zero this period's usage counter")
@pass_ctx
@fail_cleanly
def reset(ctx: Context, tenant: str, include_quota: bool) -> None:
    """Clear TENANT's rate-limit state (audited in the tenant's log)."""
    from saas import audit
    from saas.audit import AuditAction

    with ctx.database.transaction() as session:
        t = find_tenant(session, tenant)
        deleted = reset_tenant_limits(ctx.services, t, include_quota)
        audit.record(
            session,
            AuditAction.LIMITS_RESET,
            target_type="tenant",
            target_id=t.id,
            data={"keys_deleted": deleted, "quota": include_quota},
            actor=operator_actor(),
            tenant_id=t.id,
        )
    suffix = " (quota included)" if include_quota else ""
    click.echo(f"reset {deleted} rate-limit keys of {t.slug}{suffix}")
