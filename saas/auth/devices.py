"""New-device notices: the first sign-in from a device an account has not used mails its owner.

:func:`note_sign_in` is the one function every successful sign-in calls: the API's password
login and MFA step (:func:`saas.auth.service.complete_login`, which every API sign-in that
yields tokens goes through) and the hosted pages' sign-in (``saas.auth.hosted._sign_in``).

What a device is:

* a browser on the hosted pages: a random 256-bit identifier in the ``saas_device`` cookie
  (HttpOnly, ``SameSite=Lax``, ``Secure`` under an ``https`` issuer, path ``/oauth``, one year),
  set at the browser's first sign-in;
* an API client: its ``User-Agent`` and its network (the /24 of an IPv4 address, the /48 of an
  IPv6 one), so the same app on the same network is one device, and a new address range or a
  new client is another.

Only a keyed hash of that identifier is stored (:class:`saas.auth.models.KnownDevice`,
``device_hash`` = HMAC-SHA256 under a key derived from ``SECRET_KEY`` with HKDF, RFC 5869), so
the table holds no cookie an attacker could replay.

The first device an account ever signs in from is recorded without a mail: the sign-in right
after signup (or after accepting an invitation, or the first one after this feature was
deployed) is the owner's own, and there is no earlier device to tell apart. Every later new
device mails the owner (outbox ``mail.security``, event ``new_sign_in``: the time in UTC, the IP
address and the user agent) and is audited ``auth.new_device`` in every tenant of the account.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import uuid
from datetime import datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import after_this_request, current_app, has_request_context, request
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from saas import outbox
from saas.audit import Actor, AuditAction, RequestMeta
from saas.auth.accounts import audit_account_event
from saas.auth.models import KnownDevice
from saas.db import utcnow
from saas.identity.models import User

#: the hosted pages' device cookie: a random identifier, never the device hash
COOKIE = "saas_device"
COOKIE_MAX_AGE = 365 * 24 * 3600
_COOKIE_VALUE = re.compile(r"^[A-Za-z0-9_-]{43}$")


def device_key(secret_key: str | bytes | None = None) -> bytes:
    """The 256-bit HMAC key of device hashes: HKDF-SHA256 (RFC 5869) of ``SECRET_KEY`` with its
    own ``info``, so it is no other key of the app."""
    secret = current_app.config["SECRET_KEY"] if secret_key is None else secret_key
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"saas known devices v1").derive(
        secret.encode() if isinstance(secret, str) else secret
    )


def network_of(ip: str | None) -> str:
    """The coarse network of an address: its /24 (IPv4) or /48 (IPv6); ``""`` when unknown."""
    if not ip:
        return ""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def device_hash(identifier: str, key: bytes | None = None) -> str:
    """HMAC-SHA256 (hex) of a device identifier under :func:`device_key`."""
    return hmac.new(key or device_key(), identifier.encode(), hashlib.sha256).hexdigest()


def _browser_identifier() -> str:
    """The browser's device cookie; a new one (set on this response) when it has none."""
    value = request.cookies.get(COOKIE, "")
    if not _COOKIE_VALUE.match(value):
        value = secrets.token_urlsafe(32)

        @after_this_request
        def _set(response):
            response.set_cookie(
                COOKIE,
                value,
                max_age=COOKIE_MAX_AGE,
                httponly=True,
                samesite="Lax",
                secure=current_app.config.get("SESSION_COOKIE_SECURE", False),
                path="/oauth",
            )
            return response

    return "browser:" + value


def _api_identifier(meta: RequestMeta) -> str:
    return f"api:{meta.user_agent or ''}|{network_of(meta.ip)}"


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def note_sign_in(session: Session, user_id: uuid.UUID, *, browser: bool = False) -> bool:
    """Record a successful sign-in's device; mail the owner and audit ``auth.new_device`` when
    the account has signed in before but never from this device. Returns whether it was new
    (and mailed). Outside a request it does nothing (an operator's or a job's session).

    ``browser``: the sign-in is a hosted page's (the device is its cookie), else an API call's
    (its user agent and network)."""
    if not has_request_context():
        return False
    meta = RequestMeta.current() or RequestMeta()
    digest = device_hash(_browser_identifier() if browser else _api_identifier(meta))
    now = utcnow()
    row = session.scalars(
        select(KnownDevice).where(KnownDevice.user_id == user_id, KnownDevice.device_hash == digest)
    ).first()
    if row is not None:
        row.last_seen_at, row.ip, row.user_agent = now, meta.ip, meta.user_agent
        return False
    known = session.scalars(select(KnownDevice.id).where(KnownDevice.user_id == user_id).limit(1))
    first = known.first() is None
    inserted = session.execute(
        insert(KnownDevice)
        .values(
            id=uuid.uuid4(),
            user_id=user_id,
            device_hash=digest,
            first_seen_at=now,
            last_seen_at=now,
            ip=meta.ip,
            user_agent=meta.user_agent,
        )
        .on_conflict_do_nothing(index_elements=["user_id", "device_hash"])
        .returning(KnownDevice.id)
    ).first()
    if inserted is None or first:  # a concurrent sign-in of the same device, or the first device
        return False
    user = session.get(User, user_id)
    if user is None:
        return False
    details = (
        f"When: {_when(now)}\nFrom: {meta.ip or 'an unknown address'}\nDevice: {meta.user_agent or 'unknown'}"
    )
    outbox.enqueue(session, "mail.security", {"to": user.email, "event": "new_sign_in", "details": details})
    audit_account_event(
        session,
        user_id,
        AuditAction.AUTH_NEW_DEVICE,
        {"ip": meta.ip, "user_agent": meta.user_agent, "browser": browser},
        actor=Actor("user", str(user_id)),
    )
    return True
