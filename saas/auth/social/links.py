"""Linked identities: who a social sign-in signs in, and the rule for linking.

The rule (docs/auth.md, "Social login"):

1. A returning identity is found by ``ExternalIdentity(provider="social:<name>", subject)``
   (OpenID Connect Core section 5.7: ``iss`` and ``sub`` are the only stable identifier; an
   address can be recycled or asserted unverified), and signs in its user.
2. An unknown identity whose address belongs to an account is never linked on the address
   alone (the classic account takeover: Ory Kratos issue #3574; "pre-hijacking", Sudhodanan and
   Paverd, USENIX Security 2022). The identity waits in the browser's hosted session
   (:func:`pending_link`, ``PENDING_TTL`` seconds; dropped when the browser opens the login page
   afresh or starts another authorization, so only a sign-in from the page that says "an
   account already uses this address" links) until the account proves itself in that same
   browser: its normal sign-in (password, passkey or SSO, with its MFA step:
   :func:`link_pending` runs when the hosted pages sign the account in), or a single-use link
   mailed to the account's address (:func:`send_link_mail`, :func:`confirm_mailed_link`), bound to
   the browser that asked for it (the token's SHA-256 in its session): whoever reads the mailbox
   elsewhere cannot link someone else's identity by clicking. Audited ``social.linked``.
3. An unknown identity with an unknown address creates an account when the provider says the
   address is verified (:func:`create_account`); the address then counts as verified. An
   unverified address is refused: an account made for it would let its real owner's later
   sign-up find a stranger's identity linked to it. The new account joins no tenant.
4. Unlinking (:func:`unlink`) removes a social identity, never an SSO one (the tenant's IdP
   governs those), and never the account's last way in (no password, no passkey, no other
   identity). Audited ``social.unlinked``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from saas import outbox
from saas.actions import ActionContext
from saas.audit import Actor, AuditAction
from saas.auth import account_tokens
from saas.auth import webauthn as passkeys
from saas.auth.account_tokens import Purpose
from saas.auth.accounts import audit_account_event
from saas.auth.social.protocol import SocialIdentity
from saas.auth.social.providers import SocialProvider, label_of
from saas.db import utcnow
from saas.errors import Conflict, ErrorCode, NotFound
from saas.identity.models import ExternalIdentity, User
from saas.security import same_string, token_hash

#: seconds an identity waits in the hosted session for its account to prove itself
PENDING_TTL = 1800
#: seconds a mailed linking link works
LINK_MAIL_TTL = 900


def find_identity(session, provider: SocialProvider, subject: str) -> ExternalIdentity | None:
    return session.scalars(
        select(ExternalIdentity).where(
            ExternalIdentity.provider == provider.provider_key, ExternalIdentity.subject == subject
        )
    ).first()


def _link(ctx: ActionContext, user: User, provider_key: str, subject: str, email: str | None, via: str):
    """Add the identity to ``user`` and audit ``social.linked`` (``via``: how the account proved
    itself). Raises Conflict (409) when the identity was linked meanwhile."""
    row = ExternalIdentity(
        user_id=user.id, provider=provider_key, subject=subject, email=email, last_login_at=utcnow()
    )
    ctx.session.add(row)
    try:
        with ctx.session.begin_nested():
            ctx.session.flush()
    except IntegrityError:
        raise Conflict("This identity was just linked to an account.") from None
    audit_account_event(
        ctx.session,
        user.id,
        AuditAction.SOCIAL_LINKED,
        {"provider": provider_key, "identity": str(row.id), "via": via},
        actor=Actor("user", str(user.id)),
    )
    return row


def create_account(ctx: ActionContext, provider: SocialProvider, identity: SocialIdentity) -> User:
    """A new account for a verified address the service does not know, its identity linked
    (``via`` ``new_account``); no password, no tenant.

    Raises:
        Conflict: 409 the address or the identity was taken meanwhile (a concurrent sign-in).
    """
    assert identity.email and identity.email_verified
    user = User(
        email=identity.email.strip(),
        name=(identity.name or "").replace("\x00", "")[:200] or None,
        email_verified_at=utcnow(),
    )
    ctx.session.add(user)
    try:
        with ctx.session.begin_nested():
            ctx.session.flush()
    except IntegrityError:
        raise Conflict("An account with this address was just created.") from None
    _link(ctx, user, provider.provider_key, identity.subject, identity.email, "new_account")
    return user


# --- the pending link (rule 2) ---------------------------------------------------------------


def pending_link(user: User, provider: SocialProvider, identity: SocialIdentity) -> dict[str, Any]:
    """What the hosted session keeps while ``user``'s account proves itself (signed, not secret)."""
    return {
        "uid": str(user.id),
        "provider": provider.provider_key,
        "label": provider.label,
        "subject": identity.subject,
        "email": identity.email,
        "at": int(time.time()),
    }


def live(pending: Any) -> dict[str, Any] | None:
    """``pending`` when it is a pending link younger than ``PENDING_TTL``, else None."""
    if not isinstance(pending, dict) or not isinstance(pending.get("at"), int):
        return None
    if not 0 <= time.time() - pending["at"] <= PENDING_TTL:
        return None
    return pending


