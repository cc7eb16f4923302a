"""The OAuth 2.1 / OpenID Connect provider's grant logic, held to RFC 9700 (OAuth 2.0 Security BCP).

* Authorization requests (RFC 6749 section 4.1.1, OIDC Core section 3.1.2.1): ``response_type=code``
  only; PKCE ``S256`` required for every client (RFC 7636; ``plain`` and missing challenges are
  refused, RFC 9700 section 2.1.1); the redirect URI matched exactly; an unknown client or
  redirect URI is an error page, never a redirect (RFC 9700 section 4.11.2); authorization
  responses carry ``iss`` (RFC 9207).
* Codes: 256 random bits, stored as SHA-256, one-time, at most 60 s; presenting a used code
  revokes the refresh-token family issued from it (RFC 6749 section 4.1.2).
* Grants at the token endpoint: ``authorization_code``, ``refresh_token`` (rotation + reuse
  detection in :mod:`saas.auth.service`), ``client_credentials`` (confidential tenant clients
  as service accounts). No implicit, no password grant.
* Revocation (RFC 7009) and introspection (RFC 7662: only a resource server of the token's
  tenant, or the token's audience, sees it; section 4).
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from saas import audit
from saas.auth import service
from saas.auth.clients import SUPPORTED_SCOPES
from saas.auth.models import AuthorizationCode, Consent, OAuthClient, RefreshToken
from saas.auth.service import InvalidGrant, TokenResponse, token_hash
from saas.db import utcnow
from saas.errors import AppError, Unauthorized
from saas.identity.models import User
from saas.services import services
from saas.settings import Settings
from saas.tenancy.models import Tenant

_PKCE_ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class AuthorizeErrorPage(Exception):
    """The authorization request cannot be trusted enough to redirect: show an error page."""

    def __init__(self, title: str, detail: str):
        super().__init__(detail)
        self.title = title
        self.detail = detail


class AuthorizeRedirectError(Exception):
    """An error returned to the client at its (verified) redirect URI (RFC 6749 section 4.1.2.1)."""

    def __init__(self, redirect_uri: str, error: str, description: str, state: str | None):
        super().__init__(description)
        self.redirect_uri = redirect_uri
        self.error = error
        self.description = description
        self.state = state


class UnsupportedGrantType(AppError):
    status, code, title = 400, "unsupported_grant_type", "Unsupported grant type"


class InvalidRequest(AppError):
    status, code, title = 400, "invalid_request", "Invalid request"


class InvalidScope(AppError):
    status, code, title = 400, "invalid_scope", "Invalid scope"


class UnauthorizedClient(AppError):
    status, code, title = 400, "unauthorized_client", "Unauthorized client"


def _settings() -> Settings:
    return services().settings


def with_query(uri: str, params: dict[str, str | None]) -> str:
    """``uri`` with ``params`` appended to its query (the registered query is kept)."""
    parts = urlsplit(uri)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def same_string(a: str, b: str) -> bool:
    """Constant-time equality of two strings of any characters (``hmac.compare_digest`` raises
    ``TypeError`` on non-ASCII ``str``; UTF-8 bytes never do)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def valid_pkce_value(value: str | None, min_len: int = 43, max_len: int = 128) -> bool:
    """RFC 7636 section 4.1/4.2: 43..128 characters of ``[A-Z a-z 0-9 - . _ ~]``."""
    return bool(value) and min_len <= len(value) <= max_len and set(value) <= _PKCE_ALPHABET


# --- authorization requests ---------------------------------------------------------------------


@dataclass
class AuthorizationRequest:
    """A validated authorization request, kept in the hosted-pages session between pages."""

    client_id: str
    redirect_uri: str
    scope: str
    state: str | None
    nonce: str | None
    code_challenge: str
    prompt: str | None = None
    max_age: int | None = None
    tenant_id: str | None = None
    #: False when the request omitted ``redirect_uri`` (the single registered one is used): the
    #: token request then needs none (RFC 6749 section 4.1.3)
    redirect_uri_given: bool = True
    id: str = field(default_factory=lambda: secrets.token_urlsafe(12))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuthorizationRequest:
        return cls(**data)


