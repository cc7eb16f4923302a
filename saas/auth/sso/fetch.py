"""Fetching an IdP's document (a SAML metadata URL) without becoming an SSRF proxy.

:func:`fetch_document` GETs one URL: ``https`` only, every address the host resolves to public
(``ipaddress.is_global``: no loopback, private, link-local such as the cloud metadata address
169.254.169.254, or reserved ranges), the connection then made to the address that was checked
(a second DNS answer cannot rebind it), the certificate checked against the host name, no
redirects followed, a timeout, and a size cap. ``allow_private`` (the setting
``SSO_ALLOW_PRIVATE_URLS``, for development and tests) lifts the scheme and address rules.
The address check and the pinned connection are :mod:`saas.auth.outbound`'s, shared with
:func:`saas.auth.backchannel.deliver` (OWASP SSRF Prevention Cheat Sheet: allow-list the
scheme, resolve and check, pin the address, no redirects).
"""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

from saas.auth import outbound

#: seconds one fetch may take to connect and to answer
TIMEOUT = 5.0
#: the largest document read, in bytes
MAX_BYTES = 1024 * 1024


class FetchRefused(Exception):
    """The URL may not be fetched (a scheme or address the rules refuse): the caller's input is wrong."""


class FetchFailed(Exception):
    """The URL was allowed but gave no usable answer (no answer, not 200, too large)."""


def fetch_document(
    url: str, *, allow_private: bool, accept: str, timeout: float = TIMEOUT, max_bytes: int = MAX_BYTES
) -> bytes:
    """The body of a ``GET`` of ``url`` (status 200 only).

    Raises:
        FetchRefused: not an http(s) URL with a host; ``http`` or a non-public address while
            ``allow_private`` is False.
        FetchFailed: no answer within ``timeout``, a status other than 200 (a redirect
            included), or a body larger than ``max_bytes``. Messages name neither addresses nor
            ports.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise FetchRefused("not an http(s) URL with a host (and no credentials)")
    if not allow_private and parts.scheme != "https":
        raise FetchRefused("only https URLs are fetched")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise FetchRefused("the port is not a number") from None
    try:
        conn = outbound.connection(parts, port, allow_private=allow_private, timeout=timeout)
    except outbound.Unresolvable as exc:
        raise FetchFailed(str(exc)) from None
    except outbound.NotPublic as exc:
        raise FetchRefused(str(exc)) from None
    path = outbound.request_target(parts)
    try:
        conn.request("GET", path, headers={"Accept": accept, "User-Agent": "saas-sso/1"})
        response = conn.getresponse()
        if response.status != 200:
            raise FetchFailed(f"answered HTTP {response.status} (redirects are not followed)")
        body = response.read(max_bytes + 1)
    except (OSError, http.client.HTTPException) as exc:  # the class only: no address or port
        raise FetchFailed(f"no answer ({type(exc).__name__})") from None
    finally:
        conn.close()
    if len(body) > max_bytes:
        raise FetchFailed(f"the document is larger than {max_bytes} bytes")
    return body
