"""Single-use tokens mailed to an account: password reset, email verification, email change.

A token is 256 random bits (:func:`saas.security.random_token`), mailed in a link and stored as
its SHA-256 only (:class:`saas.auth.models.AccountToken`), so the database never holds one that
works. It is spent once: :func:`consume` locks the row, checks it and marks it used in the
caller's transaction (a concurrent second use waits on the lock, then finds it used). Issuing a
newer token of the same purpose voids the live ones (the last mail is the only one that works),
and any change of the password voids every live password-reset and email-change token
(:func:`saas.auth.accounts.set_password` calls :func:`void`).

Reset links that keep working after use, or after a newer one was sent, are a known failure of
identity providers (OWASP Forgot Password Cheat Sheet, "URL tokens"); this module is the one
place that decides whether a token works.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import timedelta
from enum import StrEnum
from typing import NoReturn

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from saas.auth.models import AccountToken
from saas.db import utcnow
from saas.errors import BadRequest, ErrorCode
from saas.identity.models import User
from saas.security import random_token, token_hash


class Purpose(StrEnum):
    """What a token proves, and so which flow may spend it."""

    PASSWORD_RESET = "password_reset"  # noqa: S105 - a purpose, not a secret
    EMAIL_VERIFICATION = "email_verification"
    EMAIL_CHANGE = "email_change"
    SOCIAL_LINK = "social_link"  # social login: the account proves itself before a link


#: the problem each purpose answers for a token that does not work
_INVALID = {
    Purpose.PASSWORD_RESET: ErrorCode.INVALID_RESET_TOKEN,
    Purpose.EMAIL_VERIFICATION: ErrorCode.INVALID_VERIFICATION_TOKEN,
    Purpose.EMAIL_CHANGE: ErrorCode.INVALID_VERIFICATION_TOKEN,
    Purpose.SOCIAL_LINK: ErrorCode.INVALID_VERIFICATION_TOKEN,
}


def issue(session: Session, user: User, purpose: Purpose, email: str, ttl_seconds: int) -> str:
    """A new token of ``purpose`` for ``user``, mailed to ``email``; the user's live tokens of the
    same purpose are voided. Returns the token in clear (for the mail only)."""
    void(session, user.id, (purpose,))
    token = random_token()
    now = utcnow()
    session.add(
        AccountToken(
            user_id=user.id,
            purpose=purpose,
            token_hash=token_hash(token),
            email=email,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
        )
    )
    return token


def invalid(purpose: Purpose) -> NoReturn:
    """Raise the one answer for a token of ``purpose`` that does not work (also for a live token
    whose account no longer fits it: locked, or moved to another address).

    Raises:
        BadRequest: 400 ``invalid_reset_token`` or ``invalid_verification_token``.
    """
    raise BadRequest(
        "The link is invalid, has expired or was already used. Ask for a new one.",
        code=_INVALID[purpose],
        title="Invalid or expired link",
    )


def consume(session: Session, token: object, purpose: Purpose) -> AccountToken:
    """Spend ``token``: the locked row, marked used, when it is of ``purpose``, live (not used,
    not voided, not expired) and its user still exists.

    Raises:
        BadRequest: 400 ``invalid_reset_token`` or ``invalid_verification_token``, one answer for
            every reason (unknown, another purpose, expired, used, voided, malformed).
    """
    row = None
    if isinstance(token, str) and 16 <= len(token) <= 512:
        row = session.scalars(
            select(AccountToken).where(AccountToken.token_hash == token_hash(token)).with_for_update()
        ).first()
    now = utcnow()
    if (
        row is None
        or row.purpose != purpose
        or row.used_at is not None
        or row.voided_at is not None
        or row.expires_at <= now
    ):
        invalid(purpose)
    row.used_at = now
    return row


def void(session: Session, user_id: uuid.UUID, purposes: Iterable[Purpose]) -> int:
    """Void the user's live tokens of ``purposes``; returns how many."""
    result = session.execute(
        update(AccountToken)
        .where(
            AccountToken.user_id == user_id,
            AccountToken.purpose.in_([str(p) for p in purposes]),
            AccountToken.used_at.is_(None),
            AccountToken.voided_at.is_(None),
        )
        .values(voided_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0