def parse_authorization_request(
    session: Session, args: dict[str, str]
) -> tuple[AuthorizationRequest, OAuthClient]:
    """Validate ``GET /oauth/authorize`` parameters.

    Raises:
        AuthorizeErrorPage: unknown client, missing or unregistered redirect URI (no redirect).
        AuthorizeRedirectError: any other defect, reported to the verified redirect URI.
    """
    client_id = args.get("client_id")
    client = None
    if client_id and len(client_id) <= 64:
        client = session.scalars(select(OAuthClient).where(OAuthClient.client_id == client_id)).first()
    if client is None:
        raise AuthorizeErrorPage(
            "Unknown application", "The application asking you to sign in is not registered."
        )
    registered = list(client.redirect_uris or [])
    redirect_uri = args.get("redirect_uri")
    redirect_uri_given = redirect_uri is not None
    if redirect_uri is None and len(registered) == 1:
        redirect_uri = registered[0]
    if not redirect_uri or not any(same_string(redirect_uri, r) for r in registered):
        raise AuthorizeErrorPage(
            "Invalid redirect URI", "The redirect URI does not match any registered for this application."
        )
    state = args.get("state")
    if state is not None and len(state) > 1024:
        raise AuthorizeRedirectError(redirect_uri, "invalid_request", "state is too long.", None)

    def fail(error: str, description: str) -> AuthorizeRedirectError:
        return AuthorizeRedirectError(redirect_uri, error, description, state)

    if "authorization_code" not in (client.grant_types or []):
        raise fail("unauthorized_client", "This client may not use the authorization code flow.")
    response_type = args.get("response_type")
    if response_type != "code":
        raise fail("unsupported_response_type", "Only response_type=code is supported.")
    challenge, method = args.get("code_challenge"), args.get("code_challenge_method")
    if not challenge:
        raise fail(
            "invalid_request", "PKCE is required: send code_challenge with code_challenge_method=S256."
        )
    if method != "S256":
        raise fail("invalid_request", "Only code_challenge_method=S256 is accepted.")
    if not valid_pkce_value(challenge, 43, 43):
        raise fail("invalid_request", "code_challenge must be a base64url SHA-256 (43 characters).")
    requested = list(dict.fromkeys((args.get("scope") or "").split()))
    allowed = set((client.scope or "").split())
    if not requested:
        requested = [s for s in ("openid", "api") if s in allowed] or sorted(allowed)
    bad = [s for s in requested if s not in allowed or s not in SUPPORTED_SCOPES]
    if bad:
        raise fail("invalid_scope", f"Scopes not allowed for this client: {' '.join(bad)}.")
    nonce = args.get("nonce")
    if nonce is not None and len(nonce) > 512:
        raise fail("invalid_request", "nonce is too long.")
    prompt = args.get("prompt")
    if prompt and prompt not in ("login", "consent", "none", "select_account"):
        raise fail("invalid_request", "Unsupported prompt value.")
    max_age = args.get("max_age")
    try:
        max_age_int = int(max_age) if max_age is not None else None
        if max_age_int is not None and max_age_int < 0:
            raise ValueError
    except ValueError:
        raise fail("invalid_request", "max_age must be a non-negative integer.") from None
    return (
        AuthorizationRequest(
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            scope=" ".join(requested),
            state=state,
            nonce=nonce,
            code_challenge=challenge,
            prompt=prompt,
            max_age=max_age_int,
            redirect_uri_given=redirect_uri_given,
        ),
        client,
    )


def needs_consent(
    session: Session, client: OAuthClient, user_id: uuid.UUID, tenant_id: uuid.UUID, scope: str
) -> bool:
    """Third-party clients need the user's consent for every requested scope (once per tenant)."""
    if client.first_party:
        return False
    consent = session.scalars(
        select(Consent).where(
            Consent.user_id == user_id, Consent.tenant_id == tenant_id, Consent.client_id == client.client_id
        )
    ).first()
    return consent is None or not set(scope.split()) <= set(consent.scope.split())


