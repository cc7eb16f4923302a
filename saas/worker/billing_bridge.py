"""Delivers billing's outbox topics (:data:`saas.billing.jobs.HANDLERS`, contract
``fn(app, payload) -> None``) through the worker: each becomes a :func:`saas.worker.register`
handler, and each of its periodic jobs (:data:`saas.billing.jobs.PERIODIC`, ``fn(app)``) a
:func:`saas.worker.register_periodic` job. Billing handlers open their own transactions; a
``KeyError``/``ValueError`` (malformed payload) is a :class:`~saas.worker.PermanentError` (dead
letter at once), anything else retries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from saas.worker import Job, PermanentError, WorkerContext, register, register_periodic


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


def _periodic(fn: Callable[[Any], Any]) -> Callable[[dict[str, Any]], Any]:
    def run(worker_services: dict[str, Any]) -> Any:
        app = worker_services.get("app")
        if app is None:
            raise RuntimeError("the worker was started without the app (services['app'])")
        return fn(app)

    run.__name__ = getattr(fn, "__name__", "billing_periodic")
    return run


def register_billing_handlers() -> None:
    from saas.billing.jobs import HANDLERS, PERIODIC

    for topic, fn in HANDLERS.items():
        register(topic, _adapt(fn))
    for name, (interval, job) in PERIODIC.items():
        register_periodic(name, interval, _periodic(job))


register_billing_handlers()
