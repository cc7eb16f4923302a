"""Auth endpoints of the foundation: password login, the refresh-token grant, JWKS."""

from __future__ import annotations

import uuid

import marshmallow as ma
from flask import current_app, jsonify, request
from flask.views import MethodView

from saas import audit, db
from saas.api import Blueprint, document_errors_as
from saas.auth import service
from saas.auth.context import authenticated, current_principal
from saas.auth.models import RefreshToken
from saas.errors import AppError, problem_response
from saas.services import services

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


class _OpenSchema(ma.Schema):
    """A JSON object documented by the members it always has; other members may follow."""

    class Meta:
        unknown = ma.INCLUDE


class IntrospectionSchema(_OpenSchema):
    """RFC 7662 section 2.2: ``active``, and the token's claims when it is active."""

    active = ma.fields.Boolean(required=True)


class ServerMetadataSchema(_OpenSchema):
    """RFC 8414 section 2 / OIDC Discovery 1.0 section 3."""

    issuer = ma.fields.String(required=True)
    token_endpoint = ma.fields.String()
    jwks_uri = ma.fields.String()


class JwkSetSchema(ma.Schema):
    """RFC 7517 section 5."""

    keys = ma.fields.List(ma.fields.Dict(), required=True)


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


class MfaLoginSchema(ma.Schema):
    mfa_token = ma.fields.String(required=True, validate=ma.validate.Length(max=200))
    code = ma.fields.String(
        required=True,
        validate=ma.validate.Length(min=6, max=16),
        metadata={"description": "a 6-digit TOTP code or a recovery code"},
    )


@blp.route("/mfa")
class MfaLogin(MethodView):
    @blp.arguments(MfaLoginSchema)
    @blp.response(200, TokenResponseSchema)
    @blp.alt_response(401, description="Wrong, replayed or expired code, or invalid mfa_token")
    @blp.alt_response(403, description="mfa_locked: 5 wrong codes; Retry-After")
    @blp.doc(security=[])
    def post(self, body):
        """Second login step after ``mfa_required``: tokens with ``amr: ["pwd", "otp"]``."""
        return service.login_with_mfa(db.session(), body["mfa_token"], body["code"]).to_dict()


@blp.route("/logout")
class Logout(MethodView):
    @authenticated
    @blp.response(204)
    def post(self):
        """End the current session: revoke the refresh-token family of the bearer token's ``sid``."""
        principal = current_principal()
        sid = principal.claims.get("sid")
        if principal.user_id is None or not sid:
            return
        try:
            family = uuid.UUID(str(sid))
        except ValueError:
            return
        session = db.session()
        owned = session.query(RefreshToken.id).filter_by(family_id=family, user_id=principal.user_id).first()
        if owned is not None and service.revoke_family(session, family, "logout"):
            audit.record(session, "auth.logout", target_type="session", target_id=family)


def oauth_error(err: AppError):
    """RFC 6749 section 5.2 error body, with the problem members alongside."""
    error = err.code if err.code in _OAUTH_ERRORS else "invalid_request"
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


_OAUTH_ERRORS = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
}


#: endpoints browser-based public clients (SPAs) call cross-origin. None of them reads cookies,
#: so any origin may call them (no ``Access-Control-Allow-Credentials``); introspection is
#: server-to-server and the authorization endpoint is a navigation, so neither is listed.
CORS_PATHS = ("/oauth/token", "/oauth/revoke", "/oauth/userinfo", "/.well-known/")


def _cors(response):
    if request.path.startswith(CORS_PATHS) and request.headers.get("Origin"):
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Allow-Methods"] = "GET, POST"
        response.headers["Access-Control-Max-Age"] = "600"
    return response


oauth.after_request(_cors)
wellknown.after_request(_cors)


def _no_store(response):
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@oauth.route("/oauth/token", methods=["POST"])
@oauth.doc(security=[])
@document_errors_as("application/json")
@oauth.alt_response(200, schema=TokenResponseSchema, description="RFC 6749 section 5.1")
def token():
    """The token endpoint (RFC 6749 section 3.2), form-encoded, served by Authlib's
    ``AuthorizationServer`` (:mod:`saas.auth.authlib_server`).

    Grants: ``authorization_code`` (PKCE S256 verifier required), ``refresh_token`` (rotated on
    every use), ``client_credentials`` (confidential tenant clients). Client authentication:
    ``client_secret_basic``, ``client_secret_post`` or ``none`` (public clients). Errors are RFC 6749
    section 5.2 bodies (``error``, ``error_description``) with the problem members alongside.
    """
    server = _oauth_server()
    try:
        if not request.form.get("grant_type"):
            raise AppError(
                "grant_type is required.", status=400, code="invalid_request", title="Invalid request"
            )
        return server.create_token_response()
    except AppError as err:
        return oauth_error(err)


