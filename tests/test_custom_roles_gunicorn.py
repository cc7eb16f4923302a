"""Custom roles through gunicorn with 2 workers (docs/auth.md, "Custom roles"): a permission
removed from a role stops an existing token on every worker within a second, with no new token
and no sign-in: the permissions come from the database through the cached principal, whose
entries the change invalidates (the in-process layer of the other worker expires within
``CACHE_LOCAL_TTL``, 0.5 s by default).

The test commits for real (its own tenant in the run's database).
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from sqlalchemy import text

from tests.helpers import signup_over_http
from tests.peers import log_lines, saas_cli, statuses_by_worker, wait_logged, warm_every_worker
from tests.test_revocation_gunicorn import gunicorn  # noqa: F401 - the fixture


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
    wait_logged(log, 1)
    before_signup = log_lines(log)
    signup = signup_over_http(base, slug, f"o@{slug}.test", name="Crg")
    tenant_id = signup["tenant"]["id"]
    # custom_roles and room for the warm-up's requests: the enterprise plan, set as an operator does
    saas_cli(env, "tenants", "set-plan", slug, "enterprise", "--reason", "test")
    _verify(engine, f"o@{slug}.test")  # as the mailed link would
    wait_logged(log, before_signup + 1)
    owner = {"Authorization": f"Bearer {signup['token']['access_token']}"}
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
        warm_every_worker(pool, get, log)  # both workers' caches hold the role's permissions

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
        wait_logged(log, log_lines(log))
        start = log_lines(log)
        statuses: list[int] = []
        for _ in range(20):
            statuses += pool.map(get, range(16))
            wait_logged(log, start + len(statuses))
            if len(statuses_by_worker(log, start)) == 2:
                break
        after = statuses_by_worker(log, start)
    assert set(statuses) == {403}, statuses
    assert len(after) == 2 and all(s == {"403"} for s in after.values()), after
    # a permission the role still holds works with the same token
    r = requests.get(f"{base}/api/v1/members", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
