"""The full app for the benchmark, plus one benchmark-only plan.

``bench`` is the enterprise plan with a limit no benchmark reaches (100 M requests per minute,
10^12 calls a month), so the throughput run measures the cost of the limiter (the Lua call,
the quota counter, the headers) without being throttled. Every other plan is the catalogue's.
"""

from __future__ import annotations

import dataclasses

from saas import create_app
from saas.billing import entitlements

_default, _plans = entitlements.catalogue()
_plans.setdefault(
    "bench",
    dataclasses.replace(
        _plans["enterprise"], id="bench", requests_per_minute=100_000_000, monthly_api_calls=10**12
    ),
)

app = create_app()
