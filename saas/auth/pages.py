"""What every hosted HTML page of this service sends (docs/auth.md, "Hosted pages"): the login,
account and logout pages, and the SSO protocols' pages (their callbacks, error pages and the SAML
HTTP-POST form). A leaf module, so each of those blueprints uses it without importing another.
"""

from __future__ import annotations

from flask import Response, render_template

#: scripts and requests to this origin only (the passkey script is a file, never inline); no
#: framing (RFC 9700 section 4.16, clickjacking)
CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; frame-ancestors 'none'"
)


def security_headers(response: Response) -> Response:
    """``after_request`` of every blueprint of hosted pages: :data:`CSP` (unless the view set a
    stricter one of its own, as the SAML HTTP-POST form does), no framing, no caching, no
    ``Referer`` (a page's URL may carry a token)."""
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def error_page(title: str, detail: str, status: int = 400) -> Response:
    """A hosted error page (``auth/error.html``) with :func:`security_headers`."""
    page = render_template("auth/error.html", title=title, detail=detail, error=None)
    return security_headers(Response(page, status, mimetype="text/html"))
