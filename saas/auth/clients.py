"""OAuth clients owned by tenants: registration rules, secrets, and client authentication.

* ``client_id``: ``c_`` + 128 random bits (URL-safe); ``client_secret``: ``cs_`` + 256 random
  bits, shown once, stored as SHA-256 (a fast hash suffices for a random 256-bit secret) and
  compared in constant time.
* Redirect URIs (RFC 9700 section 2.1, RFC 8252 section 7.3): absolute ``https`` URIs, or ``http``
  on a loopback address only (``127.0.0.1``, ``[::1]``, ``localhost``); no fragment, no wildcard.
  Matching at the authorization endpoint is exact string comparison.
* Client authentication at the token, revocation and introspection endpoints (RFC 6749 section
  2.3): ``client_secret_basic`` or ``client_secret_post`` for confidential clients, ``none``
  (``client_id`` only) for public ones.
* ``resource_server``: a confidential client an admin marks as an API that accepts the tenant's
  access tokens; only such a client (or the token's audience) learns anything from introspection
  (RFC 7662 section 4).
* Logout (docs/auth.md, "Logout"): ``post_logout_redirect_uris`` (OpenID Connect RP-Initiated
  Logout 1.0 section 3.1) follow the redirect URIs' rules and are matched exactly;
  ``backchannel_logout_uri`` (Back-Channel Logout 1.0 section 2.2) is ``https`` (``http`` on a
  loopback address only in development and test), without a fragment; an empty string removes it.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from flask import has_app_context
from sqlalchemy import select
from sqlalchemy.orm import Session

from saas.actions import ActionContext
from saas.audit import AuditAction
from saas.auth import backchannel, revocation
from saas.auth.models import OAuthClient, RefreshToken
from saas.auth.sessions import revoke_tokens
from saas.db import tenant_row, utcnow
from saas.errors import AppError, ErrorCode, ValidationError
from saas.rbac import ROLES
from saas.security import random_token, token_hash
from saas.services import services

CLIENT_TYPES = ("public", "confidential")
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
SUPPORTED_SCOPES = ("openid", "profile", "email", "offline_access", "api")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")


def validate_redirect_uri(uri: str) -> str | None:
    """Why ``uri`` cannot be registered, or None when it can."""
    if len(uri) > 2048:
        return "At most 2048 characters."
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "Not a URI."
    if parts.fragment or "#" in uri:
        return "A redirect URI must not have a fragment."
    if "*" in uri:
        return "Wildcards are not allowed; register each URI exactly."
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return None
    return "Use https, or http on a loopback address (127.0.0.1, [::1], localhost)."


def validate_client_fields(data: dict[str, Any], client_type: str) -> dict[str, Any]:
    """Normalise and check client fields; returns the cleaned values.

    Raises:
        ValidationError: per-field messages.
    """
    errors: dict[str, list[str]] = {}
    cleaned: dict[str, Any] = {}
    if "redirect_uris" in data:
        uris = list(dict.fromkeys(data["redirect_uris"] or []))
        bad = {str(i): [msg] for i, u in enumerate(uris) if (msg := validate_redirect_uri(u))}
        if bad:
            errors["redirect_uris"] = [f"{uris[int(i)]}: {m[0]}" for i, m in bad.items()]
        cleaned["redirect_uris"] = uris
    if "post_logout_redirect_uris" in data:
        uris = list(dict.fromkeys(data["post_logout_redirect_uris"] or []))
        bad = [f"{u}: {msg}" for u in uris if (msg := validate_redirect_uri(u))]
        if bad:
            errors["post_logout_redirect_uris"] = bad
        cleaned["post_logout_redirect_uris"] = uris
    if "backchannel_logout_uri" in data:
        uri = data["backchannel_logout_uri"] or None
        env = services().settings.env if has_app_context() else "production"
        if uri is not None and (msg := backchannel.validate_logout_uri(uri, env)):
            errors["backchannel_logout_uri"] = [msg]
        cleaned["backchannel_logout_uri"] = uri
    if "grant_types" in data:
        grants = list(dict.fromkeys(data["grant_types"] or []))
        unknown = [g for g in grants if g not in GRANT_TYPES]
        if unknown:
            errors["grant_types"] = [f"Unsupported: {', '.join(unknown)} (no implicit, no password grant)."]
        if client_type == "public" and "client_credentials" in grants:
            errors.setdefault("grant_types", []).append("Public clients cannot use client_credentials.")
        cleaned["grant_types"] = grants
    if "scope" in data:
        scopes = list(dict.fromkeys(str(data["scope"] or "").split()))
        unknown = [s for s in scopes if s not in SUPPORTED_SCOPES]
        if unknown:
            errors["scope"] = [f"Unknown scopes: {', '.join(unknown)}."]
        cleaned["scope"] = " ".join(scopes)
    if "role" in data:
        if data["role"] not in ROLES:
            errors["role"] = [f"One of {', '.join(ROLES)}."]
        cleaned["role"] = data["role"]
    for key in ("name", "first_party", "resource_server", "backchannel_logout_session_required"):
        if key in data:
            cleaned[key] = data[key]
    if cleaned.get("resource_server") and client_type != "confidential":
        # introspection needs client authentication (RFC 7662 section 2.1)
        errors["resource_server"] = ["Only confidential clients can be resource servers."]
    grants = cleaned.get("grant_types", data.get("grant_types") or [])
    uris = cleaned.get("redirect_uris", data.get("redirect_uris") or [])
    if "authorization_code" in grants and not uris and "redirect_uris" not in errors:
        errors["redirect_uris"] = ["The authorization_code grant needs at least one redirect URI."]
    if errors:
        raise ValidationError(errors)
    return cleaned


def to_public(client: OAuthClient) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "name": client.name,
        "client_type": client.client_type,
        "redirect_uris": list(client.redirect_uris or []),
        "grant_types": list(client.grant_types or []),
        "scope": client.scope,
        "role": client.role,
        "first_party": client.first_party,
        "resource_server": client.resource_server,
        "post_logout_redirect_uris": list(client.post_logout_redirect_uris or []),
        "backchannel_logout_uri": client.backchannel_logout_uri,
        "backchannel_logout_session_required": client.backchannel_logout_session_required,
        "token_endpoint_auth_method": "client_secret_basic" if client.is_confidential else "none",
        "secret_rotated_at": client.secret_rotated_at,
        "created_at": client.created_at,
        "updated_at": client.updated_at,
    }


def create_client(
    ctx: ActionContext, tenant_id: uuid.UUID, data: dict[str, Any], created_by: uuid.UUID | None
) -> tuple[OAuthClient, str | None]:
    """Register a client in the tenant; returns it and its secret (confidential only, shown once).
    Audited as ``client.created``."""
    session = ctx.session
    client_type = data.get("client_type", "confidential")
    defaults = {
        "grant_types": ["authorization_code", "refresh_token"],
        "scope": "openid profile email api",
        "role": "member",
        "first_party": False,
        "resource_server": False,
        "redirect_uris": [],
    }
    merged = {**defaults, **{k: v for k, v in data.items() if v is not None}}
    cleaned = validate_client_fields(merged, client_type)
    secret = f"cs_{random_token()}" if client_type == "confidential" else None
    client = OAuthClient(
        client_id=f"c_{random_token(16)}",
        tenant_id=tenant_id,
        client_type=client_type,
        secret_hash=token_hash(secret) if secret else None,
        secret_rotated_at=utcnow() if secret else None,
        created_by=created_by,
        **cleaned,
    )
    session.add(client)
    session.flush()
    ctx.record(
        AuditAction.CLIENT_CREATED,
        tenant_id=client.tenant_id,
        target_type="oauth_client",
        target_id=client.client_id,
        data={"name": client.name, "client_type": client_type, "grant_types": client.grant_types},
    )
    return client, secret


def get_client(session: Session, tenant_id: uuid.UUID, client_id: str) -> OAuthClient:
    """The tenant's client; another tenant's client is a 404 like a missing one."""
    return tenant_row(
        session, OAuthClient, tenant_id, client_id, key=OAuthClient.client_id, noun="client",
        detail="No such client.",
    )


def update_client(ctx: ActionContext, client: OAuthClient, data: dict[str, Any]) -> OAuthClient:
    """Change the fields in ``data`` (None leaves a field); audited as ``client.updated`` with
    the names of the fields that changed.

    Raises:
        ValidationError: a field is invalid for the client's type.
    """
    session = ctx.session
    merged = {
        "redirect_uris": client.redirect_uris,
        "grant_types": client.grant_types,
        **{k: v for k, v in data.items() if v is not None},
    }
    cleaned = validate_client_fields(merged, client.client_type)
    changed = sorted(k for k in data if cleaned.get(k) != getattr(client, k))
    for key in data:
        setattr(client, key, cleaned[key])
    session.flush()
    ctx.record(
        AuditAction.CLIENT_UPDATED,
        tenant_id=client.tenant_id,
        target_type="oauth_client",
        target_id=client.client_id,
        data={"fields": changed},
    )
    return client


def rotate_secret(ctx: ActionContext, client: OAuthClient) -> str:
    """A new secret (the old one stops working at once); audited as ``client.secret_rotated``.

    Raises:
        AppError: 409 ``public_client`` (public clients have no secret).
    """
    session = ctx.session
    if not client.is_confidential:
        raise AppError(
            "Public clients have no secret.", status=409, code=ErrorCode.PUBLIC_CLIENT, title="Public client"
        )
    secret = f"cs_{random_token()}"
    client.secret_hash = token_hash(secret)
    client.secret_rotated_at = utcnow()
    session.flush()
    ctx.record(
        AuditAction.CLIENT_SECRET_ROTATED,
        tenant_id=client.tenant_id,
        target_type="oauth_client",
        target_id=client.client_id,
    )
    return secret


def delete_client(ctx: ActionContext, client: OAuthClient) -> None:
    """Delete the client and revoke every refresh token issued to it; its access tokens (of
    every session, and its ``client_credentials`` ones) stop once this commits."""
    session = ctx.session
    revoke_tokens(session, RefreshToken.client_id == client.client_id, reason="client_deleted")
    if client.tenant_id is not None:
        revocation.revoke_client(session, client.tenant_id, client.client_id)
    ctx.record(
        AuditAction.CLIENT_DELETED,
        tenant_id=client.tenant_id,
        target_type="oauth_client",
        target_id=client.client_id,
    )
    session.delete(client)
    session.flush()


def find_client(session: Session, client_id: str | None) -> OAuthClient | None:
    if not client_id or len(client_id) > 64:
        return None
    return session.scalars(select(OAuthClient).where(OAuthClient.client_id == client_id)).first()
