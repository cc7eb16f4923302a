"""Instructions per request of the hot path, counted by valgrind (deterministic; issue 5).

    .venv/bin/python bench/limits_instructions.py [--requests 200] [--floor] [--single] [--local-ttl 3600]
                                                  [--api-key]

Wall-clock and CPU-time figures on this shared 2-core machine move by 2x from one minute to the
next; instruction counts do not (the same code gives the same count to within 0.1 %), so they
show what a change to the request path is worth before the side-by-side ``limits_bench.py``
run confirms it under gunicorn. What they leave out: time in the kernel (socket calls), waits
on PostgreSQL and Redis, and the servers' own work (``limits_bench.py`` reports PostgreSQL's CPU).

How: the app of ``bench/limits_wsgi.py`` is called as a WSGI callable (no HTTP server) with
``GET /api/v1/contacts?page_size=20`` and a bearer token of a tenant on the ``bench`` plan, as
in ``limits_bench.py``; after a warm-up, the garbage collector is frozen and stopped, and
valgrind's callgrind dumps its counters at two ``sched_yield`` calls around ``--requests``
requests (``--dump-before=sched_yield``), so start-up, imports and set-up are not counted.
Time-based caches are stretched (``CACHE_LOCAL_TTL``, the signing-key watcher) because under
valgrind a request takes ~100 ms and they would expire far more often than at full speed.
``--floor`` counts floor 2 (bare Flask + one pooled primary-key SELECT) the same way;
``--single`` counts ``GET /api/v1/contacts/<id>`` instead: the same middleware, none of the
list's own work.
``--api-key`` sends the same request with an API key of the same owner (``saas_pat_...``, one
cached lookup) instead of the JWT.
``--local-ttl 0.5`` keeps the production ``CACHE_LOCAL_TTL``: the in-process principal entries
then expire every few requests under valgrind, so the count weighs the cache-refresh path
(one ``MGET``, decoding, a new snapshot) far more than production does.

Needs valgrind (Debian package; on this machine already) and the services of ``limits_bench.py``.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from saas.services import services

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _child(
    state: dict,
    requests: int,
    floor: bool,
    local_ttl: str = "3600",
    single: bool = False,
    api_key: bool = False,
) -> None:
    os.environ.update(state["env"])
    os.environ["CACHE_LOCAL_TTL"] = local_ttl
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp())
    path, query = "/api/v1/contacts", "page_size=20"
    if single:  # one contact: every middleware of the list, none of the list's own work
        path, query = f"/api/v1/contacts/{state['contact']}", ""
    if floor:
        from bench.limits_floors import pk_app as app

        path, query = "/floor", ""
    else:
        from bench.limits_wsgi import app

        services(app).key_watcher.check_interval = 1e9
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True,
        "wsgi.run_once": False, "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_AUTHORIZATION": "Bearer " + state["api_key" if api_key else "token"],
        "HTTP_USER_AGENT": "bench",
    }  # fmt: skip
    statuses: list[str] = []

    def one() -> None:
        body = app({**environ, "wsgi.input": io.BytesIO(b"")}, lambda s, h, e=None: statuses.append(s))
        b"".join(body)

    for _ in range(50):
        one()
    if not statuses[-1].startswith("200"):
        raise SystemExit(f"warm-up answered {statuses[-1]}")
    gc.collect()
    gc.freeze()
    gc.disable()
    os.sched_yield()  # callgrind dumps here...
    for _ in range(requests):
        one()
    os.sched_yield()  # ...and here: the second dump holds exactly the measured requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--floor", action="store_true", help="count floor 2 instead of the app")
    parser.add_argument("--local-ttl", default="3600", help="CACHE_LOCAL_TTL of the app (seconds)")
    parser.add_argument("--single", action="store_true", help="GET one contact instead of the list")
    parser.add_argument("--api-key", action="store_true", help="an API key as the bearer instead of the JWT")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(
            json.loads(Path(args.child).read_text()),
            args.requests,
            args.floor,
            args.local_ttl,
            args.single,
            args.api_key,
        )
        return
    import bench.limits_bench as lb

    keydir = tempfile.mkdtemp(prefix="bench-keys-")
    env = {
        "DATABASE_URL": f"{lb.PG_SERVER}/{lb.DB_NAME}", "REDIS_URL": lb.REDIS_URL,
        "SECRET_KEY": "bench-secret", "SAAS_ENV": "production", "SAAS_SIGNING_KEY_PATH": keydir,
        "ACCESS_TOKEN_TTL": "7200", "RATELIMIT_PRINCIPAL_SHARE": "1.0",
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),
    }  # fmt: skip
    data = lb.setup({**os.environ, **env, "LOG_LEVEL": "WARNING"})  # quiet set-up
    env["BENCH_PK_SCHEMA"], env["BENCH_PK_ID"] = data["schema_a"], data["bench-a"]["contact"]
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.json"
        state.write_text(
            json.dumps(
                {
                    "env": env,
                    "token": data["bench-a"]["token"],
                    "api_key": data["bench-a"]["api_key"],
                    "contact": data["bench-a"]["contact"],
                }
            )
        )
        out = Path(tmp) / "cg.out"
        command = [
            "valgrind", "--tool=callgrind", "--dump-before=sched_yield", f"--callgrind-out-file={out}",
            sys.executable, __file__, "--child", str(state), "--requests", str(args.requests),
            "--local-ttl", args.local_ttl, *(["--floor"] if args.floor else []),
            *(["--single"] if args.single else []), *(["--api-key"] if args.api_key else []),
        ]  # fmt: skip
        subprocess.run(command, check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        dump = Path(f"{out}.2").read_text()
    counts = [line for line in dump.splitlines() if line.startswith(("summary:", "totals:"))]
    total = int(counts[0].split()[1])
    what = "floor 2" if args.floor else "app: GET /api/v1/contacts (20 rows)"
    if args.single and not args.floor:
        what = "app: GET /api/v1/contacts/<id> (one contact)"
    if args.api_key and not args.floor:
        what += ", API key bearer"
    print(f"{what}: {total / args.requests / 1e6:.3f} M instructions per request ({args.requests} requests)")


if __name__ == "__main__":
    main()
