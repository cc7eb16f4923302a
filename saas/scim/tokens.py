"""SCIM bearer tokens: a tenant admin creates one per directory (Entra ID, Okta...), shown once.

The token is ``saas_scim_`` and 256 random bits (URL-safe base64): the prefix lets secret
scanners recognise it. Only its SHA-256 is stored (:class:`~saas.scim.models.ScimToken`); the
SCIM endpoints look it up by that hash (:func:`authenticate`), so no comparison of secrets
happens in Python. A revoked token stops at its next request (no cache).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from saas.actions import ActionContext
from saas.audit import AuditAction
from saas.db import tenant_row, tenant_rows, utcnow
from saas.errors import ValidationError
from saas.identity.models import Tenant
from saas.scim.models import ScimToken
from saas.security import random_token, token_hash

PREFIX = "saas_scim_"
#: ``last_used_at`` is written at most this often per token (not one write per request)
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class IssuedToken:
    """A new token: its row and the secret, which is returned this once."""

    row: ScimToken
    token: str


def to_public(row: ScimToken) -> dict:
    """The API shape, without any secret: ``id``, ``name``, ``created_by``, ``created_at``,
    ``last_used_at``, ``revoked_at``."""
    return {
        "id": row.id,
        "name": row.name,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "last_used_at": row.last_used_at,
        "revoked_at": row.revoked_at,
    }


def create_token(ctx: ActionContext, tenant_id: uuid.UUID, name: str) -> IssuedToken:
    """A new SCIM token for ``tenant_id`` named ``name`` (1..100 characters after trimming);
    audited ``scim.token_created``.

    Raises:
        ValidationError: an empty or too long name.
    """
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise ValidationError({"name": ["1 to 100 characters."]})
    secret = PREFIX + random_token(32)
    principal = ctx.principal
    row = ScimToken(
        tenant_id=tenant_id,
        name=name,
        token_hash=token_hash(secret),
        created_by=principal.user_id if principal is not None else None,
    )
    ctx.session.add(row)
    ctx.session.flush()
    ctx.record(
        AuditAction.SCIM_TOKEN_CREATED,
        tenant_id=tenant_id,
        target_type="scim_token",
        target_id=row.id,
        data={"name": name},
    )
    return IssuedToken(row, secret)


def list_tokens(session: Session, tenant_id: uuid.UUID) -> list[ScimToken]:
    """The tenant's tokens, revoked ones included, oldest first."""
    return tenant_rows(session, ScimToken, tenant_id, ScimToken.created_at)


def revoke_token(ctx: ActionContext, tenant_id: uuid.UUID, token_id: uuid.UUID) -> ScimToken:
    """Revoke one of the tenant's tokens (idempotent); audited ``scim.token_revoked``.

    Raises:
        NotFound: no such token in this tenant (another tenant's is a 404 too).
    """
    row = tenant_row(ctx.session, ScimToken, tenant_id, token_id, noun="SCIM token")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        ctx.record(
            AuditAction.SCIM_TOKEN_REVOKED, tenant_id=tenant_id, target_type="scim_token", target_id=row.id
        )
        ctx.session.flush()
    return row


def authenticate(session: Session, presented: str | None) -> tuple[ScimToken, Tenant] | None:
    """The live token presented and its tenant, or None: unknown, revoked, not of our format, or
    the tenant is not active. Marks ``last_used_at`` (at most once a minute)."""
    if not presented or not presented.startswith(PREFIX) or len(presented) > 200:
        return None
    row = session.scalars(
        select(ScimToken).where(ScimToken.token_hash == token_hash(presented), ScimToken.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    tenant = session.get(Tenant, row.tenant_id)
    if tenant is None or tenant.status != "active" or tenant.deleted_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
    return row, tenant
