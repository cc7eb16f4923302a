"""Password reset and email verification end to end: a live server, ``requests``, the mails read
back from a real SMTP server (aiosmtpd) after the outbox worker sent them, and Debian's Chromium
on the hosted reset page (Playwright)."""

from __future__ import annotations

import re
import uuid

import pytest
import requests
from sqlalchemy import delete, func, select

from saas import worker as worker_module
from saas.db import Database
from saas.identity.models import User
from saas.outbox import OutboxMessage
from saas.worker import Worker, load_handlers
from tests.conftest import TEST_PASSWORD
from tests.helpers import drop_tenant
from tests.peers import chromium_available, launch_chromium, smtp_inbox
from tests.test_auth_e2e import live  # noqa: F401 - the live server fixture

NEW_PASSWORD = "a password chosen in the browser"


def _body(message) -> str:
    return message.get_payload(decode=True).decode()


def _link(message, path: str) -> str:
    match = re.search(rf"(http://\S+{re.escape(path)}\?token=\S+)", _body(message))
    assert match, _body(message)
    return match.group(1)


def _login(base: str, email: str, password: str) -> requests.Response:
    return requests.post(f"{base}/api/v1/auth/login", json={"email": email, "password": password}, timeout=10)


def test_verify_then_reset_through_the_mailed_links(live, engine, settings):  # noqa: F811
    base, _app = live
    tag = uuid.uuid4().hex[:8]
    email = f"owner@reset-{tag}.test"
    load_handlers()
    handlers_before = worker_module.handlers()
    tenant_id = None
    with engine.connect() as conn:
        first_outbox_id = conn.scalar(select(func.coalesce(func.max(OutboxMessage.id), 0)))
    try:
        with smtp_inbox() as inbox:
            deliver = Worker(Database(engine), settings.with_overrides(smtp_url=inbox.url, issuer=base))
            r = requests.post(
                f"{base}/api/v1/signup",
                json={
                    "tenant": {"name": "Reset", "slug": f"reset-{tag}"},
                    "owner": {"email": email, "password": TEST_PASSWORD},
                },
                timeout=10,
            )
            assert r.status_code == 201, r.text
            tenant_id = r.json()["tenant"]["id"]
            bearer = {"Authorization": f"Bearer {r.json()['token']['access_token']}"}
            assert r.json()["user"]["email_verified"] is False
            # 1. the verification link from the signup mail
            deliver.run_until_idle()
            [verification] = inbox.to(email)
            assert verification["Subject"] == "Verify your email address"
            link = _link(verification, "/account/verify")
            assert link.startswith(f"{base}/account/verify?token=")
            page = requests.get(link, timeout=10)  # a GET (a mail scanner's) spends nothing
            assert page.status_code == 200 and page.headers["Referrer-Policy"] == "no-referrer"
            token = link.split("token=", 1)[1]
            assert (
                requests.post(f"{base}/account/verify", data={"token": token}, timeout=10).status_code == 200
            )
            me = requests.get(f"{base}/api/v1/me", headers=bearer, timeout=10).json()
            assert me["user"]["email_verified"] is True
            # 2. forgot: the same answer as for an address nobody has
            known = requests.post(f"{base}/api/v1/auth/password/forgot", json={"email": email}, timeout=10)
            unknown = requests.post(
                f"{base}/api/v1/auth/password/forgot", json={"email": f"nobody-{tag}@x.test"}, timeout=10
            )
            assert known.status_code == unknown.status_code == 202 and known.json() == unknown.json()
            deliver.run_until_idle()
            assert inbox.to(f"nobody-{tag}@x.test") == []
            [reset_mail] = [m for m in inbox.to(email) if m["Subject"] == "Reset your password"]
            reset_link = _link(reset_mail, "/account/reset")
            reset_token = reset_link.split("token=", 1)[1]
            # 3. the hosted reset page, in Chromium when it is here, else as a form post
            if chromium_available():
                from playwright.sync_api import sync_playwright

                with sync_playwright() as p:
                    browser = launch_chromium(p)
                    try:
                        tab = browser.new_page()
                        tab.goto(reset_link)
                        tab.fill("#password", NEW_PASSWORD)
                        tab.click("#submit")
                        tab.wait_for_selector("#detail")
                        assert "every session ended" in tab.inner_text("#detail")
                        assert tab.title().startswith("Password changed")
                    finally:
                        browser.close()
            else:
                done = requests.post(
                    f"{base}/account/reset", data={"token": reset_token, "password": NEW_PASSWORD}, timeout=10
                )
                assert done.status_code == 200, done.text
            # the old session is over, the new password works, the link does not work twice
            assert requests.get(f"{base}/api/v1/me", headers=bearer, timeout=10).status_code == 401
            assert _login(base, email, TEST_PASSWORD).status_code == 401
            assert _login(base, email, NEW_PASSWORD).status_code == 200
            again = requests.post(
                f"{base}/api/v1/auth/password/reset",
                json={"token": reset_token, "password": "someone else's password"},
                timeout=10,
            )
            assert again.status_code == 400 and again.json()["code"] == "invalid_reset_token"
            # a cross-site form post is refused
            forged = requests.post(
                f"{base}/account/reset",
                data={"token": reset_token, "password": "x"},
                headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
                timeout=10,
            )
            assert forged.status_code == 403
            deliver.run_until_idle()
            notices = [m for m in inbox.to(email) if m["Subject"] == "Security notice"]
            assert len(notices) == 1 and "reset" in _body(notices[0])
            assert "token=" not in _body(notices[0])
    finally:
        worker_module._handlers.clear()
        worker_module._handlers.update(handlers_before)
        if tenant_id:
            drop_tenant(engine, tenant_id)
        with engine.begin() as conn:
            conn.execute(delete(User).where(User.email.like(f"%{tag}%")))
            conn.execute(delete(OutboxMessage).where(OutboxMessage.id > first_outbox_id))


@pytest.mark.skipif(not chromium_available(), reason="Debian's chromium and playwright are needed")
def test_the_hosted_forgot_form_in_chromium(live, engine):  # noqa: F811
    """The form behind the login page's "Forgot password?" answers as the API does."""
    from playwright.sync_api import sync_playwright

    base, _app = live
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            tab = browser.new_page()
            tab.goto(f"{base}/account/forgot")
            tab.fill("#email", f"nobody-{uuid.uuid4().hex[:6]}@x.test")
            tab.click("#submit")
            tab.wait_for_selector("#detail")
            assert "If an account uses that address" in tab.inner_text("#detail")
        finally:
            browser.close()
