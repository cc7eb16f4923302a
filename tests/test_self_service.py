"""Self-service accounts and tenant admins (docs/auth.md, "Self-service accounts"): the personal
data export, account deletion with pseudonymous audit, new-device notices, an admin's MFA reset
and session end. Mails are delivered by the outbox worker to a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import func, select

from saas.audit import AuditEvent
from saas.auth.models import KnownDevice, MfaFactor, RecoveryCode, RefreshToken, WebAuthnCredential
from saas.db import translate_map
from saas.identity.models import Membership, Tenant, User
from saas.outbox import OutboxMessage
from saas.services import services
from saas.worker import Worker
from tests.conftest import TEST_PASSWORD
from tests.helpers import assert_problem, mailed_invitation_token
from tests.peers import smtp_inbox

pytestmark = pytest.mark.usefixtures("worker_handlers")  # tests/conftest.py


@pytest.fixture()
def inbox():
    with smtp_inbox() as box:
        yield box


def _deliver(app, settings, inbox) -> None:
    """Run the outbox worker once over the test's transaction, sending to ``inbox``."""
    Worker(services(app).database, settings.with_overrides(smtp_url=inbox.url)).run_until_idle()


def _body(message) -> str:
    return message.get_payload(decode=True).decode()


def _notices(inbox, address: str) -> list:
    """The security notices ``address`` received (not its invitation)."""
    return [m for m in inbox.to(address) if m["Subject"] == "Security notice"]


def _stale(app, user_id, tenant_id, role: str) -> dict:
    """A valid access token whose login is older than ``STEP_UP_MAX_AGE`` (10 minutes)."""
    import time

    issued = services(app).tokens.issue(
        subject=str(user_id), tenant_id=str(tenant_id), roles=[role], scope="api", client_id="saas-api",
        auth_time=int(time.time()) - 700,
    )  # fmt: skip
    return {"Authorization": f"Bearer {issued.token}"}


def _security_mails(db_session, event: str) -> list[dict]:
    rows = db_session.scalars(select(OutboxMessage).where(OutboxMessage.topic == "mail.security")).all()
    return [r.payload for r in rows if (r.payload or {}).get("event") == event]


def _events(db_session, tenant_id, action: str | None = None) -> list[AuditEvent]:
    schema = db_session.get(Tenant, uuid.UUID(str(tenant_id))).schema_name
    query = select(AuditEvent).order_by(AuditEvent.occurred_at)
    if action:
        query = query.where(AuditEvent.action == action)
    return list(db_session.scalars(query, execution_options={"schema_translate_map": translate_map(schema)}))


def _invite_and_join(
    api, client, app, owner: dict, email: str, role: str = "member", signed_in: dict | None = None
) -> dict:
    """``email`` invited into ``owner``'s tenant and joined (a new account with a password, or
    an existing one ``signed_in`` with its token); its answer with a login to that tenant."""
    r = client.post("/api/v1/members", json={"email": email, "role": role}, headers=api.auth(owner))
    assert r.status_code == 201, r.get_json()
    token = mailed_invitation_token(app, email)
    if signed_in is not None:
        r = client.post("/api/v1/invitations/accept", json={"token": token}, headers=api.auth(signed_in))
    else:
        r = client.post("/api/v1/invitations/accept", json={"token": token, "password": TEST_PASSWORD})
    assert r.status_code == 200, r.get_json()
    login = api.login(email, tenant=owner["tenant"]["slug"])
    assert login.status_code == 200, login.get_json()
    return {**r.get_json(), "token": login.get_json()}


# --- export ------------------------------------------------------------------------------------


