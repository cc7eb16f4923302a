"""The token endpoint's grants on Authlib's grant classes, with Authlib's unsafe defaults replaced.

Authlib parses the token request, authenticates the client (``client_secret_basic``,
``client_secret_post``, ``none`` via :class:`saas.auth.models.OAuthClient`'s ``ClientMixin``
methods), dispatches on ``grant_type`` and runs the PKCE extension. What it would get wrong by
default is replaced here:

* PKCE: :class:`S256CodeChallenge` knows only ``S256`` (Authlib's ``CodeChallenge`` defaults a
  missing method to ``plain`` and accepts it) and is required for every client.
* Authorization codes (:class:`CodeGrant`) are consumed by the first attempt whatever its
  outcome, and a code presented again revokes the tokens issued from it (Authlib only deletes
  the code on success): the family id is recorded with ``used_at`` and the code row stays
  locked until the tokens are committed, so even a concurrent second redemption finds and
  revokes them.
* Refresh tokens (:class:`RefreshGrant`, :func:`refresh_grant`) rotate with reuse detection and
  a bounded grace (:func:`saas.auth.service.refresh`; Authlib neither rotates nor detects
  reuse), and first-party tokens from ``POST /api/v1/auth/login`` need no client.
* ``client_credentials`` (:class:`ClientCredentialsGrant`, :func:`client_credentials`):
  confidential tenant clients as service accounts, with the client's ``role``; no refresh token.
* Tokens are RFC 9068 JWTs plus an OIDC ID token (:func:`saas.auth.service.issue_tokens`), not
  Authlib's random bearer strings.

No implicit, no password grant.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidGrantError, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7636.challenge import compare_s256_code_challenge
from flask import request
from sqlalchemy import select
from sqlalchemy.orm import Session

from saas import audit, db
from saas.audit import AuditAction
from saas.auth import clients, service, sessions
from saas.auth.errors import InvalidGrant, InvalidRequest, InvalidScope, UnauthorizedClient
from saas.auth.models import AuthorizationCode, OAuthClient
from saas.auth.service import TokenResponse
from saas.db import utcnow
from saas.identity.models import Membership, Tenant, User
from saas.security import token_hash
from saas.services import services

#: client authentication at the token and revocation endpoints (RFC 6749 section 2.3); Authlib
#: names the list in its ``invalid_client`` description, so it stays a list
AUTH_METHODS = list(clients.AUTH_METHODS)
#: confidential clients only: ``client_credentials`` and introspection
SECRET_AUTH_METHODS = [method for method in AUTH_METHODS if method != "none"]
NO_STORE = [("Content-Type", "application/json"), ("Cache-Control", "no-store"), ("Pragma", "no-cache")]


class S256CodeChallenge(CodeChallenge):
    """RFC 7636 with ``S256`` only (RFC 9700 section 2.1.1): no ``plain``, no default method."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {"S256": compare_s256_code_challenge}

    def get_authorization_code_challenge_method(self, authorization_code: AuthorizationCode) -> str:
        """Always S256: a row claiming another method is verified as S256 and fails (never a 500)."""
        return "S256"


@dataclass
class _Grantee:
    """What ``authenticate_user`` hands to ``create_token_response``."""

    user: User
    membership: Membership
    tenant: Tenant


def _token_body(tokens: TokenResponse) -> dict[str, Any]:
    return tokens.to_dict()


