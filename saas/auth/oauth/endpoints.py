"""Revocation (RFC 7009) and introspection (RFC 7662) as Authlib endpoints, registered on the
authorization server with ``register_endpoint`` (:func:`saas.auth.oauth.server.init_app`).

Authlib runs each request: it authenticates the client (``CLIENT_AUTH_METHODS``, through the
server's own client authentication, as at the token endpoint), reads the token, asks the hooks
below, and answers; its ``OAuth2Error``\\s become our OAuth errors
(:func:`saas.auth.errors.from_authlib`). The hooks hold what is ours:

* Both kinds of token are recognised by their shape, so ``token_type_hint`` is never needed and
  never refused (RFC 7009 section 2.1 and RFC 7662 section 2.1 have the server search every
  type whatever the hint; Authlib's ``check_params`` would answer an unknown hint with
  ``unsupported_token_type``). A missing or empty ``token`` is 400 ``invalid_request``.
* Revocation: a refresh token revokes its family, an access token the session behind it (its
  ``sid``: the session's access tokens stop too, :mod:`saas.auth.revocation`). A token of
  another client, like an unknown one, is ignored with the same 200 (Authlib refuses another
  client's token with ``invalid_grant``, which tells that client the token is live); section
  2.2's answer has no body.
* Introspection: only a resource server allowed to see a token learns anything (RFC 7662
  section 4, :func:`may_introspect`): the token's audience, or a client its tenant marked
  ``resource_server`` asking about a token of that same tenant. Any other client, even the one
  the token was issued to, gets ``{"active": false}``, the answer for an unknown token, so it
  cannot even tell that a token is live.
"""

from __future__ import annotations

import uuid
from typing import Any

from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _IntrospectionEndpoint
from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from saas import audit, db
from saas.audit import AuditAction
from saas.auth import sessions
from saas.auth.errors import InvalidRequest
from saas.auth.models import OAuthClient, RefreshToken
from saas.auth.oauth.grants import AUTH_METHODS, NO_STORE, SECRET_AUTH_METHODS
from saas.db import utcnow
from saas.errors import Unauthorized
from saas.security import token_hash
from saas.services import services

#: the claims of an active access token that introspection shows (RFC 7662 section 2.2)
INTROSPECTED_CLAIMS = (
    "scope",
    "client_id",
    "sub",
    "aud",
    "iss",
    "exp",
    "iat",
    "nbf",
    "jti",
    "tid",
    "roles",
    "auth_time",
    "acr",
    "amr",
)
#: a revocation's answer: 200, no body (RFC 7009 section 2.2)
_NO_STORE_EMPTY = [(name, value) for name, value in NO_STORE if name != "Content-Type"]


def _check_token_param(request: Any) -> None:
    if not request.form.get("token"):
        raise InvalidRequest("token is required.")


def _refresh_row(session: Session, token: str) -> RefreshToken | None:
    return session.scalars(select(RefreshToken).where(RefreshToken.token_hash == token_hash(token))).first()


def _verified_claims(token: str) -> dict[str, Any] | None:
    """The claims of one of our access tokens (signature, ``exp``...), or None."""
    try:
        return services().tokens.verify(token)
    except Unauthorized:
        return None


def _family(sid: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(sid))
    except ValueError:
        return None


def may_introspect(client: OAuthClient, audience: Any, tenant_id: str | None) -> bool:
    """Whether ``client`` is a resource server allowed to see a token (RFC 7662 section 4): the
    token's audience (``aud`` names the client), or a client its tenant marked as a resource
    server (``resource_server``) asking about a token of that same tenant."""
    audiences = audience if isinstance(audience, list) else [audience]
    if client.client_id in audiences:
        return True
    if not client.resource_server or client.tenant_id is None:
        return False
    return tenant_id == str(client.tenant_id)


# --- revocation (RFC 7009) ----------------------------------------------------------------------