def test_export_has_my_data_in_every_tenant_and_never_anyone_elses(api, client, app, db_session):
    acme = api.signup("acme", email="ada@acme.test")
    globex = api.signup("globex", email="bob@globex.test")
    # ada also joins globex: her data there is hers, bob's is not
    joined = _invite_and_join(api, client, app, globex, "ada@acme.test", signed_in=acme)
    client.get("/api/v1/me", headers=api.auth(globex))  # bob acts in globex
    r = client.get("/api/v1/me/export", headers=api.auth(acme))
    assert r.status_code == 200, r.get_json()
    assert r.headers["Content-Disposition"].startswith("attachment;")
    doc = r.get_json()
    text = r.get_data(as_text=True)
    ada_id = acme["user"]["id"]
    assert doc["format"] == "saas.personal-data.v1"
    assert doc["user"]["id"] == ada_id and doc["user"]["email"] == "ada@acme.test"
    assert sorted(m["tenant"]["slug"] for m in doc["memberships"]) == ["acme", "globex"]
    assert {m["role"] for m in doc["memberships"]} == {"owner", "member"}
    # sessions: the signup's and the two logins' refresh families, all hers
    assert len(doc["sessions"]["api"]) >= 2
    assert {s["tenant_id"] for s in doc["sessions"]["api"]} == {acme["tenant"]["id"], globex["tenant"]["id"]}
    # her audit events, in both tenants; bob's never
    actors = {e["tenant"]["slug"] for e in doc["audit_events"]}
    assert actors == {"acme", "globex"}
    assert {e["action"] for e in doc["audit_events"]} >= {"tenant.created", "member.joined", "auth.login"}
    assert doc["mfa"] == {
        "totp": {"enabled": False, "status": None, "created_at": None, "confirmed_at": None},
        "recovery_codes_remaining": 0,
    }
    # nothing of bob, and no secret of hers
    assert globex["user"]["id"] not in text and "bob@globex.test" not in text
    assert "argon2" not in text and "password_hash" not in text and "token_hash" not in text
    assert joined["user"]["id"] == ada_id
    exported = _events(db_session, acme["tenant"]["id"], "user.exported")
    assert len(exported) == 1 and exported[0].actor_id == ada_id
    assert len(_events(db_session, globex["tenant"]["id"], "user.exported")) == 1


def test_export_shows_passkeys_mfa_and_consents_without_their_secrets(api, client, db_session):
    from saas.auth.models import Consent

    acme = api.signup("acme")
    uid = uuid.UUID(acme["user"]["id"])
    db_session.add(MfaFactor(user_id=uid, status="active", secret_encrypted="SEALED-TOTP-SECRET"))
    db_session.add(RecoveryCode(user_id=uid, code_hash="c0de" * 16))
    db_session.add(
        WebAuthnCredential(
            user_id=uid, credential_id=b"\x01\x02cred", public_key=b"COSE-PUBLIC-KEY", sign_count=41,
            aaguid="adce0002-35bc-c60a-648b-0b25f1f05503", name="Laptop key",
        )
    )  # fmt: skip
    db_session.add(
        Consent(user_id=uid, tenant_id=uuid.UUID(acme["tenant"]["id"]), client_id="crm", scope="openid")
    )
    db_session.commit()
    r = client.get("/api/v1/me/export", headers=api.auth(acme))
    assert r.status_code == 200, r.get_json()
    doc, text = r.get_json(), r.get_data(as_text=True)
    [key] = doc["passkeys"]
    assert key["name"] == "Laptop key" and key["aaguid"] == "adce0002-35bc-c60a-648b-0b25f1f05503"
    assert key["credential_id"] == "AQJjcmVk" and "public_key" not in key and "sign_count" not in key
    assert doc["mfa"]["totp"]["enabled"] is True and doc["mfa"]["recovery_codes_remaining"] == 1
    assert [(c["client_id"], c["scope"]) for c in doc["consents"]] == [("crm", "openid")]
    for secret in ("SEALED-TOTP-SECRET", "c0dec0de", "COSE-PUBLIC-KEY", "Q09TRS1QVUJMSUMtS0VZ"):
        assert secret not in text


def test_export_refuses_service_accounts_and_anonymous(api, client):
    assert_problem(client.get("/api/v1/me/export"), 401)


# --- deletion ----------------------------------------------------------------------------------


def test_last_owner_cannot_delete_the_account_and_nothing_changes(api, client, db_session):
    acme = api.signup("acme")
    r = client.delete("/api/v1/me", json={"password": TEST_PASSWORD}, headers=api.auth(acme))
    body = assert_problem(r, 409, "last_owner")
    assert body["tenants"] == ["acme"]
    assert db_session.get(User, uuid.UUID(acme["user"]["id"])) is not None
    assert client.get("/api/v1/me", headers=api.auth(acme)).status_code == 200


