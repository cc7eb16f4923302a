"""A tenant's SSO connections (``/api/v1/sso/connections``, :mod:`saas.tenancy.sso_views`).

A connection (:class:`~saas.identity.models.SsoConnection`) has the fields every protocol shares,
checked here, and its protocol's own, checked by the protocol's ``validate_config``
(:mod:`saas.auth.sso.protocol`; ``oidc``: :mod:`saas.auth.sso.oidc`, ``saml``: its own module):

- ``type``: ``oidc`` or ``saml`` (set on create, never changed), dispatched to
  :func:`~saas.auth.sso.protocol.protocol_for`; another type is 422.
- ``name`` (at most 200 characters) and ``enabled`` (default true).
- ``domains``: verified domains of this tenant (``saas.tenancy.domains``), each in at most one of
  its enabled connections: home realm discovery sends their users to this connection
  (:func:`connection_for_email`), and only their addresses link to existing accounts or count as
  verified at sign-in (:mod:`saas.auth.sso.login`).
- ``default_role``: the role of a just-in-time member; ``role_mapping``: ``{group or
  "attribute=value": role}``; both checked with the directory's ``check_role_exists``.

The one secret (an OIDC client secret) is sealed with AES-256-GCM (:func:`saas.security.seal`,
its own HKDF info, the connection id as associated data) and never returned: the API shows
``has_client_secret``. Changes are audited ``sso.connection_created`` / ``_updated`` /
``_deleted`` in the tenant's log.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from saas.actions import ActionContext
from saas.audit import AuditAction
from saas.auth.sso.directory import directory
from saas.auth.sso.protocol import protocol_for, protocol_types
from saas.db import tenant_row, tenant_rows
from saas.errors import ValidationError
from saas.identity.models import SsoConnection, VerifiedDomain
from saas.security import seal, unseal

#: the HKDF info of the connections' secret key (:func:`saas.security.seal`)
SECRET_INFO = b"saas sso connection secret v1"
#: connections one tenant may have
MAX_CONNECTIONS = 20
#: entries of one role_mapping
MAX_ROLE_MAPPING = 100
COMMON_FIELDS = ("name", "enabled", "domains", "default_role", "role_mapping")


def list_connections(session: Session, tenant_id: uuid.UUID) -> list[SsoConnection]:
    """The tenant's connections, oldest first."""
    return tenant_rows(session, SsoConnection, tenant_id, SsoConnection.created_at, SsoConnection.id)


