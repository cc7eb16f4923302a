"""Delivery: fan-out, attempts, the retry schedule, disabling, retention (docs/webhooks.md).

Framework-free: these functions take a session, the configuration and ``now``, and write in
the caller's transaction. The worker's handlers (:mod:`saas.worker.webhooks`) are thin calls
to them, so the same code can run on another job engine.

- :func:`fan_out` (outbox topic ``webhooks.fanout``): the event becomes a
  :class:`~saas.webhooks.models.WebhookMessage` (its body fixed once, so replays send the same
  bytes) and one :class:`~saas.webhooks.models.WebhookDelivery` per enabled endpoint
  subscribed to it, each queued as one ``webhooks.deliver`` outbox row.
- :func:`deliver` (``webhooks.deliver``): one attempt of one delivery, signed with every valid
  secret, recorded as a :class:`~saas.webhooks.models.WebhookAttempt` (status, latency, the first
  KiB of the answer). A 2xx is delivered. A 410 disables the endpoint. Anything else (another
  status, a redirect, no answer, a timeout, a refused address) is retried after
  :data:`SCHEDULE` (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; +-10 % jitter) by queueing the
  next attempt with its ``available_at``; after the last the delivery is ``failed``. An
  endpoint whose attempts have all failed for ``WEBHOOKS_DISABLE_AFTER_DAYS`` (5) is disabled,
  audited and its tenant's owners and admins mailed. The per-endpoint rate is checked first
  (``rate_check``): over it, the attempt is put off without counting.
- :func:`prune`: attempts, finished deliveries and messages older than the retention (30 days).

Delivery is at least once: a crash after the POST and before the commit repeats the attempt
with the same ``webhook-id``, which receivers use to drop duplicates (the spec's idempotency).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from saas import audit, outbox
from saas.audit import AuditAction
from saas.identity.models import Membership, Tenant, User
from saas.webhooks import catalogue, egress, signing
from saas.webhooks.events import DELIVER_TOPIC
from saas.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookMessage

#: seconds before each retry (Standard Webhooks' and Svix's schedule): 7 retries, 8 attempts
SCHEDULE: tuple[int, ...] = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
JITTER = 0.1
#: the outbox topic of the mail to a tenant's admins when an endpoint is disabled
DISABLED_MAIL_TOPIC = "mail.webhook_endpoint_disabled"

#: ``rate_check(endpoint)``: None to go ahead, else the seconds to wait (over the endpoint's rate)
RateCheck = Callable[[WebhookEndpoint], float | None]


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """What delivery reads of the settings (:meth:`from_settings`)."""

    secret_key: str | bytes | None
    allow_http: bool = False
    allow_private: bool = False
    timeout: float = 10.0
    disable_after: timedelta = timedelta(days=5)

    @classmethod
    def from_settings(cls, settings: Any) -> DeliveryConfig:
        return cls(
            secret_key=settings.secret_key,
            allow_http=settings.webhooks_allow_http,
            allow_private=settings.webhooks_allow_private,
            timeout=settings.webhooks_timeout_seconds,
            disable_after=timedelta(days=settings.webhooks_disable_after_days),
        )


def retry_delay(attempts: int, rng: random.Random | None = None) -> float | None:
    """Seconds before the attempt after ``attempts`` failed ones (1-based), jittered by
    +-:data:`JITTER`; None when the schedule is over."""
    if attempts > len(SCHEDULE):
        return None
    factor = (rng or random).uniform(1 - JITTER, 1 + JITTER)
    return SCHEDULE[attempts - 1] * factor


def body_of(message_id: str, event_type: str, stamp: str, data: dict[str, Any]) -> str:
    """The exact body of a message: ``{"data", "timestamp", "type"}`` as compact JSON."""
    return orjson.dumps(
        {"type": event_type, "timestamp": stamp, "data": data}, option=orjson.OPT_SORT_KEYS
    ).decode()


def queue_delivery(
    session: Session, message: WebhookMessage, endpoint: WebhookEndpoint, kind: str, now: datetime
) -> WebhookDelivery:
    """A pending delivery of ``message`` to ``endpoint`` and its first attempt's outbox row."""
    delivery = WebhookDelivery(
        id=uuid.uuid4(),
        tenant_id=endpoint.tenant_id,
        message_id=message.id,
        endpoint_id=endpoint.id,
        kind=kind,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(delivery)
    outbox.enqueue(
        session,
        DELIVER_TOPIC,
        {"delivery_id": str(delivery.id)},
        tenant_id=endpoint.tenant_id,
        available_at=now,
    )
    return delivery


def fan_out(session: Session, tenant_id: uuid.UUID, payload: dict[str, Any], now: datetime) -> int:
    """The message of one emitted event and a delivery per enabled endpoint subscribed to it
    (see the module docstring); returns how many. A message already fanned out (a repeated job)
    or a tenant gone since needs nothing.

    Raises:
        KeyError: the payload lacks ``id``, ``type``, ``timestamp`` or ``data``.
    """
    message_id, event_type = payload["id"], payload["type"]
    if session.get(WebhookMessage, message_id) is not None:
        return 0
    tenant = session.get(Tenant, tenant_id)
    if tenant is None or tenant.deleted_at is not None:
        return 0
    endpoints = [
        e
        for e in session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.status == "enabled")
            .order_by(WebhookEndpoint.created_at)
        )
        if catalogue.matches(list(e.events or []), event_type)
    ]
    if not endpoints:
        return 0
    message = WebhookMessage(
        id=message_id,
        tenant_id=tenant_id,
        event_type=event_type,
        body=body_of(message_id, event_type, payload["timestamp"], payload["data"]),
        created_at=now,
    )
    session.add(message)
    session.flush()
    for endpoint in endpoints:
        queue_delivery(session, message, endpoint, "event", now)
    return len(endpoints)


