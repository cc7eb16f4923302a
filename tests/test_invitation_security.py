"""Invitations and signup against the three attacks of the hardening review:

- the acceptance endpoint as a password oracle for existing accounts (none is checked now: an
  existing account accepts signed in, with its own bearer token of any tenant);
- account pre-hijacking (the inviter never holds the token: it goes only to the mailbox);
- enumeration and cross-tenant disclosure (an invitation or a signup answers the same for an
  address with or without an account, without another tenant's user id or name).

The last test runs the same story through gunicorn with ``requests``, the mail read back from a
real SMTP server (aiosmtpd) after the outbox worker delivered it.
"""

from __future__ import annotations

import email
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from sqlalchemy import delete, func, select

from saas import worker as worker_module
from saas.db import Database
from saas.identity.models import Membership, User
from saas.outbox import OutboxMessage
from saas.services import services
from saas.tenancy.views import SIGNUP_PENDING
from saas.worker import Worker, load_handlers
from tests.conftest import TEST_PASSWORD, _redis_url
from tests.helpers import assert_problem, drop_tenant, mailed_invitation_token, role_headers, verify_by_link
from tests.peers import free_port, gunicorn_server, smtp_inbox

NEW_PASSWORD = "a long enough password"
ROOT = Path(__file__).resolve().parents[1]


def _invite(client, headers, email_address, role="member"):
    return client.post("/api/v1/members", json={"email": email_address, "role": role}, headers=headers)


def _accept(client, body, headers=None):
    return client.post("/api/v1/invitations/accept", json=body, headers=headers or {})


def _signup(client, slug, email_address, password=TEST_PASSWORD):
    return client.post(
        "/api/v1/signup",
        json={
            "tenant": {"name": slug.title(), "slug": slug},
            "owner": {"email": email_address, "password": password},
        },
    )


def _stable(problem: dict) -> dict:
    """A problem body without what differs per request."""
    return {k: v for k, v in problem.items() if k not in ("request_id", "instance")}


def _invitation_view(body: dict) -> dict:
    """An invite answer without what differs per invitation."""
    return {k: v for k, v in body.items() if k not in ("invitation_id", "created_at", "expires_at", "email")}


# --- pre-hijacking -----------------------------------------------------------------------------


def test_attacker_tenant_cannot_pre_hijack_a_new_address(api, client, app, db_session):
    attacker = api.signup("evil")
    r = _invite(client, api.auth(attacker), "victim@corp.test")
    assert r.status_code == 201, r.get_json()
    assert "token" not in json.dumps(r.get_json())  # no invitation_token: only the mailbox has it
    mailed = mailed_invitation_token(app, "victim@corp.test")
    assert mailed not in r.get_data(as_text=True)
    listing = client.get("/api/v1/members", headers=api.auth(attacker))
    assert mailed not in listing.get_data(as_text=True)
    # without the mailed token the attacker can set no password
    assert_problem(_accept(client, {"token": "x" * 43, "password": NEW_PASSWORD}), 404, "invalid_invitation")
    assert "token" in assert_problem(_accept(client, {"password": NEW_PASSWORD}), 422)["errors"]
    placeholder = db_session.scalars(select(User).where(User.email == "victim@corp.test")).one()
    assert placeholder.password_hash is None
    # the victim's real invitation, read from the victim's mailbox, works
    corp = api.signup("corp")
    assert _invite(client, api.auth(corp), "victim@corp.test").status_code == 201
    real = mailed_invitation_token(app, "victim@corp.test")
    joined = _accept(client, {"token": real, "password": NEW_PASSWORD, "name": "Victim"})
    assert joined.status_code == 200, joined.get_json()
    assert joined.get_json()["tenant"]["slug"] == "corp" and joined.get_json()["token"]["access_token"]
    assert api.login("victim@corp.test", password=NEW_PASSWORD, tenant="corp").status_code == 200
    # the attacker's invitation stays pending: even its mailed token now needs the victim signed in
    assert_problem(
        _accept(client, {"token": mailed, "password": "attacker's own pw"}), 401, "sign_in_required"
    )
    statuses = {m["email"]: m["status"] for m in listing.get_json()}
    assert statuses["victim@corp.test"] == "invited"


