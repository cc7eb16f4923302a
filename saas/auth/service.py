"""Login and refresh-token grants: the service functions behind the auth endpoints.

Token responses follow RFC 6749 section 5.1. Refresh tokens rotate on every use and a reused
token revokes its family (RFC 9700 section 4.14.2), with a short bounded grace for concurrent
retries of the same request. Sessions end through :mod:`saas.auth.sessions`; the revocations a
policy asks for (a member's sessions, those without a second factor) are named here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

from flask import has_request_context, request
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from saas import audit
from saas.audit import AuditAction
from saas.auth import devices, mfa
from saas.auth import webauthn as passkeys
from saas.auth.accounts import audit_account_event
from saas.auth.errors import InvalidClient, InvalidGrant, MfaEnrollmentRequired, MfaRequired
from saas.auth.models import RefreshToken
from saas.auth.sessions import revoke_family, revoke_tokens
from saas.auth.sso.policy import check_sso_not_required
from saas.auth.tokens import FIRST_PARTY_CLIENT, satisfies_mfa
from saas.db import EarlyCommit, commit_early, utcnow
from saas.errors import ErrorCode, Forbidden, Unauthorized, ValidationError
from saas.identity.models import Membership, Tenant, User
from saas.identity.passwords import Passwords
from saas.security import random_token, token_hash
from saas.services import services
from saas.settings import Settings

DEFAULT_SCOPE = "api"
#: how many extra children a refresh token may get inside the grace window
MAX_GRACE_REUSES = 1
#: ``revoked_reason`` of a child cut off by a grace retry of its parent; presenting it is reuse
SUPERSEDED = "superseded"


@dataclass
class TokenResponse:
    access_token: str
    expires_in: int
    refresh_token: str | None
    scope: str
    token_type: str = "Bearer"  # noqa: S105 - a token type name
    family_id: uuid.UUID | None = None
    id_token: str | None = None

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "scope": self.scope,
        }
        if self.refresh_token:
            body["refresh_token"] = self.refresh_token
        if self.id_token:
            body["id_token"] = self.id_token
        return body


def _settings() -> Settings:
    return services().settings


def _passwords() -> Passwords:
    return services().passwords


def membership_of(
    session: Session, user_id: uuid.UUID, tenant_id: uuid.UUID, *, usable: bool = False
) -> tuple[Membership, Tenant, User] | None:
    """The user's active membership in the tenant with both rows, or None. With ``usable``, also
    None when the tenant is suspended or the account locked (callers that report those apart
    check the statuses themselves)."""
    query = (
        select(Membership, Tenant, User)
        .join(Tenant, Tenant.id == Membership.tenant_id)
        .join(User, User.id == Membership.user_id)
        .where(
            Membership.user_id == user_id, Membership.tenant_id == tenant_id, Membership.status == "active"
        )
    )
    if usable:
        query = query.where(Tenant.status == "active", User.status == "active")
    row = session.execute(query).first()
    return None if row is None else (row[0], row[1], row[2])


def find_user_by_email(session: Session, email: str) -> User | None:
    return session.scalars(select(User).where(func.lower(User.email) == email.strip().lower())).first()


def authenticate_password(session: Session, email: str, password: str) -> User:
    """Check an email and password. Unknown email and wrong password fail the same way, in
    about the same time (a dummy hash is verified).

    Raises:
        Unauthorized: ``invalid_credentials``.
    """
    user = find_user_by_email(session, email)
    ok = _passwords().verify(user.password_hash if user else None, password)
    if not ok or user is None or user.status != "active":
        raise Unauthorized(
            "The email or password is incorrect.", code=ErrorCode.INVALID_CREDENTIALS, error=None
        )
    if user.password_hash and _passwords().needs_rehash(user.password_hash):
        user.password_hash = _passwords().hash(password)
    return user


def choose_membership(session: Session, user: User, tenant_slug: str | None) -> tuple[Membership, Tenant]:
    """The membership to log into: by slug, or the only one.

    Raises:
        ValidationError: several memberships and no ``tenant`` given (lists the slugs).
        Forbidden: not a member of that tenant, or the tenant is suspended.
    """
    query = (
        select(Membership, Tenant)
        .join(Tenant, Tenant.id == Membership.tenant_id)
        .where(Membership.user_id == user.id, Membership.status == "active")
    )
    rows = session.execute(query.order_by(Tenant.slug)).all()
    if tenant_slug:
        rows = [r for r in rows if r[1].slug == tenant_slug.strip().lower()]
        if not rows:
            raise Forbidden(
                "You are not a member of that tenant.", code=ErrorCode.NOT_A_MEMBER, title="Not a member"
            )
    elif len(rows) > 1:
        raise ValidationError(
            {"tenant": ["You belong to several tenants: name one."]},
            detail="Choose a tenant: " + ", ".join(r[1].slug for r in rows),
        )
    elif not rows:
        raise Forbidden(
            "You are not an active member of any tenant.", code=ErrorCode.NOT_A_MEMBER, title="Not a member"
        )
    membership, tenant = rows[0]
    if tenant.status != "active":
        raise Forbidden(
            "This tenant is suspended.", code=ErrorCode.TENANT_SUSPENDED, title="Tenant suspended"
        )
    return membership, tenant


def check_email_policy(tenant: Tenant, user: User) -> None:
    """The tenant's ``require_verified_email``: a member whose address is not verified gets no
    tokens for that tenant (password login before its second factor, hosted sign-in, the code
    and refresh grants, since each goes through :func:`issue_tokens`).

    Raises:
        Forbidden: 403 ``email_unverified``.
    """
    if (tenant.settings or {}).get("require_verified_email") and user.email_verified_at is None:
        raise Forbidden(
            "This organisation requires a verified email address: open the verification link "
            "mailed to you (a password-reset link proves the address too).",
            code=ErrorCode.EMAIL_UNVERIFIED,
            title="Email not verified",
        )


def issue_tokens(
    session: Session,
    *,
    user: User,
    membership: Membership,
    tenant: Tenant,
    client_id: str = FIRST_PARTY_CLIENT,
    scope: str = DEFAULT_SCOPE,
    amr: list[str] | None = None,
    auth_time: datetime | None = None,
    family: RefreshToken | None = None,
    parent: RefreshToken | None = None,
    nonce: str | None = None,
    family_id: uuid.UUID | None = None,
    browser_session_id: uuid.UUID | None = None,
) -> TokenResponse:
    """Mint an access token and a refresh token (a new family unless ``family`` is given), plus an
    OIDC ID token when ``scope`` holds ``openid`` (``nonce`` echoed, ``at_hash`` set).

    ``family_id`` names the new family when the caller recorded it beforehand (the authorization
    code grant stores it on the code, in the same commit that marks the code used).
    The access token's ``sid`` claim is the family id: the session it belongs to.
    ``browser_session_id`` (a code from the hosted pages; a rotation inherits the family's) is
    stored on the refresh token and is the ID token's ``sid`` (OpenID Connect Back-Channel
    Logout 1.0 section 2.1: the OP session the logout token names); without it the family id."""
    check_email_policy(tenant, user)
    settings = _settings()
    now = utcnow()
    auth_time = auth_time or now
    amr = amr or ["pwd"]
    tokens = services().tokens
    family_id = family.family_id if family else (family_id or uuid.uuid4())
    if family is not None:
        browser_session_id = family.browser_session_id
    access = tokens.issue(
        subject=str(user.id),
        tenant_id=str(tenant.id),
        roles=[membership.role],
        scope=scope,
        client_id=client_id,
        auth_time=int(auth_time.timestamp()),
        amr=amr,
        extra={"sid": str(family_id)},
    )
    refresh = random_token()
    family_expires = (
        family.family_expires_at
        if family
        else now + timedelta(seconds=settings.refresh_token_absolute_ttl_seconds)
    )
    expires = min(now + timedelta(seconds=settings.refresh_token_ttl_seconds), family_expires)
    session.add(
        RefreshToken(
            family_id=family_id,
            parent_id=parent.id if parent else None,
            token_hash=token_hash(refresh),
            user_id=user.id,
            tenant_id=tenant.id,
            client_id=client_id,
            scope=scope,
            auth_time=auth_time,
            amr=amr,
            created_at=now,
            expires_at=expires,
            family_expires_at=family_expires,
            ip=request.remote_addr if has_request_context() else None,
            user_agent=(request.user_agent.string[:512] or None) if has_request_context() else None,
            browser_session_id=browser_session_id,
        )
    )
    id_token = None
    if "openid" in scope.split():
        extra: dict[str, Any] = {"sid": str(browser_session_id or family_id), "tid": str(tenant.id)}
        if "email" in scope.split():  # OIDC Core section 5.4: the email scope's claims
            extra["email"] = user.email
            extra["email_verified"] = user.email_verified
        if "profile" in scope.split():
            extra["name"] = user.name
        id_token = tokens.issue_id_token(
            subject=str(user.id),
            client_id=client_id,
            auth_time=int(auth_time.timestamp()),
            amr=amr,
            access_token=access.token,
            nonce=nonce,
            extra=extra,
        )
    return TokenResponse(
        access.token, access.expires_in, refresh, scope, family_id=family_id, id_token=id_token
    )


#: a user id no row has: the unknown-email path of :func:`audit_failed_login` queries with it
_NO_USER = uuid.UUID(int=0)


def audit_failed_login(session: Session, email: str, tenant_slug: str | None, reason: str) -> None:
    """Record ``auth.login_failed`` in the logs of the tenants of an existing account (committed
    although the request fails). Unknown emails leave no trace anywhere (nothing to attach it to).

    Both paths run the same statements (user lookup, tenant lookup, one write per tenant, commit)
    so that the answer's timing does not tell whether the email exists: for an unknown email the
    tenant lookup runs with an id that matches nothing and the audit write is replaced by as many
    updates that match no row as it has statements. (An account in several tenants, logging in
    without naming one, gets one insert per tenant.)
    """
    user = find_user_by_email(session, email)
    user_id = user.id if user is not None else _NO_USER
    query = (
        select(Tenant)
        .join(Membership, Membership.tenant_id == Tenant.id)
        .where(Membership.user_id == user_id)
    )
    if tenant_slug:
        query = query.where(Tenant.slug == tenant_slug.strip().lower())
    tenants = list(session.scalars(query))
    for tenant in tenants:
        audit.record(
            session,
            AuditAction.AUTH_LOGIN_FAILED,
            target_type="user",
            target_id=user_id,
            actor=audit.Actor("user", str(user_id)),
            data={"reason": reason},
            tenant_id=tenant.id,
        )
    if not tenants:
        _stand_in_for_audit(session)
    commit_early(session, EarlyCommit.SIGN_IN_FAILURE)


def _stand_in_for_audit(session: Session) -> None:
    """What one audit event costs in statements (:func:`saas.audit.statements_per_record`), as
    primary-key updates that match nothing: the unknown email's stand-in for the audit write."""
    for _ in range(audit.statements_per_record()):
        session.execute(update(User).where(User.id == _NO_USER).values(status=User.status))


