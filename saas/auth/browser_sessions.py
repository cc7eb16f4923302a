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

from flask import has_request_context, request
from sqlalchemy import update
from sqlalchemy.orm import Session

from saas.auth.models import BrowserSession
from saas.db import utcnow

#: a browser sign-in lasts at most this long after the password (and second factor)
MAX_AGE = timedelta(hours=12)


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
    """End one sign-in (``reason``: ``logout``, ``idle``, ``replaced``...)."""
    if row.ended_at is None:
        row.ended_at = utcnow()
        row.ended_reason = reason


def end_for_user(session: Session, user_id: uuid.UUID, reason: str, *, keep: uuid.UUID | None = None) -> int:
    """End every live sign-in of ``user_id`` (revocation, account lock, password change) but
    ``keep`` (the caller's own, when it changes its password); returns how many."""
    where = [BrowserSession.user_id == user_id, BrowserSession.ended_at.is_(None)]
    if keep is not None:
        where.append(BrowserSession.id != keep)
    result = session.execute(
        update(BrowserSession)
        .where(*where)
        .values(ended_at=utcnow(), ended_reason=reason)
        .execution_options(synchronize_session="fetch")
    )
    return result.rowcount or 0
