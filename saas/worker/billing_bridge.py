"""Delivers billing's outbox topics (:data:`saas.billing.jobs.HANDLERS`, contract
``fn(app, payload) -> None``) through the worker: each becomes a :func:`saas.worker.register`
handler (its periodic jobs are in :data:`saas.schedules.SCHEDULES`). Billing handlers open
their own transactions; a ``KeyError``/``ValueError`` (malformed payload) is a
:class:`~saas.worker.PermanentError` (dead letter at once), anything else retries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from saas.worker import Job, PermanentError, WorkerContext, register


def _adapt(fn: Callable[[Any, dict[str, Any]], None]) -> Callable[[Job, WorkerContext], None]:
    def handle(job: Job, ctx: WorkerContext) -> None:
        app = ctx.services.get("app")
        if app is None:
            raise RuntimeError("the worker was started without the app (services['app'])")
        try:
            fn(app, job.payload)
        except (KeyError, ValueError) as exc:
            raise PermanentError(f"malformed payload: {type(exc).__name__}: {exc}") from exc

    handle.__name__ = getattr(fn, "__name__", "billing_job")
    return handle


def register_billing_handlers() -> None:
    from saas.billing.jobs import HANDLERS

    for topic, fn in HANDLERS.items():
        register(topic, _adapt(fn))


register_billing_handlers()
