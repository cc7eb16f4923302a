"""The limiter on a Redis Cluster against a single Redis, side by side in one run (issue 15).

    .venv/bin/python bench/limits_cluster.py [--duration 5] [--rounds 2] [--procs 1,4]

Starts its own servers on free ports of 127.0.0.1 (``tests/redis_servers.py``): one
``redis-server``, and a three-primary cluster (``--cluster-replicas 0``: replicas add nothing
to a write path). Each row runs ``--procs`` client processes for ``--duration`` seconds, each
calling :meth:`saas.limits.Limiter.run` through :class:`saas.cache.guard.RedisGuard` in a loop
(the code a request runs, without HTTP), on clients built by :func:`saas.redis_client.make_redis`:

* ``tenant plan``: an authenticated request's plan (``tenant`` and ``user`` GCRA keys, the
  monthly quota counter, two revocation markers: five keys, one slot, one ``EVALSHA``), one
  tenant per process (so a cluster spreads them over its primaries as it would real tenants);
* ``sign-in plan``: ``login-ip`` and ``login-account`` of a fresh account each call (two
  subjects: one script on a single Redis; two slots on a cluster, one call per part).

Limits are high enough that every call is admitted (the cost of a refusal is the same script).
Reports calls/s (all processes), p50 and p99 latency of one call, and CPU per call: of the
client processes (``time.process_time``) and of the Redis servers (``/proc/<pid>/stat``), steadier
than calls/s on a shared machine. The two targets alternate within each round. Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _worker(url: str, plan_kind: str, duration: float, start_at: float, out: mp.Queue) -> None:
    from saas.cache.guard import CircuitBreaker, Counters, RedisGuard
    from saas.cache.namespace import PublicKeys, TenantKeys
    from saas.limits import Limiter, gcra, policies, usage_key
    from saas.limits.gcra import Quota
    from saas.redis_client import make_redis

    client = make_redis(url, 1.0)
    guard = RedisGuard(client, CircuitBreaker(threshold=5, cooldown=1.0), Counters())
    settings = SimpleNamespace(ratelimit_policies=(), ratelimit_principal_share=0.5,
                               ratelimit_fail_closed=("login",), secret_key="bench")  # noqa: S106  # fmt: skip
    limiter = Limiter(guard, settings)
    tenant = uuid.uuid4()
    keys = TenantKeys(tenant)
    quota = Quota("monthly", usage_key(tenant, "2026-12"), None, "2026-12", 31 * 86400, 2e9, 2_000_000_000)
    checks = policies.tenant_checks(tenant, {"requests_per_minute": 10_000_000}, uuid.uuid4(), None, 1.0)
    tenant_plan = gcra.Plan.of(checks, quota)
    marks = (keys.revoked_session(str(uuid.uuid4())), keys.revoked_client("bench-client"))
    ip = f"198.51.100.{os.getpid() % 250}"
    latencies: list[float] = []
    n = 0
    while time.time() < start_at:
        time.sleep(0.001)
    cpu = time.process_time()
    deadline = time.perf_counter() + duration
    while True:
        t0 = time.perf_counter()
        if t0 >= deadline:
            break
        if plan_kind == "tenant":
            decision = limiter.run(tenant_plan, 1, False, marks)
        else:
            n += 1
            account = PublicKeys.rate("login-account", f"e:{os.getpid()}-{n}")
            plan = gcra.Plan.of([
                gcra.Check("login-ip", PublicKeys.rate("login-ip", ip), 10_000_000, 60, "login"),
                gcra.Check("login-account", account, 10, 60, "login"),
            ], None)  # fmt: skip
            decision = limiter.run(plan)
        latencies.append(time.perf_counter() - t0)
        if not decision.allowed:
            raise SystemExit(f"refused: {decision.reason}")
    out.put((latencies, time.process_time() - cpu))


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (``/proc/<pid>/stat``), seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


def measure(url: str, plan_kind: str, procs: int, duration: float, server_pids: list[int]) -> dict:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    start_at = time.time() + 1.5  # every process imported and connected before the clock starts
    args = (url, plan_kind, duration, start_at, out)
    workers = [ctx.Process(target=_worker, args=args) for _ in range(procs)]
    for w in workers:
        w.start()
    latencies: list[float] = []
    client_cpu = 0.0
    server_before = _cpu_seconds(server_pids)
    for _ in workers:
        got, used = out.get(timeout=duration + 60)
        latencies += got
        client_cpu += used
    server_cpu = _cpu_seconds(server_pids) - server_before  # includes the start-up wait (idle)
    for w in workers:
        w.join(timeout=30)
    latencies.sort()
    return {
        "calls_per_s": len(latencies) / duration,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "client_us": client_cpu / len(latencies) * 1e6,
        "server_us": server_cpu / len(latencies) * 1e6,
    }


def _print_row(head: tuple, row: dict) -> None:
    cells = (*head, row["calls_per_s"], row["p50_ms"], row["p99_ms"], row["client_us"], row["server_us"])
    print("{:>5} {:<8} {:>5} {:<8} {:>9.0f} {:>8.3f} {:>8.3f} {:>10.1f} {:>10.1f}".format(*cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--procs", default="1,4")
    args = parser.parse_args()
    from tests import redis_servers

    procs_list = [int(p) for p in args.procs.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    single_port = redis_servers.free_ports(1)[0]
    single = redis_servers._server(single_port, work).start()
    try:
        with redis_servers.cluster(work / "cluster", primaries=3, replicas=0) as cluster:
            targets = {"single": f"redis://127.0.0.1:{single_port}/0", "cluster": cluster.url}
            pids = {"single": [single.proc.pid], "cluster": [s.proc.pid for s in cluster.servers]}
            print(f"load before: {os.getloadavg()}  cpus: {os.cpu_count()}")
            head = ("round", "plan", "procs", "target", "calls/s", "p50 ms", "p99 ms", "client µs", "redis")
            print("{:>5} {:<8} {:>5} {:<8} {:>9} {:>8} {:>8} {:>10} {:>10}".format(*head))
            for rnd in range(args.rounds):
                order = ["single", "cluster"] if rnd % 2 == 0 else ["cluster", "single"]
                for plan_kind in ("tenant", "signin"):
                    for procs in procs_list:
                        for target in order:
                            row = measure(targets[target], plan_kind, procs, args.duration, pids[target])
                            _print_row((rnd, plan_kind, procs, target), row)
            print(f"load after: {os.getloadavg()}")
    finally:
        single.kill()


if __name__ == "__main__":
    main()
