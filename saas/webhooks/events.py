"""Where webhook messages come from: :func:`emit`, called in the transaction of the change.

The product's changes call ``emit(session, tenant_id, event_type, data)`` next to their audit
event: contacts (``tenants/contacts.py``, through :mod:`saas.product`), members
(:mod:`saas.tenancy.members`), the subscription (:func:`saas.billing.service.apply_subscription`,
which Stripe's webhooks and ``billing sync`` both go through) and the tenant
(:func:`saas.tenancy.tenants.update_tenant`). Audit streaming is a listener on
:func:`saas.audit.record` (:func:`stream_audit`, installed by :func:`install`): each audit event
becomes ``audit.<action>``.

What a commit pays (docs/webhooks.md, "Fan-out"): one indexed read of the tenant's enabled
endpoints' subscriptions, once per transaction and tenant (kept in ``session.info``), and, when
at least one endpoint subscribes, **one** outbox row (topic :data:`FANOUT_TOPIC`) whatever the
number of endpoints. The worker fans it out (:func:`saas.webhooks.delivery.fan_out`): the
message row, then one delivery per subscribed endpoint, each on its own retry schedule. The
outbox row is written in the same transaction as the change, so a change is never committed
without its message, nor a message sent for a change rolled back.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from saas import audit, outbox
from saas.db import utcnow
from saas.webhooks import catalogue
from saas.webhooks.models import WebhookEndpoint

#: the outbox topic of one event to fan out (payload: ``id``, ``type``, ``timestamp``, ``data``)
FANOUT_TOPIC = "webhooks.fanout"
#: the outbox topic of one delivery attempt (payload: ``delivery_id``)
DELIVER_TOPIC = "webhooks.deliver"
_MEMO = "saas.webhooks.subscriptions"


def new_message_id() -> str:
    """A message id, the ``webhook-id`` header: ``msg_`` + 32 hex digits (a random UUID)."""
    return "msg_" + uuid.uuid4().hex


def timestamp(now: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` (``2026-12-03T18:40:00.123456Z``)."""
    aware = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")


def json_data(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as plain JSON values (UUIDs as strings, datetimes as RFC 3339 in UTC)."""
    return orjson.loads(orjson.dumps(data, option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC, default=str))


def subscriptions(session: Session, tenant_id: uuid.UUID) -> list[list[str]]:
    """The event patterns of each enabled endpoint of the tenant, read once per transaction."""
    memo = session.info.get(_MEMO)
    transaction = session.get_transaction()
    if memo is not None and transaction is not None and memo[0] is transaction and tenant_id in memo[1]:
        return memo[1][tenant_id]
    rows = [
        list(events or [])
        for events in session.scalars(
            select(WebhookEndpoint.events).where(
                WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.status == "enabled"
            )
        )
    ]
    transaction = session.get_transaction()
    if memo is None or memo[0] is not transaction:
        memo = (transaction, {})
        session.info[_MEMO] = memo
    memo[1][tenant_id] = rows
    return rows


def forget(session: Session) -> None:
    """Drop the transaction's read of subscriptions (an endpoint was created, changed or
    deleted in it)."""
    session.info.pop(_MEMO, None)


def emit(session: Session, tenant_id: uuid.UUID, event_type: str, data: dict[str, Any]) -> str | None:
    """Queue the webhook message ``event_type`` with ``data`` for the tenant's subscribed
    endpoints, in ``session``'s transaction.

    Args:
        tenant_id: the tenant whose endpoints receive it (added to ``data`` as ``tenant_id``).
        event_type: a name of :data:`saas.webhooks.catalogue.EVENT_TYPES` or ``audit.<action>``.
        data: the message's ``data`` (JSON values; UUIDs and datetimes are converted), as the
            event's schema documents it. Never secrets.

    Returns:
        The message id (``msg_...``, the ``webhook-id`` header), or None when no enabled endpoint
        of the tenant subscribes (nothing is written).

    Raises:
        ValueError: ``event_type`` is not in the catalogue.
    """
    if not catalogue.is_known(event_type):
        raise ValueError(f"unknown webhook event type {event_type!r}")
    if not any(catalogue.matches(patterns, event_type) for patterns in subscriptions(session, tenant_id)):
        return None
    message_id = new_message_id()
    payload = {
        "id": message_id,
        "type": event_type,
        "timestamp": timestamp(utcnow()),
        "data": json_data({"tenant_id": tenant_id, **data}),
    }
    outbox.enqueue(session, FANOUT_TOPIC, payload, tenant_id=tenant_id)
    return message_id


def _tenant_of(tenant_id: uuid.UUID | None, schema: str | None) -> uuid.UUID | None:
    if tenant_id is not None:
        return tenant_id
    if schema and schema.startswith("t_") and len(schema) == 34:
        try:
            return uuid.UUID(hex=schema[2:])
        except ValueError:
            return None
    from flask import g, has_request_context

    principal = g.get("principal") if has_request_context() else None
    return getattr(principal, "tenant_id", None)


def stream_audit(
    session: Session, tenant_id: uuid.UUID | None, schema: str | None, event: dict[str, Any]
) -> None:
    """The :func:`saas.audit.record` listener of audit streaming: the event as
    ``audit.<action>`` (its ``data`` the event as ``GET /api/v1/audit-events`` shows it)."""
    tenant = _tenant_of(tenant_id, schema)
    if tenant is None:
        return
    emit(
        session,
        tenant,
        catalogue.AUDIT_PREFIX + str(event["action"]),
        {
            "id": event["id"],
            "occurred_at": event["occurred_at"],
            "action": str(event["action"]),
            "actor": {"type": event["actor_type"], "id": event["actor_id"]},
            "target": {"type": event["target_type"], "id": event["target_id"]},
            "ip": event["ip"],
            "user_agent": event["user_agent"],
            "request_id": event["request_id"],
            "data": event["data"] or {},
        },
    )


def install() -> None:
    """Stream audit events to subscribed endpoints (called by :func:`saas.bootstrap.build_services`;
    idempotent)."""
    audit.add_listener(stream_audit)
