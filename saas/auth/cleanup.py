"""Expired credentials' rows, deleted (a periodic job of :mod:`saas.schedules`).

What goes, ``grace`` (a day by default) after it can no longer be used:

* refresh tokens whose family is past its absolute life (``family_expires_at``): every token of
  a family shares it, so a family goes whole and reuse detection (RFC 9700 section 4.14.2)
  never meets a half-deleted family; a live family keeps its rotated tokens;
* authorization codes past ``expires_at`` (RFC 6749 section 4.1.2: short-lived; kept through the
  grace so a late replay still finds the code and revokes what it issued);
* mailed account tokens (password reset, email verification and change) past ``expires_at``.

Tokens are stored as hashes only, so nothing secret is deleted or logged; the counts are.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete

from saas.auth.models import AccountToken, AuthorizationCode, RefreshToken
from saas.db import Database, utcnow
from saas.services import services

GRACE = timedelta(days=1)


def delete_expired(
    database: Database, now: datetime | None = None, grace: timedelta = GRACE
) -> dict[str, int]:
    """Delete the rows above in one transaction.

    Returns:
        rows deleted by table: ``{"refresh_tokens": n, "authorization_codes": n, "account_tokens": n}``.
    """
    cutoff = (now or utcnow()) - grace
    with database.transaction() as session:
        counts = {
            "refresh_tokens": session.execute(
                delete(RefreshToken).where(RefreshToken.family_expires_at < cutoff)
            ).rowcount,
            "authorization_codes": session.execute(
                delete(AuthorizationCode).where(AuthorizationCode.expires_at < cutoff)
            ).rowcount,
            "account_tokens": session.execute(
                delete(AccountToken).where(AccountToken.expires_at < cutoff)
            ).rowcount,
        }
    return {k: v or 0 for k, v in counts.items()}


def prune_expired_tokens(app: Any, now: datetime | None = None) -> dict[str, int]:
    """The schedule ``auth.expired_tokens``: :func:`delete_expired` on the app's database."""
    return delete_expired(services(app).database, now)
