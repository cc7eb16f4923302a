"""SAML 2.0 sign-in through the real service: gunicorn with 2 workers (the rate limiter on),
``requests`` as the browser, the pysaml2 IdP of tests/saml_idp.py over HTTP. The login
transaction and the replay cache live in Redis, so they hold across the workers: a response
posted twice, or its assertion replayed under a fresh transaction, is refused whichever worker
answers, and the refusals are read back from the audit API.

These tests commit for real (their own tenant in the run's database, dropped at the end).
"""

from __future__ import annotations

import base64
import html
import json
import re
import uuid
from collections.abc import Iterator

import pytest
import requests
from sqlalchemy.orm import Session

from saas.auth.sso import saml
from saas.security import random_token
from tests import saml_idp
from tests.conftest import _redis_url
from tests.helpers import drop_tenant, signup_over_http
from tests.peers import gunicorn_server
from tests.saml_idp import add_saml_connection

idp = saml_idp.idp  # the shared fixture


@pytest.fixture(scope="module")
def base(database_url, worker_id_str, tmp_path_factory) -> Iterator[str]:
    env = {"SECRET_KEY": "gunicorn-saml-test", "SAAS_ENV": "development", "SSO_ALLOW_PRIVATE_URLS": "true"}
    tmp = tmp_path_factory.mktemp("saml-gunicorn")
    with gunicorn_server(database_url, _redis_url(worker_id_str), tmp, env=env) as server:
        yield server.base


@pytest.fixture()
def connection(base, idp, engine, redis_client) -> Iterator[tuple[uuid.UUID, dict]]:
    redis_client.flushdb()
    slug = f"saml-g-{uuid.uuid4().hex[:8]}"
    owner = signup_over_http(base, slug, f"owner@{slug}.test", name="SAML gunicorn")
    tenant_id = uuid.UUID(owner["tenant"]["id"])
    config = {
        **saml.parse_idp_metadata(idp.metadata(), allow_private=True),
        "metadata_url": None,
        "email_attribute": None,
        "groups_attribute": None,
    }
    with Session(engine) as session:
        connection_id = add_saml_connection(session, tenant_id, config)
    idp.trust_sp(requests.get(f"{base}/sso/saml/{connection_id}/metadata", timeout=10).text)
    yield connection_id, owner
    drop_tenant(engine, tenant_id)


def _form(page: str) -> tuple[str, dict[str, str]]:
    action = html.unescape(re.search(r'action="([^"]+)"', page).group(1))
    fields = {
        html.unescape(m.group(1)): html.unescape(m.group(2))
        for m in re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page)
    }
    return action, fields


def test_sign_in_then_replays_are_refused_across_workers(base, idp, connection, redis_client):
    connection_id, owner = connection
    browser = requests.Session()
    start = browser.get(
        f"{base}/sso/saml/{connection_id}/login?next=/oauth/tenant", allow_redirects=False, timeout=10
    )
    assert start.status_code == 303 and start.headers["Location"].startswith(f"{idp.base}/sso/redirect?")
    page = browser.get(start.headers["Location"], timeout=10)
    assert page.status_code == 200, page.text
    action, fields = _form(page.text)
    assert action == f"{base}/sso/saml/{connection_id}/acs" and set(fields) == {"SAMLResponse", "RelayState"}

    done = browser.post(action, data=fields, allow_redirects=False, timeout=10)
    assert done.status_code in (200, 302, 303), done.text
    if done.status_code == 200:  # the stand-in complete_login's JSON
        assert done.json()["email"] == "ada@saml.example"

    # the same post again (maybe the other worker): the transaction is gone
    again = requests.post(action, data=fields, allow_redirects=False, timeout=10)
    assert again.status_code == 400 and "already used" in again.text
    # the assertion under a fresh transaction for the same request id: the replay cache
    stored = [json.loads(redis_client.get(k)) for k in redis_client.keys("sso:tx:*")]
    assert stored == []  # taken by the first post
    request_id = re.search(r'InResponseTo="([^"]+)"', base64.b64decode(idp.sent[-1]).decode()).group(1)
    state = random_token(32)
    redis_client.set(
        "sso:tx:" + state,
        json.dumps(
            {
                "connection_id": str(connection_id),
                "tenant_id": owner["tenant"]["id"],
                "next_url": "/",
                "login_hint": None,
                "data": {"request_id": request_id},
            }
        ),
        ex=600,
    )
    replayed = requests.post(action, data={**fields, "RelayState": state}, allow_redirects=False, timeout=10)
    assert replayed.status_code == 403 and "already used" in replayed.text
    assert "frame-ancestors 'none'" in replayed.headers["Content-Security-Policy"]

    events = requests.get(
        f"{base}/api/v1/audit-events?action=sso.login_failed",
        headers={"Authorization": f"Bearer {owner['token']['access_token']}"},
        timeout=10,
    )
    assert events.status_code == 200, events.text
    assert sorted(e["data"]["reason"] for e in events.json()) == ["replayed", "transaction"]
