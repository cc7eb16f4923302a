"""The MFA lockout is keyed on the sign-in attempt (client IP and mfa_token) with a higher
bound per account, and every lockout is audited in every tenant of the account, once
(hardening issue, item 15)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from saas.auth.models import MfaFactor
from saas.db import utcnow
from tests.auth_helpers import REDIRECT, browser_login, csrf_of, pkce_pair, register_client
from tests.test_mfa import T0, _code, _enroll


@pytest.fixture()
def clock(time_machine):
    """The process's clock frozen at T0 (TOTP steps, tokens, expiries): ``clock.shift(s)``."""
    time_machine.move_to(T0, tick=False)
    return time_machine


def _mfa_token(client, email, ip, tenant=None):
    body = {"email": email, "password": "correct horse battery staple"}
    if tenant:
        body["tenant"] = tenant
    r = client.post("/api/v1/auth/login", json=body, environ_base={"REMOTE_ADDR": ip})
    assert r.status_code == 403 and r.get_json()["code"] == "mfa_required", r.get_json()
    return r.get_json()["mfa_token"]


def _second_step(client, token, code, ip):
    body = {"mfa_token": token, "code": code}
    return client.post("/api/v1/auth/mfa", json=body, environ_base={"REMOTE_ADDR": ip})


def _locked_events(client, headers):
    r = client.get("/api/v1/audit-events?action=mfa.locked", headers=headers)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_wrong_codes_of_an_attacker_do_not_lock_the_owners_attempts(api, client, clock):
    """Someone who knows the password locks only their own attempt, from another IP or with
    another mfa_token from the same IP; the owner signs in."""
    owner = api.signup("acme")
    h = api.auth(owner)
    secret, _ = _enroll(client, h, clock)
    email = "owner@acme.test"
    attacker = _mfa_token(client, email, "203.0.113.9")
    statuses = [_second_step(client, attacker, "000000", "203.0.113.9") for _ in range(5)]
    assert [r.status_code for r in statuses] == [401, 401, 401, 401, 403]
    assert statuses[-1].get_json()["code"] == "mfa_locked"
    assert statuses[-1].get_json()["scope"] == "attempt"
    assert int(statuses[-1].headers["Retry-After"]) == 900
    # the attacker's attempt stays locked, even with the right code
    again = _second_step(client, attacker, _code(secret, clock, 1), "203.0.113.9")
    assert again.status_code == 403 and again.get_json()["scope"] == "attempt"
    # the owner, from their own address
    mine = _mfa_token(client, email, "198.51.100.7")
    assert _second_step(client, mine, _code(secret, clock, 1), "198.51.100.7").status_code == 200
    # and behind the attacker's address (a shared NAT), with their own mfa_token
    clock.shift(30)
    shared = _mfa_token(client, email, "203.0.113.9")
    assert _second_step(client, shared, _code(secret, clock, 1), "203.0.113.9").status_code == 200
    events = _locked_events(client, h)
    assert [e["data"]["scope"] for e in events] == ["attempt"]
    assert events[0]["ip"] == "203.0.113.9" and events[0]["target"]["id"] == owner["user"]["id"]


