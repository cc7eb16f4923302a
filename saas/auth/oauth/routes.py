"""The OAuth endpoints' Flask routes: each hands the request to the authorization server
(:mod:`saas.auth.oauth.server`) or to one function, and writes its errors as
:func:`saas.auth.errors.oauth_response` does.

``/oauth/token`` (RFC 6749 section 3.2), ``/oauth/revoke`` (RFC 7009), ``/oauth/introspect``
(RFC 7662), ``/oauth/userinfo`` (OIDC Core section 5.3), and the discovery documents and JWK Set
under ``/.well-known/``. The authorization endpoint and its pages are :mod:`saas.auth.hosted`.
"""

from __future__ import annotations

from flask import jsonify, request

from saas.api import Blueprint, document_errors_as
from saas.auth.context import authenticate_bearer
from saas.auth.errors import InvalidRequest, oauth_response
from saas.auth.oauth.endpoints import IntrospectionEndpoint, RevocationEndpoint
from saas.auth.oauth.metadata import server_metadata
from saas.auth.oauth.server import server
from saas.auth.schemas import IntrospectionSchema, JwkSetSchema, ServerMetadataSchema, TokenResponseSchema
from saas.errors import AppError, ErrorCode, Forbidden, Unauthorized
from saas.services import services

oauth = Blueprint("oauth", __name__, description="OAuth 2.0 endpoints (RFC 6749)")
wellknown = Blueprint("wellknown", __name__, url_prefix="/.well-known", description="Discovery")

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
    ``AuthorizationServer`` (:mod:`saas.auth.oauth.server`).

    Grants: ``authorization_code`` (PKCE S256 verifier required), ``refresh_token`` (rotated on
    every use), ``client_credentials`` (confidential tenant clients). Client authentication:
    ``client_secret_basic``, ``client_secret_post`` or ``none`` (public clients). Errors are RFC 6749
    section 5.2 bodies (``error``, ``error_description``) with the problem members alongside.
    """
    try:
        if not request.form.get("grant_type"):
            raise InvalidRequest("grant_type is required.")
        return server().create_token_response()
    except AppError as err:
        return oauth_response(err)


@oauth.route("/oauth/revoke", methods=["POST"])
@oauth.doc(security=[])
@document_errors_as("application/json")
@oauth.alt_response(200, description="Revoked, or unknown (RFC 7009 section 2.2): no body")
def revoke():
    """Token revocation (RFC 7009). Client authentication as at the token endpoint; 200 even for
    unknown tokens. Revoking an access token revokes its session (refresh family)."""
    try:
        return server().create_endpoint_response(RevocationEndpoint.ENDPOINT_NAME)
    except AppError as err:
        return oauth_response(err)


@oauth.route("/oauth/introspect", methods=["POST"])
@oauth.doc(security=[])
@document_errors_as("application/json")
@oauth.alt_response(200, schema=IntrospectionSchema, description="RFC 7662 section 2.2")
def introspect():
    """Token introspection (RFC 7662). Needs a confidential client; only a resource server of the
    token's tenant (a client with ``resource_server``) or the token's audience learns more than
    ``{"active": false}`` (section 4)."""
    try:
        return server().create_endpoint_response(IntrospectionEndpoint.ENDPOINT_NAME)
    except AppError as err:
        return oauth_response(err)


@oauth.route("/oauth/userinfo", methods=["GET", "POST"])
@oauth.doc(security=[{"bearerAuth": []}])
def userinfo():
    """OIDC UserInfo (OIDC Core section 5.3): needs an access token with the ``openid`` scope.

    The token is checked as every API request's is (:func:`saas.auth.context.authenticate_bearer`):
    a locked account, a removed membership or a suspended tenant is 401 ``invalid_token``
    (RFC 6750 section 3.1, as OIDC Core section 5.3.3 asks); a token without ``openid`` is 403
    ``insufficient_scope``."""
    try:
        principal = authenticate_bearer()
    except Forbidden as err:  # tenant_suspended: the token no longer speaks for its user
        raise Unauthorized(err.detail, code=err.code) from None
    scopes = principal.scope
    if "openid" not in scopes:
        raise Forbidden(
            "The access token lacks the openid scope.",
            code=ErrorCode.INSUFFICIENT_SCOPE,
            headers={"WWW-Authenticate": 'Bearer error="insufficient_scope", scope="openid"'},
        )
    if principal.user_id is None:
        raise Forbidden("A service-account token has no end user.", code=ErrorCode.INSUFFICIENT_SCOPE)
    membership = principal.membership
    if membership is None:
        raise Unauthorized("The access token's user no longer exists.")
    user = membership.user
    body = {"sub": str(user.id), "tid": str(principal.tenant_id), "roles": [membership.role]}
    if "email" in scopes:
        # true only once the mailbox was proved (OIDC Core section 5.1)
        body.update({"email": user.email, "email_verified": user.email_verified})
    if "profile" in scopes:
        body["name"] = user.name
    return _no_store(jsonify(body))


@wellknown.route("/openid-configuration", methods=["GET"])
@wellknown.doc(security=[])
@wellknown.alt_response(200, schema=ServerMetadataSchema, description="Provider metadata")
def openid_configuration():
    """OpenID Connect Discovery 1.0 metadata (the same document as RFC 8414's)."""
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
