"""API sessions: refresh-token families, one per login, as their owner and the server see them.

A session is a family of :class:`saas.auth.models.RefreshToken` rows (each refresh rotates the
token into a child of the same family); its id is the family id, the ``sid`` claim of every
access token issued in it. This module is the one place that

* ends sessions (:func:`revoke_tokens`, :func:`revoke_family`): the refresh tokens are marked
  revoked and the sessions' access tokens stop at their next request
  (:func:`saas.auth.revocation.revoke_sessions`, written to Redis when the transaction commits);
* decides whether a session belongs to a caller (:func:`owned_family`: ``POST
  /api/v1/auth/logout`` and ``DELETE /api/v1/me/sessions/{id}`` both ask it);
* lists a member's live sessions (:func:`list_sessions`, ``GET /api/v1/me/sessions``).

Browser sign-ins on the hosted pages are another kind of session: :mod:`saas.auth.browser_sessions`,
which sits above this module (ending a sign-in ends the families issued from it) and so holds
:func:`saas.auth.browser_sessions.end_all_for_user`, everything a person is signed in with (a
password reset or change, an account deletion, an admin's MFA reset).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from saas.auth import backchannel, revocation
from saas.auth.models import RefreshToken
from saas.db import utcnow


def revoke_tokens(session: Session, *where: Any, reason: str) -> int:
    """Revoke every live refresh token matching ``where`` and end their sessions' access tokens
    (:func:`saas.auth.revocation.revoke_sessions`, written to Redis at commit); returns how many
    refresh tokens. Every revocation of refresh tokens goes through here, so every ended family
    also notifies its client when it registered a back-channel logout URI
    (:func:`saas.auth.backchannel.notify`, enqueued in the same transaction; the ``sid`` is the
    family's browser session when it came from the hosted pages, else the family)."""
    rows = session.execute(
        update(RefreshToken)
        .where(*where, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow(), revoked_reason=reason)
        .returning(
            RefreshToken.tenant_id,
            RefreshToken.family_id,
            RefreshToken.created_at,
            RefreshToken.user_id,
            RefreshToken.client_id,
            RefreshToken.browser_session_id,
        )
    ).all()
    newest: dict[tuple[uuid.UUID, uuid.UUID], datetime] = {}
    ended: list[backchannel.EndedSession] = []
    for tenant_id, family_id, created_at, user_id, client_id, browser_session_id in rows:
        key = (tenant_id, family_id)
        if key not in newest or created_at > newest[key]:
            newest[key] = created_at
        ended.append(backchannel.EndedSession(client_id, user_id, tenant_id, browser_session_id or family_id))
    revocation.revoke_sessions(session, ((t, f, at) for (t, f), at in newest.items()))
    backchannel.notify(session, ended)
    return len(rows)


def revoke_family(session: Session, family_id: uuid.UUID, reason: str) -> int:
    """Revoke every live token of a family (one session); returns how many."""
    return revoke_tokens(session, RefreshToken.family_id == family_id, reason=reason)


def owned_family(
    session: Session, session_id: object, user_id: uuid.UUID | None, tenant_id: uuid.UUID
) -> uuid.UUID | None:
    """The family ``session_id`` (a ``sid`` claim or a path segment) when it is a session of
    ``user_id`` in ``tenant_id``; None otherwise: malformed ids, other users' and other
    tenants' sessions, and callers without a user (service accounts) alike."""
    if user_id is None:
        return None
    try:
        family = uuid.UUID(str(session_id))
    except ValueError:
        return None
    owned = session.scalars(
        select(RefreshToken.id).where(
            RefreshToken.family_id == family,
            RefreshToken.user_id == user_id,
            RefreshToken.tenant_id == tenant_id,
        )
    ).first()
    return None if owned is None else family


def list_sessions(
    session: Session, user_id: uuid.UUID, tenant_id: uuid.UUID, current_sid: object = None
) -> list[dict[str, Any]]:
    """The live refresh-token families of a user in a tenant, newest activity first;
    ``current`` marks the one named ``current_sid`` (the caller's own)."""
    now = utcnow()
    live = (
        select(RefreshToken.family_id)
        .where(
            RefreshToken.user_id == user_id,
            RefreshToken.tenant_id == tenant_id,
            RefreshToken.revoked_at.is_(None),
            RefreshToken.used_at.is_(None),
            RefreshToken.expires_at > now,
        )
        .scalar_subquery()
    )
    rows = session.execute(
        select(
            RefreshToken.family_id,
            func.min(RefreshToken.created_at),
            func.max(RefreshToken.created_at),
            func.min(RefreshToken.family_expires_at),
        )
        .where(RefreshToken.family_id.in_(live))
        .group_by(RefreshToken.family_id)
    ).all()
    latest = {
        r.family_id: r
        for r in session.scalars(
            select(RefreshToken).where(RefreshToken.family_id.in_(live), RefreshToken.used_at.is_(None))
        )
    }
    current = str(current_sid or "")
    out = []
    for family_id, created, last, expires in rows:
        head = latest.get(family_id)
        out.append(
            {
                "id": str(family_id),
                "client_id": head.client_id if head else None,
                "created_at": created,
                "last_used_at": last,
                "expires_at": expires,
                "ip": head.ip if head else None,
                "user_agent": head.user_agent if head else None,
                "current": str(family_id) == current,
            }
        )
    out.sort(key=lambda s: s["last_used_at"], reverse=True)
    return out
