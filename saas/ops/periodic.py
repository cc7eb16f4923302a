"""Operations' periodic jobs (listed in :mod:`saas.schedules`, run by ``saas beat``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from saas.ops.lifecycle import purge_due
from saas.services import services


def purge_tenants(app: Any, now: datetime | None = None) -> dict[str, Any]:
    """Drop every soft-deleted tenant whose retention is over (``saas tenants purge``: one
    transaction each, see :func:`saas.ops.lifecycle.purge_due`).

    Returns:
        ``{"purged": [slug, ...], "failed": {slug: error}}``.
    """
    results = purge_due(services(app).database.engine, now=now)
    return {
        "purged": [r.slug for r in results if r.ok],
        "failed": {r.slug: r.error for r in results if not r.ok},
    }
