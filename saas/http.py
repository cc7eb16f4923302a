"""Header lookups without werkzeug's exception path.

werkzeug's ``Headers`` answer ``in``, ``get`` and ``setdefault`` for an absent header by raising
and catching a ``BadRequestKeyError`` (an ``HTTPException``, with its description and
traceback): on the request path, where most optional headers are absent, that costs more than
the lookup itself. These helpers give the same answers by scanning, and the request side reads
the WSGI environ (PEP 3333: ``HTTP_`` + the name upper-cased, ``-`` as ``_``).
"""

from __future__ import annotations

import ipaddress

from flask import request
from werkzeug.datastructures import Headers


def has_header(headers: Headers, name: str) -> bool:
    """Whether ``headers`` holds ``name`` (case-insensitive)."""
    name = name.lower()
    return any(key.lower() == name for key, _ in headers)


def set_default_header(headers: Headers, name: str, value: str) -> None:
    """Set ``name`` to ``value`` unless it is there already (``Headers.setdefault``)."""
    if not has_header(headers, name):
        headers.add(name, value)


def request_header(name: str, default: str = "") -> str:
    """The current request's header ``name`` (the first one), or ``default``."""
    key = "HTTP_" + name.upper().replace("-", "_")
    if key == "HTTP_CONTENT_TYPE" or key == "HTTP_CONTENT_LENGTH":
        key = key[5:]  # the two headers PEP 3333 keeps without the prefix
    return request.environ.get(key, default)


def client_ip(remote_addr: str | None) -> str:
    """The rate-limit subject of an address: IPv4 as is, IPv6 as its /64 network."""
    if not remote_addr:
        return "unknown"
    try:
        addr = ipaddress.ip_address(remote_addr)
    except ValueError:
        return "invalid"
    if addr.version == 6:
        if addr.ipv4_mapped:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False).network_address) + "/64"
    return str(addr)
