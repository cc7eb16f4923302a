"""TOTP multi-factor authentication (RFC 6238) with recovery codes, replay protection and lockout.

* Secrets are 160 random bits (RFC 4226 section 4 recommends at least 128), stored encrypted with
  AES-256-GCM under a key derived from ``SECRET_KEY`` (HKDF-SHA256), never returned after enrolment.
* A code is accepted for the current 30-second step and one step either way (clock drift), and
  only for a step later than the last accepted one: a code is never accepted twice, even inside
  its window (RFC 6238 section 5.2).
* Two lockouts, each lasting ``mfa_lockout_seconds`` (15 minutes) and each audited as
  ``mfa.locked`` in every tenant of the account, once per lockout:

  - per attempt: 5 wrong codes from one sign-in attempt (the client IP, IPv6 by /64, and the
    ``mfa_token``; on the hosted page the pending sign-in's own attempt id) lock that attempt
    only (Redis counter); someone who knows the password cannot lock the owner's own attempts
    out this way;
  - per account: 20 wrong codes in a row, whatever their attempts (a correct code resets the
    count), lock the factor for everyone (``locked_until`` on the factor row, committed even
    though the request fails). A guess is right with probability 3 / 10^6 (a 6-digit code,
    the current 30-second step and one either way), so this bounds brute force to 20 guesses
    per 15 minutes: at most 80 an hour, under 0.6 % a day and about 174 days on average to a
    hit, while a denial of service needs 20 codes from at least four attempts, each of which
    took a password login (itself throttled to 10 a minute per account).

  Each failure is audited as ``mfa.failed``.
* 10 single-use recovery codes (50 random bits each), stored as HMAC-SHA256 under a key derived
  from ``SECRET_KEY`` (HKDF-SHA256) of the user id and the code's SHA-256: a database dump
  without the key cannot check a single guess, and with it every guess is for one user only.
  Rows from before (plain SHA-256) are rewritten from their stored hash, without the code.
* ``mfa_token``: a short-lived opaque token in Redis bound to a user and tenant, given out by a
  password login that still needs a second factor (purpose ``login``) or an enrolment (purpose
  ``enroll``, when the tenant requires MFA).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import math
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyotp
import segno
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app, has_request_context, request
from redis.exceptions import RedisError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from saas import audit
from saas.audit import AuditAction
from saas.auth.accounts import audit_account_event
from saas.auth.errors import MfaFailed, MfaLocked, MfaUnavailable
from saas.auth.models import MfaFactor, RecoveryCode
from saas.db import EarlyCommit, commit_early, utcnow
from saas.errors import Conflict, ErrorCode, Unauthorized
from saas.identity.models import User
from saas.security import random_token, same_string, seal, token_hash, unseal
from saas.services import services

TOTP_DIGITS = 6
TOTP_PERIOD = 30
DRIFT_STEPS = 1
#: wrong codes one sign-in attempt (IP and mfa_token) may make before it is locked
MAX_FAILURES = 5
#: wrong codes in a row, from any attempts, before the account's factor is locked
ACCOUNT_MAX_FAILURES = 20
RECOVERY_CODE_COUNT = 10
ISSUER_NAME = "SaaS"
_MFA_TOKEN_PREFIX = "saas:auth:mfa_token:"  # noqa: S105 - a Redis key prefix
_ATTEMPT_PREFIX = "saas:auth:mfa_attempt:"


def _clock() -> float:
    """The TOTP clock (a function so tests can move it without touching ``time.time``)."""
    return time.time()


# --- secret encryption -------------------------------------------------------------------------


#: the HKDF info of the TOTP seeds' key (:func:`saas.security.seal`)
_TOTP_KEY_INFO = b"saas mfa totp v1"


def encrypt_secret(secret: str, user_id: uuid.UUID) -> str:
    """AES-256-GCM (:func:`saas.security.seal`) with the user id as associated data (a row
    copied to another user fails)."""
    return seal(secret, user_id.bytes, info=_TOTP_KEY_INFO)


def decrypt_secret(stored: str, user_id: uuid.UUID) -> str:
    return unseal(stored, user_id.bytes, info=_TOTP_KEY_INFO)


# --- TOTP ----------------------------------------------------------------------------------------


def totp_at(secret: str, step: int, digits: int = TOTP_DIGITS, digest: Any = hashlib.sha1) -> str:
    """The RFC 6238 code for time step ``step`` (``T = floor(unix time / 30)``)."""
    return pyotp.TOTP(secret, digits=digits, interval=TOTP_PERIOD, digest=digest).at(step * TOTP_PERIOD)


def match_step(secret: str, code: str, last_step: int | None, now: float | None = None) -> int | None:
    """The time step ``code`` belongs to (current one +- ``DRIFT_STEPS``) if later than
    ``last_step``; None otherwise. Constant-time comparison per candidate."""
    # isascii: str.isdigit() also accepts other scripts' digits ("١٢٣٤٥٦"), which are no code
    if not (isinstance(code, str) and len(code) == TOTP_DIGITS and code.isascii() and code.isdigit()):
        return None
    current = int((_clock() if now is None else now) // TOTP_PERIOD)
    found = None
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if same_string(totp_at(secret, step), code) and (last_step is None or step > last_step):
            found = step
    return found


# --- recovery codes ------------------------------------------------------------------------------


RECOVERY_HASH_SCHEME = "hmac-sha256"
LEGACY_RECOVERY_HASH_SCHEME = "sha256"


def recovery_code_key(secret_key: str | bytes | None = None) -> bytes:
    """The 256-bit HMAC key of recovery codes: HKDF-SHA256 (RFC 5869) of ``secret_key`` (default
    the app's ``SECRET_KEY``), with its own ``info`` so it is never the TOTP encryption key."""
    secret = current_app.config["SECRET_KEY"] if secret_key is None else secret_key
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"saas mfa recovery codes v1").derive(
        secret.encode() if isinstance(secret, str) else secret
    )