def active_secrets(endpoint: WebhookEndpoint, now: datetime, secret_key: str | bytes | None) -> list[str]:
    """The endpoint's secrets that sign at ``now``: the current one, then the rotated ones not
    yet expired (newest first)."""
    secrets = [signing.unseal_secret(endpoint.id, endpoint.secret_sealed, secret_key)]
    for entry in endpoint.previous_secrets or []:
        if datetime.fromisoformat(entry["expires_at"]) > now:
            secrets.append(signing.unseal_secret(endpoint.id, entry["sealed"], secret_key))
    return secrets


def headers_for(message: WebhookMessage, secrets: list[str], now: datetime) -> dict[str, str]:
    """The request headers of one attempt (spec: ``webhook-id``, ``webhook-timestamp`` in
    Unix seconds, ``webhook-signature``)."""
    return {
        "Content-Type": "application/json",
        "User-Agent": egress.USER_AGENT,
        "webhook-id": message.id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signing.signature_header(secrets, message.id, now, message.body),
    }


def _finish(delivery: WebhookDelivery, status: str, now: datetime) -> None:
    delivery.status = status
    delivery.finished_at = now
    delivery.next_attempt_at = None


def admin_emails(session: Session, tenant_id: uuid.UUID) -> list[str]:
    """The addresses of the tenant's active owners and admins, sorted."""
    return sorted(
        session.scalars(
            select(User.email)
            .join(Membership, Membership.user_id == User.id)
            .where(
                Membership.tenant_id == tenant_id,
                Membership.role.in_(("owner", "admin")),
                Membership.status == "active",
            )
        )
    )


def disable(session: Session, endpoint: WebhookEndpoint, reason: str, now: datetime, detail: str) -> None:
    """Disable ``endpoint`` (``reason``: ``gone`` or ``failing``): audited
    ``webhook.endpoint_disabled`` (actor ``system``) and mailed to the tenant's owners and admins."""
    endpoint.status = "disabled"
    endpoint.disabled_reason = reason
    endpoint.disabled_at = now
    endpoint.updated_at = now
    tenant = session.get(Tenant, endpoint.tenant_id)
    audit.record(
        session,
        AuditAction.WEBHOOK_ENDPOINT_DISABLED,
        target_type="webhook_endpoint",
        target_id=endpoint.id,
        data={"reason": reason, "detail": detail},
        actor=audit.SYSTEM,
        tenant_id=endpoint.tenant_id,
    )
    for email in admin_emails(session, endpoint.tenant_id):
        outbox.enqueue(
            session,
            DISABLED_MAIL_TOPIC,
            {
                "to": email,
                "tenant_name": tenant.name if tenant is not None else "",
                "endpoint_id": str(endpoint.id),
                "url": endpoint.url,
                "reason": reason,
                "detail": detail,
            },
            tenant_id=endpoint.tenant_id,
        )


def _error_of(answer: egress.Answer, outcome: str) -> str | None:
    if answer.error:
        return answer.error[:200]
    if outcome == "failed" and answer.status is not None:
        return f"HTTP {answer.status}" + (
            " (redirects are not followed)" if 300 <= answer.status < 400 else ""
        )
    return None


