"""``GET /healthz`` (the process answers) and ``GET /readyz`` (database and Redis reachable).

``GET /readyz`` answers 200 ``{"status": "ready", "checks": {...}}`` when every dependency
answers and 503 ``{"status": "unavailable", ...}`` otherwise. ``GET /readyz?optional=redis``
still checks and reports Redis in the body (``checks.redis.ok``, ``optional: true``) but
decides the status by the database alone: the Kubernetes readiness probe uses it, because the
rate limits and caches fail open when Redis is down (docs/limits.md) and pulling every pod out
of the Service for a Redis outage would turn a degraded service into no service
(docs/operations.md, "Probes"). The database is never optional.
"""

from __future__ import annotations

import time

from flask import Blueprint, jsonify, request
from sqlalchemy import text

from saas.errors import ValidationError
from saas.services import services

#: dependencies ``?optional=`` may name
OPTIONAL_DEPENDENCIES = frozenset({"redis"})

blp = Blueprint("health", __name__)


@blp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@blp.get("/readyz")
def readyz():
    optional = {n.strip() for v in request.args.getlist("optional") for n in v.split(",") if n.strip()}
    if unknown := optional - OPTIONAL_DEPENDENCIES:
        raise ValidationError(
            {
                "optional": [
                    f"Only {', '.join(sorted(OPTIONAL_DEPENDENCIES))} may be optional, not "
                    f"{', '.join(sorted(unknown))}."
                ]
            }
        )
    checks: dict[str, dict] = {}
    ready = True
    start = time.perf_counter()
    try:
        with services().database.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
    except Exception as exc:
        ready = False
        checks["database"] = {"ok": False, "error": type(exc).__name__}
    checks["database"]["ms"] = round((time.perf_counter() - start) * 1000, 1)
    start = time.perf_counter()
    try:
        services().redis.ping()
        checks["redis"] = {"ok": True}
    except Exception as exc:
        ready = ready and "redis" in optional
        checks["redis"] = {"ok": False, "error": type(exc).__name__}
    if "redis" in optional:
        checks["redis"]["optional"] = True
    checks["redis"]["ms"] = round((time.perf_counter() - start) * 1000, 1)
    response = jsonify(status="ready" if ready else "unavailable", checks=checks)
    response.status_code = 200 if ready else 503
    response.headers["Cache-Control"] = "no-store"
    return response