def link_pending(ctx: ActionContext, user_id: uuid.UUID, pending: Any, via: str) -> ExternalIdentity | None:
    """Link the browser's pending identity when ``user_id`` (who just proved the account, by
    ``via``) is the account it waits for; None otherwise (another account signed in: nothing is
    linked). An identity linked meanwhile is left as it is."""
    pending = live(pending)
    if pending is None or pending.get("uid") != str(user_id):
        return None
    user = ctx.session.get(User, user_id)
    if user is None or user.status != "active":
        return None
    try:
        return _link(ctx, user, pending["provider"], pending["subject"], pending.get("email"), via)
    except Conflict:
        return None


def send_link_mail(ctx: ActionContext, pending: dict[str, Any]) -> str | None:
    """Mail the pending link's account a single-use link (``/oauth/social/link/confirm``,
    ``LINK_MAIL_TTL``; outbox ``mail.account_link`` kind ``social_link``) to its own address.
    Returns the token's SHA-256 for the browser's session (the binding), None when the account
    is gone or locked. Audited ``social.link_sent``."""
    user = ctx.session.get(User, uuid.UUID(pending["uid"]))
    if user is None or user.status != "active":
        return None
    token = account_tokens.issue(ctx.session, user, Purpose.SOCIAL_LINK, user.email, LINK_MAIL_TTL)
    outbox.enqueue(
        ctx.session,
        "mail.account_link",
        {"to": user.email, "kind": "social_link", "token": token, "ttl_seconds": LINK_MAIL_TTL},
    )
    audit_account_event(
        ctx.session, user.id, AuditAction.SOCIAL_LINK_SENT, {"provider": pending["provider"]}, actor=ctx.actor
    )
    return token_hash(token)


def confirm_mailed_link(ctx: ActionContext, token: object, pending: Any) -> User:
    """Spend a mailed linking link in the browser that asked for it and link its pending identity
    (``via`` ``email_link``).

    Raises:
        BadRequest: 400 ``invalid_verification_token``: unknown, used, expired, voided, another
            purpose, or not this browser's (no pending link, another account, another token).
    """
    row = account_tokens.consume(ctx.session, token, Purpose.SOCIAL_LINK)
    pending = live(pending)
    if (
        pending is None
        or pending.get("uid") != str(row.user_id)
        or not isinstance(pending.get("token"), str)
        or not same_string(pending["token"], token_hash(str(token)))
    ):
        account_tokens.invalid(Purpose.SOCIAL_LINK)
    user = ctx.session.get(User, row.user_id, with_for_update=True)
    if user is None or user.status != "active" or user.email.lower() != row.email.lower():
        account_tokens.invalid(Purpose.SOCIAL_LINK)
    if link_pending(ctx, user.id, pending, "email_link") is None:
        raise Conflict("This identity was just linked to an account.")
    return user


# --- listing and unlinking (rule 4) --------------------------------------------------------------


def identities(session, user_id: uuid.UUID) -> list[dict[str, Any]]:
    """The user's linked identities, oldest first: ``id``, ``provider`` (``social:<name>`` or
    ``sso:<connection id>``), ``kind`` (``social``/``sso``), ``label``, ``email``,
    ``created_at``, ``last_login_at``, ``removable`` (social ones only)."""
    rows = session.scalars(
        select(ExternalIdentity)
        .where(ExternalIdentity.user_id == user_id)
        .order_by(ExternalIdentity.created_at, ExternalIdentity.id)
    )
    out = []
    for row in rows:
        social = row.provider.startswith("social:")
        out.append(
            {
                "id": row.id,
                "provider": row.provider,
                "kind": "social" if social else "sso",
                "label": label_of(row.provider) if social else "Single sign-on",
                "email": row.email,
                "created_at": row.created_at,
                "last_login_at": row.last_login_at,
                "removable": social,
            }
        )
    return out


def unlink(ctx: ActionContext, user: User, identity_id: str) -> None:
    """Remove one of ``user``'s social identities; audited ``social.unlinked``. The account row is
    locked first, so two concurrent unlinks cannot both pass the last-way-in check.

    Raises:
        NotFound: 404, no such identity of this user (another user's is the same answer).
        Conflict: 409 ``identity_unlink_refused``: an SSO identity, or the account's only way in.
    """
    try:
        iid = uuid.UUID(str(identity_id))
    except ValueError:
        raise NotFound("No such linked identity.") from None
    session = ctx.session
    session.get(User, user.id, with_for_update=True, populate_existing=True)
    row = session.get(ExternalIdentity, iid)
    if row is None or row.user_id != user.id:
        raise NotFound("No such linked identity.")
    if not row.provider.startswith("social:"):
        raise Conflict(
            "A single sign-on identity belongs to your organisation's identity provider; it cannot be "
            "unlinked here.",
            code=ErrorCode.IDENTITY_UNLINK_REFUSED,
        )
    others = session.scalars(
        select(ExternalIdentity.id).where(ExternalIdentity.user_id == user.id, ExternalIdentity.id != iid)
    ).first()
    if not user.password_hash and not passkeys.has_passkey(session, user.id) and others is None:
        raise Conflict(
            "This identity is your account's only way to sign in: set a password or add a passkey first.",
            code=ErrorCode.IDENTITY_UNLINK_REFUSED,
        )
    session.delete(row)
    session.flush()
    audit_account_event(
        session,
        user.id,
        AuditAction.SOCIAL_UNLINKED,
        {"provider": row.provider, "identity": str(iid)},
        actor=ctx.actor,
    )
