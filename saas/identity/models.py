"""The control plane's directory: who exists and where they belong.

``users`` (one global identity per person, across tenants), ``tenants`` (a customer
organisation and its schema), ``memberships`` (a user's role in a tenant), ``invitations`` and
``verified_domains`` (the DNS domains a tenant claims and has proved it controls).
Every layer reads these tables, so this module imports nothing above :mod:`saas.db`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, String, Text, UniqueConstraint, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from saas.db import JSONType, SharedBase, utcnow
from saas.errors import ErrorCode, NotFound
from saas.identity.slugs import normalize_slug


class User(SharedBase):
    """A person. ``email`` is unique case-insensitively; ``password_hash`` is argon2id (or NULL
    for an invited user who has not accepted yet). ``email_verified_at`` is when the mailbox was
    proved (a verification link, an invitation's mailed link, an email change's link); NULL
    until then, so ``email_verified`` is false (OpenID Connect Core section 5.1)."""

    __tablename__ = "users"
    __table_args__ = (Index("uq_users_email_lower", text("lower(email)"), unique=True),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | locked
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    email_verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def email_verified(self) -> bool:
        return self.email_verified_at is not None

    def to_public(self) -> dict:
        return {
            "id": str(self.id),
            "email": self.email,
            "email_verified": self.email_verified,
            "name": self.name,
            "created_at": self.created_at,
        }


class Tenant(SharedBase):
    """A customer organisation. ``schema_name`` is derived from ``id`` (``t_<hex>``)."""

    __tablename__ = "tenants"
    __table_args__ = (
        Index("ix_tenants_purge_after", "purge_after", postgresql_where=text("purge_after IS NOT NULL")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    schema_name: Mapped[str] = mapped_column(String(63), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | suspended
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    plan: Mapped[str] = mapped_column(String(32), default="free")
    schema_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # operations (saas.ops.lifecycle): suspension and scheduled deletion
    suspended_reason: Mapped[str | None] = mapped_column(Text)
    suspended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    purge_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def to_public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "slug": self.slug,
            "name": self.name,
            "status": self.status,
            "plan": self.plan,
            "settings": self.settings or {},
            "created_at": self.created_at,
        }


class Membership(SharedBase):
    """A user's place in a tenant: one ``role`` and a ``status``: invited | active | suspended
    (a directory deactivated them: SCIM ``active: false``; no access, no seat)."""

    __tablename__ = "memberships"
    __table_args__ = (
        UniqueConstraint("user_id", "tenant_id"),
        Index("ix_memberships_tenant_id", "tenant_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id, ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="active")  # invited | active | suspended
    invited_by: Mapped[uuid.UUID | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    user: Mapped[User] = relationship(lazy="joined")
    tenant: Mapped[Tenant] = relationship()


class Invitation(SharedBase):
    """A pending invitation. Only the SHA-256 of the token is stored; the token is shown once."""

    __tablename__ = "invitations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    membership_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey(Membership.id, ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    membership: Mapped[Membership] = relationship()


class VerifiedDomain(SharedBase):
    """A DNS domain a tenant claims (``verified_at`` NULL: pending) or has proved it controls by
    publishing ``TXT _saas-challenge.<domain> "saas-domain-verification=<token>"`` (RFC 1035
    section 3.3.14). ``domain`` is normalised (lowercase A-labels, no trailing dot).

    One tenant per domain: several tenants may hold pending claims, but the partial unique index
    ``uq_verified_domains_domain_verified`` lets only one row per domain be verified, so the first
    tenant to verify wins even when two verify at once. The token is not a secret (anyone can read
    the published record); it ties the record to this claim."""

    __tablename__ = "verified_domains"
    __table_args__ = (
        UniqueConstraint("tenant_id", "domain", name="uq_verified_domains_tenant_domain"),
        Index(
            "uq_verified_domains_domain_verified",
            "domain",
            unique=True,
            postgresql_where=text("verified_at IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"))
    domain: Mapped[str] = mapped_column(String(253))
    token: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[uuid.UUID | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SsoConnection(SharedBase):
    """A tenant's enterprise identity provider (docs/auth.md, "Per-tenant SSO"): ``type`` is
    ``oidc`` (OpenID Connect Core 1.0, authorization code with PKCE) or ``saml`` (SAML 2.0 Web
    Browser SSO profile). ``config`` holds the protocol's public settings (an OIDC issuer and
    client id; a SAML IdP's entity id, SSO URL and signing certificates, and its metadata);
    ``secret_encrypted`` the one secret (an OIDC client secret), AES-256-GCM sealed with the
    connection id as associated data, never returned. ``domains`` are verified domains of the
    tenant whose users home realm discovery sends here. ``role_mapping`` maps an IdP group (or
    attribute value) to a role; ``default_role`` is the role of a just-in-time member."""

    __tablename__ = "sso_connections"
    __table_args__ = (Index("ix_sso_connections_tenant_id", "tenant_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(16))  # oidc | saml
    name: Mapped[str] = mapped_column(String(200), default="")
    enabled: Mapped[bool] = mapped_column(default=True)
    domains: Mapped[list[str]] = mapped_column(JSONType, default=list)
    default_role: Mapped[str] = mapped_column(String(64), default="member")
    role_mapping: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    secret_encrypted: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[uuid.UUID | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class ExternalIdentity(SharedBase):
    """A user's identity at an outside provider, linked to their account: ``provider`` is
    ``sso:<connection id>`` (then ``connection_id`` is set) or ``social:<name>`` (Google, GitHub,
    Microsoft, any OIDC issuer of ``SOCIAL_PROVIDERS``); ``subject`` the provider's stable id of
    the user (OIDC ``sub``, OpenID Connect Core section 2; a SAML ``NameID``). A returning user is
    found by (provider, subject), never by email alone."""

    __tablename__ = "external_identities"
    __table_args__ = (
        UniqueConstraint("provider", "subject", name="uq_external_identities_provider_subject"),
        Index("ix_external_identities_user_id", "user_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id, ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(80))
    subject: Mapped[str] = mapped_column(String(512))
    connection_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(SsoConnection.id, ondelete="CASCADE"))
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def find_tenant(session: Session, ref: str, *, for_update: bool = False) -> Tenant:
    """The tenant with slug or id ``ref``.

    Raises:
        NotFound: no such tenant (``tenant_not_found``).
    """
    query = select(Tenant)
    try:
        query = query.where(Tenant.id == uuid.UUID(ref))
    except ValueError:
        query = query.where(Tenant.slug == normalize_slug(ref))
    if for_update:
        query = query.with_for_update()
    tenant = session.scalars(query).first()
    if tenant is None:
        raise NotFound(f"No tenant {ref!r}.", code=ErrorCode.TENANT_NOT_FOUND)
    return tenant


# --- custom roles (saas.tenancy.roles; docs/auth.md, "Custom roles") ---------------------------


class CustomRole(SharedBase):
    """A tenant's own role: a named set of permissions of the registry (:data:`saas.rbac.PERMISSIONS`).

    ``name`` is a slug (``support-agent``), unique in the tenant and never a built-in role's
    name, so ``Membership.role`` names either a built-in role or one of these. ``permissions``
    is a sorted JSON list of permission strings. The cached principal
    (:mod:`saas.auth.principals`) reads it with the membership, in the same query."""

    __tablename__ = "custom_roles"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_custom_roles_tenant_name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(String(500), default="")
    permissions: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_by: Mapped[uuid.UUID | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


def custom_role_permissions(
    session: Session, tenant_id: uuid.UUID, name: str, *, lock: bool = False
) -> frozenset[str] | None:
    """The permissions of the tenant's custom role ``name``; None when it has no such role.
    ``lock``: hold the row ``FOR SHARE`` until the transaction ends, so a concurrent delete
    (which moves the role's members) waits for an assignment of it."""
    query = select(CustomRole.permissions).where(CustomRole.tenant_id == tenant_id, CustomRole.name == name)
    if lock:
        query = query.with_for_update(read=True)
    row = session.execute(query).first()
    return None if row is None else frozenset(row[0] or ())
