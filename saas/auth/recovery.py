"""Password reset (a link mailed to the account) and password change (signed in).

* :func:`forgot_password` (``POST /api/v1/auth/password/forgot``, the hosted ``/account/forgot``)
  answers the same, after the same statements, whether or not the email has an account
  (OWASP Forgot Password Cheat Sheet, "Return a consistent message for both existent and
  non-existent accounts"): a known account gets a single-use link
  (:mod:`saas.auth.account_tokens`, ``PASSWORD_RESET_TTL``), an unknown one a stand-in for
  each write. Locked accounts and the password-less placeholders invitations leave get no mail.
* :func:`reset_password` (``POST /api/v1/auth/password/reset``, the hosted ``/account/reset``)
  spends the token, sets the password through :func:`saas.auth.accounts.set_password` (NIST SP
  800-63B section 5.1.1.2 and the tenants' ``password_min_length``), which ends every session
  and voids every other reset link, and mails a notice. It signs nobody in, so a second factor
  is still asked at the next login.
* :func:`change_password` (``PUT /api/v1/me/password``) needs the current password (a wrong one
  is a failed sign-in: audited, committed, throttled per account), keeps the caller's session
  and ends every other one.
"""

from __future__ import annotations

import uuid

from sqlalchemy import update

from saas import outbox
from saas.actions import ActionContext
from saas.audit import SYSTEM, Actor, AuditAction
from saas.auth import account_tokens
from saas.auth.accounts import account_tenants, audit_account_event, set_password
from saas.auth.service import find_user_by_email
from saas.db import EarlyCommit, commit_early, utcnow
from saas.errors import ErrorCode, Forbidden, ValidationError
from saas.identity.models import User
from saas.security import random_token, token_hash
from saas.services import services

#: a user id no row has: the unknown-email branch of :func:`forgot_password` writes with it
_NO_USER = uuid.UUID(int=0)


def security_notice(session, email: str, event: str, details: str | None = None) -> None:
    """Queue a ``mail.security`` notice (:data:`saas.worker.mail.SECURITY_EVENTS`) to ``email``."""
    payload = {"to": email, "event": event}
    if details:
        payload["details"] = details
    outbox.enqueue(session, "mail.security", payload)


def forgot_password(ctx: ActionContext, email: str) -> None:
    """Mail a password-reset link to ``email`` when it names an active account with a password;
    otherwise do the same work on nothing. Never raises for an unknown address.

    The link is ``<SAAS_ISSUER>/account/reset?token=<256-bit token>`` (outbox
    ``mail.account_link``, kind ``password_reset``); the database keeps the token's SHA-256, and
    a newer link voids this one. Audited as ``password.reset_requested`` (actor ``system``:
    nobody proved who asked) in every tenant of the account.
    """
    session = ctx.session
    ttl = services().settings.password_reset_ttl_seconds
    user = find_user_by_email(session, email)
    if user is not None and user.status == "active" and user.password_hash is not None:
        token = account_tokens.issue(session, user, account_tokens.Purpose.PASSWORD_RESET, user.email, ttl)
        outbox.enqueue(
            session,
            "mail.account_link",
            {"to": user.email, "kind": "password_reset", "token": token, "ttl_seconds": ttl},
        )
        audit_account_event(
            session, user.id, AuditAction.PASSWORD_RESET_REQUESTED, {"ttl_seconds": ttl}, actor=SYSTEM
        )
    else:
        # the same statements on nothing: the void update, a token hashed, the tenant lookup,
        # and a primary-key update that matches no row standing in for the inserts
        account_tokens.void(session, _NO_USER, (account_tokens.Purpose.PASSWORD_RESET,))
        token_hash(random_token())
        account_tenants(session, _NO_USER)
        session.execute(update(User).where(User.id == _NO_USER).values(status=User.status))
    session.flush()


