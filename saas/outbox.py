"""Transactional outbox (design invariant 6): side effects that can wait (mail, usage reports)
are written in the same transaction as the change and delivered after commit by idempotent
handlers (``saas worker``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, Session, mapped_column

from saas.db import JSONType, SharedBase, utcnow


class OutboxMessage(SharedBase):
    """One pending side effect. ``topic`` names the handler (``mail.invitation``...)."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_pending", "available_at", postgresql_where="sent_at IS NULL"),
        Index("ix_outbox_failed", "failed_at", postgresql_where="failed_at IS NOT NULL"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[uuid.UUID | None] = mapped_column()
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    available_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    #: set when the worker gave up (dead letter; ``saas jobs list --failed``, ``saas jobs retry``)
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def enqueue(
    session: Session,
    topic: str,
    payload: dict[str, Any],
    tenant_id: uuid.UUID | None = None,
    available_at: datetime | None = None,
) -> None:
    """Add a message to the outbox in ``session``'s transaction, due at once or at
    ``available_at`` (a webhook's next scheduled attempt). Never put secrets in clear here
    unless the handler needs them to deliver (an invitation link); the row is deleted once sent."""
    message = OutboxMessage(topic=topic, payload=payload, tenant_id=tenant_id)
    if available_at is not None:
        message.available_at = available_at
    session.add(message)
