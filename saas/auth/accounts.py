"""A person's account across its tenants: its password, and the events about the account itself.

:func:`set_password` is the one road every password of a member takes: it checks the password
against the strictest ``password_min_length`` of the tenants the user belongs to (or is
joining), hashes it (argon2id), and, when it replaces an existing password, ends every
session of the account (:func:`saas.auth.browser_sessions.end_all_for_user`: refresh-token families
with their access tokens, and browser sign-ins), but the caller's own when it changes its
password itself. The password reset and change endpoints (:mod:`saas.auth.recovery`) call it;
so do invitation acceptance (a new account's first password) and any operator command that
sets one.

:func:`audit_account_event` records what happened to the account rather than in one tenant
(an MFA lockout, a login throttle) in the log of every tenant the account is a member of.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from saas import audit
from saas.auth import account_tokens
from saas.auth.browser_sessions import end_all_for_user
from saas.errors import ValidationError
from saas.identity.models import Membership, Tenant, User
from saas.identity.passwords import MIN_LENGTH, Passwords, password_problems
from saas.services import services


def _minimum(tenant: Tenant) -> int:
    return int((tenant.settings or {}).get("password_min_length") or MIN_LENGTH)


def password_min_length(session: Session, user_id: uuid.UUID | None, joining: Iterable[Tenant] = ()) -> int:
    """The strictest ``password_min_length`` (characters) of the tenants where ``user_id`` is an
    active or invited member, and of ``joining``; at least :data:`MIN_LENGTH`."""
    tenants = list(joining)
    if user_id is not None:
        tenants += session.scalars(
            select(Tenant)
            .join(Membership, Membership.tenant_id == Tenant.id)
            .where(Membership.user_id == user_id, Membership.status.in_(("active", "invited")))
        )
    return max([MIN_LENGTH, *map(_minimum, tenants)])


def set_password(
    session: Session,
    user: User,
    password: str,
    *,
    joining: Iterable[Tenant] = (),
    passwords: Passwords | None = None,
    reason: str = "password_changed",
    keep_family: uuid.UUID | None = None,
) -> int:
    """Check, hash and store ``user``'s new password (NIST SP 800-63B section 5.1.1.2 rules,
    :func:`saas.identity.passwords.password_problems`, with the tenants' minimum length).

    Returns how many refresh tokens were revoked (0 for a first password). ``keep_family``: the
    session (refresh family, ``sid``) that survives, the caller's own.

    Raises:
        ValidationError: 422 on the ``password`` field (too short for one of the user's
            tenants, too long, or a common password).
    """
    if problems := password_problems(password, password_min_length(session, user.id, joining)):
        raise ValidationError({"password": problems})
    replacing = user.password_hash is not None
    user.password_hash = (passwords or services().passwords).hash(password)
    # any change of the password voids the reset and email-change links still in flight
    account_tokens.void(
        session, user.id, (account_tokens.Purpose.PASSWORD_RESET, account_tokens.Purpose.EMAIL_CHANGE)
    )
    if not replacing:
        return 0
    return end_all_for_user(session, user.id, reason, keep_family=keep_family)


def account_tenants(session: Session, user_id: uuid.UUID) -> list[Tenant]:
    """The tenants the account is an active member of: where events about the account itself
    (lockouts) are audited."""
    query = (
        select(Tenant)
        .join(Membership, Membership.tenant_id == Tenant.id)
        .where(Membership.user_id == user_id, Membership.status == "active")
    )
    return list(session.scalars(query.order_by(Tenant.slug)))


def audit_account_event(
    session: Session,
    user_id: uuid.UUID,
    action: str,
    data: dict[str, Any] | None = None,
    *,
    actor: audit.Actor = audit.SYSTEM,
    tenants: Iterable[Tenant] | None = None,
) -> int:
    """Record ``action`` about the account (target the user) in the log of every tenant of the
    account (or of ``tenants``), in ``session``'s transaction. ``actor`` is ``system`` by
    default: nobody proved who made the attempts (a lockout, a throttle); a change the owner
    made themselves (a password, an email) names them. Returns how many tenants got it."""
    rows = list(tenants) if tenants is not None else account_tenants(session, user_id)
    # in tenant id order: each record locks that tenant's audit chain row until the commit, and
    # every writer to many tenants' logs takes them in the same order (no deadlock between them)
    for tenant in sorted(rows, key=lambda t: t.id):
        audit.record(
            session,
            action,
            target_type="user",
            target_id=user_id,
            actor=actor,
            data=data,
            tenant_id=tenant.id,
        )
    return len(rows)
