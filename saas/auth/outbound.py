"""Outbound HTTP to a URL a tenant gave, without becoming an SSRF proxy.

One connection to ``host:port``: outside development (``allow_private`` False) every address
the host resolves to must be public (``ipaddress.is_global``: no loopback, private,
link-local such as the cloud metadata address 169.254.169.254, or reserved ranges), the
connection then goes to the address that was checked (a second DNS answer cannot rebind it)
over HTTPS whose certificate must name the host (SNI and hostname verification against the
host, not the address). The pattern is the OWASP SSRF Prevention Cheat Sheet's: allow-list the
scheme, resolve and check, pin the address, no redirects (the callers follow none).

Users: :func:`saas.auth.sso.fetch.fetch_document` (an IdP's metadata URL) and
:func:`saas.auth.backchannel.deliver` (a client's back-channel logout URI). Each checks the
URL's scheme itself and maps :class:`Unresolvable` and :class:`NotPublic` to its own errors.
Messages name neither the addresses nor the port: callers store and audit them where a
tenant's admins read them.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from urllib.parse import SplitResult


class Unresolvable(Exception):
    """The host name does not resolve (may be temporary)."""


class NotPublic(Exception):
    """The host resolves to a non-public address (the destination is refused)."""


#: IPv6 prefixes that carry an IPv4 address a gateway may forward to: NAT64 (RFC 6052, RFC 8215)
#: and 6to4 (RFC 3056); the embedded address must be public too
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``address`` is a public destination: ``is_global`` (no loopback, private,
    link-local such as the metadata address 169.254.169.254, shared, reserved or multicast range), and for
    an IPv6 address carrying an IPv4 one (mapped ``::ffff:a.b.c.d``, NAT64, 6to4) that one too."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped
        if embedded is None and any(address in net for net in _NAT64):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is None and address in _SIX_TO_FOUR:
            embedded = address.sixtofour
        if embedded is not None and not is_public(embedded):
            return False
    return address.is_global and not address.is_multicast  # multicast counts as global


def resolve(host: str, port: int, *, public_only: bool = True) -> str:
    """The address to connect to for ``host``: the first it resolves to; with ``public_only``
    every address it resolves to must be public (:func:`is_public`).

    Raises:
        Unresolvable: ``"the host name does not resolve"``.
        NotPublic: ``"the host resolves to a non-public address"``.
    """
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise Unresolvable("the host name does not resolve") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise Unresolvable("the host name does not resolve")
    if public_only and not all(is_public(address) for address in addresses):
        raise NotPublic("the host resolves to a non-public address")
    return str(addresses[0])


def public_address(host: str, port: int) -> str:
    """The address to connect to for ``host``: the first it resolves to, all of them public.

    Raises:
        Unresolvable: ``"the host name does not resolve"``.
        NotPublic: ``"the host resolves to a non-public address"``.
    """
    return resolve(host, port, public_only=True)


class PinnedHTTPConnection(http.client.HTTPConnection):
    """A plain HTTP connection to ``address`` (checked), the ``Host`` header still ``host``."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to ``address`` (checked) whose certificate must name ``host``."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def connection(
    parts: SplitResult, port: int, *, allow_private: bool, timeout: float
) -> http.client.HTTPConnection:
    """A connection (not yet open) for the ``http``/``https`` URL ``parts`` on ``port``: pinned
    HTTPS to a checked public address unless ``allow_private`` (then plain HTTP(S) to the host,
    the certificate still verified for ``https``). The caller has refused other schemes, and
    ``http`` unless ``allow_private``.

    Raises:
        Unresolvable, NotPublic: see :func:`public_address` (only when not ``allow_private``).
    """
    host = parts.hostname or ""
    if not allow_private:
        return PinnedHTTPSConnection(host, port, public_address(host, port), timeout)
    if parts.scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context())
    return http.client.HTTPConnection(host, port, timeout=timeout)


def request_target(parts: SplitResult) -> str:
    """The request line's target of ``parts``: its path (``/`` when empty) and query."""
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
