"""The endpoints' service: create, list, change, delete, rotate secrets, send a test, replay a
message, read attempts (the API: :mod:`saas.webhooks.views`; docs/webhooks.md).

Every function that changes state takes an :class:`~saas.actions.ActionContext`, writes one
audit event (``webhook.*``) and never commits; every lookup of an endpoint or a message goes
through :func:`saas.db.tenant_row`, so another tenant's id is the same 404 as a missing one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from saas.actions import ActionContext
from saas.audit import AuditAction
from saas.db import tenant_row, tenant_rows, utcnow
from saas.errors import Conflict, ErrorCode, Forbidden, ValidationError
from saas.identity.models import Tenant
from saas.webhooks import catalogue, delivery, egress, events, signing
from saas.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookMessage

MAX_EVENTS = 50
#: endpoints per tenant: each one multiplies the worker's deliveries of every event
MAX_ENDPOINTS = 20
MAX_DESCRIPTION = 500
#: how long a rotated secret keeps signing by default, and at most (seconds)
ROTATION_OVERLAP = 24 * 3600
MAX_PREVIOUS = 5
TEST_MESSAGE = "This is a test message; it asks for nothing."


@dataclass(frozen=True)
class Egress:
    """The egress settings a URL is checked with, and the highest per-endpoint rate."""

    allow_http: bool = False
    allow_private: bool = False
    max_rate: int = 50

    @classmethod
    def from_settings(cls, settings: Any) -> Egress:
        return cls(
            settings.webhooks_allow_http, settings.webhooks_allow_private, settings.webhooks_rate_limit
        )


def to_public(endpoint: WebhookEndpoint, now: datetime | None = None) -> dict[str, Any]:
    """An endpoint as the API shows it (never a secret)."""
    now = now or utcnow()
    rotations = [
        e["expires_at"]
        for e in endpoint.previous_secrets or []
        if datetime.fromisoformat(e["expires_at"]) > now
    ]
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "description": endpoint.description or "",
        "events": list(endpoint.events or []),
        "rate_limit": endpoint.rate_limit,
        "status": endpoint.status,
        "disabled_reason": endpoint.disabled_reason,
        "disabled_at": endpoint.disabled_at,
        "failing_since": endpoint.failing_since,
        "previous_secrets_expire_at": sorted(rotations),
        "created_at": endpoint.created_at,
        "updated_at": endpoint.updated_at,
    }


# --- validation -------------------------------------------------------------------------------


def check_url(raw: Any, egress_rules: Egress) -> str:
    """Raises: ValidationError (422, ``errors.url``): see :func:`saas.webhooks.egress.check_url`."""
    try:
        return egress.check_url(
            raw, allow_http=egress_rules.allow_http, allow_private=egress_rules.allow_private
        )
    except egress.RefusedUrl as exc:
        raise ValidationError({"url": [str(exc)]}) from None


def check_events(raw: Any, permissions: frozenset[str]) -> list[str]:
    """The subscription list: 1 to 50 names or ``<group>.*`` patterns of the catalogue
    (duplicates dropped, sorted), each group's read permission held by the caller.

    Raises:
        ValidationError: 422 with ``errors.events`` (not a list, empty, too long, unknown).
        Forbidden: ``permission_denied``, a group whose data the caller may not read.
    """
    if not isinstance(raw, list) or not all(isinstance(e, str) for e in raw):
        raise ValidationError({"events": ["Expected a list of event types."]})
    names = sorted({e.strip() for e in raw})
    if not 1 <= len(names) <= MAX_EVENTS:
        raise ValidationError({"events": [f"Between 1 and {MAX_EVENTS} event types."]})
    problems = [p for p in (catalogue.check_pattern(n) for n in names) if p]
    if problems:
        raise ValidationError({"events": problems})
    for name in names:
        needed = catalogue.GROUP_PERMISSIONS[catalogue.group_of(name)]
        if needed not in permissions:
            raise Forbidden(
                f"Receiving {name!r} needs the '{needed}' permission.",
                code=ErrorCode.PERMISSION_DENIED,
                title="Permission denied",
                extra={"permission": needed},
            )
    return names


def check_description(raw: Any) -> str:
    if not isinstance(raw, str) or len(raw) > MAX_DESCRIPTION:
        raise ValidationError({"description": [f"At most {MAX_DESCRIPTION} characters."]})
    return raw.strip()


def check_rate(raw: Any, egress_rules: Egress) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= egress_rules.max_rate:
        raise ValidationError({"rate_limit": [f"Messages per second, 1 to {egress_rules.max_rate}."]})
    return raw


def _permissions(ctx: ActionContext) -> frozenset[str]:
    return frozenset(ctx.principal.permissions) if ctx.principal is not None else frozenset()


def _tenant(ctx: ActionContext) -> uuid.UUID:
    assert ctx.principal is not None and ctx.principal.tenant_id is not None
    return ctx.principal.tenant_id


# --- endpoints --------------------------------------------------------------------------------


def list_endpoints(session: Session, tenant_id: uuid.UUID) -> list[WebhookEndpoint]:
    return tenant_rows(session, WebhookEndpoint, tenant_id, WebhookEndpoint.created_at, WebhookEndpoint.id)


def get_endpoint(
    session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, *, lock: bool = False
) -> WebhookEndpoint:
    """Raises: NotFound (another tenant's endpoint is the same 404)."""
    return tenant_row(session, WebhookEndpoint, tenant_id, endpoint_id, noun="webhook endpoint", lock=lock)


def _checked(checks: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Each field's checked value, every check run: one 422 lists every refused field (the
    ``errors`` of each check's :class:`ValidationError`, merged)."""
    values: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    for name, check in checks.items():
        try:
            values[name] = check()
        except ValidationError as exc:
            errors.update(exc.extra.get("errors") or {name: [exc.detail]})
    if errors:
        raise ValidationError(errors)
    return values


def create_endpoint(
    ctx: ActionContext, body: dict[str, Any], egress_rules: Egress
) -> tuple[WebhookEndpoint, str]:
    """A new enabled endpoint and its secret (shown once: only its sealed form is kept).

    Raises:
        ValidationError: a refused URL (422 ``errors.url``: scheme, private address...), bad
            ``events``, ``description`` or ``rate_limit``.
        Forbidden: ``permission_denied``, a subscribed group the caller may not read.
        Conflict: ``webhook_endpoint_limit``, the tenant has :data:`MAX_ENDPOINTS` already.
    """
    tenant_id = _tenant(ctx)
    # the tenant row locked: two concurrent creations cannot both pass the count
    ctx.session.get(Tenant, tenant_id, with_for_update=True)
    existing = ctx.session.scalar(
        select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
    )
    if (existing or 0) >= MAX_ENDPOINTS:
        raise Conflict(
            f"A tenant has at most {MAX_ENDPOINTS} webhook endpoints; delete one first.",
            code=ErrorCode.WEBHOOK_ENDPOINT_LIMIT,
            title="Too many endpoints",
            extra={"limit": MAX_ENDPOINTS},
        )
    fields = _checked({
        "url": lambda: check_url(body.get("url"), egress_rules),
        "events": lambda: check_events(body.get("events"), _permissions(ctx)),
        "description": lambda: check_description(body.get("description", "")),
        "rate_limit": lambda: check_rate(body.get("rate_limit", egress_rules.max_rate), egress_rules),
    })  # fmt: skip
    url, names = fields["url"], fields["events"]
    description, rate = fields["description"], fields["rate_limit"]
    now = utcnow()
    endpoint_id = uuid.uuid4()
    secret = signing.new_secret()
    endpoint = WebhookEndpoint(
        id=endpoint_id,
        tenant_id=tenant_id,
        url=url,
        description=description,
        events=names,
        secret_sealed=signing.seal_secret(endpoint_id, secret),
        previous_secrets=[],
        rate_limit=rate,
        status="enabled",
        created_by=ctx.principal.user_id if ctx.principal is not None else None,
        created_at=now,
        updated_at=now,
    )
    ctx.session.add(endpoint)
    ctx.session.flush()
    events.forget(ctx.session)
    ctx.record(
        AuditAction.WEBHOOK_ENDPOINT_CREATED,
        tenant_id=tenant_id,
        target_type="webhook_endpoint",
        target_id=endpoint_id,
        data={"url": url, "events": names},
    )
    return endpoint, secret


def update_endpoint(
    ctx: ActionContext, endpoint: WebhookEndpoint, body: dict[str, Any], egress_rules: Egress
) -> WebhookEndpoint:
    """Change ``url`` (checked again), ``events``, ``description``, ``rate_limit``; ``enabled``
    true re-enables a disabled endpoint (its failure clock reset), false disables it
    (``manual``). Audited with the names of the fields that changed.

    Raises:
        ValidationError, Forbidden: as :func:`create_endpoint`.
    """
    checks: dict[str, Callable[[], Any]] = {
        "url": lambda: check_url(body["url"], egress_rules),
        "events": lambda: check_events(body["events"], _permissions(ctx)),
        "description": lambda: check_description(body["description"]),
        "rate_limit": lambda: check_rate(body["rate_limit"], egress_rules),
    }
    changes = _checked({name: check for name, check in checks.items() if name in body})
    changed = sorted(k for k, v in changes.items() if getattr(endpoint, k) != v)
    for key in changed:
        setattr(endpoint, key, changes[key])
    now = utcnow()
    if "enabled" in body:
        if body["enabled"] and endpoint.status != "enabled":
            endpoint.status, endpoint.disabled_reason, endpoint.disabled_at = "enabled", None, None
            endpoint.failing_since = None
            changed.append("status")
        elif not body["enabled"] and endpoint.status == "enabled":
            endpoint.status, endpoint.disabled_reason, endpoint.disabled_at = "disabled", "manual", now
            changed.append("status")
    if changed:
        endpoint.updated_at = now
        ctx.session.flush()
        events.forget(ctx.session)
        ctx.record(
            AuditAction.WEBHOOK_ENDPOINT_UPDATED,
            tenant_id=endpoint.tenant_id,
            target_type="webhook_endpoint",
            target_id=endpoint.id,
            data={"fields": changed, **({"status": endpoint.status} if "status" in changed else {})},
        )
    return endpoint


def delete_endpoint(ctx: ActionContext, endpoint: WebhookEndpoint) -> None:
    """Delete the endpoint with its deliveries and attempts (queued attempts then find nothing).

    Its deliveries are locked first, then the endpoint: the order a worker's attempt takes them
    (its delivery, then the endpoint), so a deletion during an attempt waits for it (at most
    ``WEBHOOKS_TIMEOUT``) instead of deadlocking with it."""
    endpoint_id, tenant_id, url = endpoint.id, endpoint.tenant_id, endpoint.url
    ctx.session.execute(
        select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint_id).with_for_update()
    ).all()
    ctx.session.execute(select(WebhookEndpoint.id).where(WebhookEndpoint.id == endpoint_id).with_for_update())
    ctx.session.delete(endpoint)
    ctx.session.flush()
    events.forget(ctx.session)
    ctx.record(
        AuditAction.WEBHOOK_ENDPOINT_DELETED,
        tenant_id=tenant_id,
        target_type="webhook_endpoint",
        target_id=endpoint_id,
        data={"url": url},
    )


def rotate_secret(
    ctx: ActionContext, endpoint: WebhookEndpoint, keep_seconds: int = ROTATION_OVERLAP
) -> tuple[str, datetime | None]:
    """A new secret (returned once) signs from now on; the old one keeps signing beside it for
    ``keep_seconds`` (0 to 86400; 0 drops it at once, for a leaked secret). Expired rotated
    secrets are dropped, and at most :data:`MAX_PREVIOUS` are kept. Returns the new secret and
    when the old one stops signing (None: at once).

    Raises:
        ValidationError: ``keep_previous_seconds`` out of range.
    """
    if (
        isinstance(keep_seconds, bool)
        or not isinstance(keep_seconds, int)
        or not 0 <= keep_seconds <= ROTATION_OVERLAP
    ):
        raise ValidationError({"keep_previous_seconds": [f"Seconds, 0 to {ROTATION_OVERLAP}."]})
    now = utcnow()
    kept = [e for e in endpoint.previous_secrets or [] if datetime.fromisoformat(e["expires_at"]) > now]
    expires = now + timedelta(seconds=keep_seconds) if keep_seconds else None
    if expires is not None:
        kept.insert(0, {"sealed": endpoint.secret_sealed, "expires_at": expires.isoformat()})
    secret = signing.new_secret()
    endpoint.secret_sealed = signing.seal_secret(endpoint.id, secret)
    endpoint.previous_secrets = kept[:MAX_PREVIOUS]
    endpoint.updated_at = now
    ctx.session.flush()
    ctx.record(
        AuditAction.WEBHOOK_SECRET_ROTATED,
        tenant_id=endpoint.tenant_id,
        target_type="webhook_endpoint",
        target_id=endpoint.id,
        data={"previous_expires_at": expires.isoformat() if expires else None},
    )
    return secret, expires


def _require_enabled(endpoint: WebhookEndpoint) -> None:
    if endpoint.status != "enabled":
        raise Conflict(
            'The endpoint is disabled; enable it first (PATCH with "enabled": true).',
            code=ErrorCode.WEBHOOK_ENDPOINT_DISABLED,
            title="Endpoint disabled",
            extra={"endpoint_id": str(endpoint.id)},
        )


def send_test(ctx: ActionContext, endpoint: WebhookEndpoint) -> WebhookDelivery:
    """Queue a ``webhook.test`` message to ``endpoint`` only (whatever it subscribes to).

    Raises:
        Conflict: ``webhook_endpoint_disabled``.
    """
    _require_enabled(endpoint)
    now = utcnow()
    message_id = events.new_message_id()
    data = events.json_data(
        {"tenant_id": endpoint.tenant_id, "endpoint_id": endpoint.id, "message": TEST_MESSAGE}
    )
    message = WebhookMessage(
        id=message_id,
        tenant_id=endpoint.tenant_id,
        event_type="webhook.test",
        body=delivery.body_of(message_id, "webhook.test", events.timestamp(now), data),
        created_at=now,
    )
    ctx.session.add(message)
    ctx.session.flush()
    queued = delivery.queue_delivery(ctx.session, message, endpoint, "test", now)
    ctx.session.flush()
    ctx.record(
        AuditAction.WEBHOOK_TEST_SENT,
        tenant_id=endpoint.tenant_id,
        target_type="webhook_endpoint",
        target_id=endpoint.id,
        data={"message_id": message_id},
    )
    return queued


def get_message(session: Session, tenant_id: uuid.UUID, message_id: str) -> WebhookMessage:
    """Raises: NotFound (another tenant's message is the same 404)."""
    return tenant_row(session, WebhookMessage, tenant_id, message_id, noun="webhook message")


def replay(
    ctx: ActionContext, message: WebhookMessage, endpoint: WebhookEndpoint | None
) -> list[WebhookDelivery]:
    """Send ``message`` again, the same body and ``webhook-id`` (receivers drop what they
    already processed), to ``endpoint``, or else to every endpoint it went to that is still
    enabled; each gets a new delivery with a fresh schedule.

    Raises:
        Conflict: ``webhook_endpoint_disabled``, the endpoint named is disabled, or none of the
            message's endpoints is enabled.
    """
    if endpoint is not None:
        _require_enabled(endpoint)
        targets = [endpoint]
    else:
        ids = select(WebhookDelivery.endpoint_id).where(WebhookDelivery.message_id == message.id)
        targets = list(
            ctx.session.scalars(
                select(WebhookEndpoint)
                .where(WebhookEndpoint.id.in_(ids), WebhookEndpoint.tenant_id == message.tenant_id)
                .order_by(WebhookEndpoint.created_at)
            )
        )
        if not any(t.status == "enabled" for t in targets):
            raise Conflict(
                "None of the endpoints this message went to is enabled.",
                code=ErrorCode.WEBHOOK_ENDPOINT_DISABLED,
                title="Endpoint disabled",
            )
        targets = [t for t in targets if t.status == "enabled"]
    now = utcnow()
    queued = [delivery.queue_delivery(ctx.session, message, t, "replay", now) for t in targets]
    ctx.session.flush()
    ctx.record(
        AuditAction.WEBHOOK_MESSAGE_REPLAYED,
        tenant_id=message.tenant_id,
        target_type="webhook_message",
        target_id=message.id,
        data={"endpoints": [str(t.id) for t in targets]},
    )
    return queued


def list_attempts(
    session: Session,
    endpoint: WebhookEndpoint,
    *,
    limit: int = 50,
    before: uuid.UUID | None = None,
    message_id: str | None = None,
) -> list[WebhookAttempt]:
    """The endpoint's attempts, newest first; ``before`` (an attempt id of this endpoint) starts
    after that one (keyset on ``(attempted_at, id)``); ``message_id`` narrows to one message.

    Raises:
        ValidationError: ``before`` is not an attempt of this endpoint.
    """
    query = select(WebhookAttempt).where(WebhookAttempt.endpoint_id == endpoint.id)
    if message_id:
        query = query.where(WebhookAttempt.message_id == message_id)
    if before is not None:
        anchor = session.scalars(
            select(WebhookAttempt).where(
                WebhookAttempt.id == before, WebhookAttempt.endpoint_id == endpoint.id
            )
        ).first()
        if anchor is None:
            raise ValidationError({"before": ["Not an attempt of this endpoint."]})
        query = query.where(
            tuple_(WebhookAttempt.attempted_at, WebhookAttempt.id) < tuple_(anchor.attempted_at, anchor.id)
        )
    query = query.order_by(WebhookAttempt.attempted_at.desc(), WebhookAttempt.id.desc()).limit(limit)
    return list(session.scalars(query))
