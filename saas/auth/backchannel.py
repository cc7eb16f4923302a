"""OpenID Connect Back-Channel Logout 1.0: tell each client that received tokens in a session
that the session ended.

* :func:`validate_logout_uri`: what a client may register as ``backchannel_logout_uri``
  (section 2.2: an absolute URI without a fragment; here ``https``, or ``http`` on a loopback
  address in ``development`` and ``test``).
* :func:`notify`: called by the lowest functions that end sessions
  (:func:`saas.auth.sessions.revoke_tokens` for refresh families,
  :func:`saas.auth.browser_sessions.end` / ``end_for_user`` for hosted sign-ins) with what ended;
  for every (client, session) whose client registered a ``backchannel_logout_uri`` it enqueues
  one ``oidc.backchannel_logout`` outbox message in the same transaction (once per transaction).
* :func:`logout_token`: the logout token (section 2.4), signed at delivery time so its short
  ``exp`` counts from the attempt, not from the enqueue.
* :func:`deliver`: the HTTP POST of section 2.5 (form-encoded ``logout_token``), no redirects
  followed, a short timeout, and outside ``development``/``test`` no private, loopback or
  link-local destination (SSRF).

The worker's handler (:mod:`saas.worker.backchannel`) records every attempt as a
:class:`saas.auth.models.BackchannelLogoutAttempt` and retries through the outbox's backoff.
"""

from __future__ import annotations

import http.client
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from joserfc import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from saas import outbox
from saas.auth import outbound
from saas.auth.keys import KeyStore
from saas.auth.models import OAuthClient

TOPIC = "oidc.backchannel_logout"
#: the ``events`` member of a logout token (section 2.4)
EVENT = "http://schemas.openid.net/event/backchannel-logout"
#: a logout token's lifetime, seconds (section 2.4 recommends a short one; 2 minutes)
TOKEN_TTL = 120
#: the delivery's connect and read timeout, seconds
TIMEOUT = 5.0
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
#: ``session.info`` key: the (client_id, sid) pairs already enqueued in this transaction
_SENT = "saas.backchannel_logout.sent"


@dataclass(frozen=True)
class EndedSession:
    """A session that ended for one client: ``sid`` is the ``sid`` of the ID tokens the client
    got in it (the browser session's id for a code flow, else the refresh family's id)."""

    client_id: str
    user_id: uuid.UUID
    tenant_id: uuid.UUID | None
    sid: uuid.UUID


def validate_logout_uri(uri: str, env: str) -> str | None:
    """Why ``uri`` cannot be a ``backchannel_logout_uri`` (section 2.2), or None when it can."""
    if len(uri) > 2048:
        return "At most 2048 characters."
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "Not a URI."
    if parts.fragment or "#" in uri:
        return "A back-channel logout URI must not have a fragment."
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS and env in ("development", "test"):
        return None
    return "Use https (http on a loopback address only in development)."


def notify(session: Session, ended: Iterable[EndedSession]) -> int:
    """Enqueue a logout token for each ended (client, session) whose client registered a
    ``backchannel_logout_uri``, in ``session``'s transaction; a pair already enqueued in this
    transaction is skipped (ending a browser session also revokes its families). Returns how
    many messages were enqueued."""
    sent: set[tuple[str, str]] = session.info.setdefault(_SENT, set())
    todo: dict[tuple[str, str], EndedSession] = {}
    for item in ended:
        key = (item.client_id, str(item.sid))
        if key not in sent:
            todo.setdefault(key, item)
    if not todo:
        return 0
    client_ids = {client_id for client_id, _sid in todo}
    registered = set(
        session.scalars(
            select(OAuthClient.client_id).where(
                OAuthClient.client_id.in_(client_ids), OAuthClient.backchannel_logout_uri.is_not(None)
            )
        )
    )
    count = 0
    for key, item in todo.items():
        sent.add(key)
        if item.client_id not in registered:
            continue
        outbox.enqueue(
            session,
            TOPIC,
            {"client_id": item.client_id, "sub": str(item.user_id), "sid": str(item.sid)},
            tenant_id=item.tenant_id,
        )
        count += 1
    return count


def logout_token(keys: KeyStore, issuer: str, client_id: str, sub: str | None, sid: str | None) -> str:
    """A logout token (section 2.4): a JWT signed with the active key, header ``typ:
    logout+jwt``; claims ``iss``, ``aud`` (the client), ``iat``, ``exp`` (:data:`TOKEN_TTL`
    later), ``jti``, ``events`` (``{EVENT: {}}``), ``sub`` and ``sid``; never a ``nonce``
    (section 2.4 forbids it, so that a logout token cannot pass as an ID token)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": client_id,
        "iat": now,
        "exp": now + TOKEN_TTL,
        "jti": secrets.token_urlsafe(16),
        "events": {EVENT: {}},
    }
    if sub:
        claims["sub"] = sub
    if sid:
        claims["sid"] = sid
    key = keys.active
    return jwt.encode({"alg": key.alg, "kid": key.kid, "typ": "logout+jwt"}, claims, key.key)


class DeliveryError(Exception):
    """The client did not accept the logout token. ``status`` is its HTTP status (None when no
    answer came); ``permanent`` when retrying cannot help (a refused destination)."""

    def __init__(self, message: str, status: int | None = None, permanent: bool = False):
        super().__init__(message)
        self.status = status
        self.permanent = permanent


def deliver(uri: str, token: str, *, allow_private: bool, timeout: float = TIMEOUT) -> int:
    """POST ``logout_token=<token>`` (``application/x-www-form-urlencoded``, section 2.5) to
    ``uri``; returns the 2xx status. Redirects are not followed (a 3xx is a failure).
    ``allow_private`` False (outside development and test) takes ``https`` only and refuses
    destinations that resolve to non-public addresses, connecting to the address it checked.

    Raises:
        DeliveryError: a refused destination, no answer, or an answer other than 2xx.
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryError("not an http(s) URI", permanent=True)
    if not allow_private and parts.scheme != "https":
        raise DeliveryError("only https destinations outside development", permanent=True)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        conn = outbound.connection(parts, port, allow_private=allow_private, timeout=timeout)
    except outbound.Unresolvable as exc:  # retried: DNS may answer later
        raise DeliveryError(str(exc)) from None
    except outbound.NotPublic as exc:
        raise DeliveryError(str(exc), permanent=True) from None
    path = outbound.request_target(parts)
    body = urlencode({"logout_token": token})
    try:
        conn.request(
            "POST",
            path,
            body=body,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Cache-Control": "no-store",
                "User-Agent": "saas-backchannel-logout/1",
            },
        )
        response = conn.getresponse()
        response.read(65536)
        status = response.status
    except (OSError, http.client.HTTPException) as exc:  # the class only: no address or port
        raise DeliveryError(f"no answer ({type(exc).__name__})") from None
    finally:
        conn.close()
    if not 200 <= status < 300:
        raise DeliveryError(f"answered HTTP {status}", status=status)
    return status
