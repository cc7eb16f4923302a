"""``GET /healthz`` (the process answers) and ``GET /readyz`` (database and Redis reachable)."""

from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

blp = Blueprint("health", __name__)


@blp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@blp.get("/readyz")
def readyz():
    checks: dict[str, dict] = {}
    ready = True
    start = time.perf_counter()
    try:
        with current_app.extensions["saas.db"].engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
    except Exception as exc:
        ready = False
        checks["database"] = {"ok": False, "error": type(exc).__name__}
    checks["database"]["ms"] = round((time.perf_counter() - start) * 1000, 1)
    start = time.perf_counter()
    try:
        current_app.extensions["saas.redis"].ping()
        checks["redis"] = {"ok": True}
    except Exception as exc:
        ready = False
        checks["redis"] = {"ok": False, "error": type(exc).__name__}
    checks["redis"]["ms"] = round((time.perf_counter() - start) * 1000, 1)
    response = jsonify(status="ready" if ready else "unavailable", checks=checks)
    response.status_code = 200 if ready else 503
    response.headers["Cache-Control"] = "no-store"
    return response