def audit_login_throttled(
    session: Session, email: str | None, user_id: uuid.UUID | None, data: dict[str, Any]
) -> None:
    """Record ``auth.login_throttled`` in every tenant of the account whose per-account login
    throttle (``login-account``) has just started refusing, and commit (the request is
    answered 429 and rolled back). The limiter calls this once per lockout window
    (:mod:`saas.limits`). The account is the ``email`` of the attempt, else ``user_id`` (a
    bearer's subject). An unknown email leaves no trace and costs the same statements
    (lookup, no-op update, commit) as :func:`audit_failed_login` does.
    """
    if user_id is None:
        user = find_user_by_email(session, email) if email else None
        user_id = user.id if user is not None else None
    if user_id is None or not audit_account_event(session, user_id, AuditAction.AUTH_LOGIN_THROTTLED, data):
        _stand_in_for_audit(session)
    commit_early(session, EarlyCommit.SIGN_IN_THROTTLED)


def second_factor_gate(
    session: Session, user: User, tenant: Tenant, amr: list[str], *, passkey_second: bool = True
) -> None:
    """Raise when the login must not yield tokens yet: ``mfa_required`` (the user has a factor:
    TOTP, or a passkey when the tenant requires MFA) or ``mfa_enrollment_required`` (the
    tenant's ``require_mfa`` and no factor). Both carry an ``mfa_token`` bound to the user and
    tenant. ``passkey_second``: False when a passkey was the first factor (it cannot be the
    second one too)."""
    if satisfies_mfa(amr):
        return
    require_mfa = bool((tenant.settings or {}).get("require_mfa"))
    if mfa.has_mfa(session, user.id) or (
        require_mfa and passkey_second and passkeys.has_passkey(session, user.id)
    ):
        token = mfa.issue_mfa_token(user.id, tenant.id, "login", amr)
        raise MfaRequired(
            "Send a TOTP or recovery code with the mfa_token to POST /api/v1/auth/mfa, or a "
            "passkey assertion (POST /api/v1/auth/mfa/webauthn/options, then .../verify).",
            extra={"mfa_token": token},
        )
    if require_mfa:
        token = mfa.issue_mfa_token(user.id, tenant.id, "enroll", amr)
        raise MfaEnrollmentRequired(
            "This tenant requires MFA: enrol a TOTP factor with the mfa_token "
            "(POST /api/v1/me/mfa/totp, then /api/v1/me/mfa/totp/confirm).",
            extra={"mfa_token": token},
        )


