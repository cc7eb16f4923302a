"""Auth endpoints of the foundation: password login, the refresh-token grant, JWKS."""

from __future__ import annotations

import marshmallow as ma
from flask import current_app, jsonify, request
from flask.views import MethodView

from saas import db
from saas.api import Blueprint
from saas.auth import service
from saas.errors import AppError, problem_response

blp = Blueprint("auth", __name__, url_prefix="/api/v1/auth", description="Log in and get tokens")
oauth = Blueprint("oauth", __name__, description="OAuth 2.0 endpoints (RFC 6749)")
wellknown = Blueprint("wellknown", __name__, url_prefix="/.well-known", description="Discovery")


class LoginSchema(ma.Schema):
    email = ma.fields.Email(required=True, validate=ma.validate.Length(max=320))
    password = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=1024))
    tenant = ma.fields.String(validate=ma.validate.Length(max=63), metadata={"description": "tenant slug"})


class TokenResponseSchema(ma.Schema):
    """RFC 6749 section 5.1."""

    access_token = ma.fields.String()
    token_type = ma.fields.String(metadata={"example": "Bearer"})
    expires_in = ma.fields.Integer(metadata={"description": "seconds"})
    refresh_token = ma.fields.String()
    scope = ma.fields.String()


@blp.route("/login")
class Login(MethodView):
    @blp.arguments(LoginSchema)
    @blp.response(200, TokenResponseSchema)
    @blp.alt_response(401, description="Wrong email or password (the same answer either way)")
    @blp.doc(security=[])
    def post(self, body):
        """Log in with email and password; returns an access and a refresh token."""
        tokens = service.login(db.session(), body["email"], body["password"], body.get("tenant"))
        return tokens.to_dict()


def oauth_error(err: AppError):
    """RFC 6749 section 5.2 error body, with the problem members alongside."""
    error = err.code if err.code in _OAUTH_ERRORS else "invalid_request"
    response = problem_response(
        err.status, err.code, err.title, err.detail, {"error": error, "error_description": err.detail}
    )
    response.mimetype = "application/json"
    response.headers["Cache-Control"] = "no-store"
    return response


_OAUTH_ERRORS = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
}


@oauth.route("/oauth/token", methods=["POST"])
@oauth.doc(security=[])
def token():
    """The token endpoint (RFC 6749 section 3.2), form-encoded. Grants: ``refresh_token``."""
    try:
        grant_type = request.form.get("grant_type")
        if not grant_type:
            raise AppError(
                "grant_type is required.", status=400, code="invalid_request", title="Invalid request"
            )
        if grant_type != "refresh_token":
            raise AppError(
                f"Grant type {grant_type!r} is not supported here.",
                status=400,
                code="unsupported_grant_type",
                title="Unsupported grant type",
            )
        presented = request.form.get("refresh_token")
        if not presented:
            raise AppError(
                "refresh_token is required.", status=400, code="invalid_request", title="Invalid request"
            )
        tokens = service.refresh(db.session(), presented, request.form.get("client_id"))
    except AppError as err:
        return oauth_error(err)
    response = jsonify(tokens.to_dict())
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@wellknown.route("/jwks.json", methods=["GET"])
@wellknown.doc(security=[])
def jwks():
    """The public signing keys (RFC 7517 JWK Set)."""
    response = jsonify(current_app.extensions["saas.keys"].jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
