"""The full app for the benchmark, plus one benchmark-only plan.

``bench`` is the enterprise plan with a limit no benchmark reaches (100 M requests per minute,
10^12 calls a month), so the throughput run measures the cost of the limiter (the Lua call,
the quota counter, the headers) without being throttled. Every other plan is the catalogue's.
``BENCH_NO_PRE_PING=1`` builds the same app on a pool without ``pool_pre_ping`` (a variant row).
"""

from __future__ import annotations

import dataclasses
import os

from sqlalchemy import create_engine

from saas import create_app
from saas.billing import entitlements

_default, _plans = entitlements.catalogue()
_plans.setdefault(
    "bench",
    dataclasses.replace(
        _plans["enterprise"], id="bench", requests_per_minute=100_000_000, monthly_api_calls=10**12
    ),
)

if os.environ.get("BENCH_NO_PRE_PING") == "1":
    # measurement variant: the same app on a pool without pre-ping (one round trip less)
    from saas.db import Database, _guard_search_path
    from saas.settings import Settings

    _settings = Settings.from_env()
    _engine = create_engine(
        _settings.database_url.replace("postgresql://", "postgresql+psycopg://", 1),
        pool_size=_settings.db_pool_size,
        max_overflow=_settings.db_max_overflow,
        pool_recycle=1800,
    )
    _guard_search_path(_engine)
    app = create_app(_settings, database=Database(_engine))
else:
    app = create_app()