def _keyed_hash(key: bytes, user_id: uuid.UUID, digest: bytes) -> str:
    """HMAC-SHA256(key, user id (16 bytes) || SHA-256 of the code), hex: what is stored."""
    return hmac.new(key, user_id.bytes + digest, hashlib.sha256).hexdigest()


def _code_hash(user_id: uuid.UUID, code: str, key: bytes | None = None) -> str:
    normalized = code.strip().lower().replace("-", "").replace(" ", "")
    return _keyed_hash(key or recovery_code_key(), user_id, hashlib.sha256(normalized.encode()).digest())


def _rehash_legacy(rows: list[RecoveryCode], key: bytes) -> int:
    """Rewrite plain SHA-256 rows as keyed hashes in place (no code needed: the stored SHA-256 is
    what the keyed hash is taken of). Returns how many rows changed."""
    changed = 0
    for row in rows:
        if row.hash_scheme == LEGACY_RECOVERY_HASH_SCHEME:
            row.code_hash = _keyed_hash(key, row.user_id, bytes.fromhex(row.code_hash))
            row.hash_scheme = RECOVERY_HASH_SCHEME
            changed += 1
    return changed


def rehash_legacy_recovery_codes(session: Session, secret_key: str | bytes, batch: int = 1000) -> int:
    """Rewrite every stored plain-SHA-256 recovery code as its keyed hash (``saas users
    rehash-recovery-codes``); idempotent. Returns the number of rows rewritten."""
    key = recovery_code_key(secret_key)
    total = 0
    while True:
        rows = list(
            session.scalars(
                select(RecoveryCode)
                .where(RecoveryCode.hash_scheme == LEGACY_RECOVERY_HASH_SCHEME)
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
        )
        if not rows:
            return total
        total += _rehash_legacy(rows, key)
        session.flush()


def _use_recovery_code(session: Session, user: User, code: str) -> RecoveryCode | None:
    """The user's unused recovery code matching ``code`` (rows locked), or None. Every unused
    code is compared, in constant time; the user's legacy rows are rewritten first."""
    rows = list(
        session.scalars(select(RecoveryCode).where(RecoveryCode.user_id == user.id).with_for_update())
    )
    key = recovery_code_key()
    _rehash_legacy(rows, key)
    presented = _code_hash(user.id, code, key)
    found = None
    for row in rows:
        if same_string(row.code_hash, presented) and row.used_at is None and found is None:
            found = row
    return found


def _new_recovery_code() -> str:
    raw = base64.b32encode(secrets.token_bytes(7)).decode().lower()[:10]  # 50 bits
    return f"{raw[:5]}-{raw[5:]}"


def regenerate_recovery_codes(session: Session, user: User) -> list[str]:
    """Replace the user's recovery codes with 10 new ones; returns them (shown once)."""
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    key = recovery_code_key()
    session.add_all(
        RecoveryCode(user_id=user.id, code_hash=_code_hash(user.id, c, key), hash_scheme=RECOVERY_HASH_SCHEME)
        for c in codes
    )
    session.flush()
    return codes


def _looks_like_recovery_code(code: str) -> bool:
    return len(code.strip().replace("-", "")) == 10


# --- factors -------------------------------------------------------------------------------------


def active_factor(session: Session, user_id: uuid.UUID, *, lock: bool = False) -> MfaFactor | None:
    query = select(MfaFactor).where(MfaFactor.user_id == user_id, MfaFactor.status == "active")
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def has_mfa(session: Session, user_id: uuid.UUID) -> bool:
    return active_factor(session, user_id) is not None


@dataclass
class Enrollment:
    secret: str
    otpauth_uri: str
    qr_svg_data_uri: str

    def to_dict(self) -> dict[str, str]:
        return {"secret": self.secret, "otpauth_uri": self.otpauth_uri, "qr_code": self.qr_svg_data_uri}


def begin_enrollment(session: Session, user: User) -> Enrollment:
    """Create a pending TOTP factor (replacing an unconfirmed one).

    Raises:
        Conflict: ``mfa_already_enabled``.
    """
    if active_factor(session, user.id) is not None:
        raise Conflict("TOTP is already enabled; disable it first.", code=ErrorCode.MFA_ALREADY_ENABLED)
    session.execute(delete(MfaFactor).where(MfaFactor.user_id == user.id, MfaFactor.status == "pending"))
    secret = pyotp.random_base32(32)
    session.add(
        MfaFactor(user_id=user.id, status="pending", secret_encrypted=encrypt_secret(secret, user.id))
    )
    session.flush()
    uri = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD).provisioning_uri(
        name=user.email, issuer_name=ISSUER_NAME
    )
    qr = segno.make(uri, error="m").svg_data_uri(scale=4)
    return Enrollment(secret, uri, qr)


