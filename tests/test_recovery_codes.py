"""Recovery codes are stored as keyed hashes (HMAC-SHA256 under a key derived from SECRET_KEY, of
the user id and the code's SHA-256): a database dump alone cannot check a guess, and rows from
before (plain SHA-256) are rewritten without the codes and keep working."""

from __future__ import annotations

import hashlib
import hmac
import uuid

import pytest
from sqlalchemy import delete, select

from saas.auth import mfa
from saas.auth.models import RecoveryCode
from tests.test_mfa import _enroll

T0 = 1_900_000_020.0


@pytest.fixture()
def clock(time_machine):
    """The process's clock frozen at T0 (TOTP steps, tokens, expiries): ``clock.shift(s)``."""
    time_machine.move_to(T0, tick=False)
    return time_machine


def _plain_sha256(code: str) -> str:
    return hashlib.sha256(code.replace("-", "").lower().encode()).hexdigest()


def _rows(db_session, user_id: uuid.UUID) -> list[RecoveryCode]:
    db_session.expire_all()
    return list(db_session.scalars(select(RecoveryCode).where(RecoveryCode.user_id == user_id)))


def _login_with(api, client, code: str):
    token = api.login("owner@acme.test").get_json()["mfa_token"]
    return client.post("/api/v1/auth/mfa", json={"mfa_token": token, "code": code})


def test_stored_codes_are_keyed_and_a_dump_cannot_check_them(api, app, client, clock, db_session):
    owner = api.signup("acme")
    user_id = uuid.UUID(owner["user"]["id"])
    _secret, codes = _enroll(client, api.auth(owner), clock)
    rows = _rows(db_session, user_id)
    stored = {r.code_hash for r in rows}
    assert len(stored) == 10 and {r.hash_scheme for r in rows} == {"hmac-sha256"}
    # not the plain SHA-256 an offline attacker could compute for every 50-bit guess
    assert not stored & {_plain_sha256(c) for c in codes}
    # ...nor a hash under any key but the server's: a dump alone verifies nothing
    digests = [hashlib.sha256(c.replace("-", "").encode()).digest() for c in codes]
    guessed_key = hashlib.sha256(b"not the server key").digest()
    assert not stored & {hmac.new(guessed_key, user_id.bytes + d, "sha256").hexdigest() for d in digests}
    with app.app_context():
        key = mfa.recovery_code_key()
    assert stored == {hmac.new(key, user_id.bytes + d, "sha256").hexdigest() for d in digests}
    # bound to the user: the same code of another user has another hash
    other = uuid.uuid4()
    assert not stored & {hmac.new(key, other.bytes + d, "sha256").hexdigest() for d in digests}


def test_a_code_works_once(api, client, clock):
    owner = api.signup("acme")
    _secret, codes = _enroll(client, api.auth(owner), clock)
    assert _login_with(api, client, codes[3]).status_code == 200
    again = _login_with(api, client, codes[3])
    assert again.status_code == 401 and again.get_json()["code"] == "mfa_invalid_code"
    assert _login_with(api, client, codes[4].upper()).status_code == 200


def _make_legacy(db_session, user_id: uuid.UUID, codes: list[str]) -> None:
    """Store the codes as rows from before keyed hashes (plain SHA-256, scheme sha256)."""
    db_session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    db_session.add_all(
        RecoveryCode(user_id=user_id, code_hash=_plain_sha256(c), hash_scheme="sha256") for c in codes
    )
    db_session.commit()


def test_legacy_rows_are_rewritten_at_the_next_check_and_keep_working(api, client, clock, db_session):
    owner = api.signup("acme")
    user_id = uuid.UUID(owner["user"]["id"])
    _secret, codes = _enroll(client, api.auth(owner), clock)
    _make_legacy(db_session, user_id, codes)
    assert _login_with(api, client, codes[0]).status_code == 200
    rows = _rows(db_session, user_id)
    assert {r.hash_scheme for r in rows} == {"hmac-sha256"}
    assert not {r.code_hash for r in rows} & {_plain_sha256(c) for c in codes}
    assert sum(r.used_at is not None for r in rows) == 1
    assert _login_with(api, client, codes[0]).status_code == 401  # still single-use
    assert _login_with(api, client, codes[1]).status_code == 200


def test_rehash_rewrites_every_legacy_row_without_the_codes(api, app, client, clock, db_session):
    owner = api.signup("acme")
    user_id = uuid.UUID(owner["user"]["id"])
    _secret, codes = _enroll(client, api.auth(owner), clock)
    _make_legacy(db_session, user_id, codes)
    assert mfa.rehash_legacy_recovery_codes(db_session, app.config["SECRET_KEY"]) == 10
    db_session.commit()
    assert mfa.rehash_legacy_recovery_codes(db_session, app.config["SECRET_KEY"]) == 0  # idempotent
    rows = _rows(db_session, user_id)
    assert {r.hash_scheme for r in rows} == {"hmac-sha256"}
    assert not {r.code_hash for r in rows} & {_plain_sha256(c) for c in codes}
    assert _login_with(api, client, codes[5]).status_code == 200
