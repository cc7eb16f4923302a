"""One error hierarchy, rendered as RFC 9457 ``application/problem+json`` in one place.

A view or service raises an :class:`AppError` subclass; :func:`init_app` turns it (and every
Werkzeug HTTP error, validation error and unexpected exception) into a problem document::

    {"type": "https://errors.saas.dev/<code>", "title": "...", "status": 404,
     "detail": "...", "code": "not_found", "instance": "/api/v1/...", "request_id": "..."}

Extra members (``errors`` for 422, ``mfa_token``...) are added with ``extra``. A 5xx never
carries internals: its detail is generic and the request id lets operators find the log line.

Every ``code`` is a member of :class:`ErrorCode`, the one registry of the API's error codes: a
code is part of the public contract (clients branch on it), so it is declared once, with one
meaning and one status, and an :class:`AppError` with an unregistered code fails at import.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from flask import Flask, Response, g, json, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger("saas.errors")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://errors.saas.dev/"


class ErrorCode(StrEnum):
    """The API's error codes: the ``code`` member of a problem document and its ``type`` URI's
    tail (RFC 9457 section 3.1.1). A member compares equal to its string, so clients and tests
    that match on ``"not_found"`` keep working."""

    # generic HTTP errors (status in the name); the fallback for a status without its own code
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    PAYMENT_REQUIRED = "payment_required"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_ACCEPTABLE = "not_acceptable"
    CONFLICT = "conflict"
    PRECONDITION_FAILED = "precondition_failed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    VALIDATION_ERROR = "validation_error"
    PRECONDITION_REQUIRED = "precondition_required"
    RATE_LIMITED = "rate_limited"
    INTERNAL_ERROR = "internal_error"
    SERVICE_UNAVAILABLE = "service_unavailable"
    HTTP_ERROR = "http_error"
    CONCURRENT_UPDATE = "concurrent_update"  # 409: changed by another request meanwhile; retry
    INVALID_CURSOR = "invalid_cursor"  # 400: a list cursor that is not one of ours (saas.pagination)
    # sign-in, tokens and sessions (docs/auth.md)
    INVALID_CREDENTIALS = "invalid_credentials"  # 401
    SIGN_IN_REQUIRED = "sign_in_required"  # 401
    SESSION_REVOKED = "session_revoked"  # 401
    REVOCATION_CHECK_UNAVAILABLE = "revocation_check_unavailable"  # 503
    INSUFFICIENT_SCOPE = "insufficient_scope"  # 403, RFC 6750 section 3.1
    INSUFFICIENT_USER_AUTHENTICATION = "insufficient_user_authentication"  # 401, RFC 9470
    WRONG_ACCOUNT = "wrong_account"  # 403: signed in as someone else than the link names
    PERMISSION_DENIED = "permission_denied"  # 403: the role lacks the permission
    # OAuth 2.x error codes also used as problem codes (RFC 6749 section 5.2)
    INVALID_REQUEST = "invalid_request"
    INVALID_CLIENT = "invalid_client"
    INVALID_GRANT = "invalid_grant"
    UNAUTHORIZED_CLIENT = "unauthorized_client"
    UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
    INVALID_SCOPE = "invalid_scope"
    # ... and the rest that Authlib raises at the OAuth and OpenID Connect endpoints (RFC 6749
    # sections 4.1.2.1 and 5.2, RFC 6750 section 3.1, RFC 7009 section 2.2.1, OpenID Connect
    # Core section 3.1.2.6), passed through as the problem's code
    ACCESS_DENIED = "access_denied"
    UNSUPPORTED_RESPONSE_TYPE = "unsupported_response_type"
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - an error code
    UNSUPPORTED_TOKEN_TYPE = "unsupported_token_type"  # noqa: S105 - an error code
    INVALID_REDIRECT_URI = "invalid_redirect_uri"
    INSECURE_TRANSPORT = "insecure_transport"
    MISMATCHING_STATE = "mismatching_state"
    MISSING_AUTHORIZATION = "missing_authorization"
    LOGIN_REQUIRED = "login_required"
    CONSENT_REQUIRED = "consent_required"
    INTERACTION_REQUIRED = "interaction_required"
    ACCOUNT_SELECTION_REQUIRED = "account_selection_required"
    INVALID_REQUEST_URI = "invalid_request_uri"
    INVALID_REQUEST_OBJECT = "invalid_request_object"
    REQUEST_NOT_SUPPORTED = "request_not_supported"
    REQUEST_URI_NOT_SUPPORTED = "request_uri_not_supported"
    PUBLIC_CLIENT = "public_client"  # 409: the operation needs a confidential client
    # multi-factor authentication
    MFA_REQUIRED = "mfa_required"  # 403: answer with the mfa_token
    MFA_ENROLLMENT_REQUIRED = "mfa_enrollment_required"  # 403: the tenant requires MFA
    INVALID_MFA_TOKEN = "invalid_mfa_token"  # noqa: S105 - 401, not a secret
    MFA_INVALID_CODE = "mfa_invalid_code"  # 401
    MFA_LOCKED = "mfa_locked"  # 403
    MFA_UNAVAILABLE = "mfa_unavailable"  # 503: the MFA token store is down
    MFA_ALREADY_ENABLED = "mfa_already_enabled"  # 409
    MFA_NOT_ENABLED = "mfa_not_enabled"  # 404
    MFA_NOT_PENDING = "mfa_not_pending"  # 409
    # the identity lifecycle: passwords, emails, passkeys, self-service (docs/auth.md)
    INVALID_RESET_TOKEN = "invalid_reset_token"  # noqa: S105 - 400: unknown, expired, used or voided
    INVALID_VERIFICATION_TOKEN = "invalid_verification_token"  # noqa: S105 - 400: same, for an email link
    EMAIL_UNVERIFIED = "email_unverified"  # 403: the action needs a verified email
    EMAIL_ALREADY_VERIFIED = "email_already_verified"  # 409
    WEBAUTHN_CHALLENGE_INVALID = "webauthn_challenge_invalid"  # 400: unknown, expired or used
    WEBAUTHN_REGISTRATION_FAILED = "webauthn_registration_failed"  # 400: the attestation did not verify
    WEBAUTHN_FAILED = "webauthn_failed"  # 401: the assertion did not verify, or no such credential
    WEBAUTHN_CREDENTIAL_EXISTS = "webauthn_credential_exists"  # 409: already registered
    MEMBER_OF_OTHER_TENANTS = "member_of_other_tenants"  # 409: an account-wide change one tenant may not make
    # impersonation for support (docs/auth.md, "Impersonation for support")
    IMPERSONATION_FORBIDDEN = "impersonation_forbidden"  # 403: not with an impersonation token
    IMPERSONATION_DISABLED = "impersonation_disabled"  # 401: the tenant no longer allows impersonation
    # tenants and their lifecycle (docs/operations.md)
    TENANT_NOT_FOUND = "tenant_not_found"  # 404
    TENANT_SUSPENDED = "tenant_suspended"  # 403: a request on behalf of a suspended tenant
    TENANT_ALREADY_SUSPENDED = "tenant_already_suspended"  # 409: suspend of a suspended tenant
    TENANT_ACTIVE = "tenant_active"  # 409: the operation needs a suspended or deleted tenant
    TENANT_DELETED = "tenant_deleted"  # 409
    SLUG_TAKEN = "slug_taken"  # 409
    SLUG_UNCHANGED = "slug_unchanged"  # 409
    EMAIL_TAKEN = "email_taken"  # 409
    # memberships and invitations
    ALREADY_MEMBER = "already_member"  # 409
    NOT_A_MEMBER = "not_a_member"  # 403
    LAST_OWNER = "last_owner"  # 409: a tenant keeps one owner
    ROLE_NOT_ASSIGNABLE = "role_not_assignable"  # 403
    # custom roles (saas.tenancy.roles; docs/auth.md, "Custom roles")
    ROLE_READ_ONLY = "role_read_only"  # 403: a built-in role cannot be changed or deleted
    ROLE_NAME_TAKEN = "role_name_taken"  # 409: the tenant has a role of that name
    ROLE_IN_USE = "role_in_use"  # 409: members hold it; delete it with ?replacement=<role>
    PERMISSION_NOT_HELD = "permission_not_held"  # 403: a role with a permission the actor lacks
    MEMBER_SUSPENDED = "member_suspended"  # 403: a directory (SCIM) deactivated the membership
    ACCOUNT_NOT_LINKABLE = "account_not_linkable"  # 409: a directory off its verified domains met an account
    INVALID_INVITATION = "invalid_invitation"  # 404
    # limits and billing (docs/limits.md, docs/billing.md)
    QUOTA_EXCEEDED = "quota_exceeded"  # 429
    RATE_LIMIT_UNAVAILABLE = "rate_limit_unavailable"  # 503
    SEATS_EXCEEDED = "seats_exceeded"  # 402
    SUBSCRIPTION_EXISTS = "subscription_exists"  # 409
    CHECKOUT_INCOMPLETE = "checkout_incomplete"  # 409
    STRIPE_CUSTOMER_IN_USE = "stripe_customer_in_use"  # 409
    WEBHOOK_PROCESSING_FAILED = "webhook_processing_failed"  # 500: Stripe retries
    INVALID_SIGNATURE = "invalid_signature"  # 400: a webhook whose signature does not verify
    BILLING_NOT_CONFIGURED = "billing_not_configured"  # 503: no STRIPE_SECRET_KEY
    STRIPE_UNAVAILABLE = "stripe_unavailable"  # 503: Stripe's API failed or timed out
    ENTITLEMENT_REQUIRED = "entitlement_required"  # 402: the tenant's plan lacks the feature
    # verified domains (docs/auth.md, "Verified domains")
    DOMAIN_ALREADY_CLAIMED = "domain_already_claimed"  # 409: this tenant has claimed it already
    DOMAIN_TAKEN = "domain_taken"  # 409: another tenant has verified it
    DOMAIN_NOT_VERIFIED = "domain_not_verified"  # 422: the TXT record is missing or wrong
    DNS_UNAVAILABLE = "dns_unavailable"  # 503: the resolvers timed out or failed
    # per-tenant SSO (docs/auth.md, "Per-tenant SSO")
    SSO_METADATA_INVALID = "sso_metadata_invalid"  # 422: discovery or metadata unusable
    SSO_PROVIDER_UNREACHABLE = "sso_provider_unreachable"  # 502: the IdP did not answer
    SSO_REQUIRED = "sso_required"  # 403: the tenant's require_sso refuses password and passkey sign-in
    # API keys (docs/auth.md, "API keys")
    API_KEY_FORBIDDEN = "api_key_forbidden"  # 403: not with an API key (step-up, account, other keys)
    # social login (docs/auth.md, "Social login")
    IDENTITY_UNLINK_REFUSED = "identity_unlink_refused"  # 409: an SSO identity, or the only way in
    # outgoing webhooks (docs/webhooks.md)
    WEBHOOK_ENDPOINT_DISABLED = "webhook_endpoint_disabled"  # 409: test or replay to a disabled endpoint
    WEBHOOK_ENDPOINT_LIMIT = "webhook_endpoint_limit"  # 409: the tenant has as many endpoints as allowed


class AppError(Exception):
    """Base of every error the API reports on purpose.

    Attributes:
        status: HTTP status code.
        code: a stable machine-readable identifier (snake_case), also the ``type`` URI's tail.
        title: a short human summary that does not change between occurrences.
        detail: a human explanation of this occurrence (optional).
        extra: additional problem members (RFC 9457 section 3.2).
        headers: response headers to add (``WWW-Authenticate``, ``Retry-After``...).
    """

    status: int = 500
    code: str = ErrorCode.INTERNAL_ERROR
    title: str = "Internal server error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.code = ErrorCode(cls.code)  # ValueError at import: an unregistered code

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        title: str | None = None,
        status: int | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title or self.title)
        self.detail = detail
        if code is not None:
            self.code = ErrorCode(code)
        if title is not None:
            self.title = title
        if status is not None:
            self.status = status
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


class BadRequest(AppError):
    status, code, title = 400, ErrorCode.BAD_REQUEST, "Bad request"


class Unauthorized(AppError):
    """401 with ``WWW-Authenticate: Bearer`` (RFC 6750 section 3)."""

    status, code, title = 401, ErrorCode.UNAUTHORIZED, "Authentication required"

    def __init__(self, detail: str | None = None, *, error: str | None = "invalid_token", **kw: Any):
        super().__init__(detail, **kw)
        challenge = 'Bearer realm="api"'
        if error:
            challenge += f', error="{error}"'
            if detail:
                challenge += ', error_description="{}"'.format(detail.replace('"', "'"))
        self.headers.setdefault("WWW-Authenticate", challenge)


class Forbidden(AppError):
    status, code, title = 403, ErrorCode.FORBIDDEN, "Forbidden"


class NotFound(AppError):
    status, code, title = 404, ErrorCode.NOT_FOUND, "Not found"


class Conflict(AppError):
    status, code, title = 409, ErrorCode.CONFLICT, "Conflict"


class PreconditionFailed(AppError):
    status, code, title = 412, ErrorCode.PRECONDITION_FAILED, "Precondition failed"


class PreconditionRequired(AppError):
    status, code, title = 428, ErrorCode.PRECONDITION_REQUIRED, "Precondition required"


class ValidationError(AppError):
    """422 with ``errors``: ``{field: [messages]}`` (nested for nested fields)."""

    status, code, title = 422, ErrorCode.VALIDATION_ERROR, "Validation failed"

    def __init__(self, errors: Mapping[str, Any], detail: str | None = None):
        super().__init__(detail or "The request has invalid fields.", extra={"errors": errors})


class PaymentRequired(AppError):
    status, code, title = 402, ErrorCode.PAYMENT_REQUIRED, "Payment required"


class TooManyRequests(AppError):
    status, code, title = 429, ErrorCode.RATE_LIMITED, "Too many requests"


class ServiceUnavailable(AppError):
    status, code, title = 503, ErrorCode.SERVICE_UNAVAILABLE, "Service unavailable"


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Build an RFC 9457 response. Used by the handlers below and by WSGI-level middleware."""
    body: dict[str, Any] = {"type": TYPE_BASE + code, "title": title, "status": status, "code": code}
    if detail:
        body["detail"] = detail
    try:
        body["instance"] = request.path
        rid = g.get("request_id")
        if rid:
            body["request_id"] = rid
    except RuntimeError:  # outside a request context
        pass
    if extra:
        for key, value in extra.items():
            body.setdefault(key, value)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _from_app_error(err: AppError) -> Response:
    return problem_response(err.status, err.code, err.title, err.detail, err.extra, err.headers)


