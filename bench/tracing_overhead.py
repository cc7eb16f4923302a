"""The cost of OpenTelemetry tracing per request: off (``OTEL_EXPORTER_OTLP_ENDPOINT`` unset)
against on (every instrumentation installed, every span scrubbed, exported to an exporter that
discards them: the instrumentation's and the scrubbing's cost, not the network's).

    REDIS_URL=redis://127.0.0.1:6379/2 .venv/bin/python bench/tracing_overhead.py \\
        [--rounds 6] [--requests 300] [--json bench/results-tracing.json]

Tracing on patches psycopg and Redis process-wide, so each measurement runs in a process of its
own: ``--rounds`` rounds, each starting one process per mode (the order alternating), each
process building the app (``create_app``, the Flask test client, a fresh tenant with 20 contacts
signed up through it), warming up, then timing ``--requests`` requests of
``GET /api/v1/contacts?page_size=20`` and as many of ``GET /api/v1/contacts/<id>``. Reported
per request: CPU time of the process (``time.process_time``, steadier than wall time on a
shared machine) and wall time, medians over the rounds, and the spans a request makes.
One database (``saas_bench_otel_<random>``), dropped at the end. Recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVER = os.environ.get("BENCH_DATABASE_SERVER", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


METRICS = ("cpu_ms", "wall_ms", "spans")


def child(mode: str, database_url: str, requests: int) -> dict:
    import tempfile

    from saas import create_app
    from saas.observability import tracing
    from saas.settings import Settings

    spans = [0]
    if mode == "on":
        from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

        class Discard(SpanExporter):
            def export(self, batch):  # type: ignore[no-untyped-def]
                spans[0] += len(batch)
                return SpanExportResult.SUCCESS

        tracing.otlp_exporter = lambda _settings: Discard()  # type: ignore[assignment]
    settings = Settings(
        env="test",
        database_url=database_url.replace("postgresql+psycopg://", "postgresql://", 1),
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/2"),
        secret_key="bench",  # noqa: S106 - a throwaway database's
        var_dir=Path(tempfile.mkdtemp(prefix="saas-bench-otel-")),
        argon2_memory_kib=8192,
        argon2_time_cost=1,
        ratelimit_enabled=False,
        otel_endpoint="http://127.0.0.1:4318" if mode == "on" else None,
    )
    app = create_app(settings)
    import logging

    logging.getLogger().setLevel(logging.WARNING)
    from saas.observability.logging import configure

    configure("WARNING", "json", open(os.devnull, "w"))  # noqa: SIM115 - the process's lifetime
    client = app.test_client()
    slug = f"otel{uuid.uuid4().hex[:8]}"
    body = client.post(
        "/api/v1/signup",
        json={"tenant": {"name": slug, "slug": slug},
              "owner": {"email": f"o@{slug}.test", "password": "correct horse battery staple"}},
    ).get_json()  # fmt: skip
    headers = {"Authorization": f"Bearer {body['token']['access_token']}"}
    ids = [
        client.post("/api/v1/contacts", json={"name": f"P {i}"}, headers=headers).get_json()["id"]
        for i in range(20)
    ]
    for _ in range(50):  # warm-up
        client.get("/api/v1/contacts?page_size=20", headers=headers)
    out = {}
    targets = (("list", ["/api/v1/contacts?page_size=20"]), ("get", [f"/api/v1/contacts/{i}" for i in ids]))
    for name, paths in targets:
        tracer = tracing.current()
        if tracer is not None:
            tracer.provider.force_flush()
        before_spans = spans[0]
        cpu, wall = time.process_time(), time.perf_counter()
        for n in range(requests):
            assert client.get(paths[n % len(paths)], headers=headers).status_code == 200
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if tracer is not None:
            tracer.provider.force_flush()
        out[name] = {
            "cpu_ms": cpu * 1000 / requests,
            "wall_ms": wall * 1000 / requests,
            "spans": (spans[0] - before_spans) / requests,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "DATABASE_URL"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.requests)))
        return 0

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from saas.migrate import upgrade_shared

    name = f"saas_bench_otel_{uuid.uuid4().hex[:8]}"
    admin = create_engine(SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(SERVER).set(database=name).render_as_string(hide_password=False)
    results: dict[str, list[dict]] = {"off": [], "on": []}
    try:
        engine = create_engine(url)
        upgrade_shared(engine)
        engine.dispose()
        for round_ in range(args.rounds):
            for mode in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", mode, url, "--requests", str(args.requests)],
                    capture_output=True, text=True, check=True, cwd=ROOT,
                )  # fmt: skip
                results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {round_ + 1} {mode}: {results[mode][-1]}", flush=True)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    summary = {
        mode: {
            kind: {m: round(statistics.median(r[kind][m] for r in runs), 2) for m in METRICS}
            for kind in ("list", "get")
        }
        for mode, runs in results.items()
    }
    print("| request | off: CPU ms | on: CPU ms | off: wall ms | on: wall ms | spans per request |")
    print("|---|---|---|---|---|---|")
    for kind in ("list", "get"):
        off, on = summary["off"][kind], summary["on"][kind]
        cells = (off["cpu_ms"], on["cpu_ms"], off["wall_ms"], on["wall_ms"], on["spans"])
        print(f"| {kind} | " + " | ".join(str(c) for c in cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "arguments": {"rounds": args.rounds, "requests": args.requests},
            "medians": summary,
            "rounds": results,
        }, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
