"""Safe egress to a tenant's endpoint URL (docs/webhooks.md, "Egress").

The rules, on :mod:`saas.auth.outbound` (the SSRF guard the SSO fetches and back-channel logout
use; the OWASP SSRF Prevention Cheat Sheet's pattern):

- ``https`` only, unless ``WEBHOOKS_ALLOW_HTTP`` (development); no user-info, no fragment, at
  most 2048 characters;
- the host is resolved and every address it resolves to must be public
  (:func:`saas.auth.outbound.is_public`: no loopback, private, link-local, metadata such as
  169.254.169.254, shared or reserved range, nor an IPv6 address embedding one), checked when
  the endpoint is created or changed (:func:`check_url`, 422) and again at every attempt
  (:func:`post`), which connects to the address it checked (a second DNS answer cannot rebind
  it), TLS verified for the host name (SNI). ``WEBHOOKS_ALLOW_PRIVATE`` (development and tests)
  lifts the address rule only;
- no redirect is followed (a 3xx is a failed attempt), one timeout per socket operation
  (``WEBHOOKS_TIMEOUT``), and at most :data:`RESPONSE_CAP` bytes of the answer are read.
"""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from saas.auth import outbound

MAX_URL = 2048
#: how much of an answer is read and kept (the rest is never read)
RESPONSE_CAP = 1024
USER_AGENT = "saas-webhooks/1 (Standard Webhooks)"


class RefusedUrl(ValueError):
    """The URL cannot be an endpoint; ``str(err)`` says why, for a 422 on ``url``."""


def check_syntax(url: object, *, allow_http: bool) -> str:
    """``url`` stripped, if its form is acceptable (no resolution).

    Raises:
        RefusedUrl: not a string, too long, not https (or http when allowed), no host,
            user-info or a fragment, or a malformed port.
    """
    if not isinstance(url, str):
        raise RefusedUrl("Expected a URL.")
    url = url.strip()
    if not url or len(url) > MAX_URL:
        raise RefusedUrl(f"A URL of at most {MAX_URL} characters.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise RefusedUrl("Not a URL.") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        raise RefusedUrl("Use https." if not allow_http else "Use https or http.")
    if not parts.hostname:
        raise RefusedUrl("The URL has no host.")
    if "@" in parts.netloc:
        raise RefusedUrl("Credentials in the URL are not accepted.")
    if parts.fragment or "#" in url:
        raise RefusedUrl("The URL must not have a fragment.")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise RefusedUrl("The URL has spaces or control characters.")
    return url


def check_url(url: object, *, allow_http: bool, allow_private: bool) -> str:
    """:func:`check_syntax`, then the host resolved and (unless ``allow_private``) every
    address public.

    Raises:
        RefusedUrl: see :func:`check_syntax`; ``"The host name does not resolve."``;
            ``"The host resolves to a loopback, private, link-local or metadata address."``.
    """
    url = check_syntax(url, allow_http=allow_http)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        outbound.resolve(parts.hostname or "", port, public_only=not allow_private)
    except outbound.Unresolvable:
        raise RefusedUrl("The host name does not resolve.") from None
    except outbound.NotPublic:
        raise RefusedUrl(
            "The host resolves to a loopback, private, link-local or metadata address."
        ) from None
    return url


@dataclass(frozen=True, slots=True)
class Answer:
    """What one POST got: ``status`` None when no answer came (``error`` says why, never the
    address); ``body`` at most :data:`RESPONSE_CAP` bytes; ``latency_ms`` from connect to the
    answer's first bytes read."""

    status: int | None
    body: bytes
    latency_ms: int
    error: str | None = None


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_http: bool,
    allow_private: bool,
    timeout: float,
) -> Answer:
    """POST ``body`` to ``url`` once, by the rules above. Never raises for the destination's
    behaviour: a refused address, no answer or a timeout is an :class:`Answer` with ``error``."""
    start = time.perf_counter()

    def elapsed() -> int:
        return round((time.perf_counter() - start) * 1000)

    try:
        url = check_syntax(url, allow_http=allow_http)
    except RefusedUrl as exc:
        return Answer(None, b"", 0, f"refused: {exc}")
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        address = outbound.resolve(host, port, public_only=not allow_private)
    except (outbound.Unresolvable, outbound.NotPublic) as exc:
        return Answer(None, b"", elapsed(), f"refused: {exc}")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = outbound.PinnedHTTPSConnection(host, port, address, timeout)
    else:
        conn = outbound.PinnedHTTPConnection(host, port, address, timeout)
    try:
        conn.request("POST", outbound.request_target(parts), body=body, headers=headers)
        response = conn.getresponse()
        status = response.status
        data = response.read(RESPONSE_CAP)
    except TimeoutError:
        return Answer(None, b"", elapsed(), "timeout")
    except (OSError, http.client.HTTPException) as exc:  # the class only: no address or port
        return Answer(None, b"", elapsed(), f"no answer ({type(exc).__name__})")
    finally:
        conn.close()
    return Answer(status, data, elapsed())
