"""The HTTP API surface: flask-smorest ``Api`` with an OpenAPI 3 document, bearer security
scheme and RFC 9457 problem responses, plus request-level guards (415 for non-JSON bodies).

``GET /openapi.json`` serves the document; ``GET /docs`` the interactive Swagger UI.
"""

from __future__ import annotations

import marshmallow as ma
from flask import Flask, request
from flask_smorest import Api
from flask_smorest import Blueprint as _Blueprint

from saas.errors import AppError

JSON_PATHS = ("/api/",)
FORM_PATHS = ("/oauth/token", "/oauth/revoke", "/oauth/introspect")
MAX_BODY_BYTES = 1024 * 1024


class ProblemSchema(ma.Schema):
    """RFC 9457 problem details."""

    type = ma.fields.String(metadata={"example": "https://errors.saas.dev/not_found"})
    title = ma.fields.String()
    status = ma.fields.Integer()
    detail = ma.fields.String()
    code = ma.fields.String()
    instance = ma.fields.String()
    request_id = ma.fields.String()
    errors = ma.fields.Dict(metadata={"description": "422 only: messages per field"})


class Blueprint(_Blueprint):
    """flask-smorest blueprint whose pagination header is ``X-Pagination`` plus ``Link``."""


class UnsupportedMediaType(AppError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class PayloadTooLarge(AppError):
    status, code, title = 413, "payload_too_large", "Payload too large"


def _check_media_type() -> None:
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The body may be at most {MAX_BODY_BYTES} bytes.")
    path = request.path
    has_body = (length or 0) > 0 or request.headers.get("Transfer-Encoding")
    if not has_body:
        return  # nothing to decode: the view reports what is missing
    if path.startswith(JSON_PATHS):
        if not request.is_json:
            raise UnsupportedMediaType("Send the body as application/json.")
    elif path.startswith(FORM_PATHS) and request.mimetype != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("Send the body as application/x-www-form-urlencoded (RFC 6749).")


def init_app(app: Flask) -> Api:
    app.config.setdefault("API_TITLE", "SaaS backend API")
    app.config.setdefault("API_VERSION", "v1")
    app.config.setdefault("OPENAPI_VERSION", "3.0.3")
    app.config.setdefault("OPENAPI_URL_PREFIX", "/")
    app.config.setdefault("OPENAPI_JSON_PATH", "openapi.json")
    app.config.setdefault("OPENAPI_SWAGGER_UI_PATH", "docs")
    app.config.setdefault("OPENAPI_SWAGGER_UI_URL", "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/")
    app.config.setdefault(
        "API_SPEC_OPTIONS",
        {
            "components": {
                "securitySchemes": {
                    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                }
            },
            "security": [{"bearerAuth": []}],
            "info": {"description": "Multi-tenant SaaS backend. Errors are RFC 9457 problem documents."},
        },
    )
    api = Api()
    api.ERROR_SCHEMA = ProblemSchema
    api.init_app(app)
    app.before_request(_check_media_type)
    app.extensions["saas.api"] = api
    return api
