"""API keys: long-lived personal bearer credentials, at most their creator's permissions.

The format (docs/auth.md, "API keys"), built like GitHub's tokens (``ghp_``: a recognisable
prefix, base62, a CRC32 checksum in the last six characters) so secret scanners can find them
with one regular expression and tell a real key from a random string offline::

    saas_pat_<secret: 32 base62><tenant: 22 base62><checksum: 6 base62>
    regex: saas_pat_[0-9A-Za-z]{60}

* ``secret``: 32 characters of :mod:`secrets` (log2(62) x 32 = 190 bits);
* ``tenant``: the tenant's UUID as a 128-bit base62 number, left-padded with ``0`` (not a
  secret: it names the tenant cache namespace of the one lookup, and the key's hash covers it,
  so changing it only makes an unknown key);
* ``checksum``: CRC32 (ISO-HDLC, :func:`zlib.crc32`) of everything before it (prefix
  included), base62, left-padded to 6 characters.

Only the SHA-256 (hex) of the whole key is stored (:attr:`ApiKey.key_hash`, unique): the key
is 190 random bits, so a slow hash buys nothing (:mod:`saas.security`).

Authentication (:func:`parsed`, then :func:`authenticate`, from
:func:`saas.auth.context._authenticate`): the format and checksum are verified first (garbage
is refused without any lookup; the result is memoised per key, a pure function of it), then ONE
cached lookup of the key's entry ``k:<sha-256>`` in its tenant's cache (``services().cache``;
one indexed query on a miss), then the principal: ``user_id`` the creator, ``scope`` the key's
permissions, and :func:`saas.auth.context.current_principal` intersects them with the
permissions of the creator's *current* role (their membership, read from the cached snapshot
like any token's), so a creator who loses a permission, leaves or is locked takes it from the
key at once.

Revocation: :func:`revoke` sets ``revoked_at`` (an ORM change of a watched model, so the
tenant's cache version is bumped) and publishes the revocation marker ``rv:k:<key id>``
(:func:`saas.auth.revocation.revoke_api_key`), read in the rate limiter's Lua call of every
request: every worker refuses the key from the next request on.

``last_used_at`` (:func:`touch`): never a write per request. A process tries at most once a
minute per key (memo ``auth.api_key_touches``); the try is a Redis ``SET NX EX 60`` guard, and
only its winner sends one Core ``UPDATE`` (no ORM event, so no cache invalidation) in the
request's transaction: at most one write a minute per key across all processes.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from saas import db
from saas.actions import ActionContext
from saas.audit import AuditAction
from saas.auth import revocation
from saas.auth.models import ApiKey
from saas.cache.core import MISS
from saas.cache.guard import RedisUnavailable
from saas.cache.namespace import TenantKeys
from saas.db import tenant_row, tenant_rows, utcnow
from saas.errors import ErrorCode, Forbidden, Unauthorized, ValidationError
from saas.memo import Memo
from saas.rbac import PERMISSIONS
from saas.security import token_hash
from saas.services import services

PREFIX = "saas_pat_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SECRET_CHARS = 32
TENANT_CHARS = 22  # 62**22 > 2**128
CHECKSUM_CHARS = 6  # 62**6 > 2**32
BODY_CHARS = SECRET_CHARS + TENANT_CHARS + CHECKSUM_CHARS
KEY_LENGTH = len(PREFIX) + BODY_CHARS
#: what secret scanners match (docs/auth.md)
PATTERN = PREFIX + "[0-9A-Za-z]{" + str(BODY_CHARS) + "}"
_SHAPE = re.compile(PATTERN)
#: characters of a key kept in clear (``ApiKey.prefix``): the prefix and 6 random characters
SHOWN_CHARS = len(PREFIX) + 6
#: seconds between two ``last_used_at`` writes of one key
TOUCH_INTERVAL = 60
MAX_NAME = 100
_DIGITS = {c: i for i, c in enumerate(ALPHABET)}


# --- the format ----------------------------------------------------------------------------------


def _base62(number: int, width: int) -> str:
    out = []
    while number:
        number, digit = divmod(number, 62)
        out.append(ALPHABET[digit])
    text = "".join(reversed(out))
    if len(text) > width:
        raise ValueError("number too large")
    return text.rjust(width, "0")


def _unbase62(text: str) -> int:
    number = 0
    for char in text:
        number = number * 62 + _DIGITS[char]
    return number


def checksum(text: str) -> str:
    """The 6-character base62 CRC32 of ``text`` (the key without its checksum)."""
    return _base62(zlib.crc32(text.encode()), CHECKSUM_CHARS)


def generate(tenant_id: uuid.UUID) -> str:
    """A new key for ``tenant_id`` (``saas_pat_`` + 60 base62 characters)."""
    secret = "".join(secrets.choice(ALPHABET) for _ in range(SECRET_CHARS))
    head = PREFIX + secret + _base62(tenant_id.int, TENANT_CHARS)
    return head + checksum(head)


def looks_like_key(token: str) -> bool:
    """Whether a bearer token is meant as an API key (it starts with ``saas_pat_``)."""
    return token.startswith(PREFIX)


def parse(token: str) -> uuid.UUID:
    """The tenant of a well-formed key whose checksum is right; no lookup of any kind.

    Raises:
        Unauthorized: 401 ``invalid_token``: the length, an alphabet or the checksum is wrong.
    """
    return parsed(token)[0]


#: a well-formed key -> (its tenant, its SHA-256): a pure function of the key
_PARSED: Memo[str, tuple[uuid.UUID, str]] = Memo("auth.api_key_parses", maxsize=2048)


def parsed(token: str) -> tuple[uuid.UUID, str]:
    """``(tenant id, SHA-256 hex)`` of a well-formed key whose checksum is right (memoised: a
    pure function of the key; a key that fails is never kept).

    Raises:
        Unauthorized: 401 ``invalid_token``: the length, an alphabet or the checksum is wrong.
    """
    hit = _PARSED.get(token)
    if hit is not None:
        return hit
    if _SHAPE.fullmatch(token) is None:
        raise Unauthorized("The API key is malformed.")
    head, check = token[:-CHECKSUM_CHARS], token[-CHECKSUM_CHARS:]
    if checksum(head) != check:
        raise Unauthorized("The API key's checksum is wrong: it was mistyped or truncated.")
    start = len(PREFIX) + SECRET_CHARS
    number = _unbase62(token[start : start + TENANT_CHARS])
    if number >= 1 << 128:
        raise Unauthorized("The API key is malformed.")
    return _PARSED.put(token, (uuid.UUID(int=number), token_hash(token)))


# --- authentication: one cached lookup -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """A key as the hot path sees it (the cache entry ``k:<hash>``)."""

    id: uuid.UUID
    created_by: uuid.UUID
    permissions: frozenset[str]
    expires_at: float | None  # unix seconds
    revoked: bool


def _entry_name(key_hash: str) -> str:
    return "k:" + key_hash


def _to_cache(row: ApiKey | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "id": str(row.id),
        "by": str(row.created_by),
        "perms": sorted(row.permissions or ()),
        "exp": row.expires_at.timestamp() if row.expires_at is not None else None,
        "rev": row.revoked_at is not None,
        "tid": str(row.tenant_id),
    }


#: cached entry (the very object the tenant cache's local layer hands out) -> its KeyEntry
_ENTRIES: Memo[str, tuple[Any, KeyEntry]] = Memo("auth.api_key_entries", maxsize=10_000)


def lookup(tenant_id: uuid.UUID, key_hash: str) -> KeyEntry | None:
    """The key whose SHA-256 is ``key_hash`` in ``tenant_id``, or None: one read of the tenant
    cache (none when its in-process layer is fresh), one indexed query on a miss. A tenant
    without a cache counter (an unknown tenant in a forged key) gets no counter and no entry."""
    cache = services().cache
    name = _entry_name(key_hash)
    data: Any = MISS
    version = None
    if cache is not None:
        values, version = cache.get_many(tenant_id, [name], create_version=False)
        data = values[name]
    if data is MISS:
        row = (
            db.session()
            .scalars(select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.tenant_id == tenant_id))
            .first()
        )
        data = _to_cache(row)
        if cache is not None and version is not None:
            cache.set_many(tenant_id, version, {name: data})
    if data is None:
        return None
    kept = _ENTRIES.get(key_hash)
    if kept is not None and kept[0] is data:
        return kept[1]
    entry = KeyEntry(
        uuid.UUID(data["id"]),
        uuid.UUID(data["by"]),
        frozenset(data["perms"]),
        data["exp"],
        bool(data["rev"]),
    )
    _ENTRIES.put(key_hash, (data, entry))
    return entry


def authenticate(tenant_id: uuid.UUID, key_hash: str) -> KeyEntry:
    """The key whose SHA-256 is ``key_hash`` (of a bearer API key that :func:`parsed` accepted;
    ``tenant_id``: what it names), when it is live (not revoked, not expired).

    Raises:
        Unauthorized: 401 ``invalid_token``: unknown, revoked, or expired (the detail says
            which, with the expiry time).
    """
    entry = lookup(tenant_id, key_hash)
    if entry is None:
        raise Unauthorized("Unknown API key.")
    if entry.revoked:
        raise Unauthorized("This API key was revoked.")
    if entry.expires_at is not None and time.time() >= entry.expires_at:
        when = (
            datetime.fromtimestamp(entry.expires_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
        raise Unauthorized(f"This API key expired at {when}: create a new one.")
    return entry


#: API key id -> monotonic time of this process's last ``last_used_at`` attempt
_TOUCHES: Memo[uuid.UUID, float] = Memo("auth.api_key_touches", maxsize=10_000)


def touch(tenant_id: uuid.UUID, key_id: uuid.UUID) -> bool:
    """Record that the key was used, at most once a minute per key (see the module): returns
    whether this call wrote ``last_used_at``. Redis unavailable: nothing is written."""
    now = time.monotonic()
    last = _TOUCHES.get(key_id)
    if last is not None and now - last < TOUCH_INTERVAL:
        return False
    _TOUCHES.put(key_id, now)
    guard_key = TenantKeys(tenant_id).api_key_used(str(key_id))
    try:
        won = services().redis_guard.call(
            "cache", lambda r: r.set(guard_key, b"1", nx=True, ex=TOUCH_INTERVAL), key=guard_key
        )
    except RedisUnavailable:
        return False
    if not won:
        return False
    db.session().execute(
        update(ApiKey.__table__).where(ApiKey.__table__.c.id == key_id).values(last_used_at=utcnow())
    )
    return True


# --- management ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatedKey:
    """A new key: the row, and the key itself (shown once, never stored)."""

    row: ApiKey
    key: str


def _validate(name: Any, permissions: Any, expires_at: datetime | None, now: datetime) -> list[str]:
    errors: dict[str, list[str]] = {}
    if not isinstance(name, str) or not name.strip():
        errors["name"] = ["A name is required."]
    elif len(name.strip()) > MAX_NAME:
        errors["name"] = [f"At most {MAX_NAME} characters."]
    if not isinstance(permissions, list) or not permissions:
        errors["permissions"] = ["At least one permission of the registry (GET /api/v1/me shows yours)."]
    else:
        unknown = sorted({str(p) for p in permissions} - set(PERMISSIONS))
        if unknown:
            errors["permissions"] = [f"Unknown permissions: {', '.join(unknown)}."]
    max_days = services().settings.api_key_max_days
    if expires_at is None:
        errors["expires_at"] = [f"Required: a time within {max_days} days."]
    elif expires_at.tzinfo is None:
        errors["expires_at"] = ["Give a time zone (RFC 3339), e.g. 2027-01-31T00:00:00Z."]
    elif expires_at <= now:
        errors["expires_at"] = ["Must be in the future."]
    elif expires_at > now + timedelta(days=max_days):
        errors["expires_at"] = [f"At most {max_days} days from now (API_KEY_MAX_DAYS)."]
    if errors:
        raise ValidationError(errors)
    return sorted(set(permissions))


def create(ctx: ActionContext, *, name: Any, permissions: Any, expires_at: datetime | None) -> CreatedKey:
    """Create a key for the caller (``ctx.principal``, a person's session) in its tenant, holding
    ``permissions`` until ``expires_at``; audit ``api_key.created`` (never the key).

    Returns:
        The row and the key, which is never shown again.

    Raises:
        ValidationError: 422: no name or one over 100 characters; no permissions or one not in
            :data:`saas.rbac.PERMISSIONS`; ``expires_at`` missing, naive, past, or beyond
            ``API_KEY_MAX_DAYS``.
        Forbidden: 403 ``permission_denied`` (``extra.permissions``: those the caller lacks):
            a permission beyond the caller's own; 403 ``api_key_forbidden``: the caller is an
            API key. Nothing is written.
    """
    principal = ctx.principal
    assert principal is not None and principal.user_id is not None, "a person's request"
    if principal.api_key_id is not None:
        raise _api_key_forbidden()
    wanted = _validate(name, permissions, expires_at, utcnow())
    beyond = sorted(set(wanted) - principal.permissions)
    if beyond:
        raise Forbidden(
            "An API key cannot hold more than your own permissions; you lack: " + ", ".join(beyond) + ".",
            code=ErrorCode.PERMISSION_DENIED,
            title="Permission denied",
            extra={"permissions": beyond},
        )
    key = generate(principal.tenant_id)
    row = ApiKey(
        tenant_id=principal.tenant_id,
        created_by=principal.user_id,
        name=name.strip(),
        prefix=key[:SHOWN_CHARS],
        key_hash=token_hash(key),
        permissions=wanted,
        expires_at=expires_at,
    )
    ctx.session.add(row)
    ctx.session.flush()
    ctx.record(
        AuditAction.API_KEY_CREATED,
        target_type="api_key",
        target_id=row.id,
        data={
            "name": row.name,
            "permissions": wanted,
            "expires_at": expires_at.isoformat(),
            "prefix": row.prefix,
        },
    )
    return CreatedKey(row, key)


def _api_key_forbidden() -> Forbidden:
    return Forbidden(
        "An API key cannot do this: sign in as the user.",
        code=ErrorCode.API_KEY_FORBIDDEN,
        title="Not with an API key",
    )


def list_keys(session: Session, tenant_id: uuid.UUID, user_id: uuid.UUID | None) -> list[ApiKey]:
    """The tenant's keys, newest first: only ``user_id``'s, or all of them (None)."""
    mine = (ApiKey.created_by == user_id,) if user_id is not None else ()
    return tenant_rows(session, ApiKey, tenant_id, ApiKey.created_at.desc(), ApiKey.id, where=mine)


def get_key(session: Session, tenant_id: uuid.UUID, key_id: uuid.UUID, user_id: uuid.UUID | None) -> ApiKey:
    """One key of the tenant (``user_id``: only if they created it).

    Raises:
        NotFound: no such key in the tenant (another tenant's, or someone else's without
            ``members:manage``).
    """
    mine = (ApiKey.created_by == user_id,) if user_id is not None else ()
    return tenant_row(
        session, ApiKey, tenant_id, key_id, where=mine, noun="API key", detail="No such API key."
    )


def revoke(ctx: ActionContext, row: ApiKey) -> None:
    """Revoke ``row`` (idempotent: a revoked key stays as it is, audited once): ``revoked_at``
    set, its marker published after commit; audit ``api_key.revoked``."""
    if row.revoked_at is not None:
        return
    row.revoked_at = utcnow()
    principal = ctx.principal
    row.revoked_by = principal.user_id if principal is not None else None
    ctx.session.flush()
    revocation.revoke_api_key(ctx.session, row.tenant_id, row.id)
    ctx.record(
        AuditAction.API_KEY_REVOKED,
        target_type="api_key",
        target_id=row.id,
        data={"name": row.name, "prefix": row.prefix, "created_by": str(row.created_by)},
    )


def to_public(row: ApiKey) -> dict[str, Any]:
    """The listing shape (never the key nor its hash)."""
    now = utcnow()
    if row.revoked_at is not None:
        status = "revoked"
    elif row.expires_at is not None and row.expires_at <= now:
        status = "expired"
    else:
        status = "active"
    return {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "permissions": list(row.permissions or ()),
        "created_by": row.created_by,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "last_used_at": row.last_used_at,
        "revoked_at": row.revoked_at,
        "status": status,
    }
