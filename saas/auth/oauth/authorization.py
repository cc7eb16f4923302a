"""The authorization endpoint's logic (RFC 6749 section 4.1.1, OIDC Core section 3.1.2.1), held
to RFC 9700, for the hosted pages (:mod:`saas.auth.hosted`) that walk the user through it.

* ``response_type=code`` only; PKCE ``S256`` required for every client (RFC 7636; ``plain`` and
  missing challenges are refused, RFC 9700 section 2.1.1); the redirect URI matched exactly; an
  unknown client or redirect URI is an error page, never a redirect (RFC 9700 section 4.11.2);
  authorization responses carry ``iss`` (RFC 9207).
* Codes: 256 random bits, stored as SHA-256, one-time, at most 60 s; presenting a used code
  revokes the refresh-token family issued from it (RFC 6749 section 4.1.2; the token endpoint's
  side is :class:`saas.auth.oauth.grants.CodeGrant`).
* Third-party clients need the user's consent, once per tenant and scope.

The request is validated here rather than by Authlib's ``AuthorizationCodeGrant``: Authlib's
``CodeChallenge`` lets a request without a challenge through, and the hosted pages keep the
validated request between pages (:class:`AuthorizationRequest`).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from saas import audit
from saas.audit import AuditAction
from saas.auth.clients import SUPPORTED_SCOPES
from saas.auth.errors import AuthorizeRedirectError, ErrorPage
from saas.auth.models import AuthorizationCode, Consent, OAuthClient
from saas.db import utcnow
from saas.identity.models import Tenant, User
from saas.security import random_token, same_string, token_hash
from saas.services import services
from saas.settings import Settings

_PKCE_ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _settings() -> Settings:
    return services().settings


def with_query(uri: str, params: dict[str, str | None]) -> str:
    """``uri`` with ``params`` appended to its query (the registered query is kept)."""
    parts = urlsplit(uri)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


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
    id: str = field(default_factory=lambda: random_token(12))

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
        ErrorPage: unknown client, missing or unregistered redirect URI (no redirect).
        AuthorizeRedirectError: any other defect, reported to the verified redirect URI.
    """
    client_id = args.get("client_id")
    client = None
    if client_id and len(client_id) <= 64:
        client = session.scalars(select(OAuthClient).where(OAuthClient.client_id == client_id)).first()
    if client is None:
        raise ErrorPage("Unknown application", "The application asking you to sign in is not registered.")
    registered = list(client.redirect_uris or [])
    redirect_uri = args.get("redirect_uri")
    redirect_uri_given = redirect_uri is not None
    if redirect_uri is None and len(registered) == 1:
        redirect_uri = registered[0]
    if not redirect_uri or not any(same_string(redirect_uri, r) for r in registered):
        raise ErrorPage(
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
        AuditAction.OAUTH_CONSENT_GRANTED,
        target_type="oauth_client",
        target_id=client.client_id,
        actor=audit.Actor("user", str(user_id)),
        data={"scope": scope},
        tenant_id=tenant.id,
    )


def issue_code(
    session: Session,
    req: AuthorizationRequest,
    *,
    user: User,
    tenant: Tenant,
    auth_time: datetime,
    amr: list[str],
    browser_session_id: uuid.UUID | None = None,
) -> str:
    """Store a new authorization code and return it (to be sent once, in the redirect).
    ``browser_session_id``: the hosted sign-in it comes from (the ``sid`` of its ID tokens, and
    what ends its tokens and notifies the client when that sign-in ends)."""
    code = random_token()
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
            browser_session_id=browser_session_id,
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
