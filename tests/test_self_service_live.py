"""Self-service accounts end to end: a real HTTP server (the ``live`` fixture of
tests/test_auth_e2e.py, committing for real), ``requests`` as the client, and the mails
delivered by the outbox worker to a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import uuid

import pytest
import requests

from saas.services import services
from saas.worker import Worker
from tests.conftest import TEST_PASSWORD
from tests.helpers import drop_tenant, mailed_invitation_token, verify_by_link
from tests.peers import smtp_inbox
from tests.test_auth_e2e import live  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("worker_handlers")  # tests/conftest.py


def _bearer(body: dict) -> dict:
    return {"Authorization": f"Bearer {body['access_token']}"}


def _signup(base: str, slug: str, email: str) -> requests.Response:
    body = {"tenant": {"name": slug, "slug": slug}, "owner": {"email": email, "password": TEST_PASSWORD}}
    return requests.post(f"{base}/api/v1/signup", json=body, timeout=10)


def _delete_me(base: str, tokens: dict, password: str) -> requests.Response:
    return requests.delete(
        f"{base}/api/v1/me", json={"password": password}, headers=_bearer(tokens), timeout=10
    )


def test_export_new_device_and_deletion_through_a_live_server(live, settings, engine):  # noqa: F811
    base, app = live
    slug = f"ss-{uuid.uuid4().hex[:8]}"
    owner_email, email = f"owner@{slug}.test", f"mel@{slug}.test"
    tenants = []
    try:
        r = _signup(base, slug, owner_email)
        assert r.status_code == 201, r.text
        owner = r.json()
        tenants.append(owner["tenant"]["id"])
        verify_by_link(base, app, owner_email)  # inviting needs a verified email
        r = requests.post(
            f"{base}/api/v1/members",
            json={"email": email, "role": "member"},
            headers=_bearer(owner["token"]),
            timeout=10,
        )
        assert r.status_code == 201, r.text
        token = mailed_invitation_token(app, email)
        r = requests.post(
            f"{base}/api/v1/invitations/accept", json={"token": token, "password": TEST_PASSWORD}, timeout=10
        )
        assert r.status_code == 200, r.text

        def login(ua: str) -> dict:
            r = requests.post(
                f"{base}/api/v1/auth/login",
                json={"email": email, "password": TEST_PASSWORD, "tenant": slug},
                headers={"User-Agent": ua},
                timeout=10,
            )
            assert r.status_code == 200, r.text
            return r.json()

        login("Laptop/1.0")  # the account's first device: recorded, not mailed
        fresh = login("Phone/2.0")  # a new one: mailed

        r = requests.get(f"{base}/api/v1/me/export", headers=_bearer(fresh), timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Disposition"] == 'attachment; filename="personal-data.json"'
        doc = r.json()
        assert doc["user"]["email"] == email
        assert [m["tenant"]["slug"] for m in doc["memberships"]] == [slug]
        assert sorted(d["user_agent"] for d in doc["known_devices"]) == ["Laptop/1.0", "Phone/2.0"]
        assert "auth.new_device" in {e["action"] for e in doc["audit_events"]}
        assert owner_email not in r.text

        r = _delete_me(base, fresh, "not the password")
        assert r.status_code == 403 and r.json()["code"] == "invalid_credentials"
        r = _delete_me(base, fresh, TEST_PASSWORD)
        assert r.status_code == 204, r.text
        assert requests.get(f"{base}/api/v1/me", headers=_bearer(fresh), timeout=10).status_code == 401

        with smtp_inbox() as inbox:
            Worker(services(app).database, settings.with_overrides(smtp_url=inbox.url)).run_until_idle()
            notices = [m.get_payload(decode=True).decode() for m in inbox.to(email)
                       if m["Subject"] == "Security notice"]  # fmt: skip
        assert len(notices) == 2
        assert any("new sign-in" in n and "Phone/2.0" in n for n in notices)
        assert any("deleted" in n for n in notices)

        # the address is free again
        r = _signup(base, f"{slug}-m", email)
        assert r.status_code == 201, r.text
        tenants.append(r.json()["tenant"]["id"])
    finally:
        for tenant_id in tenants:
            drop_tenant(engine, tenant_id)