class CodeGrant(grants.AuthorizationCodeGrant):
    """``authorization_code`` (RFC 6749 section 4.1.3) over :class:`AuthorizationCode` rows."""

    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

    def query_authorization_code(self, code: str, client: OAuthClient) -> AuthorizationCode | None:
        session = db.session()
        row = session.scalars(
            select(AuthorizationCode).where(AuthorizationCode.code_hash == token_hash(code)).with_for_update()
        ).first()
        if row is None or row.client_id != client.client_id:
            return None
        if row.used_at is not None:
            revoked = sessions.revoke_family(session, row.family_id, "code_reused") if row.family_id else 0
            audit.record(
                session,
                AuditAction.AUTH_CODE_REUSED,
                target_type="oauth_client",
                target_id=client.client_id,
                actor=audit.Actor("client", client.client_id),
                data={"user_id": str(row.user_id), "revoked_tokens": revoked},
                tenant_id=row.tenant_id,  # the row exists, so its tenant does (FK, cascade)
            )
            db.commit_early(session, db.EarlyCommit.AUTHORIZATION_CODE_REUSED)  # outlives the failure
            raise InvalidGrantError(
                "The authorization code was already used; tokens issued from it are revoked."
            )
        # consumed by this attempt whatever its outcome (one-time, RFC 6749 section 4.1.2). The
        # family of the tokens it will yield is named now, with used_at, and the row stays locked
        # until the tokens are committed with it: a second redemption queued on the lock finds
        # them and revokes them. A failing attempt still consumes the code (validate_token_request).
        row.used_at = utcnow()
        row.family_id = uuid.uuid4()
        self._consumed = row
        if row.expires_at <= row.used_at:
            raise InvalidGrantError("The authorization code has expired.")
        return row

    def validate_token_request(self):
        """Authlib's checks (client, code, redirect URI, PKCE hook), then: a code requested
        without ``redirect_uri`` (the client's single registered URI was used) needs none at the
        token endpoint, but one sent must be registered. Any failure after the code was found
        still consumes it (committed, although the request fails)."""
        self._consumed = None
        try:
            super().validate_token_request()
            sent = self.request.payload.redirect_uri
            code = self.request.authorization_code
            if sent and not code.get_redirect_uri() and not self.request.client.check_redirect_uri(sent):
                raise InvalidGrantError("Invalid 'redirect_uri' in request.")
        except OAuth2Error:
            self._persist_consumption()
            raise

    def _persist_consumption(self) -> None:
        row = getattr(self, "_consumed", None)
        if row is not None:
            db.commit_early(db.session(), db.EarlyCommit.AUTHORIZATION_CODE_CONSUMED)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Nothing to do: the code was marked used when it was looked up."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> _Grantee | None:
        row = service.membership_of(
            db.session(), authorization_code.user_id, authorization_code.tenant_id, usable=True
        )
        if row is None:
            return None
        membership, tenant, user = row
        return _Grantee(user, membership, tenant)

    def create_token_response(self):
        code: AuthorizationCode = self.request.authorization_code
        grantee = self.authenticate_user(code)
        if grantee is None:
            self._persist_consumption()
            raise InvalidGrantError("The user is no longer an active member of the tenant.")
        tokens = service.issue_tokens(
            db.session(),
            user=grantee.user,
            membership=grantee.membership,
            tenant=grantee.tenant,
            client_id=self.request.client.client_id,
            scope=code.scope,
            amr=list(code.amr or ["pwd"]),
            auth_time=code.auth_time,
            nonce=code.nonce,
            family_id=code.family_id,
            browser_session_id=code.browser_session_id,
        )
        return 200, _token_body(tokens), NO_STORE


class RefreshGrant(grants.RefreshTokenGrant):
    """``refresh_token`` (RFC 6749 section 6) delegated to :func:`refresh_grant`: rotation on
    every use, reuse revokes the family, bounded grace, absolute lifetime."""

    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def validate_token_request(self):
        form = self.request.form
        named = form.get("client_id") or request.headers.get("Authorization")
        # first-party tokens (POST /api/v1/auth/login) are presented without a client
        self.request.client = self.authenticate_token_endpoint_client() if named else None

    def create_token_response(self):
        tokens = refresh_grant(db.session(), self.request.client, self.request.form.get("refresh_token"))
        return 200, _token_body(tokens), NO_STORE


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    """``client_credentials`` (RFC 6749 section 4.4): confidential tenant clients only."""

    TOKEN_ENDPOINT_AUTH_METHODS = SECRET_AUTH_METHODS

    def validate_token_request(self):
        self.request.client = self.authenticate_token_endpoint_client()

    def create_token_response(self):
        tokens = client_credentials(db.session(), self.request.client, self.request.form.get("scope"))
        return 200, _token_body(tokens), NO_STORE


def client_credentials(session: Session, client: OAuthClient, scope: str | None) -> TokenResponse:
    """The ``client_credentials`` grant (RFC 6749 section 4.4): a tenant's confidential client acting
    as a service account with its configured ``role``. No refresh token.

    Raises:
        UnauthorizedClient: public client, platform client, or the grant not enabled.
        InvalidScope: a scope outside the client's.
    """
    if not client.is_confidential or client.tenant_id is None:
        raise UnauthorizedClient("Only a tenant's confidential clients may use client_credentials.")
    if "client_credentials" not in (client.grant_types or []):
        raise UnauthorizedClient("The client_credentials grant is not enabled for this client.")
    tenant = session.get(Tenant, client.tenant_id)
    if tenant is None or tenant.status != "active":
        raise InvalidGrant("The client's tenant is not active.")
    allowed = set((client.scope or "").split()) - {"openid", "profile", "email", "offline_access"}
    requested = list(dict.fromkeys((scope or "").split())) or sorted(allowed)
    if not set(requested) <= allowed:
        raise InvalidScope(f"Scopes not allowed: {' '.join(sorted(set(requested) - allowed))}.")
    tokens = services().tokens
    access = tokens.issue(
        subject=client.client_id,
        tenant_id=str(tenant.id),
        roles=[client.role],
        scope=" ".join(requested),
        client_id=client.client_id,
        amr=[],
    )
    return TokenResponse(access.token, access.expires_in, None, " ".join(requested))


def refresh_grant(session: Session, client: OAuthClient | None, presented: str | None) -> TokenResponse:
    """The ``refresh_token`` grant: rotation and reuse detection live in :func:`service.refresh`.

    A token issued to a registered client is only accepted from that client (authenticated when
    confidential); first-party tokens from ``POST /api/v1/auth/login`` need no client.
    """
    if not presented:
        raise InvalidRequest("refresh_token is required.")
    if client is None:
        return service.refresh(session, presented, None)
    if "refresh_token" not in (client.grant_types or []):
        raise UnauthorizedClient("The refresh_token grant is not enabled for this client.")
    return service.refresh(session, presented, client.client_id)
