"""``saas users rehash-recovery-codes``: rows stored as plain SHA-256 (before keyed hashes) are
rewritten as HMAC-SHA256 under the key derived from SECRET_KEY, without the codes."""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import select

from saas.auth import mfa
from saas.auth.models import RecoveryCode
from saas.db import Database
from saas.identity.models import User


def test_rehash_recovery_codes_rewrites_legacy_rows(committed, run_cli, engine, cli_settings):
    tenant = committed.tenant()
    db = Database(engine)
    codes = ["abcde-fghij", "klmno-pqrst"]
    with db.transaction() as session:
        user = session.scalars(select(User).where(User.email == f"m0@{tenant.slug}.test")).one()
        user_id = user.id
        for code in codes:
            legacy = hashlib.sha256(code.replace("-", "").encode()).hexdigest()
            session.add(RecoveryCode(user_id=user_id, code_hash=legacy, hash_scheme="sha256"))
    r = run_cli("users", "rehash-recovery-codes")
    assert r.exit_code == 0, r.output
    assert "2 recovery code(s) rewritten" in r.output
    key = mfa.recovery_code_key(cli_settings.secret_key)
    digests = [hashlib.sha256(c.replace("-", "").encode()).digest() for c in codes]
    expected = {hmac.new(key, user_id.bytes + d, "sha256").hexdigest() for d in digests}
    with db.transaction() as session:
        rows = list(session.scalars(select(RecoveryCode).where(RecoveryCode.user_id == user_id)))
    assert {r.code_hash for r in rows} == expected and {r.hash_scheme for r in rows} == {"hmac-sha256"}
    again = run_cli("users", "rehash-recovery-codes")
    assert again.exit_code == 0 and "0 recovery code(s) rewritten" in again.output