def confirm_enrollment(session: Session, user: User, code: str, schema: str | None) -> list[str]:
    """Activate the pending factor with a first valid code; returns 10 recovery codes.

    Raises:
        Conflict: ``mfa_not_pending`` (no enrolment started).
        MfaFailed / MfaLocked: wrong code (counted like any failure).
    """
    factor = session.scalars(
        select(MfaFactor).where(MfaFactor.user_id == user.id, MfaFactor.status == "pending").with_for_update()
    ).first()
    if factor is None:
        raise Conflict("Start an enrolment first (POST /api/v1/me/mfa/totp).", code=ErrorCode.MFA_NOT_PENDING)
    _check_code(session, user, factor, code, schema, allow_recovery=False)
    factor.status = "active"
    factor.confirmed_at = utcnow()
    codes = regenerate_recovery_codes(session, user)
    audit.record(
        session,
        AuditAction.MFA_ENROLLED,
        target_type="user",
        target_id=user.id,
        actor=audit.Actor("user", str(user.id)),
        data={"kind": "totp"},
        schema=schema,
    )
    return codes


def verify(
    session: Session, user: User, code: str, schema: str | None, *, mfa_token: str | None = None
) -> str:
    """Check a TOTP or recovery code of the user's active factor; returns ``"totp"`` or
    ``"recovery_code"``. ``mfa_token``: the login's token, which with the client IP names the
    attempt (see the module's lockouts).

    Raises:
        MfaFailed: wrong, replayed or used code (the failure is committed and audited).
        MfaLocked: this attempt (5 failures) or the factor (20 in a row) is locked, with
            ``Retry-After``.
        MfaUnavailable: Redis (the attempt counters) cannot be reached.
    """
    factor = active_factor(session, user.id, lock=True)
    if factor is None:
        raise MfaFailed("No second factor is enabled for this account.")
    return _check_code(session, user, factor, code, schema, allow_recovery=True, mfa_token=mfa_token)


