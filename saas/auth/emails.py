"""Verified email addresses: verification links, and moving an account to another address.

An address is verified (``User.email_verified_at``) only by proof that its owner reads its
mail: a verification link (:func:`verify_email`), an invitation's mailed token
(:func:`saas.tenancy.members.accept_invitation`), a password-reset link, or an email change's
link (:func:`confirm_email_change`). Until then ``email_verified`` is false in ``/api/v1/me``,
UserInfo and ID tokens (OpenID Connect Core section 5.1), and the account cannot invite,
register clients, change billing or manage SSO (:func:`saas.auth.context.require_verified_email`).
Auto-linking by an unproven address is how accounts get taken over (Ory Kratos issue #3574).

An email change (:func:`request_email_change`) needs the password; the link goes to the NEW
address, and nothing changes until it is used, when the address is checked again for
uniqueness (case-insensitive, 409 ``email_taken``). The old address gets a notice that carries
no link: a link there ("undo") would let whoever reads the old mailbox, possibly an attacker
who had it, take the account back.

Every link is a single-use token of :mod:`saas.auth.account_tokens` (``EMAIL_VERIFICATION_TTL``).
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from saas import outbox
from saas.actions import ActionContext
from saas.audit import Actor, AuditAction
from saas.auth import account_tokens
from saas.auth.account_tokens import Purpose
from saas.auth.accounts import audit_account_event
from saas.auth.recovery import acting_user, check_current_password, security_notice
from saas.db import utcnow
from saas.errors import Conflict, ErrorCode, ValidationError
from saas.identity.models import User
from saas.services import services


def send_verification(ctx: ActionContext, user: User, tenant_id: uuid.UUID | None = None) -> None:
    """Mail ``user`` a verification link for their current address (outbox
    ``mail.account_link``, kind ``email_verification``, landing ``/account/verify?token=...``),
    voiding the previous one; audited as ``email.verification_sent`` in the user's tenants.
    ``tenant_id``: the tenant the mail is about (a signup's), so the message goes with it."""
    session = ctx.session
    ttl = services().settings.email_verification_ttl_seconds
    token = account_tokens.issue(session, user, Purpose.EMAIL_VERIFICATION, user.email, ttl)
    outbox.enqueue(
        session,
        "mail.account_link",
        {"to": user.email, "kind": "email_verification", "token": token, "ttl_seconds": ttl},
        tenant_id=tenant_id,
    )
    audit_account_event(session, user.id, AuditAction.EMAIL_VERIFICATION_SENT, actor=ctx.actor)
    session.flush()


def resend_verification(ctx: ActionContext) -> None:
    """``POST /api/v1/me/email/verification``: a new link for the caller's address.

    Raises:
        Conflict: 409 ``email_already_verified``.
        Forbidden: 403 ``permission_denied`` for a service account.
    """
    user = acting_user(ctx)
    if user.email_verified_at is not None:
        raise Conflict("Your email address is already verified.", code=ErrorCode.EMAIL_ALREADY_VERIFIED)
    send_verification(ctx, user)


def verify_email(ctx: ActionContext, token: object) -> User:
    """Spend a verification link: the account's address is verified (``email.verified``).

    Raises:
        BadRequest: 400 ``invalid_verification_token``: unknown, malformed, expired, used,
            voided by a newer link, or the account has moved to another address since.
    """
    session = ctx.session
    row = account_tokens.consume(session, token, Purpose.EMAIL_VERIFICATION)
    user = session.get(User, row.user_id, with_for_update=True)
    if user is None or user.email.lower() != row.email.lower():
        account_tokens.invalid(Purpose.EMAIL_VERIFICATION)
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()
        audit_account_event(session, user.id, AuditAction.EMAIL_VERIFIED, actor=Actor("user", str(user.id)))
    session.flush()
    return user


def _taken(session, email: str, user: User) -> bool:
    other = session.scalar(
        select(User.id).where(func.lower(User.email) == email.lower(), User.id != user.id).limit(1)
    )
    return other is not None


def _email_taken() -> Conflict:
    return Conflict("That email address belongs to another account.", code=ErrorCode.EMAIL_TAKEN)


def request_email_change(ctx: ActionContext, new_email: str, password: str) -> None:
    """``POST /api/v1/me/email``: mail a confirmation link to ``new_email`` (kind
    ``email_change``, landing ``/account/email?token=...``) and a notice without any link to
    the current address (``email_change_requested``); audited as ``email.change_requested``.

    Raises:
        Forbidden: 403 ``invalid_credentials`` (wrong password: a failed sign-in, audited and
            committed); 403 ``permission_denied`` for a service account.
        Conflict: 409 ``email_taken``: another account has that address (case-insensitive).
        ValidationError: 422 on ``new_email`` when it is already the account's address.
    """
    session = ctx.session
    user = acting_user(ctx)
    check_current_password(ctx, user, password, "wrong_password_email_change")
    new_email = new_email.strip()
    if new_email.lower() == user.email.lower():
        raise ValidationError({"new_email": ["This is already your email address."]})
    if _taken(session, new_email, user):
        raise _email_taken()
    ttl = services().settings.email_verification_ttl_seconds
    token = account_tokens.issue(session, user, Purpose.EMAIL_CHANGE, new_email, ttl)
    outbox.enqueue(
        session,
        "mail.account_link",
        {"to": new_email, "kind": "email_change", "token": token, "ttl_seconds": ttl},
    )
    security_notice(
        session,
        user.email,
        "email_change_requested",
        "The change happens only if the new address confirms it. If it was not you, change your\n"
        "password now: that voids the link, and the address stays yours.",
    )
    audit_account_event(session, user.id, AuditAction.EMAIL_CHANGE_REQUESTED, actor=ctx.actor)
    session.flush()


def confirm_email_change(ctx: ActionContext, token: object) -> User:
    """Spend an email-change link: the account moves to the address the link was mailed to, which
    is thereby verified. The old address gets a notice (``email_changed``) with no link; the
    account's live reset, verification and other change links are voided (they went to, or
    were asked from, the old address). Audited as ``email.changed``.

    Raises:
        BadRequest: 400 ``invalid_verification_token`` (unknown, expired, used, voided; or the
            account is locked).
        Conflict: 409 ``email_taken``: another account took the address meanwhile.
    """
    session = ctx.session
    row = account_tokens.consume(session, token, Purpose.EMAIL_CHANGE)
    user = session.get(User, row.user_id, with_for_update=True)
    if user is None or user.status != "active":
        account_tokens.invalid(Purpose.EMAIL_CHANGE)
    if _taken(session, row.email, user):
        raise _email_taken()
    old = user.email
    account_tokens.void(
        session, user.id, (Purpose.PASSWORD_RESET, Purpose.EMAIL_VERIFICATION, Purpose.EMAIL_CHANGE)
    )
    user.email = row.email
    user.email_verified_at = utcnow()
    try:
        session.flush()
    except IntegrityError:  # a concurrent signup or change took the address after the check
        raise _email_taken() from None
    security_notice(session, old, "email_changed")
    audit_account_event(session, user.id, AuditAction.EMAIL_CHANGED, actor=Actor("user", str(user.id)))
    session.flush()
    return user
