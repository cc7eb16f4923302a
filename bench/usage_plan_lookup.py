"""Benchmark: the limiter's kept-plan lookup per request (``Limiter._principal_plan`` when the
plan is kept), whose memo key now carries the subscription's ``quota_period``.

    .venv/bin/python bench/usage_plan_lookup.py [--before /path/to/old/saas/limits/__init__.py]

``--before``: a copy of ``saas/limits/__init__.py`` from before the change (``git show
<commit>:saas/limits/__init__.py > /tmp/old_limits_mod.py``), timed in interleaved rounds with
the current one. The principal snapshot is a stub (no Redis): this is the CPU the lookup adds.
Prints min and median nanoseconds per lookup over the rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import timeit
import uuid
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import saas.auth.principals as principals  # noqa: E402
import saas.limits as current  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    modules = {"after": current}
    if args.before:
        spec = importlib.util.spec_from_file_location("limits_before", args.before)
        assert spec and spec.loader
        before = importlib.util.module_from_spec(spec)
        sys.modules["limits_before"] = before  # its dataclasses look their module up
        spec.loader.exec_module(before)
        modules = {"before": before, **modules}
    tenant = SimpleNamespace(id=uuid.uuid4())
    window = [1767000000, 1799000000]
    ent = {"requests_per_minute": 600, "monthly_api_calls": 1_000_000, "quota_period": window}
    principals.snapshot_for = lambda *a: SimpleNamespace(tenant=tenant, entitlements=ent)  # type: ignore[assignment]
    settings = SimpleNamespace(ratelimit_policies="", ratelimit_principal_share=0.5, ratelimit_fail_closed=(),
                               secret_key="s")  # fmt: skip  # noqa: S106
    principal = SimpleNamespace(tenant_id=tenant.id, user_id=uuid.uuid4(), client_id=None, api_key_id=None)
    limiters = {name: m.Limiter(SimpleNamespace(), settings) for name, m in modules.items()}
    times: dict[str, list[float]] = {name: [] for name in limiters}
    for limiter in limiters.values():
        limiter._principal_plan(principal)
    for _ in range(args.rounds):
        for name, limiter in limiters.items():
            n = 50_000
            seconds = timeit.timeit(lambda lim=limiter: lim._principal_plan(principal), number=n)
            times[name].append(seconds / n)
    print("| code | min ns | median ns |")
    print("|---|---|---|")
    for name, values in times.items():
        values.sort()
        print(f"| {name} | {values[0] * 1e9:.0f} | {values[len(values) // 2] * 1e9:.0f} |")


if __name__ == "__main__":
    main()
