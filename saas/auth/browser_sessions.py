"""Server-side browser sessions of the hosted pages (:class:`saas.auth.models.BrowserSession`).

The signed ``saas_auth`` cookie holds the row's id; the row says who signed in, when and how
(``auth_time``, ``amr``), and whether the sign-in still holds. Ending a row (logout, an admin's
"revoke all sessions", an account lock, a password change) ends the browser's sign-in at once:
the next authorization request, ``prompt=none`` included, finds nobody signed in.

Idle time: ``last_seen_at`` moves each time the sign-in is used (a code issued from it); a
tenant's ``session_idle_minutes`` ends a sign-in idle longer than that when it is next used
for that tenant.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from flask import has_request_context, request
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from saas.auth import backchannel, sessions
from saas.auth.models import AuthorizationCode, BrowserSession, RefreshToken
from saas.db import utcnow

#: a browser sign-in lasts at most this long after the password (and second factor)
MAX_AGE = timedelta(hours=12)
#: ends that are not logouts: the same browser signs in again (a new login, ``prompt=login``,
#: ``max_age``); the applications' sessions from the old sign-in are left alone
SUPERSEDED = frozenset({"replaced", "reauthentication"})


def start(session: Session, user_id: uuid.UUID, auth_time: datetime, amr: list[str]) -> BrowserSession:
    """A new sign-in of ``user_id`` (flushed: its id goes into the cookie)."""
    now = utcnow()
    row = BrowserSession(
        user_id=user_id,
        auth_time=auth_time,
        amr=list(amr),
        created_at=now,
        last_seen_at=now,
        expires_at=auth_time + MAX_AGE,
        ip=request.remote_addr if has_request_context() else None,
        user_agent=(request.user_agent.string[:512] or None) if has_request_context() else None,
    )
    session.add(row)
    session.flush()
    return row


def find_live(session: Session, session_id: object, user_id: object) -> BrowserSession | None:
    """The sign-in ``session_id`` of ``user_id`` when it still holds (not ended, not expired);
    None for anything else, malformed ids included."""
    try:
        sid, uid = uuid.UUID(str(session_id)), uuid.UUID(str(user_id))
    except ValueError:
        return None
    row = session.get(BrowserSession, sid)
    if row is None or row.user_id != uid or row.ended_at is not None or row.expires_at <= utcnow():
        return None
    return row


def is_idle(row: BrowserSession, idle_minutes: int | None, now: datetime | None = None) -> bool:
    """Whether ``row`` went unused for longer than ``idle_minutes`` (None or 0: never)."""
    if not idle_minutes:
        return False
    return (now or utcnow()) - row.last_seen_at > timedelta(minutes=int(idle_minutes))


def end(session: Session, row: BrowserSession, reason: str) -> None:
    """End one sign-in (``reason``: ``logout``, ``idle``, ``replaced``...). Unless the reason
    is in :data:`SUPERSEDED`, the applications' sessions born from it end too
    (:func:`_applications_end`)."""
    if row.ended_at is None:
        row.ended_at = utcnow()
        row.ended_reason = reason
        if reason not in SUPERSEDED:
            _applications_end(session, [row.id], reason)


def end_for_user(session: Session, user_id: uuid.UUID, reason: str, *, keep: uuid.UUID | None = None) -> int:
    """End every live sign-in of ``user_id`` (revocation, account lock, password change) but
    ``keep`` (the caller's own, when it changes its password), and the applications' sessions
    born from them; returns how many sign-ins."""
    where = [BrowserSession.user_id == user_id, BrowserSession.ended_at.is_(None)]
    if keep is not None:
        where.append(BrowserSession.id != keep)
    ended = list(
        session.scalars(
            update(BrowserSession)
            .where(*where)
            .values(ended_at=utcnow(), ended_reason=reason)
            .returning(BrowserSession.id)
            .execution_options(synchronize_session="fetch")
        )
    )
    if ended and reason not in SUPERSEDED:
        _applications_end(session, ended, reason)
    return len(ended)


def _applications_end(session: Session, browser_session_ids: list[uuid.UUID], reason: str) -> None:
    """The sign-ins ``browser_session_ids`` ended: revoke the refresh families issued from them
    (:func:`saas.auth.sessions.revoke_tokens`, which notifies their clients), and notify every
    client that redeemed a code from them although it holds no live family (OpenID Connect
    Back-Channel Logout 1.0 section 2: each client that received tokens in the session)."""
    sessions.revoke_tokens(session, RefreshToken.browser_session_id.in_(browser_session_ids), reason=reason)
    rows = session.execute(
        select(
            AuthorizationCode.client_id,
            AuthorizationCode.user_id,
            AuthorizationCode.tenant_id,
            AuthorizationCode.browser_session_id,
        )
        .where(
            AuthorizationCode.browser_session_id.in_(browser_session_ids),
            AuthorizationCode.used_at.is_not(None),
        )
        .distinct()
    ).all()
    backchannel.notify(
        session, (backchannel.EndedSession(c, u, t, b) for c, u, t, b in rows if b is not None)
    )


def end_all_for_user(
    session: Session, user_id: uuid.UUID, reason: str, *, keep_family: uuid.UUID | None = None
) -> int:
    """End every session of ``user_id`` in every tenant: each refresh-token family with its
    access tokens (:func:`saas.auth.sessions.revoke_tokens`) and each browser sign-in of the hosted pages
    (:func:`end_for_user`), with ``revoked_reason``/``ended_reason``
    ``reason``. ``keep_family`` (the caller's own session, a ``sid``) survives, and so does the
    browser sign-in that family was issued from, if any: "every other session ends".

    Returns how many refresh tokens were revoked. The one function every "sign this person out
    everywhere" goes through (password reset and change, account deletion, an admin's MFA reset)."""
    where: list[Any] = [RefreshToken.user_id == user_id]
    keep_browser: uuid.UUID | None = None
    if keep_family is not None:
        where.append(RefreshToken.family_id != keep_family)
        keep_browser = session.scalar(
            select(RefreshToken.browser_session_id)
            .where(RefreshToken.family_id == keep_family, RefreshToken.user_id == user_id)
            .where(RefreshToken.browser_session_id.is_not(None))
            .limit(1)
        )
    end_for_user(session, user_id, reason, keep=keep_browser)
    return sessions.revoke_tokens(session, *where, reason=reason)
