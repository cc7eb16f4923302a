"""Background jobs: the outbox's handlers, and the one place a message is delivered.

Messages are rows of ``saas.outbox`` written in the same transaction as the change that caused
them (design invariant 6); the row stays the record of the job (attempts, ``last_error``,
``failed_at``). Celery runs them (:mod:`saas.worker.engine`): the outbox relay
(:class:`saas.worker.relay.Relay`) publishes committed, due rows as ``saas.outbox.deliver``
tasks and marks them; each task calls :func:`deliver`, which locks its row, checks it is still
the attempt that was published, runs the topic's handler in that transaction and marks the row
sent (its payload blanked: it may carry a token) or schedules a retry with exponential backoff
and jitter (:func:`backoff_seconds`); after ``OUTBOX_MAX_ATTEMPTS`` the row becomes a dead
letter (``failed_at``), listed by ``saas jobs list --failed`` and requeued by ``saas jobs retry``.
:class:`Worker`, the former poller, delivers through the same :func:`deliver` without a broker
(``saas worker --once``, tests, the benchmark's baseline).

Delivery is at least once (a crash after the side effect and before the commit repeats it), so
handlers must be idempotent: they get :attr:`Job.idempotency_key` (``outbox-<id>``) to pass on
(the mail's ``Message-ID``, Stripe's ``Idempotency-Key``).

Tenant context travels with the message, never from a global: the task's arguments carry the
row's ``tenant_id``, :func:`deliver` refuses a row whose tenant differs and opens the handler's
session bound to that tenant's schema (:attr:`WorkerContext.tenant_schema`), so a handler of
tenant A never sees tenant B's schema, whatever the process ran before.

Periodic jobs are not the worker's: every schedule is one line of :data:`saas.schedules.SCHEDULES`,
published by ``saas beat`` and run by the workers.

Other packages add handlers with :func:`register` (or the :func:`handler` decorator) in a module
listed in :data:`HANDLER_MODULES` or exposed under the ``saas.worker_handlers`` entry point
group; ``saas worker`` imports them all at start.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from saas.db import Database, schema_name_for, utcnow
from saas.observability import tracing
from saas.outbox import OutboxMessage
from saas.settings import Settings

log = logging.getLogger("saas.worker")

#: modules imported by ``saas worker`` so their handlers register (others append their own)
HANDLER_MODULES: list[str] = [
    "saas.worker.mail",
    "saas.worker.billing_bridge",
    "saas.worker.backchannel",
    "saas.worker.webhooks",
]


#: touched by ``run_forever`` on every loop (liveness: infra/k8s/worker.yaml)
HEARTBEAT_FILE = os.environ.get("WORKER_HEARTBEAT_FILE", "/tmp/saas-worker.heartbeat")  # noqa: S108


def touch(path: str) -> None:
    """Touch the heartbeat file ``path`` (its age is the liveness probe's); never raises."""
    try:
        with open(path, "a"):
            os.utime(path)
    except OSError:
        log.warning("cannot touch the heartbeat file %s", path)


def _record_job(topic: str, outcome: str, seconds: float) -> None:
    """Count a handled message; never raises (called after the delivery committed)."""
    try:
        from saas.observability import metrics

        metrics.job_processed(topic, outcome, seconds)
    except Exception:
        log.warning("cannot record job metrics", exc_info=True)


class PermanentError(Exception):
    """A handler's failure that retrying cannot fix (malformed payload): dead letter at once."""


@dataclass(frozen=True)
class Job:
    """One message as a handler sees it."""

    id: int
    topic: str
    tenant_id: uuid.UUID | None
    payload: dict[str, Any]
    attempts: int

    @property
    def idempotency_key(self) -> str:
        return f"outbox-{self.id}"


@dataclass
class WorkerContext:
    """What handlers may use: settings, the worker's transaction (their writes commit with the
    'sent' mark, or roll back with a failure), and shared services (``mailer``...)."""

    settings: Settings
    session: Session
    services: dict[str, Any] = field(default_factory=dict)
    #: writes that must outlive the handler's failure (a record of the failed attempt): called
    #: with the session after the handler's writes were rolled back, and committed with the
    #: retry or dead-letter mark. A failing callback is logged, never raised.
    on_failure: list[Callable[[Session], None]] = field(default_factory=list)
    #: the schema :attr:`session` maps tenant tables to: the message's tenant (``t_<hex>``, from
    #: the task's ``tenant_id`` argument), or None for a platform message (tenant tables fail)
    tenant_schema: str | None = None


Handler = Callable[[Job, WorkerContext], None]
_handlers: dict[str, Handler] = {}


def register(topic: str, fn: Handler) -> None:
    """Register ``fn`` for ``topic`` (one handler per topic; registering again replaces it)."""
    _handlers[topic] = fn


def handler(topic: str) -> Callable[[Handler], Handler]:
    """Decorator form of :func:`register`."""

    def wrap(fn: Handler) -> Handler:
        register(topic, fn)
        return fn

    return wrap


def handlers() -> dict[str, Handler]:
    return dict(_handlers)


def load_handlers() -> dict[str, Handler]:
    """Import :data:`HANDLER_MODULES` and the ``saas.worker_handlers`` entry points."""
    from importlib.metadata import entry_points

    for name in HANDLER_MODULES:
        importlib.import_module(name)
    for ep in entry_points(group="saas.worker_handlers"):
        ep.load()
    return handlers()


def backoff_seconds(attempts: int, base: float = 5.0, cap: float = 3600.0) -> float:
    """Delay before retry number ``attempts`` (1-based): ``base * 2**(attempts-1)`` capped at
    ``cap``, with +-20 % jitter so failed messages do not retry in lockstep."""
    delay = min(cap, base * (2 ** max(0, attempts - 1)))
    return delay * random.uniform(0.8, 1.2)


def deliver(
    database: Database,
    settings: Settings,
    services: dict[str, Any],
    outbox_id: int,
    *,
    tenant_id: uuid.UUID | None,
    attempt: int | None = None,
    skip_locked: bool = False,
    lock_timeout_ms: int = 30_000,
) -> str | None:
    """Deliver outbox row ``outbox_id``: the body of every delivery, Celery's and the poller's.

    Args:
        tenant_id: the tenant the message says it belongs to (the task's argument): the
            handler's session is bound to that tenant's schema (``t_<hex>``, or none for a
            platform message), and a row whose ``tenant_id`` differs is a dead letter at once,
            never run in another tenant's schema.
        attempt: the row's ``attempts`` when the relay published it. The row runs only if it
            still has that count, so a message published twice (a relay that crashed between
            the publish and its mark, a broker redelivery) runs its handler once; None (the
            poller): the row must be due instead.
        skip_locked: skip a row another delivery holds (the poller) instead of waiting up to
            ``lock_timeout_ms`` for it (a task: the relay holds its rows until its mark commits).

    Returns:
        ``sent``, ``retry`` or ``failed`` (the row's new state), or None when nothing ran: the
        row is gone, sent, a dead letter, held by another delivery, not due, or a later
        attempt than ``attempt``.

    Raises:
        sqlalchemy.exc.OperationalError: the database is unreachable, or the row stayed
        locked for ``lock_timeout_ms`` (the relay publishes it again after its lease).

    Metrics are recorded after the commit and never raise: a metrics failure (a missing
    ``PROMETHEUS_MULTIPROC_DIR``, a full disk) must not roll back a delivery whose side effect
    (the mail) has already happened, or the message would be delivered forever.
    """
    schema = schema_name_for(tenant_id) if tenant_id is not None else None
    # a span per job when tracing is on (saas.observability.tracing.job_span): its handler, its
    # row's update and the commit; a delivery that finds nothing to run makes none
    with tracing.job_span() as span:
        quiet = contextlib.ExitStack()
        quiet.enter_context(tracing.suppressed())
        try:
            outcome, topic, start = _deliver_row(
                database, settings, services, outbox_id, schema, tenant_id, attempt, skip_locked,
                lock_timeout_ms, span, quiet,
            )  # fmt: skip
        finally:
            quiet.close()
    if outcome is not None:
        _record_job(topic, outcome, time.perf_counter() - start)
    return outcome


def _deliver_row(
    database: Database,
    settings: Settings,
    services: dict[str, Any],
    outbox_id: int,
    schema: str | None,
    tenant_id: uuid.UUID | None,
    attempt: int | None,
    skip_locked: bool,
    lock_timeout_ms: int,
    span: Any,
    quiet: contextlib.ExitStack,
) -> tuple[str | None, str, float]:
    """:func:`deliver`'s transaction: ``(outcome or None, topic, handler start)``."""
    failure: Exception | None = None
    with database.transaction(schema) as session:
        if not skip_locked:
            session.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"))
        row = session.scalars(
            select(OutboxMessage)
            .where(
                OutboxMessage.id == outbox_id,
                OutboxMessage.sent_at.is_(None),
                OutboxMessage.failed_at.is_(None),
            )
            .with_for_update(skip_locked=skip_locked)
        ).first()
        if row is None:
            return None, "", 0.0
        if attempt is None and row.available_at > utcnow():
            return None, "", 0.0
        if attempt is not None and row.attempts != attempt:
            return None, "", 0.0  # a duplicate of an attempt already made
        job = Job(row.id, row.topic, row.tenant_id, dict(row.payload or {}), row.attempts + 1)
        quiet.close()  # from here on, the job's spans
        if span is not None:
            span.begin(job.topic, job.id, job.tenant_id, job.attempts)
        fn = _handlers.get(row.topic)
        start = time.perf_counter()
        outcome = "sent"
        context = WorkerContext(settings, session, services, tenant_schema=schema)
        try:
            if row.tenant_id != tenant_id:
                raise PermanentError("the message's tenant does not match its outbox row")
            if fn is None:
                raise PermanentError(f"no handler for topic {row.topic!r}")
            savepoint = session.begin_nested()
            try:
                fn(job, context)
                savepoint.commit()
            except BaseException:
                savepoint.rollback()
                raise
            row.sent_at = utcnow()
            row.payload = {}  # may have carried a token: gone once delivered
            row.last_error = None
        except Exception as exc:
            failure = exc
            error = f"{type(exc).__name__}: {exc}"[:2000]
            row.last_error = error
            if isinstance(exc, PermanentError) or job.attempts >= settings.outbox_max_attempts:
                row.failed_at = utcnow()
                outcome = "failed"
            else:
                row.available_at = utcnow() + timedelta(seconds=backoff_seconds(job.attempts))
                outcome = "retry"
            for keep in context.on_failure:
                try:
                    with session.begin_nested():
                        keep(session)
                except Exception:
                    log.exception("a failure record of job %s could not be written", job.id)
            log.warning(
                "job %s",
                outcome,
                extra={"job_id": job.id, "topic": job.topic, "attempt": job.attempts, "error": error},
            )
        row.attempts = job.attempts
        if span is not None:
            span.outcome(outcome, failure)
    return outcome, job.topic, start


def prune_sent(database: Database, keep_days: int = 7, now: datetime | None = None) -> int:
    """Delete messages sent more than ``keep_days`` ago (their payloads are already blank).
    Returns how many rows went."""
    cutoff = (now or utcnow()) - timedelta(days=keep_days)
    with database.transaction() as session:
        result = session.execute(delete(OutboxMessage).where(OutboxMessage.sent_at < cutoff))
        return result.rowcount or 0


class Worker:
    """The broker-less poller: takes due messages oldest first and delivers each through
    :func:`deliver` in this process (``saas worker --once``, tests, the benchmark's baseline).
    Any number can run side by side with each other and with Celery workers: a row held by
    another delivery is skipped (``FOR UPDATE SKIP LOCKED``).

    Args:
        database: where the outbox lives.
        settings: passed to handlers; ``outbox_max_attempts`` bounds retries.
        services: shared objects for handlers (``mailer``: a :class:`saas.worker.mail.Mailer`).
    """

    def __init__(self, database: Database, settings: Settings, services: dict[str, Any] | None = None):
        self.database = database
        self.settings = settings
        self.services = services or {}
        self.stopping = threading.Event()
        self._last_prune = 0.0
        from saas.observability.metrics import ensure_multiproc_dir

        ensure_multiproc_dir()

    def run_one(self) -> str | None:
        """Deliver at most one due message. Returns ``sent``, ``retry``, ``failed`` or None (idle:
        nothing due, or every due row is held by another delivery)."""
        with tracing.suppressed(), self.database.transaction() as session:  # an idle poll: no span
            due = session.execute(
                select(OutboxMessage.id, OutboxMessage.tenant_id)
                .where(
                    OutboxMessage.sent_at.is_(None),
                    OutboxMessage.failed_at.is_(None),
                    OutboxMessage.available_at <= utcnow(),
                )
                .order_by(OutboxMessage.available_at, OutboxMessage.id)
                .limit(_POLL_CANDIDATES)
            ).all()
        for outbox_id, tenant_id in due:
            outcome = deliver(
                self.database, self.settings, self.services, outbox_id, tenant_id=tenant_id, skip_locked=True
            )
            if outcome is not None:
                return outcome
        return None

    def run_until_idle(self, limit: int = 10_000) -> dict[str, int]:
        """Deliver due messages until none is left (tests, ``saas worker --once``)."""
        counts: dict[str, int] = {}
        for _ in range(limit):
            outcome = self.run_one()
            if outcome is None:
                break
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def prune(self, keep_days: int = 7) -> int:
        """Delete messages sent more than ``keep_days`` ago (:func:`prune_sent`)."""
        return prune_sent(self.database, keep_days)

    def run_forever(
        self, poll_seconds: float = 1.0, heartbeat: str | None = HEARTBEAT_FILE, signals: bool = True
    ) -> None:
        """Poll until SIGTERM/SIGINT (or :attr:`stopping` is set); the message in hand is
        finished first (graceful stop).

        ``heartbeat``: a file touched every loop; the liveness probe checks its age (a worker
        stuck in a handler stops touching it). ``signals``: install the signal handlers (only
        the main thread can)."""
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stopping.set())
        log.info("worker started", extra={"topics": sorted(_handlers)})
        while not self.stopping.is_set():
            if heartbeat:
                touch(heartbeat)
            try:
                busy = self.run_one() is not None
                if time.monotonic() - self._last_prune > 3600:
                    self._last_prune = time.monotonic()
                    self.prune()
            except Exception:  # database down: wait and try again, never crash-loop
                log.exception("worker poll failed")
                busy = False
            if not busy:
                self.stopping.wait(poll_seconds)
        log.info("worker stopped")


#: due rows the poller looks at per round: when the first is held by another delivery it tries
#: the next ones rather than report idle
_POLL_CANDIDATES = 20