def test_twenty_wrong_codes_in_a_row_lock_the_factor_audited_once_in_every_tenant(
    api, client, clock, db_session
):
    from saas.identity.models import Membership

    home, other = api.signup("home"), api.signup("other")
    user_id = uuid.UUID(home["user"]["id"])
    db_session.add(Membership(user_id=user_id, tenant_id=uuid.UUID(other["tenant"]["id"]), role="member"))
    db_session.flush()
    secret, _ = _enroll(client, api.auth(home), clock)
    email = "owner@home.test"
    answers = []
    for i in range(4):  # four attempts from four addresses, five wrong codes each
        ip = f"203.0.113.{i + 1}"
        token = _mfa_token(client, email, ip, tenant="home")
        answers += [_second_step(client, token, "000000", ip) for _ in range(5)]
    assert [r.status_code for r in answers] == ([401] * 4 + [403]) * 4
    assert [r.get_json()["scope"] for r in answers if r.status_code == 403] == ["attempt"] * 3 + ["account"]
    # the factor is locked for every attempt, the owner's too
    token = _mfa_token(client, email, "198.51.100.7", tenant="home")
    refused = _second_step(client, token, _code(secret, clock, 1), "198.51.100.7")
    assert refused.status_code == 403 and refused.get_json()["scope"] == "account"
    assert 0 < int(refused.headers["Retry-After"]) <= 900
    more = [_second_step(client, token, "000000", "198.51.100.7").status_code for _ in range(3)]
    assert more == [403] * 3  # refused before any code is checked: no new failure, no new event
    for headers in (api.auth(home), api.auth(other)):
        events = _locked_events(client, headers)
        assert sorted(e["data"]["scope"] for e in events) == ["account"] + ["attempt"] * 3
        assert {e["target"]["id"] for e in events} == {str(user_id)}
    # the window ends: the owner's right code is accepted and the run of failures is over
    factor = db_session.scalars(select(MfaFactor).where(MfaFactor.user_id == user_id)).one()
    factor.locked_until = utcnow() - timedelta(seconds=1)
    db_session.flush()
    assert _second_step(client, token, _code(secret, clock, 1), "198.51.100.7").status_code == 200
    db_session.refresh(factor)
    assert factor.failed_count == 0 and factor.locked_until is None


def test_a_right_code_ends_the_run_of_account_failures(api, client, clock, db_session):
    """The account bound counts wrong codes in a row: the owner's success starts it again."""
    owner = api.signup("acme")
    secret, _ = _enroll(client, api.auth(owner), clock)
    email = "owner@acme.test"
    for i in range(3):
        ip = f"203.0.113.{i + 1}"
        token = _mfa_token(client, email, ip)
        assert [_second_step(client, token, "000000", ip).status_code for _ in range(5)][-1] == 403
    mine = _mfa_token(client, email, "198.51.100.7")
    assert _second_step(client, mine, _code(secret, clock, 1), "198.51.100.7").status_code == 200
    token = _mfa_token(client, email, "203.0.113.50")
    assert [_second_step(client, token, "000000", "203.0.113.50").status_code for _ in range(5)][-1] == 403
    mine = _mfa_token(client, email, "198.51.100.8")
    clock.shift(30)
    assert _second_step(client, mine, _code(secret, clock, 1), "198.51.100.8").status_code == 200


def test_wrong_codes_in_another_browser_do_not_lock_the_owners_hosted_sign_in(app, api, client, clock):
    """The hosted page keys its lockout on the pending sign-in as well (the API's ``mfa_token``):
    five wrong codes in the attacker's browser, from the owner's own IP, lock that browser's
    attempt only; the owner's browser still signs in with the right code."""
    owner = api.signup("acme")
    app_client = register_client(client, api.auth(owner), client_type="public", first_party=True)
    secret, _ = _enroll(client, api.auth(owner), clock)
    clock.shift(30)

    def pending_mfa_page(browser):
        _verifier, challenge = pkce_pair()
        r = browser_login(browser, app_client["client_id"], "owner@acme.test", challenge)
        assert r.status_code == 302 and r.headers["Location"].endswith("/oauth/mfa"), r.headers
        return csrf_of(browser.get("/oauth/mfa").get_data(as_text=True))

    attacker = app.test_client()
    csrf = pending_mfa_page(attacker)
    answers = [attacker.post("/oauth/mfa", data={"code": "000000", "csrf_token": csrf}) for _ in range(6)]
    assert [r.status_code for r in answers] == [401] * 4 + [403] * 2
    victim = app.test_client()
    csrf = pending_mfa_page(victim)
    r = victim.post("/oauth/mfa", data={"code": _code(secret, clock), "csrf_token": csrf})
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT), r.get_data(as_text=True)