def test_victim_signs_up_after_an_attacker_invited_the_address(api, client, app):
    """The placeholder an invitation leaves is no account: the victim's own signup claims it."""
    attacker = api.signup("evil")
    assert _invite(client, api.auth(attacker), "victim@corp.test").status_code == 201
    attackers_mail = mailed_invitation_token(app, "victim@corp.test")
    r = _signup(client, "corp", "victim@corp.test", password=NEW_PASSWORD)
    assert r.status_code == 201, r.get_json()
    assert api.login("victim@corp.test", password=NEW_PASSWORD, tenant="corp").status_code == 200
    # the attacker never had the token; were it stolen, it now needs the victim's own sign-in
    assert_problem(_accept(client, {"token": attackers_mail, "password": "guess"}), 401, "sign_in_required")


def test_another_tenant_cannot_withdraw_an_invitation(api, client, app):
    acme = api.signup("acme")
    globex = api.signup("globex")
    invitation_id = _invite(client, api.auth(acme), "new@acme.test").get_json()["invitation_id"]
    assert_problem(client.delete(f"/api/v1/invitations/{invitation_id}", headers=api.auth(globex)), 404)
    _, member_h = role_headers(app, acme["tenant"]["id"], "member")
    assert_problem(client.delete(f"/api/v1/invitations/{invitation_id}", headers=member_h), 403)
    token = mailed_invitation_token(app, "new@acme.test")
    assert _accept(client, {"token": token, "password": NEW_PASSWORD}).status_code == 200
    # once accepted, it is a member to remove, not an invitation to withdraw
    assert_problem(client.delete(f"/api/v1/invitations/{invitation_id}", headers=api.auth(acme)), 404)


# --- the oracle --------------------------------------------------------------------------------


@pytest.fixture()
def password_calls(app, monkeypatch):
    """Counts every password verification and hash the app makes."""
    passwords = services(app).passwords
    calls = {"verify": 0, "hash": 0}
    real_verify, real_hash = passwords.verify, passwords.hash

    def verify(*args, **kwargs):
        calls["verify"] += 1
        return real_verify(*args, **kwargs)

    def hashed(*args, **kwargs):
        calls["hash"] += 1
        return real_hash(*args, **kwargs)

    monkeypatch.setattr(passwords, "verify", verify)
    monkeypatch.setattr(passwords, "hash", hashed)
    return calls


def test_acceptance_is_no_password_oracle(api, client, app, password_calls, db_session):
    victim = api.signup("globex", email="boss@globex.test")
    acme = api.signup("acme")
    assert _invite(client, api.auth(acme), "boss@globex.test", role="viewer").status_code == 201
    token = mailed_invitation_token(app, "boss@globex.test")  # as if it leaked
    before = dict(password_calls)
    answers = []
    for i in range(15):
        r = _accept(client, {"token": token, "password": f"wrong password {i}"})
        answers.append(_stable(assert_problem(r, 401, "sign_in_required")))
        assert "token" not in r.get_json() and "access_token" not in r.get_data(as_text=True)
    right = _accept(client, {"token": token, "password": TEST_PASSWORD})
    answers.append(_stable(assert_problem(right, 401, "sign_in_required")))
    none = _accept(client, {"token": token})
    answers.append(_stable(assert_problem(none, 401, "sign_in_required")))
    assert all(a == answers[0] for a in answers)  # the right password changes nothing
    assert password_calls == before  # nothing verified (nor hashed)
    membership = db_session.scalars(
        select(Membership)
        .where(Membership.user_id == uuid.UUID(victim["user"]["id"]))
        .where(Membership.tenant_id == uuid.UUID(acme["tenant"]["id"]))
    ).one()
    assert membership.status == "invited"
    # another user's bearer cannot accept it
    _, stranger_h = role_headers(app, acme["tenant"]["id"], "member")
    assert_problem(_accept(client, {"token": token}, stranger_h), 403, "wrong_account")
    assert_problem(_accept(client, {"token": token}, api.auth(acme)), 403, "wrong_account")
    db_session.refresh(membership)
    assert membership.status == "invited"
    # signed in with its own token of its own tenant (globex), it joins acme
    r = _accept(client, {"token": token, "password": "ignored, never checked"}, api.auth(victim))
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["tenant"]["slug"] == "acme" and body["user"]["id"] == victim["user"]["id"]
    assert "token" not in body  # it logs in to acme next
    assert password_calls == before
    assert api.login("boss@globex.test", tenant="acme").status_code == 200
    # the join is audited in the inviting tenant, not in the token's
    joined = client.get("/api/v1/audit-events?action=member.joined", headers=api.auth(acme)).get_json()
    assert [e["target"]["id"] for e in joined] == [victim["user"]["id"]]
    own = client.get("/api/v1/audit-events?action=member.joined", headers=api.auth(victim)).get_json()
    assert own == []
    assert_problem(_accept(client, {"token": token}, api.auth(victim)), 404, "invalid_invitation")


