"""Refresh tokens, grouped in families (one family per login session).

Only the SHA-256 of a token is stored. Each use rotates the token (a child in the same family);
presenting a used token after the grace period revokes the whole family (RFC 9700 section 4.14.2).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from authlib.oauth2.rfc6749 import ClientMixin
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from saas import security
from saas.db import SharedBase, utcnow
from saas.identity.models import JSONType, Tenant, User


class RefreshToken(SharedBase):
    __tablename__ = "refresh_tokens"
    __table_args__ = (
        Index("ix_refresh_tokens_family_id", "family_id"),
        Index("ix_refresh_tokens_user_tenant", "user_id", "tenant_id"),
        Index(
            "ix_refresh_tokens_browser_session_id",
            "browser_session_id",
            postgresql_where=text("browser_session_id IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    family_id: Mapped[uuid.UUID] = mapped_column()
    parent_id: Mapped[uuid.UUID | None] = mapped_column()
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id, ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"))
    client_id: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(1024), default="")
    auth_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    amr: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    family_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_reason: Mapped[str | None] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    #: the hosted pages' sign-in the family came from (a code flow), so that ending that
    #: browser session ends the family and notifies its client (OIDC Back-Channel Logout 1.0)
    browser_session_id: Mapped[uuid.UUID | None] = mapped_column()


class OAuthClient(SharedBase, ClientMixin):
    """An OAuth 2.0 client registered by a tenant (RFC 6749 section 2).

    ``client_type`` is ``public`` (SPA, mobile: no secret, PKCE only) or ``confidential`` (has a
    secret, stored as its SHA-256 only; the secret is 256 random bits so a fast hash is enough).
    ``redirect_uris`` are matched exactly (RFC 9700 section 2.1). ``role`` is the tenant role a
    ``client_credentials`` token acts with; ``first_party`` clients skip the consent page.
    ``resource_server`` (confidential clients only) lets the client introspect its tenant's
    tokens (RFC 7662 section 4); any other client learns only ``{"active": false}``.
    """

    __tablename__ = "oauth_clients"
    __table_args__ = (Index("ix_oauth_clients_tenant_id", "tenant_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    #: the owning tenant; NULL for a platform client (the operator's own apps, registered with
    #: ``saas clients create``), whose users pick a tenant on the hosted pages
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    client_type: Mapped[str] = mapped_column(String(16))  # public | confidential
    secret_hash: Mapped[str | None] = mapped_column(String(64))
    secret_rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    redirect_uris: Mapped[list[str]] = mapped_column(JSONType, default=list)
    grant_types: Mapped[list[str]] = mapped_column(JSONType, default=list)
    scope: Mapped[str] = mapped_column(String(1024), default="openid profile email api")
    role: Mapped[str] = mapped_column(String(32), default="member")
    first_party: Mapped[bool] = mapped_column(Boolean, default=False)
    resource_server: Mapped[bool] = mapped_column(Boolean, default=False)
    #: OpenID Connect RP-Initiated Logout 1.0 section 3.1: where the hosted logout may send the
    #: browser back, matched exactly
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(
        JSONType, default=list, server_default=text("'[]'")
    )
    #: OpenID Connect Back-Channel Logout 1.0 section 2.2: the client's logout endpoint
    backchannel_logout_uri: Mapped[str | None] = mapped_column(String(2048))
    backchannel_logout_session_required: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    created_by: Mapped[uuid.UUID | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    @property
    def is_confidential(self) -> bool:
        return self.client_type == "confidential"

    # --- Authlib ClientMixin (used by saas.auth.oauth.server) ---

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        uris = list(self.redirect_uris or [])
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str) -> str:
        allowed = set((self.scope or "").split())
        return " ".join(s for s in (scope or "").split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        if not isinstance(redirect_uri, str):
            return False
        return any(security.same_string(redirect_uri, uri) for uri in (self.redirect_uris or []))

    def check_client_secret(self, client_secret: str) -> bool:
        if not self.secret_hash or not client_secret:
            return False
        return security.same_string(self.secret_hash, security.token_hash(client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        """Confidential clients authenticate with their secret; public ones with ``none`` only
        (and never at the introspection endpoint)."""
        if self.is_confidential:
            return method in ("client_secret_basic", "client_secret_post")
        return method == "none" and endpoint != "introspection"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in (self.grant_types or [])


class AuthorizationCode(SharedBase):
    """A one-time authorization code (RFC 6749 section 4.1.2), stored as its SHA-256.

    Bound to the client, the exact redirect URI, the PKCE S256 challenge (RFC 7636) and the OIDC
    ``nonce``. ``family_id`` is the refresh-token family issued from it, revoked if the code is
    presented again (RFC 6749 section 4.1.2, RFC 9700 section 4.5).
    """

    __tablename__ = "authorization_codes"
    __table_args__ = (
        # ending a browser sign-in finds the clients that redeemed a code from it
        Index(
            "ix_authorization_codes_browser_session_id",
            "browser_session_id",
            postgresql_where=text("browser_session_id IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"), index=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id, ondelete="CASCADE"))
    redirect_uri: Mapped[str] = mapped_column(String(2048))
    scope: Mapped[str] = mapped_column(String(1024), default="")
    nonce: Mapped[str | None] = mapped_column(String(512))
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(8), default="S256")
    auth_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    amr: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    family_id: Mapped[uuid.UUID | None] = mapped_column()
    #: the browser sign-in the code was issued from (its refresh family inherits it)
    browser_session_id: Mapped[uuid.UUID | None] = mapped_column()

    # --- Authlib AuthorizationCodeMixin ---

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


class MfaFactor(SharedBase):
    """A TOTP factor of a user (RFC 6238). The shared secret is encrypted (AES-256-GCM, key derived
    from ``SECRET_KEY``); ``last_step`` is the last accepted time step (replay protection);
    ``failed_count`` / ``locked_until`` implement the 5-strikes lockout."""

    __tablename__ = "mfa_factors"
    __table_args__ = (Index("ix_mfa_factors_user_id", "user_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id, ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), default="totp")
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | active
    secret_encrypted: Mapped[str] = mapped_column(String(512))
    last_step: Mapped[int | None] = mapped_column(BigInteger)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RecoveryCode(SharedBase):
    """A single-use MFA recovery code (50 random bits), stored as a keyed hash.

    ``hash_scheme`` ``hmac-sha256``: ``code_hash`` is HMAC-SHA256, under a server key, of the
    user id and the code's SHA-256 (:mod:`saas.auth.mfa`). ``sha256``: a row from before, the
    plain SHA-256 of the code, rewritten to ``hmac-sha256`` without the code.
    """

    __tablename__ = "mfa_recovery_codes"
    __table_args__ = (Index("ix_mfa_recovery_codes_user_id", "user_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id, ondelete="CASCADE"))
    code_hash: Mapped[str] = mapped_column(String(64))
    hash_scheme: Mapped[str] = mapped_column(String(16), default="hmac-sha256")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Consent(SharedBase):
    """A user's consent to a third-party client for some scopes inside one tenant."""

    __tablename__ = "oauth_consents"
    __table_args__ = (UniqueConstraint("user_id", "tenant_id", "client_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id, ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"))
    client_id: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(1024), default="")
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BrowserSession(SharedBase):
    """A browser's sign-in on the hosted pages: the ``saas_auth`` cookie carries only its id.

    Logout, an admin's "revoke all sessions", an account lock and a password change set
    ``ended_at``; an ended, expired (``expires_at``, 12 h after the sign-in) or idle (the
    tenant's ``session_idle_minutes`` since ``last_seen_at``) row signs nobody in, so its cookie
    gets no more codes, ``prompt=none`` included (``login_required``).
    """

    __tablename__ = "browser_sessions"
    __table_args__ = (Index("ix_browser_sessions_user_id", "user_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id, ondelete="CASCADE"))
    auth_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    amr: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_reason: Mapped[str | None] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))


