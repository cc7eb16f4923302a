"""Every error of the auth package, and the one mapping between the wire formats it answers in.

All of them are :class:`saas.errors.AppError`\\s (status, ``code``, title, detail, extra members,
headers) except the two of the authorization endpoint's front channel, which never answer JSON.
Where an error is raised decides how it is written:

===================================  ==================================================================
raised at                            written as
===================================  ==================================================================
``/api/...`` (login, MFA, step-up,   RFC 9457 ``application/problem+json`` by :mod:`saas.errors`'
clients, sessions)                   handler, like every API error
``/oauth/token``, ``/oauth/revoke``, RFC 6749 section 5.2 (and RFC 7009 section 2.2.1, RFC 7662
``/oauth/introspect``                section 2.3): :func:`oauth_response`, ``application/json`` with
                                     ``error`` and ``error_description`` beside the same problem
                                     members, ``Cache-Control: no-store``
Authlib's ``OAuth2Error`` inside     :func:`from_authlib` makes it an :class:`OAuthError`, then as
the authorization server             the row above (``saas.auth.oauth.server.Server``)
``/oauth/authorize``, a trusted      :class:`AuthorizeRedirectError`: a redirect to the client with
redirect URI                         ``error``, ``error_description``, ``state``, ``iss`` (RFC 6749
                                     section 4.1.2.1, RFC 9207)
``/oauth/authorize`` without one,    :class:`ErrorPage`: an HTML page, never a redirect (RFC 9700
the hosted pages                     section 4.11.2)
===================================  ==================================================================

The problem ``code`` is always the error's own; the OAuth ``error`` member is that code when it
is one of RFC 6749 section 5.2's (:data:`OAUTH_ERRORS`), else ``invalid_request``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Response

from saas.errors import AppError, ErrorCode, problem_response

if TYPE_CHECKING:
    from authlib.oauth2 import OAuth2Error

#: the ``error`` codes of RFC 6749 section 5.2 (the token endpoint's, shared by revocation and
#: introspection); any other problem code is sent as ``error: invalid_request``
OAUTH_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
    }
)


# --- the OAuth endpoints (RFC 6749 section 5.2) ---------------------------------------------------


class OAuthError(AppError):
    """An error of the token, revocation or introspection endpoint: ``code`` is its RFC 6749
    section 5.2 ``error``."""

    status, code, title = 400, ErrorCode.INVALID_REQUEST, "Invalid request"


class InvalidRequest(OAuthError):
    status, code, title = 400, ErrorCode.INVALID_REQUEST, "Invalid request"


class InvalidClient(OAuthError):
    """``invalid_client``: 401 with a Basic challenge (RFC 6749 section 5.2)."""

    status, code, title = 401, ErrorCode.INVALID_CLIENT, "Client authentication failed"

    def __init__(self, detail: str = "Client authentication failed.", **kw: Any):
        super().__init__(detail, **kw)
        self.headers.setdefault("WWW-Authenticate", 'Basic realm="oauth"')


class InvalidGrant(OAuthError):
    status, code, title = 400, ErrorCode.INVALID_GRANT, "Invalid grant"


class UnauthorizedClient(OAuthError):
    status, code, title = 400, ErrorCode.UNAUTHORIZED_CLIENT, "Unauthorized client"


class UnsupportedGrantType(OAuthError):
    status, code, title = 400, ErrorCode.UNSUPPORTED_GRANT_TYPE, "Unsupported grant type"


class InvalidScope(OAuthError):
    status, code, title = 400, ErrorCode.INVALID_SCOPE, "Invalid scope"


_BY_CODE: dict[str, type[OAuthError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        InvalidClient,
        InvalidGrant,
        UnauthorizedClient,
        UnsupportedGrantType,
        InvalidScope,
    )
}


def from_authlib(error: OAuth2Error) -> OAuthError:
    """Authlib's error as ours: its code and description; the title is the code in words
    (``invalid_grant`` -> "Invalid grant"); ``invalid_client`` is always 401 with the Basic
    challenge (Authlib answers 400 unless the client sent an ``Authorization`` header)."""
    title = error.error.replace("_", " ").capitalize()
    status = 401 if error.error == "invalid_client" else error.status_code
    cls = _BY_CODE.get(error.error, OAuthError)
    return cls(error.get_error_description() or title, status=status, code=error.error, title=title)


def oauth_response(err: AppError) -> Response:
    """``err`` as the OAuth endpoints answer it: an RFC 6749 section 5.2 body (``error``,
    ``error_description``) carrying the RFC 9457 problem members, as ``application/json``."""
    error = err.code if err.code in OAUTH_ERRORS else "invalid_request"
    response = problem_response(
        err.status,
        err.code,
        err.title,
        err.detail,
        {**err.extra, "error": error, "error_description": err.detail},
        err.headers,
    )
    response.mimetype = "application/json"
    response.headers["Cache-Control"] = "no-store"
    return response


# --- the authorization endpoint's front channel ---------------------------------------------------


class ErrorPage(Exception):
    """Shown to the browser as an HTML page (``auth/error.html``) with ``status``: the
    authorization request cannot be trusted enough to redirect (unknown client, unregistered
    redirect URI), or a hosted page cannot go on (expired form, no sign-in in progress)."""

    def __init__(self, title: str, detail: str, status: int = 400):
        super().__init__(detail)
        self.title, self.detail, self.status = title, detail, status


class AuthorizeRedirectError(Exception):
    """An error returned to the client at its (verified) redirect URI (RFC 6749 section 4.1.2.1)."""

    def __init__(self, redirect_uri: str, error: str, description: str, state: str | None):
        super().__init__(description)
        self.redirect_uri = redirect_uri
        self.error = error
        self.description = description
        self.state = state


# --- login, MFA, step-up (problems of the API) ----------------------------------------------------


class MfaRequired(AppError):
    """403 ``mfa_required``: the password was right; send ``mfa_token`` and a code to
    ``POST /api/v1/auth/mfa``."""

    status, code, title = 403, ErrorCode.MFA_REQUIRED, "Second factor required"


class MfaEnrollmentRequired(AppError):
    """403 ``mfa_enrollment_required``: the tenant requires MFA; enrol with ``mfa_token``."""

    status, code, title = 403, ErrorCode.MFA_ENROLLMENT_REQUIRED, "MFA enrolment required"


class MfaFailed(AppError):
    """A wrong, replayed or expired second factor (401, no ``WWW-Authenticate`` challenge)."""

    status, code, title = 401, ErrorCode.MFA_INVALID_CODE, "Invalid MFA code"

    def __init__(self, detail: str, **kw: Any):
        super().__init__(detail, **kw)
        # RFC 9110 section 15.5.2: a 401 carries a challenge
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="api"')


class MfaUnavailable(AppError):
    """Redis (where ``mfa_token`` lives) cannot be reached: 503, try again."""

    status, code, title = 503, ErrorCode.MFA_UNAVAILABLE, "MFA temporarily unavailable"


class MfaLocked(AppError):
    """Too many wrong codes: the factor is locked for a while (``Retry-After`` seconds)."""

    status, code, title = 403, ErrorCode.MFA_LOCKED, "MFA factor locked"


class InsufficientUserAuthentication(AppError):
    """RFC 9470 section 3: 401 with the ``insufficient_user_authentication`` challenge."""

    status, code, title = 401, ErrorCode.INSUFFICIENT_USER_AUTHENTICATION, "Recent authentication required"

    def __init__(self, detail: str, *, max_age: int, acr: str):
        super().__init__(detail, extra={"max_age": max_age, "acr_values": acr})
        self.headers["WWW-Authenticate"] = (
            f'Bearer error="insufficient_user_authentication", error_description="{detail}", '
            f'max_age={max_age}, acr_values="{acr}"'
        )
