"""The contract between SSO protocols and the rest of single sign-on.

A protocol (``oidc``, ``saml``) validates a connection's configuration, sends the browser to its
IdP and, on the IdP's answer (its own callback route), turns a verified response into an
:class:`SsoIdentity` that :func:`saas.auth.sso.login.complete_login` signs in.

Between the redirect and the answer a :class:`LoginTransaction` lives in Redis for
``TRANSACTION_TTL`` seconds under a random ``state`` (OAuth 2.0 ``state``, RFC 6749 section
10.12; SAML ``RelayState``, SAML 2.0 Bindings section 3.4.3): single use, it holds the
connection, where to go afterwards and the protocol's own data (an OIDC ``nonce`` and PKCE
verifier, a SAML request id for ``InResponseTo``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from flask import Response

from saas.identity.models import SsoConnection
from saas.security import random_token
from saas.services import services

#: seconds a sign-in may take at the IdP before its transaction expires
TRANSACTION_TTL = 600


@dataclass(frozen=True)
class SsoIdentity:
    """Who the IdP says signed in, after the protocol verified its answer.

    Attributes:
        subject: the IdP's stable id of the user (OIDC ``sub``; SAML ``NameID``), at most 512 chars.
        email: the address the IdP asserts (OIDC ``email``; SAML ``NameID`` in the
            ``emailAddress`` format or an ``email``/``mail`` attribute). Whether it counts as
            verified is decided by :mod:`saas.auth.sso.login` (only on the tenant's verified domains).
        name: a display name, when the IdP sends one.
        groups: the IdP's groups (OIDC ``groups`` claim; SAML ``groups``/``memberOf`` attribute),
            read by the connection's ``role_mapping``.
        attributes: every claim or attribute, as lists of strings, for ``role_mapping`` keys of
            the form ``"<attribute>=<value>"``.
        amr: how the IdP authenticated the user (OIDC ``amr``; SAML ``AuthnContextClassRef``),
            recorded on the session with ``sso`` added.
    """

    subject: str
    email: str
    name: str | None = None
    groups: tuple[str, ...] = ()
    attributes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    amr: tuple[str, ...] = ()


class SsoProtocol(Protocol):
    """What a protocol provides (registered with :func:`register_protocol`)."""

    #: ``oidc`` or ``saml``: the connection's ``type``
    type: str

    def validate_config(
        self, payload: Mapping[str, Any], connection: SsoConnection | None
    ) -> tuple[dict[str, Any], str | None]:
        """Check the protocol part of a create (``connection`` None) or update request body and
        return ``(config, secret)``: the public ``SsoConnection.config`` to store and the secret
        to seal (None: keep the current one). May fetch (OIDC discovery, SAML metadata URL).

        Raises:
            saas.errors.ValidationError: a field is missing or malformed (422, per field).
            saas.errors.AppError: the IdP's metadata or discovery document is unusable
                (422 ``sso_metadata_invalid``), or unreachable (502 ``sso_provider_unreachable``).
        """
        ...

    def public_config(self, connection: SsoConnection) -> dict[str, Any]:
        """The configuration as the API shows it (never the secret), including what the tenant
        admin gives the IdP (an OIDC redirect URI; SAML SP entity id, ACS URL, metadata URL)."""
        ...

    def begin(self, connection: SsoConnection, transaction: LoginTransaction) -> Response:
        """The response sending the browser to the IdP (a redirect, or an auto-submitted form for
        SAML HTTP-POST); it may add protocol data to ``transaction.data`` before it is saved."""
        ...


_PROTOCOLS: dict[str, SsoProtocol] = {}


def register_protocol(protocol: SsoProtocol) -> None:
    """Make ``protocol`` the one of its ``type`` (each protocol module registers itself on import)."""
    _PROTOCOLS[protocol.type] = protocol


def protocol_for(type_: str) -> SsoProtocol:
    """The protocol of a connection type.

    Raises:
        KeyError: no such protocol.
    """
    return _PROTOCOLS[type_]


def protocol_types() -> tuple[str, ...]:
    return tuple(sorted(_PROTOCOLS))


@dataclass
class LoginTransaction:
    """One SSO sign-in between the redirect to the IdP and its answer (see the module's doc)."""

    state: str
    connection_id: uuid.UUID
    tenant_id: uuid.UUID
    #: where the browser goes once signed in (a path of this service: the pending authorization)
    next_url: str
    login_hint: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "connection_id": str(self.connection_id),
                "tenant_id": str(self.tenant_id),
                "next_url": self.next_url,
                "login_hint": self.login_hint,
                "data": self.data,
            }
        )


def _key(state: str) -> str:
    return "sso:tx:" + state


def new_transaction(
    connection: SsoConnection, next_url: str, login_hint: str | None = None
) -> LoginTransaction:
    """A transaction with a fresh 256-bit ``state`` (not yet saved: :func:`save_transaction`)."""
    return LoginTransaction(random_token(32), connection.id, connection.tenant_id, next_url, login_hint)


def save_transaction(transaction: LoginTransaction) -> None:
    """Store ``transaction`` for ``TRANSACTION_TTL`` seconds.

    Raises:
        saas.cache.guard.RedisUnavailable: Redis cannot be reached (the sign-in cannot start).
    """
    key = _key(transaction.state)
    payload = transaction.to_json()
    services().redis_guard.call("sso", lambda r: r.set(key, payload, ex=TRANSACTION_TTL), key=key)


def take_transaction(state: str | None) -> LoginTransaction | None:
    """The transaction of ``state``, removed in the same command (single use: ``GETDEL``); None
    when unknown, used or expired."""
    if not state or len(state) > 128:
        return None
    key = _key(state)
    raw = services().redis_guard.call("sso", lambda r: r.getdel(key), key=key)
    if raw is None:
        return None
    data = json.loads(raw)
    return LoginTransaction(
        state,
        uuid.UUID(data["connection_id"]),
        uuid.UUID(data["tenant_id"]),
        data["next_url"],
        data.get("login_hint"),
        data.get("data") or {},
    )