class AccountToken(SharedBase):
    """A single-use token mailed to prove a mailbox or to reset a password, stored as its SHA-256.

    ``purpose``: ``password_reset`` (``PASSWORD_RESET_TTL``), ``email_verification`` or
    ``email_change`` (``EMAIL_VERIFICATION_TTL``). ``email`` is the address the link was mailed
    to: a verification holds only while it is still the account's address, and an email change
    moves the account to it. A token is spent once (``used_at``); issuing a newer token of the
    same purpose, or any change of the password, voids the live ones (``voided_at``).
    """

    __tablename__ = "account_tokens"
    __table_args__ = (Index("ix_account_tokens_user_purpose", "user_id", "purpose"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id, ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(32))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    voided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebAuthnCredential(SharedBase):
    """A passkey or security key of a user (W3C WebAuthn Level 2, section 6.1 "credential record").

    ``credential_id`` and ``public_key`` (COSE) are the authenticator's; ``sign_count`` the last
    signature counter seen (section 6.1.1: a counter that does not grow marks a possible clone);
    ``aaguid`` names the authenticator model; ``discoverable`` (a resident key) lets it sign in
    without a user name; ``backup_eligible``/``backed_up`` are the BE/BS flags (a synced passkey).
    """

    __tablename__ = "webauthn_credentials"
    __table_args__ = (Index("ix_webauthn_credentials_user_id", "user_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id, ondelete="CASCADE"))
    credential_id: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    aaguid: Mapped[str] = mapped_column(String(36), default="00000000-0000-0000-0000-000000000000")
    name: Mapped[str] = mapped_column(String(100))
    transports: Mapped[list[str]] = mapped_column(JSONType, default=list)
    discoverable: Mapped[bool] = mapped_column(Boolean, default=False)
    backup_eligible: Mapped[bool] = mapped_column(Boolean, default=False)
    backed_up: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: set when the signature counter went backwards (section 6.1.1): the credential signs in
    #: no more until its owner deletes it and registers again
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class KnownDevice(SharedBase):
    """A device an account has signed in from: the first sign-in from a device not listed here
    mails the owner (the new-device notice). ``device_hash`` is an HMAC of the device's
    identifier (never stored in clear)."""

    __tablename__ = "known_devices"
    __table_args__ = (UniqueConstraint("user_id", "device_hash"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id, ondelete="CASCADE"))
    device_hash: Mapped[str] = mapped_column(String(64))
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))


class BackchannelLogoutAttempt(SharedBase):
    """One delivery attempt of a logout token to a client's ``backchannel_logout_uri`` (OpenID
    Connect Back-Channel Logout 1.0 section 2.5): the outbox message, the HTTP status (None when
    no answer came) and the error. Every attempt is kept, successful or not."""

    __tablename__ = "backchannel_logout_attempts"
    __table_args__ = (Index("ix_backchannel_logout_attempts_client_id", "client_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    outbox_id: Mapped[int | None] = mapped_column(BigInteger)
    client_id: Mapped[str] = mapped_column(String(64))
    sid: Mapped[str | None] = mapped_column(String(64))
    sub: Mapped[str | None] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# --- API keys (saas.auth.api_keys; docs/auth.md, "API keys") ----------------------------------


class ApiKey(SharedBase):
    """A personal API key: a long-lived bearer credential of one member in one tenant, holding
    at most its creator's permissions (the intersection is taken again on every request).

    Only ``key_hash``, the SHA-256 (hex) of the whole key, is stored; ``prefix`` is the key's
    first characters (``saas_pat_`` and 6 of its random ones), enough to recognise it in a list.
    ``last_used_at`` is written at most once a minute (:func:`saas.auth.api_keys.touch`)."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_tenant_created_by", "tenant_id", "created_by"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"))
    created_by: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id, ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    permissions: Mapped[list[str]] = mapped_column(JSONType, default=list)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_by: Mapped[uuid.UUID | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