def disable(session: Session, user: User, schema: str | None, actor: audit.Actor) -> None:
    """Remove the user's TOTP factor and recovery codes (the caller checked password and code);
    audited as ``mfa.disabled`` by ``actor`` (the user) in ``schema`` (None: the session's)."""
    session.execute(delete(MfaFactor).where(MfaFactor.user_id == user.id))
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    audit.record(
        session,
        AuditAction.MFA_DISABLED,
        target_type="user",
        target_id=user.id,
        data={"kind": "totp"},
        actor=actor,
        schema=schema,
    )


def reset(session: Session, user: User, schema: str | None, actor: audit.Actor) -> bool:
    """Operator reset (lost device): remove factors and codes; True when there was one."""
    had = session.scalars(select(MfaFactor.id).where(MfaFactor.user_id == user.id)).first() is not None
    session.execute(delete(MfaFactor).where(MfaFactor.user_id == user.id))
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    if schema and had:
        audit.record(
            session, AuditAction.MFA_RESET, target_type="user", target_id=user.id, actor=actor, schema=schema
        )
    return had


def attempt_key(user_id: uuid.UUID, mfa_token: str | None = None) -> str:
    """The Redis counter of wrong codes of one sign-in attempt of the current request: the
    user, the client IP (IPv6 by /64, as the rate limits) and the ``mfa_token`` (hashed)."""
    from saas.http import client_ip

    ip = client_ip(request.remote_addr if has_request_context() else None)
    attempt = f"{ip}|{mfa_token or ''}"
    return f"{_ATTEMPT_PREFIX}{user_id.hex}:{token_hash(attempt)[:32]}"


def _locked(retry: int, scope: str) -> MfaLocked:
    detail = {
        "attempt": "Too many wrong codes in this sign-in; sign in again later.",
        "account": "Too many wrong codes; this factor is locked for a while.",
    }[scope]
    extra = {"retry_after": retry, "scope": scope}
    return MfaLocked(detail, headers={"Retry-After": str(retry)}, extra=extra)


def _check_code(
    session: Session, user: User, factor: MfaFactor, code: str, schema: str | None, *, allow_recovery: bool,
    mfa_token: str | None = None,
) -> str:  # fmt: skip
    settings = services().settings
    redis = services().redis
    lockout = settings.mfa_lockout_seconds
    now = utcnow()
    if factor.locked_until is not None and factor.locked_until > now:
        raise _locked(max(1, math.ceil((factor.locked_until - now).total_seconds())), "account")
    key = attempt_key(user.id, mfa_token)
    try:
        failures = int(redis.get(key) or 0)
        if failures >= MAX_FAILURES:
            raise _locked(max(1, int(redis.ttl(key))), "attempt")
    except RedisError:
        raise MfaUnavailable("The second factor cannot be checked right now; retry.") from None
    code = (code or "").strip()
    step = match_step(decrypt_secret(factor.secret_encrypted, user.id), code, factor.last_step)
    if step is not None:
        factor.last_step = step
        _succeeded(factor, redis, key)
        return "totp"
    if allow_recovery and _looks_like_recovery_code(code):
        row = _use_recovery_code(session, user, code)
        if row is not None:
            row.used_at = now
            _succeeded(factor, redis, key)
            audit.record(
                session,
                AuditAction.MFA_RECOVERY_CODE_USED,
                target_type="user",
                target_id=user.id,
                actor=audit.Actor("user", str(user.id)),
                schema=schema,
            )
            return "recovery_code"
    try:
        with redis.pipeline(transaction=True) as pipe:  # MULTI: the count and its window together
            failures = pipe.incr(key).expire(key, lockout, nx=True).execute()[0]
        if failures == MAX_FAILURES:
            redis.expire(key, lockout)  # the attempt's lock lasts from now
    except RedisError:
        raise MfaUnavailable("The second factor cannot be checked right now; retry.") from None
    factor.failed_count = (factor.failed_count or 0) + 1
    account_locked = factor.failed_count >= ACCOUNT_MAX_FAILURES
    if account_locked:
        factor.locked_until = now + timedelta(seconds=lockout)
        factor.failed_count = 0
    if schema:
        audit.record(
            session,
            AuditAction.MFA_FAILED,
            target_type="user",
            target_id=user.id,
            actor=audit.Actor("user", str(user.id)),
            data={"kind": "totp"},
            schema=schema,
        )
    scope = "account" if account_locked else "attempt" if failures == MAX_FAILURES else None
    if scope is not None:
        audit_account_event(
            session, user.id, AuditAction.MFA_LOCKED, {"kind": "totp", "scope": scope, "retry_after": lockout}
        )
    # the failure must count although the request fails
    commit_early(session, EarlyCommit.MFA_FAILURE)
    if account_locked or failures >= MAX_FAILURES:
        raise _locked(lockout, "account" if account_locked else "attempt")
    raise MfaFailed("The code is wrong, expired or already used.")


