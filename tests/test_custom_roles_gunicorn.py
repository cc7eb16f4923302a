"""Custom roles through gunicorn with 2 workers (docs/auth.md, "Custom roles"): a permission
removed from a role stops an existing token on every worker within a second, with no new token
and no sign-in: the permissions come from the database through the cached principal, whose
entries the change invalidates (the in-process layer of the other worker expires within
``CACHE_LOCAL_TTL``, 0.5 s by default).

The test commits for real (its own tenant in the run's database).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from sqlalchemy import text

from tests.conftest import TEST_PASSWORD
from tests.test_revocation_gunicorn import (  # noqa: F401 - the fixture
    ROOT,
    _log_lines,
    _statuses_by_worker,
    _wait_logged,
    gunicorn,
)


def _cli(env, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "saas.cli", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def _member_token(engine, env, tenant_id: str, email: str, role: str) -> str:
    """A member with ``role``, written and committed straight to the database, and an access
    token for it signed with the servers' own key (as a sign-in would issue it)."""
    from sqlalchemy.orm import Session

    from saas.auth.keys import KeyStore
    from saas.auth.tokens import TokenService
    from saas.db import utcnow
    from saas.identity.models import Membership, User

    with Session(engine) as session:
        user = User(email=email, name="Agent", email_verified_at=utcnow())
        session.add(user)
        session.flush()
        session.add(Membership(user_id=user.id, tenant_id=uuid.UUID(tenant_id), role=role, status="active"))
        session.commit()
        user_id = str(user.id)
    tokens = TokenService(KeyStore(Path(env["SAAS_SIGNING_KEY_PATH"])), env["SAAS_ISSUER"], "saas-api", 600)
    return tokens.issue(
        subject=user_id, tenant_id=tenant_id, roles=["viewer"], scope="api", client_id="saas-api"
    ).token


def _verify(engine, email: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE saas.users SET email_verified_at = now() WHERE lower(email) = :e"), {"e": email}
        )


def test_a_permission_removed_from_a_role_stops_an_existing_token_within_a_second(gunicorn, engine):  # noqa: F811
    base, log, env = gunicorn
    slug = f"crg-{uuid.uuid4().hex[:8]}"
    _wait_logged(log, 1)
    before_signup = _log_lines(log)
    signup = requests.post(
        f"{base}/api/v1/signup",
        json={
            "tenant": {"name": "Crg", "slug": slug},
            "owner": {"email": f"o@{slug}.test", "password": TEST_PASSWORD},
        },
        timeout=30,
    )
    assert signup.status_code == 201, signup.text
    tenant_id = signup.json()["tenant"]["id"]
    # custom_roles and room for the warm-up's requests: the enterprise plan, set as an operator does
    _cli(env, "tenants", "set-plan", slug, "enterprise", "--reason", "test")
    _verify(engine, f"o@{slug}.test")  # as the mailed link would
    _wait_logged(log, before_signup + 1)
    owner = {"Authorization": f"Bearer {signup.json()['token']['access_token']}"}
    role = requests.post(
        f"{base}/api/v1/roles",
        json={"name": "support-agent", "permissions": ["contacts:read", "members:read"]},
        headers=owner,
        timeout=30,
    )
    assert role.status_code == 201, role.text
    role_id = role.json()["id"]
    # the token names "viewer" (which has contacts:read): never trusted, the role comes from the database
    token = _member_token(engine, env, tenant_id, f"agent@{slug}.test", "support-agent")
    headers = {"Authorization": f"Bearer {token}", "Connection": "close"}

    def get(_: int) -> int:
        return requests.get(f"{base}/api/v1/contacts", headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        first = _log_lines(log)
        sent = 0
        for _ in range(20):  # warm both workers' caches with the role's permissions
            assert set(pool.map(get, range(16))) == {200}
            sent += 16
            _wait_logged(log, first + sent)
            warm = _statuses_by_worker(log, first)
            if len(warm) == 2:
                break
        assert len(warm) == 2 and all(s == {"200"} for s in warm.values()), warm

        changed = requests.patch(
            f"{base}/api/v1/roles/{role_id}",
            json={"permissions": ["members:read"]},
            headers=owner,
            timeout=30,
        )
        assert changed.status_code == 200, changed.text
        changed_at = time.monotonic()
        # within a second (the other worker's in-process entries live CACHE_LOCAL_TTL, 0.5 s) ...
        seen: list[tuple[float, int]] = []

        def timed(_: int) -> tuple[float, int]:
            status = get(0)
            return time.monotonic(), status

        while time.monotonic() - changed_at < 1.2:
            seen += pool.map(timed, range(16))
        last_allowed = max((t for t, status in seen if status == 200), default=changed_at) - changed_at
        assert {status for _, status in seen} <= {200, 403}
        assert last_allowed < 1.0, last_allowed
        assert [status for t, status in seen if t - changed_at >= 1.0] and all(
            status == 403 for t, status in seen if t - changed_at >= 1.0
        )
        print(f"last request allowed {last_allowed * 1000:.0f} ms after the change")
        # ... every request on every worker is refused
        _wait_logged(log, _log_lines(log))
        start = _log_lines(log)
        statuses: list[int] = []
        for _ in range(20):
            statuses += pool.map(get, range(16))
            _wait_logged(log, start + len(statuses))
            if len(_statuses_by_worker(log, start)) == 2:
                break
        after = _statuses_by_worker(log, start)
    assert set(statuses) == {403}, statuses
    assert len(after) == 2 and all(s == {"403"} for s in after.values()), after
    # a permission the role still holds works with the same token
    r = requests.get(f"{base}/api/v1/members", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
