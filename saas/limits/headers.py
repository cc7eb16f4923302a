"""Response headers of rate limits.

* ``RateLimit-Policy`` and ``RateLimit`` as in draft-ietf-httpapi-ratelimit-headers (-10/-11:
  Structured Field Lists, RFC 8941, of String items with parameters), one item per applicable
  policy::

      RateLimit-Policy: "tenant";q=600;w=60, "user";q=300;w=60, "monthly";q=1000000;w=2592000
      RateLimit: "tenant";r=598;t=1, "user";r=299;t=1, "monthly";r=999410;t=1234567

  ``q`` quota, ``w`` window (s), ``r`` remaining, ``t`` seconds until the quota is fully
  available again (GCRA refills continuously; for ``monthly`` it is the end of the period).
* ``X-RateLimit-Limit``, ``X-RateLimit-Remaining``, ``X-RateLimit-Reset`` (GitHub's convention:
  the reset is a Unix time in seconds) for the policy with the fewest remaining requests.
"""

from __future__ import annotations

import math

from werkzeug.datastructures import Headers

from saas.limits.gcra import Decision, PolicyState, Quota


def apply(headers: Headers, decision: Decision) -> None:
    """Add the rate-limit headers of ``decision`` to ``headers`` (which hold none of them yet:
    nothing else writes these names)."""
    current = []
    tightest = None  # (remaining, -reset, limit, reset)
    for state in decision.states:
        c = state.check
        current.append(f'"{c.policy}";r={state.remaining};t={state.reset_seconds}')
        candidate = (state.remaining, -state.reset_seconds, c.limit, state.reset_seconds)
        if tightest is None or candidate < tightest:
            tightest = candidate
    quota = decision.quota
    if quota is not None and quota.limit is not None:
        reset = max(0, math.ceil(quota.reset_at - decision.now))
        remaining = max(0, quota.limit - decision.quota_used)
        current.append(f'"{quota.policy}";r={remaining};t={reset}')
        candidate = (remaining, -reset, quota.limit, reset)
        if tightest is None or candidate < tightest:
            tightest = candidate
    if tightest is None:
        return
    remaining, _, limit, reset = tightest
    add = headers.add
    add("RateLimit-Policy", policy_header(decision.states, quota))
    add("RateLimit", ", ".join(current))
    add("X-RateLimit-Limit", str(limit))
    add("X-RateLimit-Remaining", str(remaining))
    add("X-RateLimit-Reset", str(math.ceil(decision.now) + reset))


def policy_header(states: tuple[PolicyState, ...], quota: Quota | None) -> str:
    """The ``RateLimit-Policy`` value. Built on every response: a memo of it cost more
    instructions than the string it saved (hashing the checks; docs/benchmarks.md)."""
    items = [f'"{s.check.policy}";q={s.check.limit};w={s.check.period}' for s in states]
    if quota is not None and quota.limit is not None:
        items.append(f'"{quota.policy}";q={quota.limit};w={quota.period_seconds}')
    return ", ".join(items)