def test_delete_needs_the_password_and_a_fresh_step_up(api, client, app, db_session):
    acme = api.signup("acme")
    member = _invite_and_join(api, client, app, acme, "mel@acme.test")
    h = api.auth(member["token"])
    assert_problem(client.delete("/api/v1/me", json={"password": "wrong password!"}, headers=h), 403,
                   "invalid_credentials")  # fmt: skip  (a failed sign-in, as for a password change)
    assert_problem(client.delete("/api/v1/me", json={}, headers=h), 422)
    assert_problem(client.delete("/api/v1/me", json={"password": 7}, headers=h), 422)
    stale = _stale(app, member["user"]["id"], acme["tenant"]["id"], "member")
    r = client.delete("/api/v1/me", json={"password": TEST_PASSWORD}, headers=stale)
    assert_problem(r, 401, "insufficient_user_authentication")
    assert db_session.get(User, uuid.UUID(member["user"]["id"])) is not None
    assert _security_mails(db_session, "account_deleted") == []


def test_delete_erases_the_identity_and_pseudonymises_the_audit(
    api, client, app, settings, db_session, inbox
):
    acme = api.signup("acme")
    member = _invite_and_join(api, client, app, acme, "Mel@acme.test")
    uid = uuid.UUID(member["user"]["id"])
    h = api.auth(member["token"])
    db_session.add(WebAuthnCredential(user_id=uid, credential_id=b"mel", public_key=b"k", name="Mel's key"))
    db_session.commit()
    r = client.delete("/api/v1/me", json={"password": TEST_PASSWORD}, headers=h)
    assert r.status_code == 204, r.get_json()
    db_session.expire_all()
    assert db_session.get(User, uid) is None
    assert db_session.scalar(select(func.count()).where(Membership.user_id == uid)) == 0
    assert db_session.scalar(select(func.count()).where(RefreshToken.user_id == uid)) == 0
    assert db_session.scalar(select(func.count()).where(KnownDevice.user_id == uid)) == 0
    assert db_session.scalar(select(func.count()).where(WebAuthnCredential.user_id == uid)) == 0
    # the access token stops at once (the revocation marker and the membership are gone)
    assert_problem(client.get("/api/v1/me", headers=h), 401)
    # the audit keeps the actor's id, never its email, IP or user agent
    events = _events(db_session, acme["tenant"]["id"])
    mine = [e for e in events if e.actor_id == str(uid)]
    assert {e.action for e in mine} >= {"member.joined", "auth.login", "user.deleted"}
    assert all(e.ip is None and e.user_agent is None for e in mine)
    dumped = json.dumps([e.to_public() for e in events], default=str).lower()
    assert "mel@acme.test" not in dumped
    invited = [e for e in events if e.action == "member.invited"]
    assert invited and "email" not in invited[0].data and invited[0].data["role"] == "member"
    # the notice went to the address before it was erased
    _deliver(app, settings, inbox)
    mails = _notices(inbox, "Mel@acme.test")
    assert len(mails) == 1
    assert "deleted" in _body(mails[0])
    # the address is free for a new signup
    again = api.signup("mels-own", email="mel@acme.test")
    assert again["user"]["id"] != str(uid)


