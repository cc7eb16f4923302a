"""gunicorn settings. Every value can be overridden by the environment (``GUNICORN_*``).

Prometheus multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` (default ``/tmp/saas-metrics``) is
emptied when the arbiter starts and each dead worker's live gauges are dropped
(``mark_process_dead``), so ``/metrics`` in any worker reports the whole pod.
"""

import multiprocessing
import os
import shutil

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# CPU-bound work (argon2, JSON) scales with cores; the database waits are short. In a container
# set GUNICORN_WORKERS from the CPU limit (the host's count is not the pod's share).
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2 + 1))
threads = int(os.environ.get("GUNICORN_THREADS", 1))
worker_class = "sync" if threads == 1 else "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 30))
# on SIGTERM, workers finish in-flight requests for up to this long (keep it below the
# orchestrator's grace period: Kubernetes terminationGracePeriodSeconds is 30 in infra/k8s)
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", 20))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", 5))
# recycle workers to bound memory held by per-schema caches (SQLAlchemy compiled statements
# under schema_translate_map; psycopg prepared statements with DB_PREPARED_STATEMENTS=on) across
# many tenants; the jitter keeps workers from restarting all at once (docs/benchmarks.md
# measures the effect)
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 5000))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", 500))
accesslog = os.environ.get("GUNICORN_ACCESSLOG", None)  # the app logs every request as JSON
# when it is on, the path without its query string (%(U)s): a mailed link's token never lands in it
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s"'
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# the request's scheme comes from the socket, or from X-Forwarded-Proto through the app's ProxyFix
# and TRUSTED_PROXY_HOPS only (docs/limits.md): gunicorn's own scheme headers would let any peer
# in forwarded_allow_ips claim https (and so HSTS, Secure cookies) with TRUSTED_PROXY_HOPS=0
secure_scheme_headers: dict[str, str] = {}
preload_app = False
_SHM = "/dev/shm"  # noqa: S108 - gunicorn's heartbeat files: memory, not a disk in a container
worker_tmp_dir = os.environ.get("GUNICORN_WORKER_TMP_DIR", _SHM if os.path.isdir(_SHM) else None)

_METRICS_DIR = "/tmp/saas-metrics"  # noqa: S108 - private to the container (an emptyDir in k8s)
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", _METRICS_DIR)


def on_starting(server):
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