def grant_consent(
    session: Session, client: OAuthClient, user_id: uuid.UUID, tenant: Tenant, scope: str
) -> None:
    consent = session.scalars(
        select(Consent).where(
            Consent.user_id == user_id, Consent.tenant_id == tenant.id, Consent.client_id == client.client_id
        )
    ).first()
    if consent is None:
        consent = Consent(user_id=user_id, tenant_id=tenant.id, client_id=client.client_id, scope="")
        session.add(consent)
    consent.scope = " ".join(sorted(set(consent.scope.split()) | set(scope.split())))
    consent.granted_at = utcnow()
    audit.record(
        session,
        "oauth.consent_granted",
        target_type="oauth_client",
        target_id=client.client_id,
        actor=audit.Actor("user", str(user_id)),
        data={"scope": scope},
        schema=tenant.schema_name,
    )


def issue_code(
    session: Session,
    req: AuthorizationRequest,
    *,
    user: User,
    tenant: Tenant,
    auth_time: datetime,
    amr: list[str],
) -> str:
    """Store a new authorization code and return it (to be sent once, in the redirect)."""
    code = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        AuthorizationCode(
            code_hash=token_hash(code),
            client_id=req.client_id,
            tenant_id=tenant.id,
            user_id=user.id,
            # "" records that the authorization request carried no redirect_uri
            redirect_uri=req.redirect_uri if req.redirect_uri_given else "",
            scope=req.scope,
            nonce=req.nonce,
            code_challenge=req.code_challenge,
            code_challenge_method="S256",
            auth_time=auth_time,
            amr=amr,
            created_at=now,
            expires_at=now + timedelta(seconds=_settings().authorization_code_ttl_seconds),
        )
    )
    session.flush()
    return code


def success_redirect(req: AuthorizationRequest, code: str) -> str:
    """The authorization response (RFC 6749 section 4.1.2 with RFC 9207 ``iss``)."""
    return with_query(req.redirect_uri, {"code": code, "state": req.state, "iss": _settings().issuer})


def error_redirect(err: AuthorizeRedirectError) -> str:
    return with_query(
        err.redirect_uri,
        {
            "error": err.error,
            "error_description": err.description,
            "state": err.state,
            "iss": _settings().issuer,
        },
    )


# --- token endpoint grants ----------------------------------------------------------------------


def _active_membership(session: Session, user_id: uuid.UUID, tenant_id: uuid.UUID):
    return service.membership_of(session, user_id, tenant_id, usable=True)


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


# --- revocation and introspection -------------------------------------------------------------


def _refresh_row(session: Session, token: str) -> RefreshToken | None:
    return session.scalars(select(RefreshToken).where(RefreshToken.token_hash == token_hash(token))).first()


def _may_introspect(client: OAuthClient, audience: Any, tenant_id: str | None) -> bool:
    """Whether ``client`` is a resource server allowed to see a token (RFC 7662 section 4): the
    token's audience (``aud`` names the client), or a client its tenant marked as a resource
    server (``resource_server``) asking about a token of that same tenant. Any other client,
    even the one the token was issued to, is told nothing."""
    audiences = audience if isinstance(audience, list) else [audience]
    if client.client_id in audiences:
        return True
    if not client.resource_server or client.tenant_id is None:
        return False
    return tenant_id == str(client.tenant_id)