def get_connection(session: Session, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> SsoConnection:
    """The tenant's connection ``connection_id``.

    Raises:
        NotFound: no such connection in this tenant (another tenant's is the same 404).
    """
    return tenant_row(session, SsoConnection, tenant_id, connection_id, noun="SSO connection")


def verified_domains(session: Session, tenant_id: uuid.UUID) -> set[str]:
    """The tenant's verified domains (normalised names)."""
    return set(
        session.scalars(
            select(VerifiedDomain.domain).where(
                VerifiedDomain.tenant_id == tenant_id, VerifiedDomain.verified_at.is_not(None)
            )
        )
    )


def live_domains(session: Session, connection: SsoConnection) -> set[str]:
    """The connection's domains that are still verified domains of its tenant (a domain deleted
    since the connection named it no longer counts)."""
    return set(connection.domains or []) & verified_domains(session, connection.tenant_id)


def email_domain(email: str) -> str:
    """The domain of an address, lowercase without a trailing dot ('' when there is no ``@``)."""
    _local, at, domain = (email or "").strip().rpartition("@")
    return domain.rstrip(".").lower() if at else ""


def connection_for_email(session: Session, email: str) -> SsoConnection | None:
    """Home realm discovery: the enabled connection whose ``domains`` hold the address's domain,
    that domain being verified by the connection's tenant; None otherwise (then the user signs in
    with a password or a passkey). Depends on the domain only, never on whether an account exists."""
    domain = email_domain(email)
    if not domain:
        return None
    tenant_id = session.scalar(
        select(VerifiedDomain.tenant_id).where(
            VerifiedDomain.domain == domain, VerifiedDomain.verified_at.is_not(None)
        )
    )
    if tenant_id is None:
        return None
    for connection in session.scalars(
        select(SsoConnection)
        .where(SsoConnection.tenant_id == tenant_id, SsoConnection.enabled.is_(True))
        .order_by(SsoConnection.created_at, SsoConnection.id)
    ):
        if domain in (connection.domains or []):
            return connection
    return None


def client_secret(connection: SsoConnection) -> str | None:
    """The connection's secret in clear (for the token request), None when it has none."""
    if not connection.secret_encrypted:
        return None
    return unseal(connection.secret_encrypted, connection.id.bytes, info=SECRET_INFO)


def to_public(connection: SsoConnection) -> dict[str, Any]:
    """The API shape: the common fields, ``config`` (the protocol's public configuration,
    including what the tenant admin gives the IdP: redirect URI, SP metadata...) and
    ``has_client_secret``; never the secret."""
    try:
        config = protocol_for(connection.type).public_config(connection)
    except KeyError:  # a protocol this deployment does not load
        config = dict(connection.config or {})
    return {
        "id": connection.id,
        "type": connection.type,
        "name": connection.name,
        "enabled": connection.enabled,
        "domains": list(connection.domains or []),
        "default_role": connection.default_role,
        "role_mapping": dict(connection.role_mapping or {}),
        "config": config,
        "has_client_secret": bool(connection.secret_encrypted),
        "created_at": connection.created_at,
        "updated_at": connection.updated_at,
    }


def _check_common(
    session: Session, tenant_id: uuid.UUID, body: Mapping[str, Any], connection: SsoConnection | None
) -> dict[str, Any]:
    """The common fields of ``body`` checked and normalised (only those present).

    Raises:
        ValidationError: per field.
    """
    errors: dict[str, Any] = {}
    cleaned: dict[str, Any] = {}
    if "name" in body:
        name = body["name"]
        if not isinstance(name, str) or len(name.strip()) > 200:
            errors["name"] = ["A string of at most 200 characters."]
        else:
            cleaned["name"] = name.strip()
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            errors["enabled"] = ["Not a valid boolean."]
        else:
            cleaned["enabled"] = body["enabled"]
    if "domains" in body:
        raw = body["domains"]
        if not isinstance(raw, list) or not all(isinstance(d, str) for d in raw) or len(raw) > 100:
            errors["domains"] = ["A list of at most 100 domain names."]
        else:
            names = list(dict.fromkeys(d.strip().rstrip(".").lower() for d in raw))
            verified = verified_domains(session, tenant_id)
            bad = [d for d in names if d not in verified]
            if bad:
                errors["domains"] = [
                    f"Not a verified domain of this tenant: {', '.join(bad)} (verify it with "
                    "POST /api/v1/domains first)."
                ]
            else:
                cleaned["domains"] = names
    if "default_role" in body:
        try:
            if not isinstance(body["default_role"], str):
                raise ValidationError({"role": ["Not a string."]})
            directory().check_role_exists(session, tenant_id, body["default_role"])
            cleaned["default_role"] = body["default_role"]
        except ValidationError as err:
            errors["default_role"] = err.extra["errors"].get("role", ["Unknown role."])
    if "role_mapping" in body:
        mapping = body["role_mapping"]
        if not isinstance(mapping, dict) or len(mapping) > MAX_ROLE_MAPPING:
            errors["role_mapping"] = [f"An object of at most {MAX_ROLE_MAPPING} group: role entries."]
        else:
            bad_entries: dict[str, list[str]] = {}
            for key, role in mapping.items():
                if not isinstance(key, str) or not key.strip() or len(key) > 256:
                    bad_entries[str(key)[:256]] = ["A group (or attribute=value) of 1 to 256 characters."]
                    continue
                try:
                    if not isinstance(role, str):
                        raise ValidationError({"role": ["Not a string."]})
                    directory().check_role_exists(session, tenant_id, role)
                except ValidationError as err:
                    bad_entries[key] = err.extra["errors"].get("role", ["Unknown role."])
            if bad_entries:
                errors["role_mapping"] = bad_entries
            else:
                cleaned["role_mapping"] = {k.strip(): v for k, v in mapping.items()}
    enabled = cleaned.get("enabled", connection.enabled if connection else True)
    domains = cleaned.get("domains", list(connection.domains or []) if connection else [])
    if enabled and domains and "domains" not in errors:
        others = [c for c in list_connections(session, tenant_id) if c.enabled and c is not connection]
        taken = sorted({d for c in others for d in (c.domains or [])} & set(domains))
        if taken:
            errors["domains"] = [
                f"Already sent to another enabled connection of this tenant: {', '.join(taken)}."
            ]
    if errors:
        raise ValidationError(errors)
    return cleaned


def _protocol(type_: Any):
    try:
        return protocol_for(type_) if isinstance(type_, str) else protocol_for("")
    except KeyError:
        raise ValidationError({"type": [f"Must be one of: {', '.join(protocol_types())}."]}) from None


def _seal(connection: SsoConnection, secret: str) -> None:
    connection.secret_encrypted = seal(secret, connection.id.bytes, info=SECRET_INFO)


def create_connection(ctx: ActionContext, tenant_id: uuid.UUID, body: Mapping[str, Any]) -> SsoConnection:
    """Create a connection from ``body`` (the common fields above and the protocol's own), audited
    ``sso.connection_created``. Nothing is written when anything is refused.

    Raises:
        ValidationError: a field (``type`` unknown, a domain not verified, an unknown role, the
            protocol's fields) or the tenant has ``MAX_CONNECTIONS`` already.
        AppError: the protocol's ``sso_metadata_invalid`` (422) or ``sso_provider_unreachable`` (502).
    """
    session = ctx.session
    protocol = _protocol(body.get("type"))
    if len(list_connections(session, tenant_id)) >= MAX_CONNECTIONS:
        raise ValidationError({"type": [f"A tenant has at most {MAX_CONNECTIONS} SSO connections."]})
    cleaned = _check_common(session, tenant_id, body, None)
    config, secret = protocol.validate_config(body, None)
    connection = SsoConnection(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        type=protocol.type,
        name=cleaned.get("name", ""),
        enabled=cleaned.get("enabled", True),
        domains=cleaned.get("domains", []),
        default_role=cleaned.get("default_role", "member"),
        role_mapping=cleaned.get("role_mapping", {}),
        config=config,
        created_by=ctx.principal.user_id if ctx.principal is not None else None,
    )
    if secret:
        _seal(connection, secret)
    session.add(connection)
    session.flush()
    ctx.record(
        AuditAction.SSO_CONNECTION_CREATED,
        tenant_id=tenant_id,
        target_type="sso_connection",
        target_id=connection.id,
        data={
            "type": connection.type,
            "name": connection.name,
            "enabled": connection.enabled,
            "domains": connection.domains,
            "default_role": connection.default_role,
            "role_mapping": connection.role_mapping,
            "config": protocol.public_config(connection),
            "has_client_secret": bool(secret),
        },
    )
    return connection


def update_connection(
    ctx: ActionContext, connection: SsoConnection, body: Mapping[str, Any]
) -> SsoConnection:
    """Change ``connection``: the common fields present in ``body``, and the protocol's (its
    ``validate_config`` with the connection; a new secret is sealed, an absent one kept).
    Audited ``sso.connection_updated`` with ``{field: {"from", "to"}}`` (``secret_changed`` for
    the secret, never its value) when something changed.

    Raises:
        ValidationError: as :func:`create_connection`; ``type`` cannot change.
        AppError: the protocol's ``sso_metadata_invalid`` / ``sso_provider_unreachable``.
    """
    session = ctx.session
    if "type" in body and body["type"] != connection.type:
        raise ValidationError({"type": ["The type of a connection cannot change: create another one."]})
    protocol = _protocol(connection.type)
    cleaned = _check_common(session, connection.tenant_id, body, connection)
    before_public = protocol.public_config(connection)
    config, secret = protocol.validate_config(body, connection)
    changes: dict[str, Any] = {}
    for name, value in cleaned.items():
        old = getattr(connection, name)
        if old != value:
            changes[name] = {"from": old, "to": value}
            setattr(connection, name, value)
    if config != (connection.config or {}):
        connection.config = config
        after_public = protocol.public_config(connection)
        changes["config"] = {
            "from": {k: v for k, v in before_public.items() if after_public.get(k) != v},
            "to": {k: v for k, v in after_public.items() if before_public.get(k) != v},
        }
    if secret:
        _seal(connection, secret)
        changes["secret_changed"] = True
    if changes:
        session.flush()
        ctx.record(
            AuditAction.SSO_CONNECTION_UPDATED,
            tenant_id=connection.tenant_id,
            target_type="sso_connection",
            target_id=connection.id,
            data=changes,
        )
    return connection


def delete_connection(ctx: ActionContext, connection: SsoConnection) -> None:
    """Delete ``connection`` and the identities linked through it (their users keep their
    accounts, memberships and sessions; they sign in another way). Audited ``sso.connection_deleted``."""
    data = {"type": connection.type, "name": connection.name, "domains": list(connection.domains or [])}
    ctx.session.delete(connection)
    ctx.session.flush()
    ctx.record(
        AuditAction.SSO_CONNECTION_DELETED,
        tenant_id=connection.tenant_id,
        target_type="sso_connection",
        target_id=connection.id,
        data=data,
    )
