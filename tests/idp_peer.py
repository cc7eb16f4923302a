"""A second instance of this service, under gunicorn with its own database, signing key and
secret, as an OpenID Provider: the ``idp`` fixture (module scope) of the SSO and social login
end-to-end tests (import it into the test module: ``from tests.idp_peer import idp``), and the
calls both make to either instance (``bearer``, ``register_relying_party``; a signup is
``tests.helpers.signup_over_http``).

The IdP listens on ``localhost`` (the service under test on ``127.0.0.1``: two hosts, so their
hosted session cookies stay apart in one browser) and shares this run's Redis database (its keys
are random or tenant-scoped). Its database is dropped at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from saas.migrate import upgrade_shared
from tests.conftest import _redis_url
from tests.peers import gunicorn_server


@pytest.fixture(scope="module")
def idp(database_url, worker_id_str, tmp_path_factory) -> Iterator[tuple[str, object]]:
    """(base URL, engine): this service under gunicorn on its own fresh database, as an IdP."""
    server_url = make_url(database_url)
    name = f"saas_idp_{worker_id_str}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server_url.set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    upgrade_shared(engine)
    env = {
        "SECRET_KEY": "the-identity-provider-instance",
        "SAAS_ENV": "development",
        "RATELIMIT_ENABLED": "false",
    }
    tmp = tmp_path_factory.mktemp("sso-idp")
    try:
        with gunicorn_server(url, _redis_url(worker_id_str), tmp, env=env, issuer_host="localhost") as server:
            yield server.base, engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bearer(body: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {body['token']['access_token']}"}


def register_relying_party(idp_base: str, owner: dict, name: str, redirect_uri: str) -> dict:
    """The service under test registered at the IdP by its tenant ``owner`` (a signup body) as a
    confidential first-party client asking ``openid email profile``; its registration body (with
    ``client_id`` and ``client_secret``)."""
    r = requests.post(
        f"{idp_base}/api/v1/clients",
        json={
            "name": name,
            "client_type": "confidential",
            "first_party": True,
            "redirect_uris": [redirect_uri],
            "scope": "openid email profile",
        },
        headers=bearer(owner),
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return r.json()
