"""SCIM 2.0 provisioning's tables (schema ``saas``): the tenants' bearer tokens, their settings,
and what a directory said about the users and groups it provisioned.

A SCIM User is a membership of the tenant (:class:`~saas.identity.models.User` and
:class:`~saas.identity.models.Membership`); :class:`ScimUser` keeps the directory's side of it
(``userName``, ``externalId``, the attributes as last written, a version counter for the weak
``ETag``, RFC 7644 section 3.14). A SCIM Group (:class:`ScimGroup`) maps to a role.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from saas.db import JSONType, SharedBase, utcnow
from saas.identity.models import Tenant, User


class ScimToken(SharedBase):
    """A tenant's SCIM bearer token (RFC 7644 section 2: OAuth 2.0 bearer, RFC 6750). Only the
    SHA-256 of the token (``saas_scim_<random>``) is stored; the token is shown once."""

    __tablename__ = "scim_tokens"
    __table_args__ = (Index("ix_scim_tokens_tenant_id", "tenant_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ScimSettings(SharedBase):
    """A tenant's provisioning settings: ``group_roles`` (a SCIM group's ``displayName`` to a role
    name) and ``default_role`` (the role of a member in no mapped group)."""

    __tablename__ = "scim_settings"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"), primary_key=True)
    group_roles: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    default_role: Mapped[str] = mapped_column(String(32), default="member")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class ScimUser(SharedBase):
    """The directory's record of a provisioned member. ``user_name`` is unique per tenant
    case-insensitively (RFC 7643 section 4.1.1: ``userName`` is ``caseExact`` false and unique
    ``server``); ``data`` is the resource as last written (without ``id``, ``meta``, ``active``
    and ``groups``, which come from the membership and the groups); ``version`` is the weak
    ``ETag``'s counter."""

    __tablename__ = "scim_users"
    __table_args__ = (
        Index("uq_scim_users_tenant_user_name", "tenant_id", text("lower(user_name)"), unique=True),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id, ondelete="CASCADE"), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(320))
    external_id: Mapped[str | None] = mapped_column(String(320))
    display_name: Mapped[str | None] = mapped_column(String(320))
    given_name: Mapped[str | None] = mapped_column(String(200))
    family_name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ScimGroup(SharedBase):
    """A group a directory pushed. Its role: ``group_roles[display_name]`` of the settings, else
    the role named like it (case-insensitively), else none."""

    __tablename__ = "scim_groups"
    __table_args__ = (
        Index("uq_scim_groups_tenant_display_name", "tenant_id", text("lower(display_name)"), unique=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"))
    display_name: Mapped[str] = mapped_column(String(320))
    external_id: Mapped[str | None] = mapped_column(String(320))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ScimGroupMember(SharedBase):
    """A member of a SCIM group (a user of the same tenant)."""

    __tablename__ = "scim_group_members"
    __table_args__ = (
        UniqueConstraint("group_id", "user_id", name="uq_scim_group_members_group_user"),
        Index("ix_scim_group_members_user_id", "user_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    group_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(ScimGroup.id, ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id, ondelete="CASCADE"))
    #: the member's ``display`` as the directory sent it (else the user's displayName is shown)
    display: Mapped[str | None] = mapped_column(String(320))
