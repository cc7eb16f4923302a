"""The outbox relay: publishes committed, due outbox rows to the job engine and marks them.

The outbox stays the source of truth (design invariant 6): a request writes its row in its own
transaction, and only a committed row can be seen here. Each round (:meth:`Relay.relay_once`)
takes up to ``batch`` due rows (``sent_at`` and ``failed_at`` empty, ``available_at`` passed)
with ``FOR UPDATE SKIP LOCKED`` (relays side by side never take the same row), publishes each
as an :class:`OutboxTask`, then marks them in the same transaction by moving ``available_at``
``lease_seconds`` ahead: a lease, after which a row the engine lost (a broker flushed, a worker
killed) is published again.

Idempotent by construction: a message carries the row's ``attempts``, and
:func:`saas.worker.deliver` runs a row only while it still has that count. A relay that crashes
after publishing and before its mark commits publishes the rows again next round; the first
task to lock the row runs it, the duplicate finds the attempt made and does nothing. A task
waits for the relay's row lock (the mark's commit) rather than skip the row, so a message never
outruns its mark.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from saas.db import Database, utcnow
from saas.outbox import OutboxMessage as M
from saas.worker import touch

log = logging.getLogger("saas.worker.relay")


@dataclass(frozen=True)
class OutboxTask:
    """What a published message carries: the row's id, its tenant (the task sets the tenant's
    schema from it, never from a global), its topic (for logs and routing) and the attempt it
    asks for (the row's ``attempts`` when published)."""

    outbox_id: int
    tenant_id: uuid.UUID | None
    topic: str
    attempt: int

    def kwargs(self) -> dict[str, object]:
        """The Celery task's keyword arguments (JSON: the tenant id as a string)."""
        return {
            "outbox_id": self.outbox_id,
            "tenant_id": str(self.tenant_id) if self.tenant_id else None,
            "topic": self.topic,
            "attempt": self.attempt,
        }


#: publishes a batch of messages (raises when the broker refuses: the round rolls back)
Publisher = Callable[[Sequence[OutboxTask]], None]


class Relay:
    """Moves committed outbox rows to the job engine.

    Args:
        database: where the outbox lives.
        publish: sends a batch of :class:`OutboxTask` (:func:`saas.worker.engine.publisher`).
        lease_seconds: how long a published row waits for its task before it is published again
            (``OUTBOX_RELAY_LEASE``): longer than a message's queueing plus running time.
        batch: rows per round (one transaction).
    """

    def __init__(self, database: Database, publish: Publisher, *, lease_seconds: int = 300, batch: int = 200):
        self.database = database
        self.publish = publish
        self.lease = timedelta(seconds=lease_seconds)
        self.batch = batch
        self.stopping = threading.Event()

    def relay_once(self, now: datetime | None = None) -> int:
        """Publish and mark one batch of due rows; returns how many were published.

        Raises whatever the publisher or the database raised (nothing is marked then)."""
        now = now or utcnow()
        with self.database.transaction() as session:
            rows = session.execute(
                select(M.id, M.tenant_id, M.topic, M.attempts)
                .where(M.sent_at.is_(None), M.failed_at.is_(None), M.available_at <= now)
                .order_by(M.available_at, M.id)
                .limit(self.batch)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return 0
            self.publish([OutboxTask(r.id, r.tenant_id, r.topic, r.attempts) for r in rows])
            session.execute(
                update(M).where(M.id.in_([r.id for r in rows])).values(available_at=now + self.lease)
            )
        return len(rows)

    def run_forever(self, poll_seconds: float = 1.0, heartbeat: str | None = None) -> None:
        """Relay until :attr:`stopping` is set: a round that published something is followed at
        once by the next (rows keep coming while a request burst commits them), an empty one
        waits ``poll_seconds``. A failing round (database or broker down) is logged and retried
        after ``poll_seconds``, never raised. ``heartbeat``: a file touched every round (the
        liveness probe's)."""
        log.info("outbox relay started")
        while not self.stopping.is_set():
            if heartbeat:
                touch(heartbeat)
            try:
                busy = self.relay_once() > 0
            except Exception:
                log.exception("outbox relay round failed")
                busy = False
            if not busy:
                self.stopping.wait(poll_seconds)
        log.info("outbox relay stopped")
