"""Impersonation for support: an operator acts as a member, audited, restricted, and only where
the tenant allows it (docs/auth.md, "Impersonation for support").

* :func:`start` (``saas users impersonate EMAIL --tenant T --reason TEXT --minutes N``) issues
  an RFC 9068 access token for the user in the tenant with an ``act`` claim naming the operator
  (RFC 8693 section 4.1: ``{"sub": "<operator>"}``), ``exp`` at most :data:`MAX_MINUTES`
  away, no refresh token, and no ``auth_time``/``amr``/``acr`` (nobody authenticated as the
  user). Audited in the tenant as ``impersonation.started``.
* :func:`bind` (from the request's authentication, only for a token with ``act``) marks the
  principal (``Principal.act``) and records ``impersonation.used`` for the request, with both
  actors, whatever its outcome; events the request's services write carry ``data.act`` too
  (:meth:`saas.actions.ActionContext.record`).
* The restrictions live in :func:`saas.auth.context.check_not_impersonated` (every step-up and
  the password-proved account changes) and the tenant's ``allow_impersonation`` setting in
  :func:`saas.auth.context.current_principal`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from flask import after_this_request, g, request
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from saas import audit, db
from saas.actions import ActionContext
from saas.audit import Actor, AuditAction
from saas.auth.tokens import FIRST_PARTY_CLIENT, IssuedToken, TokenService
from saas.errors import ErrorCode, Forbidden, Unauthorized, ValidationError
from saas.identity.models import Membership, Tenant, User

log = logging.getLogger(__name__)

#: the longest impersonation token, in minutes
MAX_MINUTES = 60
#: ``--minutes`` when not given
DEFAULT_MINUTES = 15
#: the scope of an impersonation token: the member's API permissions, as a login's
SCOPE = "api"
#: the longest operator name and reason kept (``audit_events.actor_id`` is 320 characters)
MAX_OPERATOR = 320
MAX_REASON = 500


def allowed(tenant: Tenant) -> bool:
    """The tenant's ``allow_impersonation`` setting (default true)."""
    return bool((tenant.settings or {}).get("allow_impersonation", True))


def start(
    ctx: ActionContext, tokens: TokenService, *, user: User, tenant: Tenant, reason: str, minutes: int
) -> IssuedToken:
    """Issue an impersonation access token for ``user`` in ``tenant``, ``minutes`` long, as the
    operator ``ctx.actor`` (``Actor("operator", name)``), and audit ``impersonation.started``
    (``data``: operator, reason, minutes, the token's ``jti`` and ``exp``). Nothing is issued
    or written when a check fails.

    Returns:
        The token (``claims["act"] == {"sub": operator}``, ``expires_in`` = minutes * 60 s).

    Raises:
        ValidationError: ``minutes`` outside 1..:data:`MAX_MINUTES`, an empty ``reason``, or an
            actor that is not a named operator.
        Forbidden: ``impersonation_disabled`` (the tenant set ``allow_impersonation: false``),
            ``tenant_suspended``, ``not_a_member`` (no active membership) or
            ``impersonation_forbidden`` (the account is locked).
    """
    reason = (reason or "").strip()
    errors: dict[str, list[str]] = {}
    if not isinstance(minutes, int) or not 1 <= minutes <= MAX_MINUTES:
        errors["minutes"] = [f"Between 1 and {MAX_MINUTES}."]
    if not reason:
        errors["reason"] = ["A reason is required (it is shown in the tenant's audit log)."]
    elif len(reason) > MAX_REASON:
        errors["reason"] = [f"At most {MAX_REASON} characters."]
    operator = ctx.actor.id or ""
    if ctx.actor.type != "operator" or not operator.strip() or len(operator) > MAX_OPERATOR:
        errors["operator"] = [f"A named operator of at most {MAX_OPERATOR} characters."]
    if errors:
        raise ValidationError(errors, detail="; ".join(f"{k}: {v[0]}" for k, v in errors.items()))
    if not allowed(tenant):
        raise Forbidden(
            f"Tenant {tenant.slug} does not allow impersonation (allow_impersonation: false).",
            code=ErrorCode.IMPERSONATION_DISABLED,
        )
    if tenant.status != "active":
        raise Forbidden(f"Tenant {tenant.slug} is {tenant.status}.", code=ErrorCode.TENANT_SUSPENDED)
    membership = ctx.session.scalars(
        select(Membership).where(
            Membership.user_id == user.id, Membership.tenant_id == tenant.id, Membership.status == "active"
        )
    ).first()
    if membership is None:
        raise Forbidden(
            f"{user.email} is not an active member of {tenant.slug}.", code=ErrorCode.NOT_A_MEMBER
        )
    if user.status != "active":
        raise Forbidden(f"{user.email} is {user.status}.", code=ErrorCode.IMPERSONATION_FORBIDDEN)
    issued = tokens.issue(
        subject=str(user.id),
        tenant_id=str(tenant.id),
        roles=[membership.role],
        scope=SCOPE,
        client_id=FIRST_PARTY_CLIENT,
        amr=[],  # nobody authenticated as the user: no auth_time, so no step-up either
        extra={"act": {"sub": operator}},
        ttl=minutes * 60,
    )
    ctx.record(
        AuditAction.IMPERSONATION_STARTED,
        tenant_id=tenant.id,
        target_type="user",
        target_id=user.id,
        data={
            "operator": operator,
            "reason": reason,
            "minutes": minutes,
            "jti": issued.claims["jti"],
            "expires_at": datetime.fromtimestamp(issued.claims["exp"], UTC).isoformat(),
        },
    )
    return issued


def bind(principal: Any, act: Any) -> None:
    """Mark ``principal`` as impersonated by ``act["sub"]`` and audit the request when its
    response is ready (:func:`flask.after_this_request`). Only called for a token carrying
    ``act``, so an ordinary request registers nothing.

    Raises:
        Unauthorized: ``act`` is not ``{"sub": "<non-empty string>"}`` (RFC 8693 section 4.1),
            or the token names no user.
    """
    sub = act.get("sub") if isinstance(act, dict) else None
    if not isinstance(sub, str) or not sub.strip() or len(sub) > MAX_OPERATOR or principal.user_id is None:
        raise Unauthorized("The access token's act claim is malformed.")
    principal.act = sub
    jti = principal.claims.get("jti")

    @after_this_request
    def _audit(response):
        _record_use(principal, sub, jti, response.status_code)
        return response


def _record_use(principal: Any, operator: str, jti: Any, status: int) -> None:
    """``impersonation.used`` in the tenant's log. A successful request writes it in its own unit
    of work (committed with the request's changes); a failed one, whose unit of work is rolled
    back, has it rolled back now (what the commit hook would do next) and writes the event in a
    transaction of its own, so a refused attempt is recorded too. A failure to write is logged,
    never the request's answer."""
    data = {
        "act": {"sub": operator},
        "method": request.method,
        "path": request.path[:512],
        "status": status,
        "jti": jti,
    }

    def write(session: Any) -> None:
        audit.record(
            session,
            AuditAction.IMPERSONATION_USED,
            actor=Actor("user", str(principal.user_id)),
            target_type="user",
            target_id=principal.user_id,
            data=data,
            tenant_id=principal.tenant_id,
        )

    try:
        if status < 400:
            write(db.session())
            return
        failed = g.get("db_session")
        if failed is not None:
            failed.rollback()
        with db.database().transaction() as session:
            write(session)
    except SQLAlchemyError:
        log.exception("impersonation audit event not written", extra={"tenant_id": str(principal.tenant_id)})
