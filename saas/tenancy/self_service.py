"""Self-service accounts and the tenant admin's account actions (docs/auth.md, "Self-service
accounts").

* :func:`export_personal_data`: ``GET /api/v1/me/export``, the account's personal data in one
  JSON document (GDPR article 15, right of access, and article 20, portability).
* :func:`delete_account`: ``DELETE /api/v1/me``, the account erased (GDPR article 17); audit
  events keep only the account's random id.
* :func:`reset_member_mfa`: ``DELETE /api/v1/members/{user_id}/mfa``, an admin resets a member's
  TOTP factor and recovery codes (a lost phone).

Each takes an :class:`~saas.actions.ActionContext` and changes nothing unless it succeeds (the
request's one unit of work).
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from sqlalchemy import String, delete, func, literal, select, text
from sqlalchemy.orm import Session

from saas import audit, outbox
from saas.actions import ActionContext
from saas.audit import Actor, AuditAction, AuditEvent, RequestMeta
from saas.auth import browser_sessions, mfa
from saas.auth.accounts import account_tenants
from saas.auth.models import (
    BrowserSession,
    Consent,
    KnownDevice,
    MfaFactor,
    OAuthClient,
    RecoveryCode,
    RefreshToken,
    WebAuthnCredential,
)
from saas.auth.recovery import check_current_password
from saas.billing import service as billing_service
from saas.db import translate_map, utcnow
from saas.errors import Conflict, ErrorCode, Forbidden, NotFound
from saas.identity.models import Membership, Tenant, User
from saas.tenancy.roles import may_grant

#: the export document's format (``format`` member); a change of shape gets a new version
EXPORT_FORMAT = "saas.personal-data.v1"


def tenant_schemas(session: Session) -> list[tuple[uuid.UUID, str, str]]:
    """(id, slug, schema name) of every tenant whose schema exists: where an account's audit
    events may be, including tenants it has left."""
    rows = session.execute(
        text(
            "SELECT t.id, t.slug, t.schema_name FROM saas.tenants t "
            "JOIN pg_namespace n ON n.nspname = t.schema_name ORDER BY t.slug"
        )
    ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _actor_events(session: Session, user_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every audit event whose actor is the user, in every tenant's log, oldest first."""
    table = AuditEvent.__table__
    out: list[dict[str, Any]] = []
    for tenant_id, slug, schema in tenant_schemas(session):
        rows = session.execute(
            select(table)
            .where(table.c.actor_type == "user", table.c.actor_id == str(user_id))
            .order_by(table.c.occurred_at),
            execution_options={"schema_translate_map": translate_map(schema)},
        ).mappings()
        for r in rows:
            out.append(
                {
                    "tenant": {"id": str(tenant_id), "slug": slug},
                    "id": str(r["id"]),
                    "occurred_at": r["occurred_at"],
                    "action": r["action"],
                    "target": {"type": r["target_type"], "id": r["target_id"]},
                    "ip": r["ip"],
                    "user_agent": r["user_agent"],
                    "request_id": r["request_id"],
                    "data": r["data"] or {},
                }
            )
    out.sort(key=lambda e: e["occurred_at"])
    return out