def _succeeded(factor: MfaFactor, redis: Any, key: str) -> None:
    """A right code ends the run of failures: the account's and this attempt's."""
    factor.failed_count = 0
    factor.locked_until = None
    with contextlib.suppress(RedisError):  # the counter expires on its own; the code was right
        redis.delete(key)


# --- mfa_token -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MfaTicket:
    """What an ``mfa_token`` stands for."""

    user_id: uuid.UUID
    tenant_id: uuid.UUID
    purpose: str  # login | enroll
    amr: tuple[str, ...]
    auth_time: int
    key: str


def issue_mfa_token(user_id: uuid.UUID, tenant_id: uuid.UUID, purpose: str, amr: list[str]) -> str:
    """A 256-bit opaque token valid ``mfa_token_ttl_seconds``; only its SHA-256 is a Redis key."""
    redis = services().redis
    ttl = services().settings.mfa_token_ttl_seconds
    token = random_token()
    value = {
        "user_id": str(user_id),
        "tenant_id": str(tenant_id),
        "purpose": purpose,
        "amr": amr,
        "auth_time": int(time.time()),
    }
    try:
        redis.set(_MFA_TOKEN_PREFIX + token_hash(token), json.dumps(value), ex=ttl)
    except RedisError:
        raise MfaUnavailable("The second step of the login cannot start right now; retry.") from None
    return token


def read_mfa_token(token: str | None, purposes: tuple[str, ...]) -> MfaTicket:
    """The ticket behind ``token`` (not consumed).

    Raises:
        Unauthorized: ``invalid_mfa_token`` (unknown, expired, used, or for another purpose).
    """
    if not token or len(token) > 200:
        raise Unauthorized("The mfa_token is missing.", code=ErrorCode.INVALID_MFA_TOKEN, error=None)
    redis = services().redis
    key = _MFA_TOKEN_PREFIX + token_hash(token)
    try:
        raw = redis.get(key)
    except RedisError:
        raise MfaUnavailable("The second step of the login cannot be checked right now; retry.") from None
    if raw is None:
        raise Unauthorized(
            "The mfa_token is invalid or has expired.", code=ErrorCode.INVALID_MFA_TOKEN, error=None
        )
    data = json.loads(raw)
    if data.get("purpose") not in purposes:
        raise Unauthorized("The mfa_token cannot be used here.", code=ErrorCode.INVALID_MFA_TOKEN, error=None)
    return MfaTicket(
        uuid.UUID(data["user_id"]),
        uuid.UUID(data["tenant_id"]),
        data["purpose"],
        tuple(data.get("amr") or ["pwd"]),
        int(data.get("auth_time") or time.time()),
        key,
    )


def consume_mfa_token(ticket: MfaTicket) -> None:
    """Use the token up; a concurrent second use loses.

    Raises:
        Unauthorized: ``invalid_mfa_token`` when it was consumed meanwhile.
    """
    try:
        deleted = services().redis.delete(ticket.key)
    except RedisError:
        raise MfaUnavailable("The second step of the login cannot be completed right now; retry.") from None
    if not deleted:
        raise Unauthorized("The mfa_token was already used.", code=ErrorCode.INVALID_MFA_TOKEN, error=None)