def revoke(session: Session, client: OAuthClient, token: str | None) -> None:
    """RFC 7009: revoke a refresh token (its whole family) or the session behind an access token
    (its ``sid``; the session's access tokens stop too, :mod:`saas.auth.revocation`). Unknown
    or foreign tokens are ignored (200 either way, section 2.2);
    ``token_type_hint`` is unnecessary since both kinds are recognised by shape."""
    if not token:
        raise InvalidRequest("token is required.")
    row = _refresh_row(session, token)
    if row is None and token.count(".") == 2:
        try:
            claims = services().tokens.verify(token)
        except Unauthorized:
            claims = None
        if claims and claims.get("client_id") == client.client_id and claims.get("sid"):
            try:
                family = uuid.UUID(str(claims["sid"]))
            except ValueError:
                return
            row = session.scalars(select(RefreshToken).where(RefreshToken.family_id == family)).first()
    if row is None or row.client_id != client.client_id:
        return
    if service.revoke_family(session, row.family_id, "revoked_by_client"):
        tenant = session.get(Tenant, row.tenant_id)
        if tenant is not None:
            audit.record(
                session,
                "auth.token_revoked",
                target_type="session",
                target_id=row.family_id,
                actor=audit.Actor("client", client.client_id),
                schema=tenant.schema_name,
            )


def introspect(session: Session, client: OAuthClient, token: str | None) -> dict[str, Any]:
    """RFC 7662 section 2.2. ``{"active": false}`` for anything invalid, revoked or expired, and
    for a caller that is not a resource server allowed to see the token (:func:`_may_introspect`;
    section 4): the same answer as for an unknown token, so a plain client cannot even tell that
    a token is live, let alone read its owner's roles."""
    if not token:
        raise InvalidRequest("token is required.")
    inactive = {"active": False}
    if token.count(".") == 2:
        try:
            claims = services().tokens.verify(token)
        except Unauthorized:
            return inactive
        if not _may_introspect(client, claims.get("aud"), str(claims.get("tid"))):
            return inactive
        if claims.get("sub") == claims.get("client_id"):
            owner = session.scalars(select(OAuthClient.id).where(OAuthClient.client_id == claims["sub"]))
            if owner.first() is None:
                return inactive  # a deleted client's service-account token
        sid = claims.get("sid")
        if sid:
            try:
                family = uuid.UUID(str(sid))
            except ValueError:
                return inactive
            revoked = session.scalars(
                select(RefreshToken.id).where(
                    RefreshToken.family_id == family, RefreshToken.revoked_at.is_not(None)
                )
            ).first()
            if revoked is not None:
                return inactive
        keep = (
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
        return {"active": True, "token_type": "Bearer", **{k: claims[k] for k in keep if k in claims}}
    row = _refresh_row(session, token)
    now = utcnow()
    if (
        row is None
        or row.revoked_at is not None
        or row.used_at is not None
        or row.expires_at <= now
        or not _may_introspect(client, None, str(row.tenant_id))
    ):
        return inactive
    return {
        "active": True,
        "token_type": "refresh_token",
        "scope": row.scope,
        "client_id": row.client_id,
        "sub": str(row.user_id),
        "tid": str(row.tenant_id),
        "exp": int(row.expires_at.timestamp()),
        "iat": int(row.created_at.timestamp()),
        "iss": _settings().issuer,
    }


# --- discovery ---------------------------------------------------------------------------------


def server_metadata() -> dict[str, Any]:
    """Authorization server metadata (RFC 8414 section 2) that is also valid OIDC Discovery 1.0
    metadata: both well-known documents serve this one dictionary."""
    issuer = _settings().issuer  # normalised (no trailing slash) by Settings
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth/authorize",
        "token_endpoint": f"{issuer}/oauth/token",
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "introspection_endpoint": f"{issuer}/oauth/introspect",
        "userinfo_endpoint": f"{issuer}/oauth/userinfo",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": list(SUPPORTED_SCOPES),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "claims_supported": [
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "acr",
            "amr",
            "azp",
            "at_hash",
            "sid",
            "tid",
            "email",
            "name",
        ],
        "acr_values_supported": ["urn:saas:acr:pwd", "urn:saas:acr:mfa"],
        "prompt_values_supported": ["login", "consent", "none", "select_account"],
        "authorization_response_iss_parameter_supported": True,
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
    }
