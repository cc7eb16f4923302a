"""The worker's webhook topics: thin calls to :mod:`saas.webhooks.delivery` (docs/webhooks.md).

- ``webhooks.fanout`` (payload: the event's ``id``, ``type``, ``timestamp``, ``data``):
  :func:`saas.webhooks.delivery.fan_out`.
- ``webhooks.deliver`` (payload: ``delivery_id``): :func:`saas.webhooks.delivery.deliver`, with
  the per-endpoint rate on the limiter (:mod:`saas.limits`, one GCRA check in Redis keyed
  ``{t:<tenant>}:rl:webhook:<endpoint id>``; while Redis is unreachable the rate is not
  enforced: delivering late for a Redis outage would be worse than a burst).

A failed attempt is not a failed job: the attempt is recorded and the next one queued with its
own ``available_at`` (the schedule of :data:`saas.webhooks.delivery.SCHEDULE`), so the outbox's
own backoff only ever retries a handler that crashed.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from saas.db import utcnow
from saas.webhooks import delivery
from saas.webhooks.events import DELIVER_TOPIC, FANOUT_TOPIC
from saas.webhooks.models import WebhookEndpoint
from saas.worker import Job, PermanentError, WorkerContext, handler

log = logging.getLogger("saas.worker.webhooks")


def _config(ctx: WorkerContext) -> delivery.DeliveryConfig:
    config = delivery.DeliveryConfig.from_settings(ctx.settings)
    app = ctx.services.get("app")
    if app is not None:  # the key the API sealed the secrets with
        from dataclasses import replace

        config = replace(config, secret_key=app.config["SECRET_KEY"])
    return config


def rate_check_for(limiter: Any) -> delivery.RateCheck:
    """``rate_check`` on ``limiter`` (:class:`saas.limits.Limiter`): None, or the seconds until
    the endpoint may receive again."""
    from saas.cache.guard import RedisUnavailable
    from saas.cache.namespace import TenantKeys
    from saas.limits.gcra import Check

    def check(endpoint: WebhookEndpoint) -> float | None:
        key = TenantKeys(endpoint.tenant_id).rate("webhook", str(endpoint.id))
        try:
            decision = limiter.hit([Check("webhook", key, endpoint.rate_limit, 1)], None)
        except RedisUnavailable:
            log.warning("webhook rate not enforced: Redis unavailable")
            return None
        if decision.allowed:
            return None
        return float(max(1, decision.hit.retry_seconds if decision.hit else 1))

    return check


def _rate_check(ctx: WorkerContext) -> delivery.RateCheck | None:
    if "webhook_rate_check" in ctx.services:
        return ctx.services["webhook_rate_check"]
    app = ctx.services.get("app")
    if app is None:
        return None
    from saas.services import services

    return rate_check_for(services(app).limiter)


@handler(FANOUT_TOPIC)
def fan_out(job: Job, ctx: WorkerContext) -> None:
    """Raises: PermanentError, a payload without its keys or tenant."""
    if job.tenant_id is None:
        raise PermanentError("a webhook event without its tenant")
    try:
        delivery.fan_out(ctx.session, job.tenant_id, job.payload, utcnow())
    except KeyError as exc:
        raise PermanentError(f"payload lacks {exc}") from None


@handler(DELIVER_TOPIC)
def deliver(job: Job, ctx: WorkerContext) -> None:
    """Raises: PermanentError, a payload without a ``delivery_id``."""
    try:
        delivery_id = uuid.UUID(str(job.payload["delivery_id"]))
    except (KeyError, ValueError):
        raise PermanentError("payload lacks a delivery_id") from None
    delivery.deliver(ctx.session, delivery_id, _config(ctx), utcnow(), rate_check=_rate_check(ctx))