_HTTP_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    406: ErrorCode.NOT_ACCEPTABLE,
    409: ErrorCode.CONFLICT,
    412: ErrorCode.PRECONDITION_FAILED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    422: ErrorCode.VALIDATION_ERROR,
    428: ErrorCode.PRECONDITION_REQUIRED,
    429: ErrorCode.RATE_LIMITED,
}


def _from_http_exception(err: HTTPException) -> Response:
    status = err.code or 500
    if status >= 500:
        return _internal()
    # flask-smorest / webargs put validation messages in err.data["messages"]
    data = getattr(err, "data", None) or {}
    extra: dict[str, Any] = {}
    messages = data.get("messages") if isinstance(data, dict) else None
    detail = err.description
    # webargs nests by location ({"json": {...}}); flatten a single location
    if isinstance(messages, dict) and len(messages) == 1:
        messages = next(iter(messages.values()))
    if status == 422 and messages is not None:
        extra["errors"] = messages
        detail = "The request has invalid fields."
    if status == 400 and (
        messages == ["Invalid JSON body."] or (detail and "Failed to decode JSON" in detail)
    ):
        detail = "The request body is not valid JSON."
    headers: dict[str, str] = {}
    valid_methods = getattr(err, "valid_methods", None)
    if status == 405 and valid_methods:
        headers["Allow"] = ", ".join(sorted(valid_methods))
    if isinstance(data, dict):
        headers.update(data.get("headers") or {})
    title = err.name or "Error"
    return problem_response(
        status, _HTTP_CODES.get(status, ErrorCode.HTTP_ERROR), title, detail, extra, headers
    )


def _internal() -> Response:
    return problem_response(
        500,
        ErrorCode.INTERNAL_ERROR,
        "Internal server error",
        "An unexpected error occurred. Quote the request id when reporting it.",
    )


def init_app(app: Flask) -> None:
    """Register the problem handlers. Called once by ``create_app``."""

    @app.errorhandler(AppError)
    def handle_app_error(err: AppError) -> Response:
        if err.status >= 500:
            log.warning("app error %s: %s", err.code, err.detail)
        return _from_app_error(err)

    @app.errorhandler(HTTPException)
    def handle_http(err: HTTPException) -> Response:
        return _from_http_exception(err)

    @app.errorhandler(Exception)
    def handle_unexpected(err: Exception) -> Response:
        if isinstance(err, HTTPException):  # pragma: no cover - routed above
            return _from_http_exception(err)
        log.exception("unhandled error", extra={"request_id": g.get("request_id")})
        return _internal()
