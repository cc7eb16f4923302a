"""The catalogue of webhook event types (``GET /api/v1/webhooks/event-types``; docs/webhooks.md).

Every message's body is Standard Webhooks' recommended shape (spec section "Payload
structure"): ``{"type": <event type>, "timestamp": <RFC 3339, UTC>, "data": {...}}``. Each type
below documents its ``data`` with a JSON Schema (draft 2020-12); every ``data`` carries the
``tenant_id``.

An endpoint subscribes to exact names (``contact.created``) and to whole groups
(``contact.*``). The ``audit`` group has one member per audit action (:class:`saas.audit.AuditAction`,
``audit.<action>``) and is subscribed to as ``audit.*`` (audit streaming) or by exact name.
Subscribing to a group needs the permission that reads its data (:data:`GROUP_PERMISSIONS`):
``webhooks:manage`` alone never exports contacts or the audit log to someone who may not read
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saas.audit import AuditAction

_ISO = {"type": "string", "format": "date-time"}
_UUID = {"type": "string", "format": "uuid"}
_NULLABLE_STR = {"type": ["string", "null"]}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required if required is not None else list(properties),
    }


_CONTACT = _object(
    {
        "id": _UUID,
        "name": {"type": "string"},
        "email": _NULLABLE_STR,
        "phone": _NULLABLE_STR,
        "company": _NULLABLE_STR,
        "tags": {"type": "array", "items": {"type": "string"}},
        "created_at": _ISO,
        "updated_at": _ISO,
        "created_by": _NULLABLE_STR,
    },
    ["id", "name"],
)
_TENANT = _object({"id": _UUID, "slug": {"type": "string"}, "name": {"type": "string"}})
_SUBSCRIPTION = _object(
    {
        "plan": _NULLABLE_STR,
        "status": _NULLABLE_STR,
        "quantity": {"type": ["integer", "null"]},
        "cancel_at_period_end": {"type": "boolean"},
        "current_period_end": {"type": ["string", "null"], "format": "date-time"},
    }
)


def _data(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema = _object({"tenant_id": _UUID, **properties}, ["tenant_id", *(required or list(properties))])
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


@dataclass(frozen=True, slots=True)
class EventType:
    """One event type: its name (``<group>.<event>``), what it means, and its ``data`` schema."""

    name: str
    description: str
    schema: dict[str, Any]

    @property
    def group(self) -> str:
        return self.name.split(".", 1)[0]

    def to_public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "description": self.description,
            "schema": self.schema,
        }


_AUDIT_SCHEMA = _data(
    {
        "id": _UUID,
        "occurred_at": _ISO,
        "action": {"type": "string"},
        "actor": _object({"type": {"type": "string"}, "id": _NULLABLE_STR}),
        "target": _object({"type": _NULLABLE_STR, "id": _NULLABLE_STR}),
        "ip": _NULLABLE_STR,
        "user_agent": _NULLABLE_STR,
        "request_id": _NULLABLE_STR,
        "data": {"type": "object"},
    }
)

EVENT_TYPES: dict[str, EventType] = {
    e.name: e
    for e in (
        EventType("contact.created", "A contact was created.", _data({"contact": _CONTACT})),
        EventType(
            "contact.updated",
            "A contact was changed; ``changed`` names the fields.",
            _data({"contact": _CONTACT, "changed": {"type": "array", "items": {"type": "string"}}}),
        ),
        EventType("contact.deleted", "A contact was deleted.", _data({"contact": _object({"id": _UUID})})),
        EventType(
            "member.invited",
            "Someone was invited (``email`` as the inviter typed it, lower-cased).",
            _data({"invitation_id": _UUID, "email": {"type": "string"}, "role": {"type": "string"}}),
        ),
        EventType(
            "member.joined",
            "An invitee accepted and became a member.",
            _data({"user_id": _UUID, "role": {"type": "string"}}),
        ),
        EventType(
            "member.role_changed",
            "A member's role changed.",
            _data({"user_id": _UUID, "from": {"type": "string"}, "to": {"type": "string"}}),
        ),
        EventType(
            "member.removed",
            "A member was removed (``left``: they left on their own).",
            _data({"user_id": _UUID, "left": {"type": "boolean"}}),
        ),
        EventType(
            "subscription.updated",
            "The tenant's subscription changed (plan, status, seats, renewal); ``previous`` is the "
            "state before.",
            _data({"subscription": _SUBSCRIPTION, "previous": _SUBSCRIPTION, "source": {"type": "string"}}),
        ),
        EventType(
            "tenant.updated",
            "The tenant's name or settings changed; ``changed`` names the fields.",
            _data({"tenant": _TENANT, "changed": {"type": "array", "items": {"type": "string"}}}),
        ),
        EventType(
            "webhook.test",
            "A test message (``POST /api/v1/webhooks/endpoints/{id}/test``), sent to that endpoint "
            "only, whatever it subscribes to.",
            _data({"endpoint_id": _UUID, "message": {"type": "string"}}),
        ),
    )
}

#: the schema of every ``audit.<action>`` message's ``data`` (an audit event, as
#: ``GET /api/v1/audit-events`` shows it)
AUDIT_EVENT = EventType(
    "audit.*",
    "Audit streaming: every audit event of the tenant becomes ``audit.<action>`` (for example "
    "``audit.member.invited``); ``data`` is the event as GET /api/v1/audit-events shows it.",
    _AUDIT_SCHEMA,
)

#: the permission a subscriber must hold to receive a group's data
GROUP_PERMISSIONS: dict[str, str] = {
    "contact": "contacts:read",
    "member": "members:read",
    "subscription": "tenant:read",
    "tenant": "tenant:read",
    "audit": "audit:read",
    "webhook": "webhooks:manage",
}

GROUPS = frozenset(GROUP_PERMISSIONS)
AUDIT_PREFIX = "audit."


def listing() -> list[dict[str, Any]]:
    """The catalogue as the API lists it: every type, then the ``audit.*`` family."""
    return [e.to_public() for e in EVENT_TYPES.values()] + [AUDIT_EVENT.to_public()]


def is_known(name: str) -> bool:
    """Whether ``name`` is an event type (``audit.<action>`` for any audit action included)."""
    if name in EVENT_TYPES:
        return True
    if name.startswith(AUDIT_PREFIX):
        try:
            AuditAction(name.removeprefix(AUDIT_PREFIX))
        except ValueError:
            return False
        return True
    return False


def check_pattern(pattern: str) -> str | None:
    """Why ``pattern`` cannot be subscribed to (an unknown name or group), or None."""
    if pattern.endswith(".*"):
        return None if pattern[:-2] in GROUPS else f"Unknown group {pattern!r}."
    return None if is_known(pattern) else f"Unknown event type {pattern!r}."


def group_of(pattern: str) -> str:
    return pattern.split(".", 1)[0]


def matches(patterns: list[str], event_type: str) -> bool:
    """Whether an endpoint subscribed to ``patterns`` receives ``event_type``."""
    group = group_of(event_type)
    return any(p == event_type or (p.endswith(".*") and p[:-2] == group) for p in patterns)


def schema_of(event_type: str) -> dict[str, Any]:
    """The ``data`` schema of ``event_type``.

    Raises:
        KeyError: not an event type.
    """
    if event_type in EVENT_TYPES:
        return EVENT_TYPES[event_type].schema
    if is_known(event_type):
        return AUDIT_EVENT.schema
    raise KeyError(event_type)