def check_account(user: User) -> None:
    """Refuse locked or otherwise inactive accounts with the same answer as a wrong password."""
    if user.status != "active":
        raise Unauthorized(
            "The email or password is incorrect.", code=ErrorCode.INVALID_CREDENTIALS, error=None
        )


def complete_login(
    session: Session,
    user: User,
    membership: Membership,
    tenant: Tenant,
    amr: list[str],
    *,
    auth_time: datetime | None = None,
) -> TokenResponse:
    """Tokens for a fully authenticated login, audited as ``auth.login``."""
    user.last_login_at = utcnow()
    response = issue_tokens(
        session, user=user, membership=membership, tenant=tenant, amr=amr, auth_time=auth_time
    )
    devices.note_sign_in(session, user.id)  # the new-device notice (saas.auth.devices)
    audit.record(
        session,
        AuditAction.AUTH_LOGIN,
        target_type="user",
        target_id=user.id,
        actor=audit.Actor("user", str(user.id)),
        data={"amr": amr},
        tenant_id=tenant.id,
    )
    return response


def login(session: Session, email: str, password: str, tenant_slug: str | None) -> TokenResponse:
    """Password login (``POST /api/v1/auth/login``). Audits success and failure in the tenant's log.

    Raises:
        Unauthorized: ``invalid_credentials`` (unknown email, wrong password, locked account: one answer).
        MfaRequired / MfaEnrollmentRequired: 403 with an ``mfa_token``.
        SsoRequired: 403 ``sso_required`` (:mod:`saas.auth.sso.policy`; the password was right).
    """
    try:
        user = authenticate_password(session, email, password)
    except Unauthorized:
        audit_failed_login(session, email, tenant_slug, "invalid_credentials")
        raise
    check_sso_not_required(session, user)  # the tenant of the address's domain: require_sso
    membership, tenant = choose_membership(session, user, tenant_slug)
    check_email_policy(tenant, user)
    second_factor_gate(session, user, tenant, ["pwd"])
    return complete_login(session, user, membership, tenant, ["pwd"])


