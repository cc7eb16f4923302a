"""The audit writer (design invariant 7): every change a person makes is recorded in the
tenant's own ``audit_events`` table: who (actor), what (action, target, data), when, from where
(IP, user agent, request id)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import g, has_request_context, request
from sqlalchemy import DateTime, Index, String, insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from saas.db import TenantBase, translate_map, utcnow
from saas.tenancy.models import JSONType


class AuditEvent(TenantBase):
    """One audited action inside a tenant (table in each tenant schema)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_occurred_at", "occurred_at"),
        Index("ix_audit_events_actor_id", "actor_id"),
        Index("ix_audit_events_action", "action"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor_type: Mapped[str] = mapped_column(String(16))  # user | client | operator | system
    actor_id: Mapped[str | None] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str | None] = mapped_column(String(64))
    target_id: Mapped[str | None] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    request_id: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    def to_public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "occurred_at": self.occurred_at,
            "actor": {"type": self.actor_type, "id": self.actor_id},
            "action": self.action,
            "target": {"type": self.target_type, "id": self.target_id},
            "ip": self.ip,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "data": self.data or {},
        }


@dataclass(frozen=True)
class Actor:
    """Who acts: ``type`` is user | client | operator | system; ``id`` a user id, client id or
    operator name."""

    type: str
    id: str | None


def current_actor() -> Actor:
    """The actor of the current request (the authenticated principal), or ``system``."""
    principal = g.get("principal") if has_request_context() else None
    if principal is not None:
        if principal.user_id is not None:
            return Actor("user", str(principal.user_id))
        return Actor("client", principal.client_id)
    return Actor("system", None)


def record(
    session: Session,
    action: str,
    *,
    target_type: str | None = None,
    target_id: Any = None,
    data: dict[str, Any] | None = None,
    actor: Actor | None = None,
    schema: str | None = None,
) -> None:
    """Write one audit event in ``session``'s transaction.

    ``schema`` names the tenant schema when the session is not bound to one (signup, CLI).
    Never pass secrets in ``data``.
    """
    actor = actor or current_actor()
    ip = ua = rid = None
    if has_request_context():
        ip = request.remote_addr
        ua = (request.user_agent.string or "")[:512] or None
        rid = g.get("request_id")
    values = {
        "id": uuid.uuid4(),
        "occurred_at": utcnow(),
        "actor_type": actor.type,
        "actor_id": actor.id,
        "action": action,
        "target_type": target_type,
        "target_id": str(target_id) if target_id is not None else None,
        "ip": ip,
        "user_agent": ua,
        "request_id": rid,
        "data": data or {},
    }
    options = {"schema_translate_map": translate_map(schema)} if schema else {}
    session.execute(insert(AuditEvent.__table__).values(**values), execution_options=options)
