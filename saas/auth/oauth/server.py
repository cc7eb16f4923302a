"""The authorization server: Authlib's Flask ``AuthorizationServer`` with our grants, endpoints
and errors, one per app (``app.extensions[EXTENSION]``, read with :func:`server`).

Authlib keeps the protocol framework-free (``authlib.oauth2``: grants, endpoints, client
authentication) and binds it to Flask in a thin adapter
(``authlib.integrations.flask_oauth2.AuthorizationServer``: the request wrapper, responses,
signals). This package is laid out the same way: :mod:`~saas.auth.oauth.grants` and
:mod:`~saas.auth.oauth.endpoints` hold the protocol's decisions, this module puts them on the
server, and :mod:`~saas.auth.oauth.routes` only hands Flask's requests to it.
"""

from __future__ import annotations

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from flask import Flask, Response, current_app
from sqlalchemy import select

from saas import db
from saas.auth.errors import from_authlib, oauth_response
from saas.auth.models import OAuthClient
from saas.auth.oauth.endpoints import IntrospectionEndpoint, RevocationEndpoint
from saas.auth.oauth.grants import ClientCredentialsGrant, CodeGrant, RefreshGrant, S256CodeChallenge

#: ``app.extensions[EXTENSION]``: the app's :class:`Server` (Flask-bound, so not in ``Services``)
EXTENSION = "saas.oauth_server"


class Server(AuthorizationServer):
    """Authlib's Flask server whose errors are our OAuth errors (:mod:`saas.auth.errors`)."""

    def handle_error_response(self, request, error: OAuth2Error) -> Response:
        return oauth_response(from_authlib(error))


def _query_client(client_id: str) -> OAuthClient | None:
    # PostgreSQL text cannot hold U+0000 (a Basic-auth username is not covered by the form guard)
    if not isinstance(client_id, str) or not client_id or len(client_id) > 64 or "\x00" in client_id:
        return None
    return db.session().scalars(select(OAuthClient).where(OAuthClient.client_id == client_id)).first()


def init_app(app: Flask) -> Server:
    """Build the server: our three grants (no implicit, no password grant), revocation and
    introspection."""
    server = Server()
    server.init_app(app, query_client=_query_client, save_token=lambda token, req: None)
    server.register_grant(CodeGrant, [S256CodeChallenge(required=True)])
    server.register_grant(RefreshGrant)
    server.register_grant(ClientCredentialsGrant)
    server.register_endpoint(RevocationEndpoint)
    server.register_endpoint(IntrospectionEndpoint)
    app.extensions[EXTENSION] = server
    return server


def server(app: Flask | None = None) -> Server:
    """The app's authorization server (``current_app``'s when ``app`` is None)."""
    return (app or current_app).extensions[EXTENSION]