def _login_ticket(session: Session, mfa_token: str | None) -> tuple[mfa.MfaTicket, Membership, Tenant, User]:
    """The login that ``mfa_token`` (purpose ``login``) waits on, with its member, tenant and user,
    still allowed to finish: the account not locked, the tenant active.

    Raises:
        Unauthorized: ``invalid_mfa_token`` (unknown, expired, or the membership is gone).
        Forbidden: ``tenant_suspended``; and what :func:`check_account` raises.
    """
    ticket = mfa.read_mfa_token(mfa_token, ("login",))
    row = membership_of(session, ticket.user_id, ticket.tenant_id)
    if row is None:
        raise Unauthorized(
            "The mfa_token is invalid or has expired.", code=ErrorCode.INVALID_MFA_TOKEN, error=None
        )
    membership, tenant, user = row
    check_account(user)
    if tenant.status != "active":
        raise Forbidden(
            "This tenant is suspended.", code=ErrorCode.TENANT_SUSPENDED, title="Tenant suspended"
        )
    return ticket, membership, tenant, user


def login_with_mfa(session: Session, mfa_token: str, code: str) -> TokenResponse:
    """Second step of a login (``POST /api/v1/auth/mfa``): a TOTP or recovery code.

    Raises:
        Unauthorized: ``invalid_mfa_token``.
        MfaFailed / MfaLocked: wrong code / locked factor (see :mod:`saas.auth.mfa`).
    """
    ticket, membership, tenant, user = _login_ticket(session, mfa_token)
    mfa.verify(session, user, code, tenant.schema_name, mfa_token=mfa_token)
    mfa.consume_mfa_token(ticket)
    return complete_login(session, user, membership, tenant, [*ticket.amr, "otp"])


