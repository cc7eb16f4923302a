"""Tenant session settings enforced everywhere they matter, and browser sign-ins that end.

* ``require_mfa``: turning it on revokes password-only sessions; refresh and every request
  check it;
* ``session_idle_minutes``: an idle session's refresh is refused, an idle browser sign-in ends;
  values shorter than an access token's lifetime are refused with 422;
* ``password_min_length``: the strictest of the user's tenants, wherever a password is set;
* the hosted pages' sign-in is a server-side row: logout, "revoke all sessions" and a password
  change end it, and the old cookie then gets ``login_required`` with ``prompt=none``.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from saas.auth import mfa
from saas.auth.models import BrowserSession, RefreshToken
from saas.db import utcnow
from saas.identity.models import Tenant
from saas.security import token_hash
from tests.auth_helpers import authorize_params, code_for, pkce_pair, query_of, register_client
from tests.conftest import TEST_PASSWORD
from tests.helpers import mailed_invitation_token

T0 = 1_800_000_000.0


@pytest.fixture()
def clock(time_machine):
    """The process's clock frozen at T0 (TOTP steps, tokens, expiries): ``clock.shift(s)``."""
    time_machine.move_to(T0, tick=False)
    return time_machine


def _refresh(client, token):
    return client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token})


def _mfa_login(api, client, clock) -> dict:
    """Enrol TOTP for the owner of "acme" and log in with it: a session with ``otp`` in ``amr``."""
    h = api.auth(api.login("owner@acme.test").get_json())
    secret = client.post("/api/v1/me/mfa/totp", headers=h).get_json()["secret"]
    step = int(time.time() // 30)
    confirmed = client.post(
        "/api/v1/me/mfa/totp/confirm", json={"code": mfa.totp_at(secret, step)}, headers=h
    )
    assert confirmed.status_code == 200, confirmed.get_json()
    ticket = api.login("owner@acme.test").get_json()["mfa_token"]
    strong = client.post(
        "/api/v1/auth/mfa", json={"mfa_token": ticket, "code": mfa.totp_at(secret, step + 1)}
    )
    assert strong.status_code == 200, strong.get_json()
    return strong.get_json()


# --- require_mfa ---------------------------------------------------------------------------------


def test_turning_on_require_mfa_revokes_password_only_sessions(api, client, clock):
    owner = api.signup("acme")  # a password-only session
    strong = _mfa_login(api, client, clock)
    sh = api.auth(strong["access_token"])
    r = client.patch("/api/v1/tenant", json={"settings": {"require_mfa": True}}, headers=sh)
    assert r.status_code == 200, r.get_json()
    weak = client.get("/api/v1/contacts", headers=api.auth(owner))
    assert weak.status_code == 401
    assert _refresh(client, owner["token"]["refresh_token"]).get_json()["error"] == "invalid_grant"
    # the session with a second factor carries on
    assert client.get("/api/v1/contacts", headers=sh).status_code == 200
    assert _refresh(client, strong["refresh_token"]).status_code == 200
    events = client.get("/api/v1/audit-events?action=auth.sessions_revoked", headers=sh).get_json()
    assert [e["data"] for e in events] == [{"reason": "require_mfa", "revoked": 2}]


def test_refresh_and_every_request_check_require_mfa(api, client, db_session):
    """Turned on without the revocation (an operator's direct change): a password-only session
    still gets nothing, neither new tokens nor answers."""
    owner = api.signup("acme")
    tenant = db_session.get(Tenant, owner["tenant"]["id"])
    tenant.settings = {**(tenant.settings or {}), "require_mfa": True}
    db_session.commit()
    refused = client.get("/api/v1/contacts", headers=api.auth(owner))
    assert refused.status_code == 401 and refused.get_json()["code"] == "mfa_required"
    assert "insufficient_user_authentication" in refused.headers["WWW-Authenticate"]
    r = _refresh(client, owner["token"]["refresh_token"])
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"


# --- session_idle_minutes ------------------------------------------------------------------------


def test_refresh_of_an_idle_session_is_refused(api, client, db_session):
    owner = api.signup("acme")
    busy = api.login("owner@acme.test").get_json()
    r = client.patch(
        "/api/v1/tenant", json={"settings": {"session_idle_minutes": 30}}, headers=api.auth(owner)
    )
    assert r.status_code == 200, r.get_json()
    db_session.execute(
        update(RefreshToken)
        .where(RefreshToken.token_hash == token_hash(owner["token"]["refresh_token"]))
        .values(created_at=utcnow() - timedelta(minutes=31))
    )
    db_session.commit()
    idle = _refresh(client, owner["token"]["refresh_token"])
    assert idle.status_code == 400 and idle.get_json()["error"] == "invalid_grant"
    assert _refresh(client, busy["refresh_token"]).status_code == 200


def test_idle_minutes_shorter_than_a_token_are_refused(api, client):
    owner = api.signup("acme")
    r = client.patch(
        "/api/v1/tenant", json={"settings": {"session_idle_minutes": 5}}, headers=api.auth(owner)
    )
    assert r.status_code == 422
    assert "session_idle_minutes" in r.get_json()["errors"]["settings"]
    assert client.get("/api/v1/tenant", headers=api.auth(owner)).get_json()["settings"] == {}


def test_an_idle_browser_sign_in_ends(api, client, db_session):
    owner = api.signup("acme")
    app_client = register_client(client, api.auth(owner), client_type="public", first_party=True)
    client.patch("/api/v1/tenant", json={"settings": {"session_idle_minutes": 30}}, headers=api.auth(owner))
    code_for(client, app_client["client_id"], "owner@acme.test")
    mine = BrowserSession.user_id == owner["user"]["id"]  # other tests' committed rows aside
    db_session.execute(
        update(BrowserSession).where(mine).values(last_seen_at=utcnow() - timedelta(minutes=31))
    )
    db_session.commit()
    assert _silent(client, app_client)["error"] == "login_required"
    db_session.expire_all()
    assert db_session.scalars(select(BrowserSession.ended_reason).where(mine)).all() == ["idle"]


# --- password_min_length -------------------------------------------------------------------------


def test_a_new_accounts_password_meets_every_tenant_it_is_invited_to(api, client):
    acme = api.signup("acme")
    globex = api.signup("globex")
    strict = client.patch(
        "/api/v1/tenant", json={"settings": {"password_min_length": 24}}, headers=api.auth(globex)
    )
    assert strict.status_code == 200
    invites = {}
    for slug, owner in (("globex", globex), ("acme", acme)):
        r = client.post(
            "/api/v1/members", json={"email": "bob@x.test", "role": "member"}, headers=api.auth(owner)
        )
        assert r.status_code == 201, r.get_json()
        invites[slug] = mailed_invitation_token(client.application, "bob@x.test")  # the newest
    # acme asks for 8 characters, but bob is also joining globex (24)
    short = client.post(
        "/api/v1/invitations/accept", json={"token": invites["acme"], "password": "sixteen chars ok"}
    )
    assert short.status_code == 422 and "password" in short.get_json()["errors"]
    ok = client.post(
        "/api/v1/invitations/accept", json={"token": invites["acme"], "password": "a passphrase of 24+ chars"}
    )
    assert ok.status_code == 200, ok.get_json()


def test_set_password_checks_the_strictest_tenant_and_ends_every_session(api, client, app, db_session):
    from saas.auth.accounts import set_password
    from saas.errors import ValidationError
    from saas.identity.models import User

    owner = api.signup("acme")
    app_client = register_client(client, api.auth(owner), client_type="public", first_party=True)
    code_for(client, app_client["client_id"], "owner@acme.test")
    client.patch("/api/v1/tenant", json={"settings": {"password_min_length": 20}}, headers=api.auth(owner))
    with app.test_request_context():
        user = db_session.scalars(select(User).where(User.email == "owner@acme.test")).one()
        with pytest.raises(ValidationError):
            set_password(db_session, user, "only 15 chars!!")
        assert set_password(db_session, user, "twenty or more characters") >= 1
    db_session.commit()
    assert client.get("/api/v1/contacts", headers=api.auth(owner)).status_code == 401
    assert _silent(client, app_client)["error"] == "login_required"
    assert api.login("owner@acme.test", "twenty or more characters").status_code == 200


# --- browser sign-ins ----------------------------------------------------------------------------


def _signed_in_browser(api, client):
    owner = api.signup("acme")
    app_client = register_client(client, api.auth(owner), client_type="public", first_party=True)
    code_for(client, app_client["client_id"], "owner@acme.test")
    cookie = client.get_cookie("saas_auth", path="/oauth")
    assert cookie is not None
    return owner, app_client, cookie.value


def _silent(client, app_client) -> dict:
    _v, challenge = pkce_pair()
    r = client.get(
        "/oauth/authorize", query_string=authorize_params(app_client["client_id"], challenge, prompt="none")
    )
    assert r.status_code == 302
    return query_of(r.headers["Location"])


def test_hosted_logout_ends_the_sign_in_for_the_old_cookie_too(api, client, app):
    _owner, app_client, old_cookie = _signed_in_browser(api, client)
    assert "code" in _silent(client, app_client)
    csrf = app.session_interface.get_signing_serializer(app).loads(old_cookie)["csrf"]
    assert client.post("/oauth/logout", data={"csrf_token": csrf}).status_code == 200
    client.set_cookie("saas_auth", old_cookie, path="/oauth")  # a copy kept from before
    assert _silent(client, app_client)["error"] == "login_required"


def test_revoke_all_sessions_ends_browser_sign_ins(api, client):
    owner, app_client, old_cookie = _signed_in_browser(api, client)
    fresh = api.login("owner@acme.test").get_json()
    r = client.delete(f"/api/v1/members/{owner['user']['id']}/sessions", headers=api.auth(fresh))
    assert r.status_code == 200
    client.set_cookie("saas_auth", old_cookie, path="/oauth")
    assert _silent(client, app_client)["error"] == "login_required"


def test_browser_sign_in_is_a_row_named_by_the_cookie(api, client, db_session):
    owner, _app_client, _cookie = _signed_in_browser(api, client)
    mine = select(BrowserSession).where(BrowserSession.user_id == owner["user"]["id"])
    rows = db_session.scalars(mine).all()
    assert len(rows) == 1 and rows[0].amr == ["pwd"] and rows[0].ended_at is None
    assert api.login("owner@acme.test", TEST_PASSWORD).status_code == 200  # the API login makes none
    assert len(db_session.scalars(mine).all()) == 1


def test_signup_of_an_invited_address_meets_the_inviting_tenants_password_minimum(api, client):
    """An address invited by a tenant with ``password_min_length`` 20 cannot sign up with a
    shorter password (and so join that tenant with it later)."""
    strict = api.signup("pwlen")
    h = api.auth(strict)
    r = client.patch("/api/v1/tenant", json={"settings": {"password_min_length": 20}}, headers=h)
    assert r.status_code == 200, r.get_json()
    r = client.post("/api/v1/members", json={"email": "inv@x.test", "role": "member"}, headers=h)
    assert r.status_code == 201, r.get_json()

    def signup(password):
        owner = {"email": "inv@x.test", "password": password}
        return client.post("/api/v1/signup", json={"tenant": {"name": "Own", "slug": "own"}, "owner": owner})

    short = signup("twelve chars")
    assert short.status_code == 422 and "password" in short.get_json()["errors"]["owner"], short.get_json()
    assert signup("a passphrase of twenty+ chars").status_code == 201
