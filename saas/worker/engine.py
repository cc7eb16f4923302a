"""The job engine: Celery (https://docs.celeryq.dev) under the outbox.

:func:`make_celery` builds the Celery app of a process. Its broker is ``CELERY_BROKER_URL``,
else ``REDIS_URL``, else ``memory://`` (one process: ``saas dev``); RabbitMQ is ``amqp://``.
Two tasks:

* ``saas.outbox.deliver(outbox_id, tenant_id, topic, attempt)``: published by the outbox relay
  (:mod:`saas.worker.relay`), runs :func:`saas.worker.deliver` in the app's context. The
  tenant comes from the task's arguments only. Results are not stored (the outbox row is the
  record); retries are the row's (``available_at`` moved by the backoff, published again by the
  relay when due), not Celery's ETA retries, which the Redis transport keeps in a worker's memory
  and redelivers after its visibility timeout.
* ``saas.schedule.run(name)``: published by ``saas beat`` from :data:`saas.schedules.SCHEDULES`;
  runs the schedule's function under its Redis lock.

Messages are acknowledged after the task ran (``task_acks_late``) and given back when a worker
dies (``task_reject_on_worker_lost``): a killed worker's message runs elsewhere, and the
relay's lease covers a message the broker lost.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.schedules import crontab, schedule

from saas import schedules
from saas.services import services
from saas.settings import Settings
from saas.worker import deliver
from saas.worker.relay import OutboxTask, Publisher

log = logging.getLogger("saas.worker")

DELIVER_TASK = "saas.outbox.deliver"
SCHEDULE_TASK = "saas.schedule.run"


def broker_url(settings: Settings) -> str:
    """``CELERY_BROKER_URL``, else ``REDIS_URL``, else ``memory://`` (one process only)."""
    return settings.celery_broker_url or settings.redis_url or "memory://"


