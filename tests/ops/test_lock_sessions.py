"""``saas users lock`` ends the account's browser sign-ins and its sessions' access tokens."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, select

from saas.auth.models import BrowserSession, RefreshToken
from saas.db import Database, utcnow
from saas.identity.models import User
from saas.outbox import OutboxMessage


def test_lock_ends_browser_sign_ins_and_marks_sessions_revoked(committed, run_cli, engine, redis_client):
    tenant = committed.tenant(members=1)
    email = f"m0@{tenant.slug}.test"
    db = Database(engine)
    now = utcnow()
    with db.transaction() as session:
        user = session.scalars(select(User).where(User.email == email)).one()
        session.add(
            BrowserSession(user_id=user.id, auth_time=now, amr=["pwd"], expires_at=now + timedelta(hours=1))
        )
        later = now + timedelta(days=1)
        refresh = RefreshToken(
            family_id=user.id, token_hash=user.id.hex * 2, user_id=user.id, tenant_id=tenant.id,
            client_id="saas-api", auth_time=now, amr=["pwd"], created_at=now, expires_at=later,
            family_expires_at=later,
        )  # fmt: skip
        session.add(refresh)
        start_id = session.scalar(select(func.coalesce(func.max(OutboxMessage.id), 0)))
    try:
        r = run_cli("users", "lock", email, "--reason", "compromised", "--json")
        assert r.exit_code == 0, r.output
        with db.transaction() as session:
            row = session.scalars(select(BrowserSession).where(BrowserSession.user_id == user.id)).one()
            assert row.ended_at is not None and row.ended_reason == "user_locked"
    finally:  # the lock's security mail is committed: leave no job for the worker tests
        with db.transaction() as session:
            session.execute(delete(OutboxMessage).where(OutboxMessage.id > start_id))
    assert redis_client.exists(f"{{t:{tenant.id}}}:rv:s:{user.id}")