def _authenticated_client(endpoint: str, methods: list[str]):
    """The calling client, authenticated by Authlib (RFC 6749 section 2.3)."""
    server = _oauth_server()
    oauth_request = server.create_oauth2_request(None)
    return server.authenticate_client(oauth_request, methods, endpoint)


@oauth.route("/oauth/revoke", methods=["POST"])
@oauth.doc(security=[])
@document_errors_as("application/json")
@oauth.alt_response(200, description="Revoked, or unknown (RFC 7009 section 2.2): no body")
def revoke():
    """Token revocation (RFC 7009). Client authentication as at the token endpoint; 200 even for
    unknown tokens. Revoking an access token revokes its session (refresh family)."""
    from authlib.oauth2 import OAuth2Error

    from saas.auth import oauth as provider
    from saas.auth.authlib_server import AUTH_METHODS

    server = _oauth_server()
    try:
        client = _authenticated_client("revocation", AUTH_METHODS)
        provider.revoke(db.session(), client, request.form.get("token"))
    except OAuth2Error as err:
        return server.handle_error_response(None, err)
    except AppError as err:
        return oauth_error(err)
    return _no_store(current_app.response_class(status=200))


@oauth.route("/oauth/introspect", methods=["POST"])
@oauth.doc(security=[])
@document_errors_as("application/json")
@oauth.alt_response(200, schema=IntrospectionSchema, description="RFC 7662 section 2.2")
def introspect():
    """Token introspection (RFC 7662). Needs a confidential client; only a resource server of the
    token's tenant (a client with ``resource_server``) or the token's audience learns more than
    ``{"active": false}`` (section 4)."""
    from authlib.oauth2 import OAuth2Error

    from saas.auth import oauth as provider

    server = _oauth_server()
    try:
        client = _authenticated_client("introspection", ["client_secret_basic", "client_secret_post"])
        body = provider.introspect(db.session(), client, request.form.get("token"))
    except OAuth2Error as err:
        return server.handle_error_response(None, err)
    except AppError as err:
        return oauth_error(err)
    return _no_store(jsonify(body))


@oauth.route("/oauth/userinfo", methods=["GET", "POST"])
@oauth.doc(security=[{"bearerAuth": []}])
def userinfo():
    """OIDC UserInfo (OIDC Core section 5.3): needs an access token with the ``openid`` scope.

    The token is checked as every API request's is (:func:`saas.auth.context.authenticate_bearer`):
    a locked account, a removed membership or a suspended tenant is 401 ``invalid_token``
    (RFC 6750 section 3.1, as OIDC Core section 5.3.3 asks); a token without ``openid`` is 403
    ``insufficient_scope``."""
    from saas.auth.context import authenticate_bearer
    from saas.errors import Forbidden, Unauthorized

    try:
        principal = authenticate_bearer()
    except Forbidden as err:  # tenant_suspended: the token no longer speaks for its user
        raise Unauthorized(err.detail, code=err.code) from None
    scopes = principal.scope
    if "openid" not in scopes:
        raise Forbidden(
            "The access token lacks the openid scope.",
            code="insufficient_scope",
            headers={"WWW-Authenticate": 'Bearer error="insufficient_scope", scope="openid"'},
        )
    if principal.user_id is None:
        raise Forbidden("A service-account token has no end user.", code="insufficient_scope")
    membership = principal.membership
    if membership is None:
        raise Unauthorized("The access token's user no longer exists.")
    user = membership.user
    body = {"sub": str(user.id), "tid": str(principal.tenant_id), "roles": [membership.role]}
    if "email" in scopes:
        body.update({"email": user.email, "email_verified": False})
    if "profile" in scopes:
        body["name"] = user.name
    return _no_store(jsonify(body))


@wellknown.route("/openid-configuration", methods=["GET"])
@wellknown.doc(security=[])
@wellknown.alt_response(200, schema=ServerMetadataSchema, description="Provider metadata")
def openid_configuration():
    """OpenID Connect Discovery 1.0 metadata (the same document as RFC 8414's)."""
    from saas.auth.oauth import server_metadata

    response = jsonify(server_metadata())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@wellknown.route("/oauth-authorization-server", methods=["GET"])
@wellknown.doc(security=[])
@wellknown.alt_response(200, schema=ServerMetadataSchema, description="Server metadata")
def oauth_authorization_server():
    """OAuth 2.0 Authorization Server Metadata (RFC 8414)."""
    return openid_configuration()


@wellknown.route("/jwks.json", methods=["GET"])
@wellknown.doc(security=[])
@wellknown.alt_response(200, schema=JwkSetSchema, description="The JWK Set")
def jwks():
    """The public signing keys (RFC 7517 JWK Set)."""
    response = jsonify(services().keys.jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


def _oauth_server():  # type: ignore[no-untyped-def]
    from saas.auth.authlib_server import server  # authlib_server imports this module

    return server()