def test_a_new_account_cannot_be_accepted_signed_in_as_someone_else(api, client, app):
    acme = api.signup("acme")
    assert _invite(client, api.auth(acme), "new@acme.test").status_code == 201
    token = mailed_invitation_token(app, "new@acme.test")
    assert_problem(
        _accept(client, {"token": token, "password": NEW_PASSWORD}, api.auth(acme)), 403, "wrong_account"
    )
    assert _accept(client, {"token": token, "password": NEW_PASSWORD}).status_code == 200


# --- enumeration -------------------------------------------------------------------------------


def test_invite_reveals_nothing_of_an_existing_account(api, client, app):
    other = api.signup("globex", email="Boss@Globex.test", name="Globex")
    acme = api.signup("acme")
    h = api.auth(acme)
    existing = _invite(client, h, "boss@globex.TEST")
    fresh = _invite(client, h, "nobody@globex.test")
    assert existing.status_code == fresh.status_code == 201
    assert _invitation_view(existing.get_json()) == _invitation_view(fresh.get_json())
    assert set(existing.get_json()) == set(fresh.get_json())
    assert existing.get_json()["email"] == "boss@globex.test"  # the invited address, not the account's
    assert other["user"]["id"] not in existing.get_data(as_text=True)
    assert "Boss@Globex.test" not in existing.get_data(as_text=True)
    listing = client.get("/api/v1/members", headers=h)
    assert other["user"]["id"] not in listing.get_data(as_text=True)
    pending = sorted((m for m in listing.get_json() if m["status"] == "invited"), key=lambda m: m["email"])
    assert [(m["email"], m["user_id"], m["name"]) for m in pending] == [
        ("boss@globex.test", None, None),
        ("nobody@globex.test", None, None),
    ]
    audit = client.get("/api/v1/audit-events?action=member.invited", headers=h)
    assert other["user"]["id"] not in audit.get_data(as_text=True)


def test_signup_with_a_taken_email_reveals_nothing(api, client, app, db_session):
    taken = api.signup("globex", email="boss@globex.test")
    r = _signup(client, "boss-corp", "BOSS@globex.test")
    assert r.status_code == 202, r.get_json()
    assert r.get_json() == SIGNUP_PENDING
    text = r.get_data(as_text=True)
    assert "email_taken" not in text and taken["user"]["id"] not in text and "globex" not in text.lower()
    # nothing created, the slug still free; the account's mailbox got a notice
    notice = db_session.scalars(
        select(OutboxMessage).where(OutboxMessage.topic == "mail.account_exists")
    ).one()
    assert notice.payload["to"] == "boss@globex.test" and notice.payload["tenant"] == "boss-corp"
    assert "password" not in json.dumps(notice.payload).lower()
    assert _signup(client, "boss-corp", "someone@else.test").status_code == 201
    assert api.login("boss@globex.test").status_code == 200  # the account is unchanged


def test_a_signed_in_account_creates_another_tenant_with_its_bearer(api, client):
    """What the account-exists notice tells its reader to do: signup with the bearer, no owner."""
    ada = api.signup("acme", email="ada@acme.test")
    h = api.auth(ada)
    r = client.post("/api/v1/signup", json={"tenant": {"name": "Side", "slug": "side-project"}}, headers=h)
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["user"]["id"] == ada["user"]["id"] and body["tenant"]["slug"] == "side-project"
    assert "token" not in body  # it logs in to the new tenant next
    login = api.login("ada@acme.test", tenant="side-project")
    assert login.status_code == 200, login.get_json()
    me = client.get("/api/v1/me", headers=api.auth(login.get_json())).get_json()
    assert me["role"] == "owner" and me["tenant"]["slug"] == "side-project"
    # signed in, the body names no owner; signed out, it must
    owner = {"email": "mallory@evil.test", "password": TEST_PASSWORD}
    r = client.post(
        "/api/v1/signup", json={"tenant": {"name": "X", "slug": "xyz-one"}, "owner": owner}, headers=h
    )
    assert "owner" in assert_problem(r, 422)["errors"]
    r = client.post("/api/v1/signup", json={"tenant": {"name": "X", "slug": "xyz-two"}})
    assert "owner" in assert_problem(r, 422)["errors"]
    assert_problem(
        client.post("/api/v1/signup", json={"tenant": {"name": "Y", "slug": "side-project"}}, headers=h),
        409,
        "slug_taken",
    )


