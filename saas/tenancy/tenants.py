"""Tenant services: change a tenant's name and settings (``PATCH /api/v1/tenant``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from saas.actions import ActionContext
from saas.audit import AuditAction
from saas.auth import service as auth_service
from saas.auth.sso.policy import end_sessions_without_sso
from saas.auth.stepup import step_up_for
from saas.errors import ValidationError
from saas.identity.models import Membership, Tenant, User
from saas.services import services
from saas.webhooks import events as webhook_events


def update_tenant(ctx: ActionContext, body: dict[str, Any]) -> Tenant:
    """Change the principal's tenant: ``name`` (trimmed) and ``settings`` (merged key by key).

    A settings change needs step-up (RFC 9470), checked before anything changes; turning
    ``require_mfa`` on ends the sessions signed in without a second factor (their access tokens
    included), and turning ``require_sso`` on those of its SSO domains' users signed in without
    SSO (:func:`saas.auth.sso.policy.end_sessions_without_sso`). Audited as ``tenant.updated``
    with ``{field: {"from", "to"}}`` (and ``auth.sessions_revoked``) when something changed.

    Raises:
        InsufficientUserAuthentication: a settings change without a recent sign-in.
        ValidationError: settings invalid with this deployment (:func:`check_settings`).
    """
    assert ctx.principal is not None and ctx.principal.tenant is not None
    tenant = ctx.principal.tenant
    changes: dict[str, Any] = {}
    merged = {**(tenant.settings or {}), **body.get("settings", {})}
    settings_change = "settings" in body and merged != (tenant.settings or {})
    step_up_for("tenant.update", settings_changed=settings_change)  # before any change
    if "name" in body and body["name"].strip() != tenant.name:
        changes["name"] = {"from": tenant.name, "to": body["name"].strip()}
        tenant.name = body["name"].strip()
    if settings_change:
        check_settings(body["settings"])
        check_break_glass(ctx.session, tenant, body["settings"])
        changes["settings"] = body["settings"]
        mfa_on = merged.get("require_mfa") and not (tenant.settings or {}).get("require_mfa")
        sso_on = merged.get("require_sso") and not (tenant.settings or {}).get("require_sso")
        tenant.settings = merged
        if sso_on:
            # password and passkey sessions of the SSO domains' users end now (break-glass owners
            # keep theirs), access tokens included: the rule holds from the change, not from
            # their next sign-in
            ended = end_sessions_without_sso(ctx.session, tenant)
            ctx.record(
                AuditAction.AUTH_SESSIONS_REVOKED,
                tenant_id=tenant.id,
                target_type="tenant",
                target_id=tenant.id,
                data={"reason": "require_sso", "revoked": ended},
            )
        if mfa_on:
            # sessions signed in without a second factor end now, access tokens included
            revoked = auth_service.revoke_sessions_without_mfa(ctx.session, tenant.id)
            ctx.record(
                AuditAction.AUTH_SESSIONS_REVOKED,
                tenant_id=tenant.id,
                target_type="tenant",
                target_id=tenant.id,
                data={"reason": "require_mfa", "revoked": revoked},
            )
    if changes:
        ctx.record(
            AuditAction.TENANT_UPDATED,
            tenant_id=tenant.id,
            target_type="tenant",
            target_id=tenant.id,
            data=changes,
        )
        webhook_events.emit(
            ctx.session,
            tenant.id,
            "tenant.updated",
            {
                "tenant": {"id": tenant.id, "slug": tenant.slug, "name": tenant.name},
                "changed": sorted(changes),
            },
        )
        ctx.session.flush()
    return tenant


def check_settings(settings: dict[str, Any]) -> None:
    """Settings valid alone but not with this deployment.

    Raises:
        ValidationError: ``session_idle_minutes`` shorter than an access token's lifetime (a
            session is idle from its last token issuance, so a client using the API without
            pause would look idle before it needs to refresh).
    """
    idle = settings.get("session_idle_minutes")
    ttl = services().settings.access_token_ttl_seconds
    if idle is not None and idle * 60 < ttl:
        message = f"Must be at least {-(-ttl // 60)} (the access-token lifetime, minutes)."
        raise ValidationError({"settings": {"session_idle_minutes": [message]}})


def check_break_glass(session: Session, tenant: Tenant, settings: dict[str, Any]) -> None:
    """``sso_break_glass`` (docs/auth.md, "Per-tenant SSO") names active owners of the tenant only,
    by user id or address (compared trimmed, without case).

    Raises:
        ValidationError: ``{"settings": {"sso_break_glass": [...]}}`` naming the entries that are
            not owners of this tenant.
    """
    if "sso_break_glass" not in settings:
        return
    entries = list(dict.fromkeys(str(e).strip() for e in settings["sso_break_glass"] or []))
    owners = session.execute(
        select(User.id, func.lower(User.email))
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.tenant_id == tenant.id, Membership.role == "owner", Membership.status == "active")
    ).all()
    known = {str(uid) for uid, _ in owners} | {email for _, email in owners}
    bad = [e for e in entries if e.lower() not in known]
    if bad:
        message = f"Not an owner of this tenant: {', '.join(bad)}."
        raise ValidationError({"settings": {"sso_break_glass": [message]}})
