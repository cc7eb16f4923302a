"""Profile the hot path in-process (no server): ``python bench/limits_profile.py [N]``.

Sets up the benchmark database like ``limits_bench.py``, then times N authenticated
``GET /api/v1/contacts?page_size=20`` through the Flask test client and prints a pyinstrument
profile (``pip install pyinstrument``). Drops the database afterwards.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import limits_bench as lb


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    env = {
        **os.environ,
        "DATABASE_URL": f"{lb.PG_SERVER}/{lb.DB_NAME}",
        "REDIS_URL": lb.REDIS_URL,
        "SECRET_KEY": "bench-secret",
        "SAAS_ENV": "production",
        "SAAS_SIGNING_KEY_PATH": tempfile.mkdtemp(prefix="bench-keys-"),
        "ACCESS_TOKEN_TTL": "7200",
        "LOG_LEVEL": "WARNING",
    }
    data = lb.setup(env)
    os.environ.update(env)
    from bench.limits_wsgi import app

    client = app.test_client()
    h = {"Authorization": "Bearer " + data["bench-a"]["token"]}
    url = "/api/v1/contacts?page_size=20"
    for _ in range(50):
        assert client.get(url, headers=h).status_code == 200
    t0 = time.perf_counter()
    for _ in range(n):
        client.get(url, headers=h)
    per = (time.perf_counter() - t0) / n * 1000
    print(f"{per:.3f} ms per request (in-process, test client)")
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0002)
    profiler.start()
    for _ in range(n):
        client.get(url, headers=h)
    profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=False))


if __name__ == "__main__":
    main()