def beat_schedule(
    entries: Sequence[schedules.Schedule] | None = None, settings: Settings | None = None
) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule`` for :data:`saas.schedules.SCHEDULES` (or ``entries``): each
    entry publishes ``saas.schedule.run`` with its name; a message not taken before the next
    tick expires (never two runs queued for one schedule). An ``every_setting`` entry takes its
    seconds from ``settings`` (default :meth:`Settings.from_env`) and is left out at 0 (off)."""
    out: dict[str, dict[str, Any]] = {}
    for entry in schedules.SCHEDULES if entries is None else entries:
        if entry.every_setting is not None:
            if settings is None:
                settings = Settings.from_env()
            seconds = float(getattr(settings, entry.every_setting))
            if seconds <= 0:
                continue
            when, expires = schedule(seconds), seconds
        elif entry.cron is not None:
            minute, hour, day_of_month, month, day_of_week = entry.cron.split()
            when: Any = crontab(
                minute=minute,
                hour=hour,
                day_of_month=day_of_month,
                month_of_year=month,
                day_of_week=day_of_week,
            )
            expires = 3600.0
        else:
            assert entry.every is not None
            when, expires = schedule(entry.every), entry.every
        out[entry.name] = {
            "task": SCHEDULE_TASK,
            "schedule": when,
            "kwargs": {"name": entry.name},
            "options": {"expires": expires},
        }
    return out


def import_function(path: str) -> Callable[..., Any]:
    """``package.module:function`` -> the function.

    Raises:
        ImportError, AttributeError: no such module or function.
    """
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def make_celery(
    settings: Settings,
    app: Callable[[], Any],
    *,
    broker: str | None = None,
    queue: str | None = None,
) -> Celery:
    """The Celery app of this process.

    Args:
        settings: the broker (:func:`broker_url`, unless ``broker``), the queue
            (``CELERY_QUEUE``, unless ``queue``).
        app: returns the Flask app the tasks run with (built on first use, so a process that
            only publishes never builds one): its database, settings, Redis, signing keys.
    """
    celery = Celery("saas", broker=broker or broker_url(settings), set_as_current=False)
    celery.conf.update(
        task_default_queue=queue or settings.celery_queue,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        worker_prefetch_multiplier=4,
        worker_hijack_root_logger=False,  # saas.observability.logging owns the log format
        worker_redirect_stdouts=False,  # the console mailer of development prints
        broker_connection_retry_on_startup=True,
        beat_schedule=beat_schedule(settings=settings),
    )
    handler_services: dict[str, Any] = {}

    @celery.task(name=DELIVER_TASK, shared=False)
    def deliver_task(outbox_id: int, tenant_id: str | None, topic: str, attempt: int) -> str | None:
        flask_app = app()
        handler_services.setdefault("app", flask_app)
        svc = services(flask_app)
        with flask_app.app_context():
            return deliver(
                svc.database,
                svc.settings,
                handler_services,
                outbox_id,
                tenant_id=uuid.UUID(tenant_id) if tenant_id else None,
                attempt=attempt,
            )

    @celery.task(name=SCHEDULE_TASK, shared=False)
    def run_schedule(name: str) -> Any:
        return run_scheduled(app(), name)

    return celery


def run_scheduled(flask_app: Any, name: str) -> Any:
    """Run the schedule ``name`` once, under its lock (``saas:schedule:<name>`` in Redis, at
    most ``lock_seconds``); returns what its function returned, or None when another run holds
    the lock.

    Raises:
        KeyError: no such schedule; whatever the function raised (logged with the name)."""
    entry = schedules.by_name(name)
    fn = import_function(entry.function)
    lock = services(flask_app).redis.lock(f"saas:schedule:{name}", timeout=entry.lock_seconds, blocking=False)
    if not lock.acquire():
        log.warning("schedule skipped: a run is in progress", extra={"schedule": name})
        return None
    start = time.perf_counter()
    try:
        with flask_app.app_context():
            result = fn(flask_app, **entry.kwargs)
    except Exception:
        log.exception("schedule failed", extra={"schedule": name})
        raise
    finally:
        try:
            lock.release()
        except Exception:  # expired meanwhile: the next run may already hold a new one
            log.warning("schedule lock expired during the run", extra={"schedule": name})
    log.info(
        "schedule done",
        extra={"schedule": name, "seconds": round(time.perf_counter() - start, 3), "result": result},
    )
    return result


#: Celery's per-task lines ("received", "succeeded"): two INFO lines a job, which the outcome
#: already tells (a retry or dead letter is logged by :func:`saas.worker.deliver`, a crash by
#: Celery at ERROR); shown only at ``LOG_LEVEL=DEBUG``
TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


def quiet_task_logs(log_level: str) -> None:
    """Raise :data:`TASK_LOGGERS` to WARNING unless ``log_level`` is DEBUG."""
    if log_level != "DEBUG":
        for name in TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def publisher(celery: Celery) -> Publisher:
    """The relay's publisher: each :class:`OutboxTask` as a ``saas.outbox.deliver`` message,
    the batch over one producer connection."""
    task = celery.tasks[DELIVER_TASK]

    def publish(batch: Sequence[OutboxTask]) -> None:
        with celery.producer_or_acquire() as producer:
            for message in batch:
                task.apply_async(kwargs=message.kwargs(), producer=producer)

    return publish


def dispose_after_fork(flask_app: Any) -> None:
    """Prefork children: drop the database connections inherited from the parent (SQLAlchemy's
    ``engine.dispose(close=False)``, its documented way to use a pool after ``fork``)."""
    services(flask_app).database.engine.dispose(close=False)


@contextmanager
def in_process_worker(celery: Celery, *, concurrency: int = 1, pool: str = "solo"):
    """A Celery worker in a daemon thread of this process, for the block's duration (``saas
    dev``'s embedded broker, the tests): no signal handlers, no remote control.

    Yields the worker controller; on exit the worker stops after the task in hand."""
    from celery.worker import WorkController, state

    celery.finalize()
    # the worker's threads (the consumer's, the pool's) look tasks up on the default app
    celery.set_default()

    worker = WorkController(
        app=celery,
        concurrency=concurrency,
        pool=pool,
        hostname=f"saas-{os.getpid()}-{uuid.uuid4().hex[:6]}@localhost",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="WARNING",
    )

    def run() -> None:
        try:
            worker.start()
        except BaseException:
            log.exception("the in-process Celery worker stopped")
            raise

    thread = threading.Thread(target=run, name="celery-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        state.should_terminate = 0
        thread.join(15)
        state.should_terminate = None