def deliver(
    session: Session,
    delivery_id: uuid.UUID,
    config: DeliveryConfig,
    now: datetime,
    *,
    rate_check: RateCheck | None = None,
    rng: random.Random | None = None,
) -> str:
    """One attempt of delivery ``delivery_id`` (see the module docstring), in ``session``'s
    transaction. Returns the outcome: ``delivered``, ``retry`` (the next attempt queued),
    ``failed`` (the schedule is over), ``gone`` (410: the endpoint disabled), ``throttled``
    (over the endpoint's rate: put off, not counted), ``cancelled`` (the endpoint is disabled)
    or ``skipped`` (no such pending delivery: deleted, or already done)."""
    # one query; only the delivery is locked: several workers deliver to one endpoint side by
    # side, and a PATCH never waits for a slow receiver (deleting it waits on the delivery's lock)
    row = session.execute(
        select(WebhookDelivery, WebhookEndpoint, WebhookMessage)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .join(WebhookMessage, WebhookMessage.id == WebhookDelivery.message_id)
        .where(WebhookDelivery.id == delivery_id)
        .with_for_update(of=WebhookDelivery)
    ).first()
    if row is None or row[0].status != "pending":
        return "skipped"
    delivery, endpoint, message = row
    if endpoint.status != "enabled":
        _finish(delivery, "cancelled", now)
        return "cancelled"
    if rate_check is not None:
        wait = rate_check(endpoint)
        if wait:
            later = now + timedelta(seconds=wait)
            delivery.next_attempt_at = later
            outbox.enqueue(
                session, DELIVER_TOPIC, {"delivery_id": str(delivery.id)}, tenant_id=delivery.tenant_id,
                available_at=later,
            )  # fmt: skip
            return "throttled"
    secrets = active_secrets(endpoint, now, config.secret_key)
    answer = egress.post(
        endpoint.url,
        message.body.encode(),
        headers_for(message, secrets, now),
        allow_http=config.allow_http,
        allow_private=config.allow_private,
        timeout=config.timeout,
    )
    delivery.attempts += 1
    status = answer.status
    if status is not None and 200 <= status < 300:
        outcome = "delivered"
    elif status == 410:
        outcome = "gone"
    else:
        outcome = "failed"
    session.add(
        WebhookAttempt(
            id=uuid.uuid4(),
            tenant_id=delivery.tenant_id,
            endpoint_id=endpoint.id,
            delivery_id=delivery.id,
            message_id=message.id,
            event_type=message.event_type,
            attempt=delivery.attempts,
            attempted_at=now,
            outcome=outcome,
            status_code=status,
            latency_ms=answer.latency_ms,
            response_body=answer.body.decode("utf-8", "replace") if answer.body else None,
            error=_error_of(answer, outcome),
        )
    )
    if outcome == "delivered" and endpoint.failing_since is None:  # the common case: nothing to change
        _finish(delivery, "delivered", now)
        return "delivered"
    # the endpoint's state is changed under its lock, as it is now (a PATCH may have come between);
    # FOR NO KEY UPDATE: it does not conflict with the key-share locks other workers' attempts
    # hold on it (their foreign keys), so two workers never wait on each other
    endpoint = session.get(
        WebhookEndpoint, endpoint.id, with_for_update={"key_share": True}, populate_existing=True
    )
    assert endpoint is not None  # its deletion waits on the delivery's row lock
    if outcome == "delivered":
        endpoint.failing_since = None
        _finish(delivery, "delivered", now)
        return "delivered"
    if endpoint.status != "enabled":  # disabled while the request ran: no retry, no second notice
        _finish(delivery, "cancelled", now)
        return "cancelled"
    if outcome == "gone":
        _finish(delivery, "failed", now)
        disable(session, endpoint, "gone", now, "The endpoint answered 410 Gone.")
        return "gone"
    if endpoint.failing_since is None:
        endpoint.failing_since = now
    elif now - endpoint.failing_since >= config.disable_after:
        _finish(delivery, "failed", now)
        days = config.disable_after.days
        disable(session, endpoint, "failing", now, f"Every attempt failed for {days} days.")
        return "failed"
    delay = retry_delay(delivery.attempts, rng)
    if delay is None:
        _finish(delivery, "failed", now)
        return "failed"
    later = now + timedelta(seconds=delay)
    delivery.next_attempt_at = later
    outbox.enqueue(
        session,
        DELIVER_TOPIC,
        {"delivery_id": str(delivery.id)},
        tenant_id=delivery.tenant_id,
        available_at=later,
    )
    return "retry"


def prune(session: Session, now: datetime, retention_days: int) -> dict[str, int]:
    """Delete what is older than ``retention_days``: attempts, finished deliveries, and messages
    without a pending delivery. Returns the counts by table."""
    cutoff = now - timedelta(days=retention_days)
    attempts = session.execute(delete(WebhookAttempt).where(WebhookAttempt.attempted_at < cutoff)).rowcount
    deliveries = session.execute(
        delete(WebhookDelivery).where(
            WebhookDelivery.status != "pending", WebhookDelivery.finished_at < cutoff
        )
    ).rowcount
    pending = exists().where(
        WebhookDelivery.message_id == WebhookMessage.id, WebhookDelivery.status == "pending"
    )
    messages = session.execute(
        delete(WebhookMessage).where(WebhookMessage.created_at < cutoff, ~pending)
    ).rowcount
    return {"attempts": attempts or 0, "deliveries": deliveries or 0, "messages": messages or 0}