def login_with_passkey(
    session: Session, ceremony_id: str, credential: dict[str, Any], tenant_slug: str | None
) -> TokenResponse:
    """Passwordless login (``POST /api/v1/auth/webauthn/verify``, WebAuthn Level 2 section 7.2):
    the same token response as a password login. A user-verified passkey is MFA by itself
    (``amr`` ``["hwk"|"swk", "user", "mfa"]``); without UV it is one factor and the user's TOTP,
    or the tenant's ``require_mfa``, still asks for a second one.

    Raises:
        WebAuthnChallengeInvalid: 400, the ceremony is unknown, used or expired.
        WebAuthnFailed: 401, the assertion does not verify (see :func:`passkeys.verify_assertion`).
        Unauthorized: ``invalid_credentials``, the account is locked.
        MfaRequired / MfaEnrollmentRequired: 403 with an ``mfa_token``.
    """
    ceremony = passkeys.take_ceremony(ceremony_id, "login")
    assertion = passkeys.verify_assertion(session, ceremony, credential)
    user = assertion.user
    check_account(user)
    check_sso_not_required(session, user)
    membership, tenant = choose_membership(session, user, tenant_slug)
    second_factor_gate(session, user, tenant, assertion.amr, passkey_second=False)
    return complete_login(session, user, membership, tenant, assertion.amr)


def passkey_mfa_options(session: Session, mfa_token: str) -> dict[str, Any]:
    """The request options of a passkey as the second factor of a login (its ``mfa_token``).

    Raises:
        Unauthorized: ``invalid_mfa_token``.
    """
    ticket = mfa.read_mfa_token(mfa_token, ("login",))
    row = membership_of(session, ticket.user_id, ticket.tenant_id, usable=True)
    if row is None:
        raise Unauthorized(
            "The mfa_token is invalid or has expired.", code=ErrorCode.INVALID_MFA_TOKEN, error=None
        )
    return passkeys.authentication_options(session, "mfa", row[2])


def login_with_passkey_mfa(
    session: Session, mfa_token: str, ceremony_id: str, credential: dict[str, Any]
) -> TokenResponse:
    """Second login step with a passkey (``POST /api/v1/auth/mfa/webauthn/verify``): the
    assertion must be by a credential of the ``mfa_token``'s user; ``amr`` is the first
    factor's plus the passkey's and ``mfa`` (RFC 8176). A passkey that was the first factor
    cannot be the second one unless it verified the user.

    Raises:
        Unauthorized: ``invalid_mfa_token``.
        WebAuthnChallengeInvalid: 400; WebAuthnFailed: 401.
    """
    ticket, membership, tenant, user = _login_ticket(session, mfa_token)
    ceremony = passkeys.take_ceremony(ceremony_id, "mfa", user.id)
    assertion = passkeys.verify_assertion(session, ceremony, credential)
    if {"hwk", "swk"} & set(ticket.amr) and not assertion.user_verified:
        raise passkeys.WebAuthnFailed("A passkey was the first factor: the second must be another factor.")
    mfa.consume_mfa_token(ticket)
    amr = list(dict.fromkeys([*ticket.amr, *assertion.amr, "mfa"]))
    return complete_login(session, user, membership, tenant, amr)