def test_a_failure_midway_leaves_the_account_whole(api, client, app, db_session, monkeypatch):
    acme = api.signup("acme")
    member = _invite_and_join(api, client, app, acme, "mel@acme.test")
    uid = uuid.UUID(member["user"]["id"])
    from saas.tenancy import self_service

    def boom(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(self_service.billing_service, "members_changed", boom)
    app.testing, was = False, app.testing  # the 500 problem instead of the exception
    try:
        r = client.delete("/api/v1/me", json={"password": TEST_PASSWORD}, headers=api.auth(member["token"]))
    finally:
        app.testing = was
    assert_problem(r, 500)
    db_session.expire_all()
    assert db_session.get(User, uid) is not None
    assert db_session.scalar(select(func.count()).where(Membership.user_id == uid)) == 1
    live = select(func.count()).where(RefreshToken.user_id == uid, RefreshToken.revoked_at.is_(None))
    assert db_session.scalar(live) >= 1
    assert all(e.ip is not None for e in _events(db_session, acme["tenant"]["id"]) if e.actor_id == str(uid))
    assert client.get("/api/v1/me", headers=api.auth(member["token"])).status_code == 200


# --- new-device notices ------------------------------------------------------------------------


def _login(client, email, ua, ip="127.0.0.1"):
    return client.post(
        "/api/v1/auth/login",
        json={"email": email, "password": TEST_PASSWORD},
        headers={"User-Agent": ua},
        environ_base={"REMOTE_ADDR": ip},
    )


def test_first_login_is_silent_and_a_new_device_is_mailed(api, client, app, settings, db_session, inbox):
    acme = api.signup("acme")
    email = "owner@acme.test"
    assert _login(client, email, "Laptop/1.0").status_code == 200
    assert _login(client, email, "Laptop/1.0", ip="127.0.0.9").status_code == 200  # same /24
    assert _security_mails(db_session, "new_sign_in") == []
    assert _login(client, email, "Phone/2.0", ip="203.0.113.7").status_code == 200
    assert _login(client, email, "Laptop/1.0", ip="198.51.100.1").status_code == 200  # another network
    mails = _security_mails(db_session, "new_sign_in")
    assert len(mails) == 2
    events = _events(db_session, acme["tenant"]["id"], "auth.new_device")
    assert [e.data["user_agent"] for e in events] == ["Phone/2.0", "Laptop/1.0"]
    assert events[0].actor_id == acme["user"]["id"] and events[0].ip == "203.0.113.7"
    # only keyed hashes are stored
    hashes = db_session.scalars(
        select(KnownDevice.device_hash).where(KnownDevice.user_id == uuid.UUID(acme["user"]["id"]))
    ).all()
    assert len(hashes) == 3 and all(len(h) == 64 and "Phone" not in h for h in hashes)
    _deliver(app, settings, inbox)
    received = [m for m in inbox.to(email) if "new sign-in" in _body(m)]  # not the verification mail
    assert len(received) == 2
    body = _body(received[0])
    assert "new sign-in" in body and "203.0.113.7" in body and "Phone/2.0" in body and " UTC" in body


def test_hosted_sign_in_remembers_the_browser_by_its_cookie(api, client, app, db_session):
    from tests.auth_helpers import code_for, register_client

    acme = api.signup("acme")
    spa = register_client(client, api.auth(acme), client_type="public", first_party=True)
    assert _login(client, "owner@acme.test", "Laptop/1.0").status_code == 200  # the first device
    code_for(client, spa["client_id"], "owner@acme.test")
    assert client.get_cookie("saas_device", path="/oauth") is not None
    assert len(_security_mails(db_session, "new_sign_in")) == 1  # a new browser
    client.post("/oauth/logout", data={})
    code_for(client, spa["client_id"], "owner@acme.test")  # the same browser again: known
    assert len(_security_mails(db_session, "new_sign_in")) == 1
    other = app.test_client()  # another browser, no cookie
    code_for(other, spa["client_id"], "owner@acme.test")
    assert len(_security_mails(db_session, "new_sign_in")) == 2


# --- tenant admins -----------------------------------------------------------------------------


def _give_mfa(db_session, user_id) -> None:
    db_session.add(MfaFactor(user_id=uuid.UUID(str(user_id)), status="active", secret_encrypted="x"))
    db_session.add(RecoveryCode(user_id=uuid.UUID(str(user_id)), code_hash="0" * 64))
    db_session.flush()


def test_admin_resets_a_members_mfa(api, client, app, settings, db_session, inbox):
    acme = api.signup("acme")
    member = _invite_and_join(api, client, app, acme, "mel@acme.test")
    uid = member["user"]["id"]
    _give_mfa(db_session, uid)
    db_session.commit()
    r = client.delete(f"/api/v1/members/{uid}/mfa", headers=api.auth(acme))
    assert r.status_code == 204, r.get_json()
    db_session.expire_all()
    assert db_session.scalar(select(func.count()).where(MfaFactor.user_id == uuid.UUID(uid))) == 0
    assert db_session.scalar(select(func.count()).where(RecoveryCode.user_id == uuid.UUID(uid))) == 0
    assert_problem(client.get("/api/v1/me", headers=api.auth(member["token"])), 401)  # sessions ended
    [event] = _events(db_session, acme["tenant"]["id"], "mfa.reset")
    assert event.actor_id == acme["user"]["id"] and event.target_id == uid and event.data["had_factor"]
    _deliver(app, settings, inbox)
    [mail] = _notices(inbox, "mel@acme.test")
    assert "two-factor authentication was reset" in _body(mail)


def test_mfa_reset_rules(api, client, app, db_session):
    from tests.helpers import give_plan

    acme = api.signup("acme")
    globex = api.signup("globex")
    give_plan(db_session, acme["tenant"]["id"], "pro")
    db_session.commit()
    admin = _invite_and_join(api, client, app, acme, "adm@acme.test", role="admin")
    ha = api.auth(admin["token"])
    owner_id = acme["user"]["id"]
    # an admin cannot reset an owner
    assert_problem(client.delete(f"/api/v1/members/{owner_id}/mfa", headers=ha), 403, "role_not_assignable")
    # another tenant's member is a 404, as is a malformed or unknown id
    assert_problem(client.delete(f"/api/v1/members/{globex['user']['id']}/mfa", headers=ha), 404)
    assert_problem(client.delete(f"/api/v1/members/{uuid.uuid4()}/mfa", headers=ha), 404)
    assert client.delete("/api/v1/members/not-a-uuid/mfa", headers=ha).status_code == 404
    # a member who belongs to another tenant too: the factor is not this tenant's to reset
    both = _invite_and_join(api, client, app, acme, "both@acme.test")
    _invite_and_join(api, client, app, globex, "both@acme.test", signed_in=both["token"])
    _give_mfa(db_session, both["user"]["id"])
    db_session.commit()
    r = client.delete(f"/api/v1/members/{both['user']['id']}/mfa", headers=api.auth(acme))
    assert_problem(r, 409, "member_of_other_tenants")
    # a plain member has no members:manage; a token without a recent login has no step-up
    plain = _invite_and_join(api, client, app, acme, "plain@acme.test")
    r = client.delete(f"/api/v1/members/{both['user']['id']}/mfa", headers=api.auth(plain["token"]))
    assert_problem(r, 403)
    stale = _stale(app, owner_id, acme["tenant"]["id"], "owner")
    assert_problem(client.delete(f"/api/v1/members/{plain['user']['id']}/mfa", headers=stale), 401)
    db_session.expire_all()
    factors = select(func.count()).where(MfaFactor.user_id == uuid.UUID(both["user"]["id"]))
    assert db_session.scalar(factors) == 1
    assert _events(db_session, acme["tenant"]["id"], "mfa.reset") == []


def test_admin_ends_a_members_sessions_with_step_up_and_the_member_is_mailed(
    api, client, app, settings, db_session, inbox
):
    acme = api.signup("acme")
    member = _invite_and_join(api, client, app, acme, "mel@acme.test")
    uid = member["user"]["id"]
    stale = _stale(app, acme["user"]["id"], acme["tenant"]["id"], "owner")
    assert_problem(client.delete(f"/api/v1/members/{uid}/sessions", headers=stale), 401)
    assert client.get("/api/v1/me", headers=api.auth(member["token"])).status_code == 200
    r = client.delete(f"/api/v1/members/{uid}/sessions", headers=api.auth(acme))
    assert r.status_code == 200 and r.get_json()["revoked"] >= 1
    assert_problem(client.get("/api/v1/me", headers=api.auth(member["token"])), 401)
    assert len(_events(db_session, acme["tenant"]["id"], "auth.sessions_revoked")) == 1
    _deliver(app, settings, inbox)
    [mail] = _notices(inbox, "mel@acme.test")
    assert "An administrator ended all your sessions." in _body(mail)


def test_export_is_throttled_per_account_like_the_mailing_endpoints(
    settings, engine, redis_client, connection
):
    """``GET /api/v1/me/export`` has the ``mail`` throttles (``mail-ip``, and ``mail-account``
    keyed by the bearer's subject), not the password sign-in ones: it counts toward no lockout."""
    from saas import create_app
    from saas.db import Database
    from tests.conftest import Api

    app = create_app(
        settings.with_overrides(ratelimit_enabled=True, ratelimit_policies=("mail-account=2/1h",)),
        database=Database(engine),
        redis=redis_client,
    )
    app.testing = True
    services(app).database.bind = connection
    client = app.test_client()
    api = Api(client)
    h = api.auth(api.signup("exporter"))
    answers = [client.get("/api/v1/me/export", headers=h) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert answers[-1].get_json()["policy"] == "mail-account"
    assert "login" not in answers[0].headers["RateLimit-Policy"]
    assert api.login("owner@exporter.test").status_code == 200  # no sign-in lockout