def reset_password(ctx: ActionContext, token: object, password: str) -> User:
    """Spend a password-reset token and set ``password``.

    Every refresh-token family and browser sign-in of the user ends (reason
    ``password_reset``), every other live reset link is voided, a notice is mailed
    (``mail.security`` ``password_reset``) and ``password.reset`` is audited in every tenant of
    the account. Using the link also proves the mailbox (``email_verified_at``). No tokens are
    issued: the user logs in next, with their second factor when they have one.

    Raises:
        BadRequest: 400 ``invalid_reset_token``: unknown, malformed, expired, used or voided, or
            the account is locked or no longer has the address the link went to.
        ValidationError: 422 on ``password`` (too short for one of the user's tenants, too
            long, common); the token stays unspent (the unit of work rolls back).
    """
    session = ctx.session
    row = account_tokens.consume(session, token, account_tokens.Purpose.PASSWORD_RESET)
    user = session.get(User, row.user_id, with_for_update=True)
    if user is None or user.status != "active" or user.email.lower() != row.email.lower():
        account_tokens.invalid(account_tokens.Purpose.PASSWORD_RESET)
    set_password(session, user, password, reason="password_reset")
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()
    security_notice(session, user.email, "password_reset")
    audit_account_event(session, user.id, AuditAction.PASSWORD_RESET, actor=Actor("user", str(user.id)))
    session.flush()
    return user


def check_current_password(ctx: ActionContext, user: User, password: object, reason: str) -> None:
    """The signed-in user's own password, re-checked before a sensitive change. A wrong one is a
    failed sign-in: ``auth.login_failed`` (``reason``) in every tenant of the account, committed
    although the request fails, and counted by the endpoint's per-account sign-in throttle.

    Raises:
        Forbidden: 403 ``invalid_credentials``.
    """
    passwords = services().passwords
    if isinstance(password, str) and passwords.verify(user.password_hash, password):
        if user.password_hash and passwords.needs_rehash(user.password_hash):
            user.password_hash = passwords.hash(password)
        return
    audit_account_event(
        ctx.session, user.id, AuditAction.AUTH_LOGIN_FAILED, {"reason": reason}, actor=ctx.actor
    )
    commit_early(ctx.session, EarlyCommit.SIGN_IN_FAILURE)
    raise Forbidden(
        "The current password is incorrect.", code=ErrorCode.INVALID_CREDENTIALS, title="Wrong password"
    )


def acting_user(ctx: ActionContext) -> User:
    """The person behind the request's bearer token, locked for update.

    Raises:
        Forbidden: 403 ``permission_denied`` for a service account (no person to act for).
    """
    principal = ctx.principal
    if principal is None or principal.user_id is None:
        raise Forbidden("A service account has no password or email.", code=ErrorCode.PERMISSION_DENIED)
    user = ctx.session.get(User, principal.user_id, with_for_update=True)
    if user is None:
        raise Forbidden("A service account has no password or email.", code=ErrorCode.PERMISSION_DENIED)
    return user


def _own_family(ctx: ActionContext) -> uuid.UUID | None:
    principal = ctx.principal
    if principal is None:
        return None
    try:
        return uuid.UUID(str(principal.claims.get("sid")))
    except ValueError:
        return None


def change_password(ctx: ActionContext, current_password: str, new_password: str) -> int:
    """The signed-in user changes their password (``PUT /api/v1/me/password``).

    Every other session ends (reason ``password_changed``): the caller's own refresh family
    (the token's ``sid``) and the browser sign-in it came from stay. Live reset links are
    voided, a notice is mailed (``password_changed``) and ``password.changed`` is audited in
    every tenant of the account. Returns how many refresh tokens were revoked.

    Raises:
        Forbidden: 403 ``invalid_credentials`` (wrong current password, audited and committed);
            403 ``permission_denied`` for a service account.
        ValidationError: 422 on ``password`` (the new one fails the policy).
    """
    session = ctx.session
    user = acting_user(ctx)
    check_current_password(ctx, user, current_password, "wrong_current_password")
    try:
        revoked = set_password(
            session, user, new_password, reason="password_changed", keep_family=_own_family(ctx)
        )
    except ValidationError as err:  # the policy names the field "password": here it is new_password
        raise ValidationError({"new_password": err.extra["errors"].get("password", [])}) from None
    security_notice(session, user.email, "password_changed")
    audit_account_event(
        session, user.id, AuditAction.PASSWORD_CHANGED, {"sessions_ended": revoked}, actor=ctx.actor
    )
    session.flush()
    return revoked
