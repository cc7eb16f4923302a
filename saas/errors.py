"""One error hierarchy, rendered as RFC 9457 ``application/problem+json`` in one place.

A view or service raises an :class:`AppError` subclass; :func:`init_app` turns it (and every
Werkzeug HTTP error, validation error and unexpected exception) into a problem document::

    {"type": "https://errors.saas.dev/<code>", "title": "...", "status": 404,
     "detail": "...", "code": "not_found", "instance": "/api/v1/...", "request_id": "..."}

Extra members (``errors`` for 422, ``mfa_token``...) are added with ``extra``. A 5xx never
carries internals: its detail is generic and the request id lets operators find the log line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, json, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger("saas.errors")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://errors.saas.dev/"


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
    code: str = "internal_error"
    title: str = "Internal server error"

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
            self.code = code
        if title is not None:
            self.title = title
        if status is not None:
            self.status = status
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


class BadRequest(AppError):
    status, code, title = 400, "bad_request", "Bad request"


class Unauthorized(AppError):
    """401 with ``WWW-Authenticate: Bearer`` (RFC 6750 section 3)."""

    status, code, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str | None = None, *, error: str | None = "invalid_token", **kw: Any):
        super().__init__(detail, **kw)
        challenge = 'Bearer realm="api"'
        if error:
            challenge += f', error="{error}"'
            if detail:
                challenge += ', error_description="{}"'.format(detail.replace('"', "'"))
        self.headers.setdefault("WWW-Authenticate", challenge)


class Forbidden(AppError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(AppError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(AppError):
    status, code, title = 409, "conflict", "Conflict"


class PreconditionFailed(AppError):
    status, code, title = 412, "precondition_failed", "Precondition failed"


class PreconditionRequired(AppError):
    status, code, title = 428, "precondition_required", "Precondition required"


class ValidationError(AppError):
    """422 with ``errors``: ``{field: [messages]}`` (nested for nested fields)."""

    status, code, title = 422, "validation_error", "Validation failed"

    def __init__(self, errors: Mapping[str, Any], detail: str | None = None):
        super().__init__(detail or "The request has invalid fields.", extra={"errors": errors})


class PaymentRequired(AppError):
    status, code, title = 402, "payment_required", "Payment required"


class TooManyRequests(AppError):
    status, code, title = 429, "rate_limited", "Too many requests"


class ServiceUnavailable(AppError):
    status, code, title = 503, "service_unavailable", "Service unavailable"


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


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    428: "precondition_required",
    429: "rate_limited",
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
    return problem_response(status, _HTTP_CODES.get(status, "http_error"), title, detail, extra, headers)


def _internal() -> Response:
    return problem_response(
        500,
        "internal_error",
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
