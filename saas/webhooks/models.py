"""The control-plane tables of outgoing webhooks (schema ``saas``, each row owned by a tenant).

Why the shared schema, not each tenant's (docs/webhooks.md, "Where the rows live"): the worker
must find the deliveries that are due across every tenant in one indexed query, and the retry
schedule and retention run over all tenants at once; per-tenant tables would make each poll a
query per tenant. Every row carries ``tenant_id`` (a foreign key to ``saas.tenants``, ``ON
DELETE CASCADE``) and every API lookup goes through :func:`saas.db.tenant_row`, so another
tenant's id is the same 404 as a missing one.

- :class:`WebhookEndpoint`: a URL, the event types it subscribes to, its signing secrets
  (sealed, :func:`saas.security.seal`), its rate and its state.
- :class:`WebhookMessage`: one event as sent (the exact body, so replays send the same bytes;
  its id is the ``webhook-id`` header).
- :class:`WebhookDelivery`: one message to one endpoint, with its own retry schedule.
- :class:`WebhookAttempt`: one HTTP request of a delivery (status, latency, the first KiB of
  the answer), kept ``WEBHOOKS_RETENTION_DAYS`` (30).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from saas.db import JSONType, SharedBase, utcnow
from saas.identity.models import Tenant


class WebhookEndpoint(SharedBase):
    """A tenant's receiver. ``status``: ``enabled`` or ``disabled`` (``disabled_reason``:
    ``gone`` after a 410, ``failing`` after days without a success, ``manual``)."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(String(500), default="")
    #: event type names and ``<group>.*`` patterns (:mod:`saas.webhooks.catalogue`)
    events: Mapped[list[str]] = mapped_column(JSONType, default=list)
    #: the current ``whsec_...`` secret, sealed (AES-256-GCM, the endpoint's id as associated data)
    secret_sealed: Mapped[str] = mapped_column(Text)
    #: secrets replaced by rotations and still signing: ``[{"sealed": ..., "expires_at": RFC 3339}]``
    #: (sealed like ``secret_sealed``), dropped once expired
    previous_secrets: Mapped[list[dict[str, str]]] = mapped_column(JSONType, default=list)
    #: messages per second this endpoint receives at most
    rate_limit: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="enabled")
    disabled_reason: Mapped[str | None] = mapped_column(String(32))
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: the first failed attempt since the last success (None: the last attempt succeeded)
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[uuid.UUID | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookMessage(SharedBase):
    """One event as delivered: ``id`` is ``msg_`` + 32 hex digits (the ``webhook-id``), ``body``
    the exact JSON sent (``{"type", "timestamp", "data"}``)."""

    __tablename__ = "webhook_messages"
    __table_args__ = (Index("ix_webhook_messages_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(80))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookDelivery(SharedBase):
    """One message to one endpoint. ``status``: ``pending``, ``delivered``, ``failed`` (the
    schedule ran out, or the endpoint answered 410) or ``cancelled`` (the endpoint was disabled
    or deleted first). ``kind``: ``event``, ``replay`` or ``test``."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_message", "message_id"),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(ForeignKey(WebhookMessage.id, ondelete="CASCADE"))
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(WebhookEndpoint.id, ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), default="event")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttempt(SharedBase):
    """One HTTP request of a delivery. ``status_code`` None: no answer (``error`` says why:
    a timeout, a refused destination...); ``response_body``: at most the first 1024 bytes of
    the answer, decoded as UTF-8 (invalid bytes replaced)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        Index("ix_webhook_attempts_endpoint", "endpoint_id", "attempted_at", "id"),
        Index("ix_webhook_attempts_attempted_at", "attempted_at"),
        Index("ix_webhook_attempts_delivery", "delivery_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Tenant.id, ondelete="CASCADE"))
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(WebhookEndpoint.id, ondelete="CASCADE"))
    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(WebhookDelivery.id, ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(80))
    attempt: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: ``delivered`` (2xx), ``failed`` (retried while the schedule lasts) or ``gone`` (410)
    outcome: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(String(200))

    def to_public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "endpoint_id": self.endpoint_id,
            "delivery_id": self.delivery_id,
            "message_id": self.message_id,
            "event_type": self.event_type,
            "attempt": self.attempt,
            "attempted_at": self.attempted_at,
            "outcome": self.outcome,
            "status_code": self.status_code,
            "latency_ms": self.latency_ms,
            "response_body": self.response_body,
            "error": self.error,
        }
