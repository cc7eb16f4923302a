"""A second instance of this service, under gunicorn with its own database, signing key and
secret, as an OpenID Provider: the ``idp`` fixture (module scope) of the SSO and social login
end-to-end tests (import it into the test module: ``from tests.idp_peer import idp``), and the
calls both make to either instance (``signup``, ``bearer``).

The IdP listens on ``localhost`` (the service under test on ``127.0.0.1``: two hosts, so their
hosted session cookies stay apart in one browser) and shares this run's Redis database (its keys
are random or tenant-scoped). Its database is dropped at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from saas.migrate import upgrade_shared
from tests.conftest import TEST_PASSWORD, _redis_url
from tests.peers import free_port
from tests.test_identity_gunicorn import _stop, _wait_http

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def idp(database_url, worker_id_str, tmp_path_factory) -> Iterator[tuple[str, object]]:
    """(base URL, engine): this service under gunicorn on its own fresh database, as an IdP."""
    from saas.auth.keys import KeyStore

    server_url = make_url(database_url)
    name = f"saas_idp_{worker_id_str}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server_url.set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    upgrade_shared(engine)
    tmp = tmp_path_factory.mktemp("sso-idp")
    (tmp / "keys").mkdir()
    KeyStore(tmp / "keys", "RS256", generate=True)
    port = free_port()
    base = f"http://localhost:{port}"
    env = {
        **os.environ,
        "DATABASE_URL": url.replace("postgresql+psycopg://", "postgresql://"),
        "REDIS_URL": _redis_url(worker_id_str),
        "SECRET_KEY": "the-identity-provider-instance",
        "SAAS_ENV": "development",
        "SAAS_SIGNING_KEY_PATH": str(tmp / "keys"),
        "SAAS_ISSUER": base,
        "RATELIMIT_ENABLED": "false",
        "ARGON2_MEMORY_KIB": "8192",
        "ARGON2_TIME_COST": "1",
        "LOG_LEVEL": "WARNING",
        "GUNICORN_MAX_REQUESTS": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
    }
    stderr = tmp / "gunicorn.stderr"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "infra/gunicorn.conf.py", "-w", "2",
             "-b", f"127.0.0.1:{port}", "wsgi:app"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        try:
            _wait_http(base, proc, stderr)
            yield base, engine
        finally:
            _stop(proc)  # by PID: this module's own process
            engine.dispose()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def signup(base: str, slug: str, email: str) -> dict:
    r = requests.post(
        f"{base}/api/v1/signup",
        json={"tenant": {"name": slug, "slug": slug}, "owner": {"email": email, "password": TEST_PASSWORD}},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return r.json()


def bearer(body: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {body['token']['access_token']}"}