def refresh(session: Session, presented: str, client_id: str | None = None) -> TokenResponse:
    """The refresh-token grant (RFC 6749 section 6) with rotation and reuse detection.

    ``client_id`` None is the first-party client of ``POST /api/v1/auth/login``; a token issued
    to a registered client is accepted only with that (authenticated) client's id.

    Raises:
        InvalidClient: a registered client's token presented without its client.
        InvalidGrant: unknown, expired, revoked or reused token (reuse revokes the family).
    """
    settings = _settings()
    now = utcnow()
    row = session.scalars(
        select(RefreshToken).where(RefreshToken.token_hash == token_hash(presented)).with_for_update()
    ).first()
    if row is None or (client_id and client_id != row.client_id):
        raise InvalidGrant("The refresh token is invalid.")
    if client_id is None and row.client_id != FIRST_PARTY_CLIENT:
        raise InvalidClient("This refresh token belongs to a registered client: authenticate it.")
    if row.revoked_at is not None:
        if row.revoked_reason == SUPERSEDED:
            # a branch cut off by a grace retry came back: someone else holds the other branch
            _reuse_detected(session, row)
        raise InvalidGrant("The refresh token has been revoked.")
    # a used token is reuse even once expired (checked before expiry, RFC 9700 section 4.14.2)
    if row.used_at is not None:
        grace = timedelta(seconds=settings.refresh_reuse_grace_seconds)
        children = session.scalars(
            select(RefreshToken).where(RefreshToken.parent_id == row.id).with_for_update()
        ).all()
        if (
            now - row.used_at > grace
            or len(children) > MAX_GRACE_REUSES
            or any(child.used_at is not None for child in children)
        ):
            _reuse_detected(session, row)
        if row.expires_at <= now or row.family_expires_at <= now:
            raise InvalidGrant("The refresh token has expired.")
        # a retry inside the grace window (a lost response): the retry's child is the only branch
        # that survives, so the family can never split in two
        for child in children:
            if child.revoked_at is None:
                child.revoked_at = now
                child.revoked_reason = SUPERSEDED
    else:
        if row.expires_at <= now or row.family_expires_at <= now:
            raise InvalidGrant("The refresh token has expired.")
        row.used_at = now
    membership_row = membership_of(session, row.user_id, row.tenant_id)
    if membership_row is None:
        revoke_family(session, row.family_id, "membership_gone")
        commit_early(session, EarlyCommit.REFRESH_MEMBERSHIP_GONE)
        raise InvalidGrant("The membership behind this refresh token no longer exists.")
    membership, tenant, user = membership_row
    if tenant.status != "active" or user.status != "active":
        raise InvalidGrant("The tenant or the account is not active.")
    check_session_policy(tenant, list(row.amr or []), row.created_at, now)
    return issue_tokens(
        session,
        user=user,
        membership=membership,
        tenant=tenant,
        client_id=row.client_id,
        scope=row.scope,
        amr=list(row.amr or []),
        auth_time=row.auth_time,
        family=row,
        parent=row,
    )


def check_session_policy(tenant: Tenant, amr: list[str], last_issued_at: datetime, now: datetime) -> None:
    """The tenant's session settings, applied when a session is about to get new tokens.

    * ``require_mfa``: a session whose login had no second factor (:func:`satisfies_mfa` of
      its ``amr`` is false) gets nothing more (those live when the setting was turned on were revoked then);
    * ``session_idle_minutes``: a session is idle from the moment its last token was issued
      (login or refresh: access tokens are verified without any server-side write, so that is
      the last time the server saw it); idle longer than that, it gets nothing more.

    Raises:
        InvalidGrant: either rule refuses the session.
    """
    settings = tenant.settings or {}
    if settings.get("require_mfa") and not satisfies_mfa(amr):
        raise InvalidGrant("This organisation requires a second factor: sign in again with MFA.")
    idle = settings.get("session_idle_minutes")
    if idle and now - last_issued_at > timedelta(minutes=int(idle)):
        raise InvalidGrant("The session was idle too long: sign in again.")


def revoke_sessions_without_mfa(session: Session, tenant_id: uuid.UUID, reason: str = "mfa_required") -> int:
    """Revoke the tenant's live sessions whose login had no second factor (:func:`satisfies_mfa`
    false), with their access tokens (:func:`revoke_tokens`); returns how many refresh tokens.
    Called when the tenant turns ``require_mfa`` on."""
    rows = session.execute(
        select(RefreshToken.family_id, RefreshToken.amr).where(
            RefreshToken.tenant_id == tenant_id, RefreshToken.revoked_at.is_(None)
        )
    ).all()
    families = {family for family, amr in rows if not satisfies_mfa(amr)}
    if not families:
        return 0
    return revoke_tokens(session, RefreshToken.family_id.in_(families), reason=reason)


def _reuse_detected(session: Session, row: RefreshToken) -> NoReturn:
    """Revoke the family of a reused refresh token, audit ``auth.refresh_token_reused`` and
    commit (the revocation must persist although the request fails), then raise."""
    revoke_family(session, row.family_id, "reuse_detected")
    audit.record(
        session,
        AuditAction.AUTH_REFRESH_TOKEN_REUSED,
        target_type="session",
        target_id=row.family_id,
        actor=audit.Actor("user", str(row.user_id)),
        tenant_id=row.tenant_id,  # the row exists, so its tenant does (FK, cascade)
    )
    commit_early(session, EarlyCommit.REFRESH_TOKEN_REUSED)
    raise InvalidGrant("The refresh token was already used; the session has been revoked.")


def revoke_user_sessions(session: Session, user_id: uuid.UUID, tenant_id: uuid.UUID, reason: str) -> int:
    """Revoke all refresh tokens of a user in a tenant (member removed, password changed...)."""
    return revoke_tokens(
        session, RefreshToken.user_id == user_id, RefreshToken.tenant_id == tenant_id, reason=reason
    )