def _api_sessions(session: Session, user_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every refresh-token family of the user (live or ended), one entry each."""
    rows = session.scalars(
        select(RefreshToken).where(RefreshToken.user_id == user_id).order_by(RefreshToken.created_at)
    ).all()
    families: dict[uuid.UUID, dict[str, Any]] = {}
    for t in rows:
        f = families.get(t.family_id)
        if f is None:
            families[t.family_id] = f = {
                "id": str(t.family_id),
                "tenant_id": str(t.tenant_id),
                "client_id": t.client_id,
                "created_at": t.created_at,
                "auth_time": t.auth_time,
                "amr": list(t.amr or []),
                "expires_at": t.family_expires_at,
            }
        # the newest token of the family says when it was last used, from where, and its end
        f.update(
            last_used_at=t.created_at,
            ip=t.ip,
            user_agent=t.user_agent,
            revoked_at=t.revoked_at,
            revoked_reason=t.revoked_reason,
        )
    return list(families.values())


def export_personal_data(ctx: ActionContext, user_id: uuid.UUID) -> dict[str, Any]:
    """The personal data of ``user_id`` in every tenant, as one JSON-ready document
    (GDPR articles 15 and 20), and the ``user.exported`` audit event in each of its tenants.

    Members: ``format``, ``exported_at``; ``user`` (profile); ``memberships`` (tenant id, slug
    and name, role, status, ``joined_at``); ``sessions.api`` (refresh-token families: tenant,
    client, created, last used, expiry, end, IP and user agent as stored) and
    ``sessions.browser`` (hosted-page sign-ins); ``passkeys`` (id, name, AAGUID, the credential
    id in base64url, transports, flags, created, last used: never the public key, which only
    this server can use, nor the signature counter); ``mfa`` (whether TOTP is on and since when,
    how many recovery codes are left: never the secret nor a code); ``consents`` (the OAuth
    grants the user gave: tenant, client id and name, scope, time); ``known_devices`` (first and
    last seen, IP, user agent: never the device hash); ``audit_events`` (every event whose actor
    is the user, in every tenant's log, with its tenant). Secrets (password hash, TOTP secret,
    token hashes) are never in it.

    Raises:
        NotFound: the account is gone.
    """
    session = ctx.session
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("No such account.")
    memberships = session.execute(
        select(Membership, Tenant)
        .join(Tenant, Tenant.id == Membership.tenant_id)
        .where(Membership.user_id == user_id)
        .order_by(Tenant.slug)
    ).all()
    factor = session.scalars(select(MfaFactor).where(MfaFactor.user_id == user_id)).first()
    codes_left = session.scalar(
        select(func.count()).where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
    )
    clients = {
        c.client_id: c.name
        for c in session.scalars(
            select(OAuthClient).where(
                OAuthClient.client_id.in_(select(Consent.client_id).where(Consent.user_id == user_id))
            )
        )
    }
    document: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "exported_at": utcnow(),
        "user": {
            "id": str(user.id),
            "email": user.email,
            "email_verified": user.email_verified,
            "email_verified_at": user.email_verified_at,
            "name": user.name,
            "status": user.status,
            "created_at": user.created_at,
            "updated_at": user.updated_at,
            "last_login_at": user.last_login_at,
        },
        "memberships": [
            {
                "tenant": {"id": str(t.id), "slug": t.slug, "name": t.name},
                "role": m.role,
                "status": m.status,
                "joined_at": m.created_at,
            }
            for m, t in memberships
        ],
        "sessions": {
            "api": _api_sessions(session, user_id),
            "browser": [
                {
                    "id": str(b.id),
                    "created_at": b.created_at,
                    "auth_time": b.auth_time,
                    "amr": list(b.amr or []),
                    "last_seen_at": b.last_seen_at,
                    "expires_at": b.expires_at,
                    "ended_at": b.ended_at,
                    "ended_reason": b.ended_reason,
                    "ip": b.ip,
                    "user_agent": b.user_agent,
                }
                for b in session.scalars(
                    select(BrowserSession)
                    .where(BrowserSession.user_id == user_id)
                    .order_by(BrowserSession.created_at)
                )
            ],
        },
        "passkeys": [
            {
                "id": str(c.id),
                "name": c.name,
                "aaguid": c.aaguid,
                "credential_id": _b64url(c.credential_id),
                "transports": list(c.transports or []),
                "discoverable": c.discoverable,
                "backed_up": c.backed_up,
                "created_at": c.created_at,
                "last_used_at": c.last_used_at,
                "disabled_at": c.disabled_at,
            }
            for c in session.scalars(
                select(WebAuthnCredential)
                .where(WebAuthnCredential.user_id == user_id)
                .order_by(WebAuthnCredential.created_at)
            )
        ],
        "mfa": {
            "totp": {
                "enabled": factor is not None and factor.status == "active",
                "status": factor.status if factor else None,
                "created_at": factor.created_at if factor else None,
                "confirmed_at": factor.confirmed_at if factor else None,
            },
            "recovery_codes_remaining": int(codes_left or 0),
        },
        "consents": [
            {
                "tenant_id": str(c.tenant_id),
                "client_id": c.client_id,
                "client_name": clients.get(c.client_id),
                "scope": c.scope,
                "granted_at": c.granted_at,
            }
            for c in session.scalars(
                select(Consent).where(Consent.user_id == user_id).order_by(Consent.granted_at)
            )
        ],
        "known_devices": [
            {
                "first_seen_at": d.first_seen_at,
                "last_seen_at": d.last_seen_at,
                "ip": d.ip,
                "user_agent": d.user_agent,
            }
            for d in session.scalars(
                select(KnownDevice).where(KnownDevice.user_id == user_id).order_by(KnownDevice.first_seen_at)
            )
        ],
        "audit_events": _actor_events(session, user_id),
    }
    for tenant in account_tenants(session, user_id):
        ctx.record(AuditAction.USER_EXPORTED, tenant_id=tenant.id, target_type="user", target_id=user_id)
    return document


def _last_owned(session: Session, user_id: uuid.UUID) -> list[str]:
    """Slugs of the tenants where the user is the only active owner (the tenant rows locked, so
    a concurrent demotion or removal cannot slip between the check and the deletion)."""
    owned = session.scalars(
        select(Tenant)
        .join(Membership, Membership.tenant_id == Tenant.id)
        .where(Membership.user_id == user_id, Membership.role == "owner", Membership.status == "active")
        .order_by(Tenant.slug)
        .with_for_update(of=Tenant)
    ).all()
    last = []
    for tenant in owned:
        owners = session.scalar(
            select(func.count()).where(
                Membership.tenant_id == tenant.id, Membership.role == "owner", Membership.status == "active"
            )
        )
        if (owners or 0) <= 1:
            last.append(tenant.slug)
    return last


def _pseudonymise_audit(session: Session, user: User) -> int:
    """In every tenant's log: the user's own events lose their IP address and user agent, and
    any event naming the user's email in ``data.email`` loses it; the actor id (a random UUID
    that nothing names once the account is gone) stays, so a tenant's log still tells which
    events one person made. Through :func:`saas.audit.redact`, so each tenant's hash chain
    still verifies. Returns how many rows changed."""
    table = AuditEvent.__table__
    email = user.email.strip().lower()
    changed = 0
    for _tenant_id, _slug, schema in tenant_schemas(session):
        options = {"schema_translate_map": translate_map(schema)}
        changed += audit.redact(
            session,
            (table.c.actor_type == "user") & (table.c.actor_id == str(user.id)),
            {"ip": None, "user_agent": None},
            options,
        )
        changed += audit.redact(
            session,
            func.lower(table.c.data.op("->>", return_type=String)("email")) == email,
            {"data": table.c.data.op("-")(literal("email", String))},
            options,
        )
    return changed


def delete_account(ctx: ActionContext, user_id: uuid.UUID, password: str) -> None:
    """Erase the account ``user_id`` (GDPR article 17), in the caller's one transaction.

    The caller checked the step-up (RFC 9470). Here: the password is checked; the account must
    not be the last owner of a tenant. Then ``user.deleted`` is audited (actor: the account's
    id, no address, no IP) in each of its tenants; a notice is mailed to the address
    (``mail.security`` ``account_deleted``); every session ends (refresh families with their
    access tokens, browser sign-ins); the audit rows are pseudonymised
    (:func:`_pseudonymise_audit`); and the user row is deleted, which deletes by foreign-key
    cascade its memberships, tokens, MFA factor and recovery codes, passkeys, consents, account
    tokens, browser sessions and known devices. The address is free for a new signup.

    Raises:
        Forbidden: ``invalid_credentials``, the password is wrong (a failed sign-in, as for a
            password change: :func:`saas.auth.recovery.check_current_password`).
        Conflict: ``last_owner``, the account is the last owner of a tenant (the detail names
            the tenants): hand the tenant over or delete it first.
        NotFound: the account is gone.
    """
    session = ctx.session
    user = session.get(User, user_id, with_for_update=True)
    if user is None:
        raise NotFound("No such account.")
    # a wrong password is a failed sign-in: audited, committed, counted per account
    check_current_password(ctx, user, password, "wrong_password_account_deletion")
    if last := _last_owned(session, user_id):
        raise Conflict(
            "You are the last owner of: " + ", ".join(last) + ". Make someone else an owner, or "
            "delete the tenant, before deleting your account.",
            code=ErrorCode.LAST_OWNER,
            extra={"tenants": last},
        )
    tenants = account_tenants(session, user_id)
    email = user.email
    _pseudonymise_audit(session, user)
    actor = Actor("user", str(user_id))
    only_request = RequestMeta(request_id=ctx.meta.request_id if ctx.meta else None)
    for tenant in tenants:
        audit.record(
            session,
            AuditAction.USER_DELETED,
            target_type="user",
            target_id=user_id,
            actor=actor,
            tenant_id=tenant.id,
            meta=only_request,
        )
    outbox.enqueue(session, "mail.security", {"to": email, "event": "account_deleted"})
    browser_sessions.end_all_for_user(session, user_id, "account_deleted")
    for tenant in tenants:
        billing_service.members_changed(session, tenant.id)
    session.flush()
    session.expunge(user)
    session.execute(delete(User).where(User.id == user_id))
    session.flush()


def reset_member_mfa(ctx: ActionContext, user_id: uuid.UUID) -> bool:
    """An admin of the caller's tenant resets a member's second factor (a lost device): the
    TOTP factor and recovery codes go, every session of the member ends, ``mfa.reset`` is
    audited in the tenant and the member is mailed (``mail.security`` ``mfa_reset``). Passkeys
    stay: they are credentials the member registered and deletes themselves. Returns whether a
    factor was there.

    Rules: the member must belong to the caller's tenant (else 404, as any other tenant's id);
    the caller must be able to assign the member's role (an admin cannot reset an owner; an
    owner can); and the member must belong to no other tenant: the factor is the account's, so
    one tenant's admin never weakens the sign-in another tenant relies on (the operator's
    ``saas users reset-mfa`` can).

    Raises:
        NotFound, Forbidden ``role_not_assignable``, Conflict ``member_of_other_tenants``.
    """
    session, principal = ctx.session, ctx.principal
    if principal is None or principal.tenant_id is None:
        raise TypeError("an MFA reset needs a tenant principal in its ActionContext")
    member = session.scalars(
        select(Membership).where(Membership.user_id == user_id, Membership.tenant_id == principal.tenant_id)
    ).first()
    if member is None:
        raise NotFound("No such member.")
    if not may_grant(session, principal, member.role):  # custom roles: no escalation
        raise Forbidden(
            "You cannot reset the second factor of a member above you.", code=ErrorCode.ROLE_NOT_ASSIGNABLE
        )
    others = session.scalar(
        select(func.count()).where(Membership.user_id == user_id, Membership.tenant_id != principal.tenant_id)
    )
    if others:
        raise Conflict(
            "This member's account belongs to other tenants too: its second factor is not this "
            "tenant's to reset. The member can use a recovery code, or the operator can reset it.",
            code=ErrorCode.MEMBER_OF_OTHER_TENANTS,
        )
    user = session.get(User, user_id)
    assert user is not None
    had = mfa.reset(session, user, None, ctx.actor)
    ended = browser_sessions.end_all_for_user(session, user_id, "mfa_reset")
    ctx.record(
        AuditAction.MFA_RESET,
        tenant_id=principal.tenant_id,
        target_type="user",
        target_id=user_id,
        data={"had_factor": had, "revoked": ended},
    )
    outbox.enqueue(
        session, "mail.security", {"to": user.email, "event": "mfa_reset"}, tenant_id=principal.tenant_id
    )
    session.flush()
    return had
