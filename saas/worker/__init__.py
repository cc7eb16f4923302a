"""The background worker: a plain outbox poller (design invariant 6).

Messages are rows of ``saas.outbox`` written in the same transaction as the change that caused
them. :class:`Worker` takes one due message at a time with ``SELECT ... FOR UPDATE SKIP LOCKED``
(any number of workers can run side by side, none takes the same row), runs the topic's
handler in that transaction and marks the row sent (its payload blanked: it may carry a token)
or schedules a retry with exponential backoff and jitter; after ``OUTBOX_MAX_ATTEMPTS`` the row
becomes a dead letter (``failed_at``), listed by ``saas jobs list --failed`` and requeued by
``saas jobs retry``.

Delivery is at least once (a crash after the side effect and before the commit repeats it), so
handlers must be idempotent: they get :attr:`Job.idempotency_key` (``outbox-<id>``) to pass on
(the mail's ``Message-ID``, Stripe's ``Idempotency-Key``).

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
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from saas.db import Database, utcnow
from saas.observability import tracing
from saas.outbox import OutboxMessage
from saas.settings import Settings

log = logging.getLogger("saas.worker")

#: modules imported by ``saas worker`` so their handlers register (others append their own)
HANDLER_MODULES: list[str] = ["saas.worker.mail", "saas.worker.billing_bridge", "saas.worker.backchannel"]


#: touched by ``run_forever`` on every loop (liveness: infra/k8s/worker.yaml)
HEARTBEAT_FILE = os.environ.get("WORKER_HEARTBEAT_FILE", "/tmp/saas-worker.heartbeat")  # noqa: S108


def _touch(path: str) -> None:
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


class Worker:
    """Polls the outbox and delivers messages.

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
        """Deliver at most one due message. Returns ``sent``, ``retry``, ``failed`` or None (idle).

        Metrics are recorded after the commit and never raise: a metrics failure (a missing
        ``PROMETHEUS_MULTIPROC_DIR``, a full disk) must not roll back a delivery whose side
        effect (the mail) has already happened, or the message would be delivered forever."""
        # an idle poll makes no span (its SELECT and its commit are not traced); a job's span
        # (tracing on: saas.observability.tracing.job_span) covers its handler, its row's update
        # and the commit
        with tracing.job_span() as span:
            quiet = contextlib.ExitStack()
            quiet.enter_context(tracing.suppressed())
            try:
                with self.database.transaction() as session:
                    row = self._next_due(session)
                    if row is None:
                        return None
                    quiet.close()  # from here on, the job's spans
                    job = Job(row.id, row.topic, row.tenant_id, dict(row.payload or {}), row.attempts + 1)
                    if span is not None:
                        span.begin(job.topic, job.id, job.tenant_id, job.attempts)
                    outcome, start = self._handle(session, row, job, span)
            finally:
                quiet.close()
        _record_job(job.topic, outcome, time.perf_counter() - start)
        return outcome

    def _handle(self, session: Session, row: OutboxMessage, job: Job, span: Any) -> tuple[str, float]:
        """Run the job's handler in a savepoint and update its row (sent, retry or dead letter).
        Returns the outcome and the handler's start (``perf_counter``)."""
        fn = _handlers.get(row.topic)
        start = time.perf_counter()
        outcome = "sent"
        context = WorkerContext(self.settings, session, self.services)
        failure: Exception | None = None
        try:
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
            if isinstance(exc, PermanentError) or job.attempts >= self.settings.outbox_max_attempts:
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
                extra={
                    "job_id": job.id,
                    "topic": job.topic,
                    "attempt": job.attempts,
                    "error": error,
                },
            )
        row.attempts = job.attempts
        if span is not None:
            span.outcome(outcome, failure)
        return outcome, start

    @staticmethod
    def _next_due(session: Session) -> OutboxMessage | None:
        return session.scalars(
            select(OutboxMessage)
            .where(
                OutboxMessage.sent_at.is_(None),
                OutboxMessage.failed_at.is_(None),
                OutboxMessage.available_at <= utcnow(),
            )
            .order_by(OutboxMessage.available_at, OutboxMessage.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()

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
        """Delete messages sent more than ``keep_days`` ago (their payloads are already blank)."""
        with self.database.transaction() as session:
            result = session.execute(
                delete(OutboxMessage).where(OutboxMessage.sent_at < utcnow() - timedelta(days=keep_days))
            )
            return result.rowcount or 0

    def run_forever(
        self, poll_seconds: float = 1.0, heartbeat: str | None = HEARTBEAT_FILE, signals: bool = True
    ) -> None:
        """Poll until SIGTERM/SIGINT (or :attr:`stopping` is set); the message in hand is
        finished first (graceful stop).

        ``heartbeat``: a file touched every loop; the liveness probe checks its age (a worker
        stuck in a handler stops touching it). ``signals``: install the signal handlers (only
        the main thread can; ``saas dev`` runs the worker in a thread without them)."""
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stopping.set())
        log.info("worker started", extra={"topics": sorted(_handlers)})
        while not self.stopping.is_set():
            if heartbeat:
                _touch(heartbeat)
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