class RevocationEndpoint(_RevocationEndpoint):
    """``POST /oauth/revoke``: the token is a refresh-token family (a session) to end."""

    CLIENT_AUTH_METHODS = AUTH_METHODS

    def check_params(self, request, client) -> None:
        _check_token_param(request)

    def authenticate_token(self, request, client: OAuthClient) -> RefreshToken | None:
        """A row of the session the token belongs to, when it was issued to ``client``; None
        for any other token (ignored, not refused)."""
        self.check_params(request, client)
        row = self.query_token(request.form["token"], request.form.get("token_type_hint"))
        if row is None or row.client_id != client.client_id:
            return None
        return row

    def query_token(self, token_string: str, token_type_hint: str | None) -> RefreshToken | None:
        """The refresh token itself, or for an access token a row of its session (``sid``)."""
        session = db.session()
        row = _refresh_row(session, token_string)
        if row is None and token_string.count(".") == 2:
            claims = _verified_claims(token_string)
            family = _family(claims["sid"]) if claims and claims.get("sid") else None
            if family is not None:
                row = session.scalars(select(RefreshToken).where(RefreshToken.family_id == family)).first()
        return row

    def revoke_token(self, token: RefreshToken, request) -> None:
        """End the whole session; audited as ``auth.token_revoked`` when something was live."""
        session = db.session()
        client = request.client
        if sessions.revoke_family(session, token.family_id, "revoked_by_client"):
            audit.record(
                session,
                AuditAction.AUTH_TOKEN_REVOKED,
                target_type="session",
                target_id=token.family_id,
                actor=audit.Actor("client", client.client_id),
                tenant_id=token.tenant_id,  # the row exists, so its tenant does (FK, cascade)
            )

    def create_endpoint_response(self, request):
        status, _body, _headers = super().create_endpoint_response(request)
        return status, "", _NO_STORE_EMPTY


# --- introspection (RFC 7662) -------------------------------------------------------------------


class _AccessToken:
    """A verified access token (JWT), as Authlib's introspection asks about it."""

    def __init__(self, claims: dict[str, Any]) -> None:
        self.claims = claims
        self.audience = claims.get("aud")
        self.tenant_id = str(claims.get("tid"))

    def is_expired(self) -> bool:
        return False  # verification refused expired tokens

    def is_revoked(self) -> bool:
        """A deleted client's service-account token, or a token of a revoked session."""
        session = db.session()
        claims = self.claims
        if claims.get("sub") == claims.get("client_id"):
            owner = session.scalars(select(OAuthClient.id).where(OAuthClient.client_id == claims["sub"]))
            if owner.first() is None:
                return True
        sid = claims.get("sid")
        if not sid:
            return False
        family = _family(sid)
        if family is None:
            return True
        revoked = session.scalars(
            select(RefreshToken.id).where(
                RefreshToken.family_id == family, RefreshToken.revoked_at.is_not(None)
            )
        ).first()
        return revoked is not None

    def payload(self) -> dict[str, Any]:
        claims = self.claims
        return {
            "active": True,
            "token_type": "Bearer",
            **{k: claims[k] for k in INTROSPECTED_CLAIMS if k in claims},
        }


class _RefreshToken:
    """A stored refresh token, as Authlib's introspection asks about it."""

    audience = None

    def __init__(self, row: RefreshToken) -> None:
        self.row = row
        self.tenant_id = str(row.tenant_id)

    def is_expired(self) -> bool:
        return self.row.expires_at <= utcnow()

    def is_revoked(self) -> bool:
        return self.row.revoked_at is not None or self.row.used_at is not None

    def payload(self) -> dict[str, Any]:
        row = self.row
        return {
            "active": True,
            "token_type": "refresh_token",
            "scope": row.scope,
            "client_id": row.client_id,
            "sub": str(row.user_id),
            "tid": str(row.tenant_id),
            "exp": int(row.expires_at.timestamp()),
            "iat": int(row.created_at.timestamp()),
            "iss": services().settings.issuer,
        }


class IntrospectionEndpoint(_IntrospectionEndpoint):
    """``POST /oauth/introspect``: confidential clients only (RFC 7662 section 2.1)."""

    CLIENT_AUTH_METHODS = SECRET_AUTH_METHODS

    def check_params(self, request, client) -> None:
        _check_token_param(request)

    def query_token(
        self, token_string: str, token_type_hint: str | None
    ) -> _AccessToken | _RefreshToken | None:
        if token_string.count(".") == 2:
            claims = _verified_claims(token_string)
            return None if claims is None else _AccessToken(claims)
        row = _refresh_row(db.session(), token_string)
        return None if row is None else _RefreshToken(row)

    def check_permission(self, token: _AccessToken | _RefreshToken, client: OAuthClient, request) -> bool:
        return may_introspect(client, token.audience, token.tenant_id)

    def introspect_token(self, token: _AccessToken | _RefreshToken) -> dict[str, Any]:
        return token.payload()

    def create_endpoint_response(self, request):
        """Authlib's answer, written as every JSON view's (``jsonify``: the app's encoder)."""
        status, body, _headers = super().create_endpoint_response(request)
        return status, current_app.json.response(body).get_data(), NO_STORE
