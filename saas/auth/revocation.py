"""Revoked sessions and deleted clients: every access token of theirs stops within one request.

Access tokens are verified locally (RS256, no database), so revoking a session in the database
(its refresh-token family) does not reach the access tokens already issued for it. This module
keeps a marker in Redis for each revoked session and each deleted OAuth client, for as long as
any access token of theirs can still be valid:

* ``{t:<tenant>}:rv:s:<sid>``: the session (``sid`` claim, the refresh-token family id) ended;
* ``{t:<tenant>}:rv:c:<client_id>``: the tenant's OAuth client was deleted;
* ``{t:<tenant>}:rv:k:<api key id>``: the tenant's API key was revoked (:mod:`saas.auth.api_keys`).

Both are built by :class:`saas.cache.namespace.TenantKeys` (tenant-scoped by construction,
in the tenant's hash slot) and live ``ACCESS_TOKEN_TTL`` + the verification leeway + 1 s after
the newest token they cover was issued, then expire by themselves.

**Writing.** :func:`revoke_sessions` and :func:`revoke_client` note markers on the ORM session;
they are written to Redis right after that session's transaction commits (never for a rolled
back one), before the response of the request that revoked leaves the process. While Redis is
unavailable the markers wait in memory and are written when it answers again.

**Checking.** Every authenticated API request checks its session's and client's markers in the
Redis call the hot path already makes: the rate limiter's Lua script
(:meth:`saas.limits.gcra.Plan.run`), which answers "revoked" without consuming anything. When
the limiter is off (or did not run for the request), :func:`check` sends one ``EXISTS``.
:func:`check` runs inside :func:`saas.auth.context.current_principal`, the one place every
authenticated view resolves its caller, so no in-process cache can hide a revocation.

**Redis unavailable.** The revocation state cannot be read: safe methods (``GET``, ``HEAD``,
``OPTIONS``) are served (fail open, like the rate limits; counted in
``revocation_fail_open_total``), any other method gets a 503 problem
``revocation_check_unavailable`` with ``Retry-After`` (fail closed; ``revocation_fail_closed_total``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
import weakref
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from flask import Flask, g, request
from sqlalchemy import event
from sqlalchemy.orm import Session

from saas.auth.tokens import FIRST_PARTY_CLIENT
from saas.cache.guard import RedisGuard, RedisUnavailable
from saas.cache.namespace import TenantKeys
from saas.errors import ErrorCode, ServiceUnavailable, Unauthorized
from saas.memo import Memo
from saas.services import services

log = logging.getLogger("saas.auth.revocation")

#: states of a request's credential (``g._revocation``)
CLEAR, REVOKED, UNKNOWN = "clear", "revoked", "unknown"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_INFO_KEY = "saas.revocations"
_LIVE: weakref.WeakSet[RevocationStore] = weakref.WeakSet()
_INSTALLED = False


class RevocationStore:
    """The markers on Redis, behind the shared circuit breaker.

    Args:
        guard: the Redis client behind the breaker (:mod:`saas.cache.guard`).
        token_lifetime: seconds an access token can be accepted after it was issued
            (``ACCESS_TOKEN_TTL`` + the verification leeway); a marker lives that long plus 1 s.
    """

    def __init__(self, guard: RedisGuard, token_lifetime: int) -> None:
        self.guard = guard
        self.token_lifetime = token_lifetime
        #: key -> unix time until which it must exist (markers Redis could not take yet)
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        guard.on_recover.append(self._flush_pending)
        _LIVE.add(self)

    def publish(self, markers: dict[str, float]) -> bool:
        """Write ``{key: expires_at}`` (unix seconds); markers already expired are skipped.
        Returns False (and keeps them for the recovery) when Redis is unavailable."""
        now = time.time()
        live = {key: until for key, until in markers.items() if until > now}
        if not live:
            return True

        # one pipeline per tenant on a cluster (its markers share the tenant's slot and node)
        groups = _by_tag(live) if self.guard.clustered else [live]
        failed: dict[str, float] = {}
        for group in groups:

            def write(r: Any, group: dict[str, float] = group) -> None:
                pipe = r.pipeline(transaction=False)
                for key, until in group.items():
                    pipe.set(key, b"1", ex=max(1, math.ceil(until - now)))
                pipe.execute()

            try:
                self.guard.call("revocation", write, key=next(iter(group)))
            except RedisUnavailable:
                failed.update(group)
        if not failed:
            return True
        log.error("revocation markers not written (redis unavailable); kept until it answers")
        with self._lock:
            for key, until in failed.items():
                if len(self._pending) < 100_000:
                    self._pending[key] = max(until, self._pending.get(key, 0.0))
        return False

    def any_exists(self, keys: tuple[str, ...]) -> bool:
        """Whether one of ``keys`` exists (one ``EXISTS``).

        Raises:
            RedisUnavailable: Redis failed or the breaker is open.
        """
        return bool(self.guard.call("revocation", lambda r: r.exists(*keys), key=keys[0]))

    def _flush_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if pending:
            self.publish(pending)


def _by_tag(markers: dict[str, float]) -> list[dict[str, float]]:
    """``markers`` grouped by their ``{t:<tenant>}`` hash tag."""
    groups: dict[str, dict[str, float]] = {}
    for key, until in markers.items():
        groups.setdefault(key.partition("}")[0], {})[key] = until
    return list(groups.values())


def init_app(app: Flask) -> None:
    """The ORM hooks that publish revocations (the store is ``services().revocations``)."""
    install_hooks()


# --- writing -------------------------------------------------------------------------------------


def _note(session: Session, key: str, until: float) -> None:
    pending: dict[str, float] = session.info.setdefault(_INFO_KEY, {})
    pending[key] = max(until, pending.get(key, 0.0))


def _lifetime() -> int:
    for store in _LIVE:
        return store.token_lifetime
    return 0


def revoke_sessions(
    session: Session, sessions: Iterable[tuple[uuid.UUID, uuid.UUID, datetime | None]]
) -> None:
    """Mark sessions revoked once ``session`` commits.

    Args:
        sessions: ``(tenant_id, session id, issued_at)``: the session id is the ``sid`` claim
            (refresh-token family id); ``issued_at`` the newest token of the session (its access
            tokens were issued with it), None for now. Sessions whose newest token is older
            than an access token's lifetime are skipped: no access token of theirs is left.
    """
    lifetime = _lifetime()
    now = time.time()
    for tenant_id, session_id, issued_at in sessions:
        issued = now if issued_at is None else issued_at.timestamp()
        until = issued + lifetime + 1
        if until > now:
            _note(session, TenantKeys(tenant_id).revoked_session(str(session_id)), until)


def revoke_client(session: Session, tenant_id: uuid.UUID, client_id: str) -> None:
    """Mark the tenant's OAuth client deleted once ``session`` commits: its access tokens
    (``client_credentials`` ones included, which belong to no session) stop."""
    _note(session, TenantKeys(tenant_id).revoked_client(client_id), time.time() + _lifetime() + 1)


def revoke_api_key(session: Session, tenant_id: uuid.UUID, key_id: uuid.UUID) -> None:
    """Mark the tenant's API key revoked once ``session`` commits: every worker refuses it from
    the next request on, before its cached entry (``CACHE_LOCAL_TTL``) has expired."""
    _note(session, TenantKeys(tenant_id).revoked_api_key(str(key_id)), time.time() + _lifetime() + 1)


def install_hooks() -> None:
    """Register the session events once per process (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_soft_rollback", _after_rollback)
    _INSTALLED = True


def _after_commit(session: Session) -> None:
    markers = session.info.pop(_INFO_KEY, None)
    if markers:
        for store in list(_LIVE):
            store.publish(markers)


def _after_rollback(session: Session, previous_transaction: Any) -> None:
    if not session.in_transaction():
        session.info.pop(_INFO_KEY, None)


# --- checking ------------------------------------------------------------------------------------

#: (tenant, sid, client_id) -> the marker keys of such a token (a pure function of the key)
_KEYS: Memo[tuple[Any, Any, Any, Any], tuple[str, ...]] = Memo("auth.revocation_keys", maxsize=10_000)


def keys_for(principal: Any) -> tuple[str, ...]:
    """The marker keys that revoke ``principal``'s access token: its session's (``sid``), for a
    registered client the client's, and for an API key the key's."""
    claims = principal.claims
    api_key_id = getattr(principal, "api_key_id", None)
    memo = (principal.tenant_id, claims.get("sid"), principal.client_id, api_key_id)
    keys = _KEYS.get(memo)
    if keys is None:
        tenant_keys = TenantKeys(principal.tenant_id)
        out = []
        if memo[1]:
            out.append(tenant_keys.revoked_session(str(memo[1])))
        if memo[2] and memo[2] != FIRST_PARTY_CLIENT:
            out.append(tenant_keys.revoked_client(str(memo[2])))
        if memo[3]:  # an API key (saas.auth.api_keys): its own marker
            out.append(tenant_keys.revoked_api_key(str(memo[3])))
        keys = _KEYS.put(memo, tuple(out))
    return keys


def note(state: str) -> None:
    """Record the request's revocation state read elsewhere (the limiter's call)."""
    g._revocation = state


def refuse(principal: Any = None) -> Unauthorized:
    """The 401 of a revoked credential (RFC 6750 ``invalid_token``): an API key's says so, the
    same answer as its revoked row gives (:mod:`saas.auth.api_keys`), whichever is read first."""
    if getattr(principal, "api_key_id", None) is not None:
        return Unauthorized("This API key was revoked.")
    return Unauthorized("The access token's session has ended.", code=ErrorCode.SESSION_REVOKED)


def check(principal: Any) -> None:
    """Refuse a revoked credential; apply the failure policy when Redis cannot say.

    Raises:
        Unauthorized: 401 ``session_revoked`` (the session ended or the client was deleted).
        ServiceUnavailable: 503 ``revocation_check_unavailable`` for a non-safe method while
            the revocation state cannot be read.
    """
    state = g.get("_revocation")
    if state is None:
        keys = keys_for(principal)
        store = services().revocations
        if not keys or store is None:
            state = CLEAR
        else:
            try:
                state = REVOKED if store.any_exists(keys) else CLEAR
            except RedisUnavailable:
                state = UNKNOWN
        g._revocation = state
    if state == CLEAR:
        return
    if state == REVOKED:
        raise refuse(principal)
    counters = services().redis_guard.counters
    if request.method in SAFE_METHODS:
        counters.inc("revocation_fail_open_total")
        return
    counters.inc("revocation_fail_closed_total")
    guard = services().redis_guard
    raise ServiceUnavailable(
        "Session state is temporarily unavailable, so changes are refused; try again shortly.",
        code=ErrorCode.REVOCATION_CHECK_UNAVAILABLE,
        title="Session check unavailable",
        headers={"Retry-After": str(max(1, round(guard.breaker.cooldown)))},
    )