# --- end to end: gunicorn, requests, a real SMTP server -----------------------------------------


@pytest.fixture()
def smtp_server():
    with smtp_inbox() as inbox:
        yield inbox


@pytest.fixture()
def gunicorn_base(database_url, worker_id_str, tmp_path, redis_client):
    """gunicorn (one sync worker) serving ``wsgi:app`` on a free port, committing for real."""
    redis_client.flushdb()
    env = {"SAAS_ENV": "test", "SECRET_KEY": "e2e-secret", "SAAS_VAR_DIR": str(tmp_path / "var")}
    with gunicorn_server(database_url, _redis_url(worker_id_str), tmp_path, workers=1, env=env) as server:
        yield server.base


def _token_in(message: email.message.Message) -> str:
    match = re.search(r"Invitation token: (\S+)", message.get_payload(decode=True).decode())
    assert match, message.get_payload(decode=True).decode()
    return match.group(1)


def test_end_to_end_over_gunicorn_with_mail_from_smtp(gunicorn_base, smtp_server, engine, settings):
    base = gunicorn_base
    tag = uuid.uuid4().hex[:8]
    victim_email = f"victim-{tag}@corp.test"
    tenants: list[str] = []
    load_handlers()
    handlers_before = worker_module.handlers()
    deliver = Worker(Database(engine), settings.with_overrides(smtp_url=smtp_server.url, issuer=base))
    with engine.connect() as conn:
        first_outbox_id = conn.scalar(select(func.coalesce(func.max(OutboxMessage.id), 0)))

    def signup(slug, owner_email, password=TEST_PASSWORD):
        r = requests.post(
            f"{base}/api/v1/signup",
            json={
                "tenant": {"name": slug, "slug": slug},
                "owner": {"email": owner_email, "password": password},
            },
            timeout=10,
        )
        if r.status_code == 201:
            tenants.append(r.json()["tenant"]["id"])
            verify_by_link(base, engine, owner_email)  # inviting needs a verified owner
        return r

    def invite(owner, address):
        return requests.post(
            f"{base}/api/v1/members",
            json={"email": address, "role": "member"},
            headers={"Authorization": f"Bearer {owner['token']['access_token']}"},
            timeout=10,
        )

    def accept(body, token=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.post(f"{base}/api/v1/invitations/accept", json=body, headers=headers, timeout=10)

    try:
        evil = signup(f"evil-{tag}", f"owner@evil-{tag}.test").json()
        corp = signup(f"corp-{tag}", f"owner@corp-{tag}.test").json()
        # the attacker's invitation answers without a token, like any invitation
        hijack = invite(evil, victim_email)
        assert hijack.status_code == 201, hijack.text
        assert "token" not in hijack.text
        assert accept({"token": "x" * 43, "password": "attacker pw 123"}).status_code == 404
        assert invite(corp, victim_email).status_code == 201
        assert deliver.run_until_idle().get("sent", 0) >= 2
        mails = smtp_server.to(victim_email)
        assert len(mails) == 2
        by_tenant = {("evil" if "evil" in m["Subject"] else "corp"): _token_in(m) for m in mails}
        # the victim accepts the real one with the mailed token: a new account
        joined = accept({"token": by_tenant["corp"], "password": NEW_PASSWORD})
        assert joined.status_code == 200, joined.text
        victim_token = joined.json()["token"]["access_token"]
        # the oracle is gone: 15 wrong passwords on an existing account's invitation verify nothing
        answers = set()
        for i in range(15):
            r = accept({"token": by_tenant["evil"], "password": f"wrong {i} password"})
            assert r.status_code == 401 and r.headers["Content-Type"].startswith("application/problem+json")
            assert "access_token" not in r.text
            answers.add(json.dumps(_stable(r.json()), sort_keys=True))
        r = accept({"token": by_tenant["evil"], "password": NEW_PASSWORD})
        answers.add(json.dumps(_stable(r.json()), sort_keys=True))
        assert len(answers) == 1 and json.loads(answers.pop())["code"] == "sign_in_required"
        # another user's bearer cannot accept; the victim's own can
        r = accept({"token": by_tenant["evil"]}, corp["token"]["access_token"])
        assert r.status_code == 403 and r.json()["code"] == "wrong_account"
        r = accept({"token": by_tenant["evil"]}, victim_token)
        assert r.status_code == 200 and "token" not in r.json()
        # signup with the taken address: 202, nothing revealed, and a notice in the mailbox
        r = signup(f"again-{tag}", victim_email.upper(), password=NEW_PASSWORD)
        assert r.status_code == 202 and r.json() == SIGNUP_PENDING
        assert deliver.run_until_idle().get("sent", 0) >= 1
        notices = [m for m in smtp_server.to(victim_email) if m["Subject"] == "Your sign-up"]
        assert len(notices) == 1
        assert "already has an account" in notices[0].get_payload(decode=True).decode()
    finally:
        worker_module._handlers.clear()
        worker_module._handlers.update(handlers_before)
        for tenant_id in tenants:
            drop_tenant(engine, tenant_id)
        with engine.begin() as conn:
            conn.execute(delete(User).where(User.email.like(f"%{tag}%")))
            conn.execute(delete(OutboxMessage).where(OutboxMessage.id > first_outbox_id))


# --- saas dev prints the mail ------------------------------------------------------------------


def test_saas_dev_prints_the_invitation_mail_to_its_console(database_url, worker_id_str, tmp_path, engine):
    """The README walkthrough: ``saas dev`` delivers the outbox itself and, without SMTP_URL,
    prints each mail; the token read from its console accepts the invitation."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("SMTP_URL", "SAAS_ENV")},
        "DATABASE_URL": database_url.replace("postgresql+psycopg://", "postgresql://", 1),
        "REDIS_URL": _redis_url(worker_id_str),
        "SAAS_VAR_DIR": str(tmp_path / "var"),
        "ARGON2_MEMORY_KIB": "8192",
        "ARGON2_TIME_COST": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "PYTHONUNBUFFERED": "1",
    }
    out_path = tmp_path / "dev.out"
    out = open(out_path, "w")  # noqa: SIM115 - closed below
    saas = Path(sys.executable).parent / "saas"
    proc = subprocess.Popen(
        [str(saas), "dev", "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
    )
    tag = uuid.uuid4().hex[:8]
    tenant_id = None
    with engine.connect() as conn:
        first_outbox_id = conn.scalar(select(func.coalesce(func.max(OutboxMessage.id), 0)))
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, out_path.read_text()[-3000:]
            try:
                if requests.get(f"{base}/healthz", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "saas dev did not start"
            time.sleep(0.3)
        r = requests.post(
            f"{base}/api/v1/signup",
            json={
                "tenant": {"name": "Dev", "slug": f"dev-{tag}"},
                "owner": {"email": f"ada@dev-{tag}.test", "password": TEST_PASSWORD},
            },
            timeout=10,
        )
        assert r.status_code == 201, r.text
        tenant_id = r.json()["tenant"]["id"]
        signed_up = r.json()
        # the owner verifies the address with the link printed on the console (README walkthrough)
        deadline = time.monotonic() + 20
        while not (
            verify := re.search(
                rf"To: ada@dev-{tag}\.test[\s\S]*?/account/verify\?token=(\S+)", out_path.read_text()
            )
        ):
            assert time.monotonic() < deadline, out_path.read_text()[-3000:]
            time.sleep(0.2)
        page = requests.get(f"{base}/account/verify", params={"token": verify.group(1)}, timeout=10)
        assert page.status_code == 200 and page.headers["Referrer-Policy"] == "no-referrer"
        r = requests.post(f"{base}/api/v1/auth/email/verify", json={"token": verify.group(1)}, timeout=10)
        assert r.status_code == 204, r.text
        invitee = f"linus@dev-{tag}.test"
        r = requests.post(
            f"{base}/api/v1/members",
            json={"email": invitee, "role": "member"},
            headers={"Authorization": f"Bearer {signed_up['token']['access_token']}"},
            timeout=10,
        )
        assert r.status_code == 201 and "token" not in r.text, r.text
        deadline = time.monotonic() + 20
        while not (
            match := re.search(
                rf"To: {re.escape(invitee)}[\s\S]*?Invitation token: (\S+)", out_path.read_text()
            )
        ):
            assert time.monotonic() < deadline, out_path.read_text()[-3000:]
            time.sleep(0.2)
        r = requests.post(
            f"{base}/api/v1/invitations/accept",
            json={"token": match.group(1), "password": NEW_PASSWORD, "name": "Linus"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        assert r.json()["user"]["name"] == "Linus"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        out.close()
        if tenant_id:
            drop_tenant(engine, tenant_id)
        with engine.begin() as conn:
            conn.execute(delete(OutboxMessage).where(OutboxMessage.id > first_outbox_id))
