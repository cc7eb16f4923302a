"""The worker's periodic jobs (listed in :mod:`saas.schedules`, run by ``saas beat``)."""

from __future__ import annotations

from typing import Any

from saas.services import services
from saas.worker import prune_sent


def prune_outbox(app: Any, keep_days: int = 7) -> int:
    """Delete outbox rows delivered more than ``keep_days`` ago (dead letters and pending rows
    stay); returns how many went. Was the poller's hourly chore."""
    return prune_sent(services(app).database, keep_days)
