"""OpenID Connect logout: RP-Initiated Logout 1.0 (the hosted end-session endpoint) and
Back-Channel Logout 1.0 (logout tokens through the outbox to a real HTTP receiver, verified
with PyJWT against the published JWKS)."""

from __future__ import annotations

import socket
import threading
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import parse_qs

import jwt as pyjwt
import pytest
from sqlalchemy import select, text, update

from saas.auth import backchannel
from saas.auth.models import BackchannelLogoutAttempt, BrowserSession, RefreshToken
from saas.db import utcnow
from saas.outbox import OutboxMessage
from saas.services import services
from saas.worker import Worker
from tests.auth_helpers import (
    REDIRECT,
    authorize_params,
    code_flow_tokens,
    csrf_of,
    pkce_pair,
    query_of,
    register_client,
)

AFTER_LOGOUT = "https://app.example.com/signed-out"


class Receiver:
    """A client's back-channel logout endpoint: a threaded ``http.server`` on a free loopback
    port that records each POST (path and form) and answers the next queued status (200 when
    none is queued)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, list[str]], str]] = []
        self.statuses: deque[int] = deque()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                receiver.requests.append((self.path, parse_qs(body), self.headers.get("Content-Type", "")))
                status = receiver.statuses.popleft() if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def tokens(self, path: str | None = None) -> list[str]:
        return [form["logout_token"][0] for p, form, _ in self.requests if path is None or p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver():
    r = Receiver()
    yield r
    r.close()


pytestmark = pytest.mark.usefixtures("worker_handlers")  # tests/conftest.py


def verify_logout_token(token: str, jwks: dict, client_id: str, issuer: str) -> dict:
    """What a relying party does (Back-Channel Logout 1.0 section 2.6), with PyJWT."""
    header = pyjwt.get_unverified_header(token)
    assert header["typ"] == "logout+jwt"
    key = pyjwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims = pyjwt.decode(
        token,
        key.key,
        algorithms=["RS256", "ES256"],
        audience=client_id,
        issuer=issuer,
        options={"require": ["iss", "aud", "iat", "exp", "jti", "events"]},
    )
    assert claims["events"] == {backchannel.EVENT: {}}
    assert "nonce" not in claims
    assert claims["exp"] - claims["iat"] <= 120
    return claims


def _app_client(client, headers, receiver: Receiver | None, path: str = "/bc", **fields) -> dict:
    extra = {"backchannel_logout_uri": receiver.url + path} if receiver else {}
    return register_client(
        client,
        headers,
        client_type="public",
        first_party=True,
        post_logout_redirect_uris=[AFTER_LOGOUT],
        **extra,
        **fields,
    )


def _pending(db_session) -> list[dict]:
    rows = db_session.scalars(
        select(OutboxMessage).where(OutboxMessage.topic == backchannel.TOPIC, OutboxMessage.sent_at.is_(None))
    ).all()
    return [dict(r.payload) for r in rows]


def _attempts(db_session, app_client: dict) -> list[BackchannelLogoutAttempt]:
    """The client's recorded delivery attempts, oldest first (the live tests' committed rows may
    share this database)."""
    return list(
        db_session.scalars(
            select(BackchannelLogoutAttempt)
            .where(BackchannelLogoutAttempt.client_id == app_client["client_id"])
            .order_by(BackchannelLogoutAttempt.id)
        )
    )


def _only_logout_messages(app) -> None:
    """Mark the other pending messages (the signup's verification mail) sent: they are not these
    tests' subject, and the worker would otherwise count them."""
    session = services(app).database.session()
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.topic != backchannel.TOPIC, OutboxMessage.sent_at.is_(None))
        .values(sent_at=utcnow())
    )
    session.commit()


def _deliver(app, settings, **overrides) -> dict:
    """Run the worker over the pending back-channel logout messages; the counts of its outcomes."""
    _only_logout_messages(app)
    return Worker(
        services(app).database, settings.with_overrides(**overrides), services={"app": app}
    ).run_until_idle()


def _silent(client, client_id: str) -> dict:
    _v, challenge = pkce_pair()
    r = client.get("/oauth/authorize", query_string=authorize_params(client_id, challenge, prompt="none"))
    assert r.status_code == 302
    return query_of(r.headers["Location"])


def _refresh(client, app_client, refresh_token: str):
    return client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": app_client["client_id"],
        },
    )


def _browser_session(db_session, user_id) -> BrowserSession:
    rows = db_session.scalars(
        select(BrowserSession).where(BrowserSession.user_id == user_id, BrowserSession.ended_at.is_(None))
    ).all()
    assert len(rows) == 1
    return rows[0]


# --- registration and discovery ------------------------------------------------------------------


def test_discovery_advertises_both_logout_specs(client):
    meta = client.get("/.well-known/openid-configuration").get_json()
    assert meta["end_session_endpoint"] == "http://localhost:8000/oauth/end-session"
    assert meta["backchannel_logout_supported"] is True
    assert meta["backchannel_logout_session_supported"] is True
    assert meta["frontchannel_logout_supported"] is False


def test_client_registration_checks_the_logout_uris(api, client):
    owner = api.signup("acme")
    h = api.auth(owner)
    base = {"name": "x", "redirect_uris": [REDIRECT]}
    for bad in (
        {"backchannel_logout_uri": "http://rp.example.com/bc"},  # http off loopback
        {"backchannel_logout_uri": "https://rp.example.com/bc#frag"},  # a fragment (section 2.2)
        {"backchannel_logout_uri": "ftp://rp.example.com/bc"},
        {"post_logout_redirect_uris": ["https://rp.example.com/out#x"]},
        {"post_logout_redirect_uris": ["http://rp.example.com/out"]},
        {"post_logout_redirect_uris": ["https://*.example.com/out"]},
    ):
        r = client.post("/api/v1/clients", json={**base, **bad}, headers=h)
        assert r.status_code == 422, (bad, r.get_json())
        assert set(bad) <= set(r.get_json()["errors"]), r.get_json()
    r = client.post(
        "/api/v1/clients",
        json={
            **base,
            "backchannel_logout_uri": "https://rp.example.com/bc?x=1",
            "backchannel_logout_session_required": True,
            "post_logout_redirect_uris": [AFTER_LOGOUT],
        },
        headers=h,
    )
    assert r.status_code == 201, r.get_json()
    made = r.get_json()
    assert made["backchannel_logout_uri"] == "https://rp.example.com/bc?x=1"
    assert made["backchannel_logout_session_required"] is True
    assert made["post_logout_redirect_uris"] == [AFTER_LOGOUT]
    r = client.patch(f"/api/v1/clients/{made['client_id']}", json={"backchannel_logout_uri": ""}, headers=h)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["backchannel_logout_uri"] is None
    r = client.patch(
        f"/api/v1/clients/{made['client_id']}",
        json={"post_logout_redirect_uris": ["javascript:alert(1)"]},
        headers=h,
    )
    assert r.status_code == 422
    shown = client.get(f"/api/v1/clients/{made['client_id']}", headers=h).get_json()
    assert shown["post_logout_redirect_uris"] == [AFTER_LOGOUT]  # nothing changed


def test_id_tokens_name_the_browser_session_and_refresh_keeps_it(api, client, db_session):
    owner = api.signup("acme")
    app_client = _app_client(client, api.auth(owner), None)
    tokens = code_flow_tokens(client, app_client, "owner@acme.test")
    row = _browser_session(db_session, uuid.UUID(owner["user"]["id"]))
    claims = pyjwt.decode(tokens["id_token"], options={"verify_signature": False})
    assert claims["sid"] == str(row.id)
    family = db_session.scalars(select(RefreshToken).where(RefreshToken.client_id == app_client["client_id"]))
    assert {t.browser_session_id for t in family} == {row.id}
    rotated = _refresh(client, app_client, tokens["refresh_token"])
    assert rotated.status_code == 200, rotated.get_json()
    again = pyjwt.decode(rotated.get_json()["id_token"], options={"verify_signature": False})
    assert again["sid"] == str(row.id)
    # the API's first-party login has no browser session: its ID-less tokens name the family
    api_login = api.login("owner@acme.test").get_json()
    assert pyjwt.decode(api_login["access_token"], options={"verify_signature": False})["sid"]


# --- RP-initiated logout ---------------------------------------------------------------------------


def test_end_session_with_hint_signs_out_redirects_with_state_and_notifies(
    api, client, app, settings, db_session, receiver
):
    owner = api.signup("acme")
    app_client = _app_client(client, api.auth(owner), receiver)
    tokens = code_flow_tokens(client, app_client, "owner@acme.test")
    row = _browser_session(db_session, uuid.UUID(owner["user"]["id"]))
    r = client.get(
        "/oauth/end-session",
        query_string={
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": AFTER_LOGOUT,
            "state": "s-789",
            "ui_locales": "fr",
        },
    )
    assert r.status_code == 302, r.get_data(as_text=True)
    assert r.headers["Location"] == f"{AFTER_LOGOUT}?state=s-789"
    db_session.refresh(row)
    assert row.ended_at is not None and row.ended_reason == "logout"
    assert _silent(client, app_client["client_id"])["error"] == "login_required"
    assert _refresh(client, app_client, tokens["refresh_token"]).status_code == 400  # family ended
    assert _pending(db_session) == [
        {"client_id": app_client["client_id"], "sub": owner["user"]["id"], "sid": str(row.id)}
    ]
    assert _deliver(app, settings) == {"sent": 1}
    (path, form, content_type), *_ = receiver.requests
    assert path == "/bc" and content_type == "application/x-www-form-urlencoded"
    jwks = client.get("/.well-known/jwks.json").get_json()
    claims = verify_logout_token(form["logout_token"][0], jwks, app_client["client_id"], settings.issuer)
    assert claims["sid"] == str(row.id) and claims["sub"] == owner["user"]["id"]
    attempts = _attempts(db_session, app_client)
    assert [(a.client_id, a.status_code, a.attempt, a.sid) for a in attempts] == [
        (app_client["client_id"], 200, 1, str(row.id))
    ]
    audit = db_session.execute(
        text(f"SELECT data FROM {_schema(owner)}.audit_events WHERE action = 'auth.logout'")  # noqa: S608
    ).scalars()
    assert [d["via"] for d in audit] == ["end_session"]


def _schema(owner) -> str:
    return "t_" + uuid.UUID(owner["tenant"]["id"]).hex


def test_end_session_without_hint_asks_first_with_a_csrf_protected_form(api, client, db_session):
    owner = api.signup("acme")
    app_client = _app_client(client, api.auth(owner), None)
    code_flow_tokens(client, app_client, "owner@acme.test")
    row = _browser_session(db_session, uuid.UUID(owner["user"]["id"]))
    params = {"client_id": app_client["client_id"], "post_logout_redirect_uri": AFTER_LOGOUT, "state": "s1"}
    page = client.get("/oauth/end-session", query_string=params)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert (
        'name="decision" value="logout"' in html
        and "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    )
    db_session.refresh(row)
    assert row.ended_at is None  # nothing ended before the answer
    forged = client.post("/oauth/end-session", data={"decision": "logout", "csrf_token": "forged"})
    assert forged.status_code == 400 and "Location" not in forged.headers
    db_session.refresh(row)
    assert row.ended_at is None
    page = client.get("/oauth/end-session", query_string=params)
    r = client.post(
        "/oauth/end-session",
        data={"decision": "logout", "csrf_token": csrf_of(page.get_data(as_text=True))},
    )
    assert r.status_code == 302 and r.headers["Location"] == f"{AFTER_LOGOUT}?state=s1"
    db_session.refresh(row)
    assert row.ended_at is not None


def test_end_session_confirmation_can_be_declined(api, client, db_session):
    owner = api.signup("acme")
    app_client = _app_client(client, api.auth(owner), None)
    code_flow_tokens(client, app_client, "owner@acme.test")
    page = client.get("/oauth/end-session")
    assert page.status_code == 200
    r = client.post(
        "/oauth/end-session", data={"decision": "stay", "csrf_token": csrf_of(page.get_data(as_text=True))}
    )
    assert r.status_code == 200 and "still signed in" in r.get_data(as_text=True)
    assert "code" in _silent(client, app_client["client_id"])
    assert _browser_session(db_session, uuid.UUID(owner["user"]["id"])).ended_at is None


def test_a_hint_of_another_user_asks_first(api, client, db_session):
    owner = api.signup("acme")
    other = api.signup("other")
    app_client = _app_client(client, api.auth(owner), None)
    other_client = _app_client(client, api.auth(other), None)
    foreign = code_flow_tokens(app_client_browser_for(client), other_client, "owner@other.test")
    code_flow_tokens(client, app_client, "owner@acme.test")
    r = client.get("/oauth/end-session", query_string={"id_token_hint": foreign["id_token"]})
    assert r.status_code == 200 and 'value="logout"' in r.get_data(as_text=True)
    assert _browser_session(db_session, uuid.UUID(owner["user"]["id"])).ended_at is None


def app_client_browser_for(client):
    """Another browser (its own cookie jar) on the same app."""
    return client.application.test_client()


@pytest.mark.parametrize(
    "case",
    [
        "unregistered_uri",
        "uri_without_client",
        "unknown_client",
        "tampered_hint",
        "hint_aud_mismatch",
        "long",
    ],
)
def test_bad_end_session_requests_are_error_pages_never_redirects(api, client, db_session, case):
    owner = api.signup("acme")
    app_client = _app_client(client, api.auth(owner), None)
    second = _app_client(client, api.auth(owner), None)
    tokens = code_flow_tokens(client, app_client, "owner@acme.test")
    head, body, sig = tokens["id_token"].split(".")
    params = {
        "unregistered_uri": {"client_id": app_client["client_id"], "post_logout_redirect_uri": REDIRECT},
        "uri_without_client": {"post_logout_redirect_uri": AFTER_LOGOUT},
        "unknown_client": {"client_id": "c_nobody", "post_logout_redirect_uri": AFTER_LOGOUT},
        "tampered_hint": {"id_token_hint": f"{head}.{body}.{sig[:-4]}AAAA"},
        "hint_aud_mismatch": {"id_token_hint": tokens["id_token"], "client_id": second["client_id"]},
        "long": {"state": "x" * 2000},
    }[case]
    r = client.get("/oauth/end-session", query_string={**params, "state": params.get("state", "s")})
    assert r.status_code == 400, r.get_data(as_text=True)
    assert "Location" not in r.headers and "text/html" in r.headers["Content-Type"]
    assert _browser_session(db_session, uuid.UUID(owner["user"]["id"])).ended_at is None


def test_an_access_token_is_no_id_token_hint(api, client, db_session):
    owner = api.signup("acme")
    app_client = _app_client(client, api.auth(owner), None)
    tokens = code_flow_tokens(client, app_client, "owner@acme.test")
    r = client.get("/oauth/end-session", query_string={"id_token_hint": tokens["access_token"]})
    assert r.status_code == 400
    assert _browser_session(db_session, uuid.UUID(owner["user"]["id"])).ended_at is None


def test_an_expired_hint_is_accepted(api, client, db_session, time_machine):
    owner = api.signup("acme")
    app_client = _app_client(client, api.auth(owner), None)
    tokens = code_flow_tokens(client, app_client, "owner@acme.test")
    exp = pyjwt.decode(tokens["id_token"], options={"verify_signature": False})["exp"]
    time_machine.move_to(datetime.fromtimestamp(exp, UTC) + timedelta(minutes=10), tick=True)
    r = client.get(
        "/oauth/end-session",
        query_string={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": AFTER_LOGOUT},
    )
    assert r.status_code == 302 and r.headers["Location"] == AFTER_LOGOUT
    rows = db_session.scalars(
        select(BrowserSession).where(BrowserSession.user_id == uuid.UUID(owner["user"]["id"]))
    ).all()
    assert [b.ended_reason for b in rows] == ["logout"]


def test_signed_out_browser_is_sent_back_without_a_question(api, client):
    owner = api.signup("acme")
    app_client = _app_client(client, api.auth(owner), None)
    r = client.get(
        "/oauth/end-session",
        query_string={
            "client_id": app_client["client_id"],
            "post_logout_redirect_uri": AFTER_LOGOUT,
            "state": "z",
        },
    )
    assert r.status_code == 302 and r.headers["Location"] == f"{AFTER_LOGOUT}?state=z"


def test_a_post_from_the_client_becomes_a_get(api, client):
    owner = api.signup("acme")
    app_client = _app_client(client, api.auth(owner), None)
    r = client.post(
        "/oauth/end-session",
        data={"client_id": app_client["client_id"], "post_logout_redirect_uri": AFTER_LOGOUT, "evil": "1"},
    )
    assert r.status_code == 303
    location = query_of(r.headers["Location"])
    assert r.headers["Location"].startswith("/oauth/end-session?")
    assert location == {"client_id": app_client["client_id"], "post_logout_redirect_uri": AFTER_LOGOUT}


# --- back-channel delivery -----------------------------------------------------------------------


def test_a_failed_delivery_is_retried_and_every_attempt_recorded(
    api, client, app, settings, db_session, receiver
):
    owner = api.signup("acme")
    app_client = _app_client(client, api.auth(owner), receiver)
    code_flow_tokens(client, app_client, "owner@acme.test")
    csrf = csrf_of(client.get("/oauth/end-session").get_data(as_text=True))
    assert (
        client.post("/oauth/end-session", data={"decision": "logout", "csrf_token": csrf}).status_code == 200
    )
    receiver.statuses.extend([500])
    _only_logout_messages(app)
    w = Worker(services(app).database, settings, services={"app": app})
    assert w.run_one() == "retry"
    (row,) = [  # the live tests' committed messages may share this database
        r
        for r in db_session.scalars(select(OutboxMessage).where(OutboxMessage.topic == backchannel.TOPIC))
        if r.payload.get("client_id") == app_client["client_id"]
    ]
    db_session.refresh(row)
    assert row.available_at > utcnow() and "HTTP 500" in row.last_error
    row.available_at = utcnow()
    db_session.flush()
    assert w.run_one() == "sent"
    attempts = _attempts(db_session, app_client)
    assert [(a.attempt, a.status_code, a.outbox_id) for a in attempts] == [(1, 500, row.id), (2, 200, row.id)]
    assert "HTTP 500" in attempts[0].error and attempts[1].error is None
    first, second = receiver.tokens()
    jwks = client.get("/.well-known/jwks.json").get_json()
    one = verify_logout_token(first, jwks, app_client["client_id"], settings.issuer)
    two = verify_logout_token(second, jwks, app_client["client_id"], settings.issuer)
    assert one["jti"] != two["jti"] and one["sid"] == two["sid"]


def test_the_last_failed_attempt_is_a_dead_letter_and_audited(
    api, client, app, settings, db_session, receiver
):
    owner = api.signup("acme")
    app_client = _app_client(client, api.auth(owner), receiver)
    code_flow_tokens(client, app_client, "owner@acme.test")
    csrf = csrf_of(client.get("/oauth/end-session").get_data(as_text=True))
    client.post("/oauth/end-session", data={"decision": "logout", "csrf_token": csrf})
    receiver.statuses.extend([503])
    assert _deliver(app, settings, outbox_max_attempts=1) == {"failed": 1}
    attempts = _attempts(db_session, app_client)
    assert [(a.status_code, a.attempt) for a in attempts] == [(503, 1)]
    events = db_session.execute(
        text(
            f"SELECT target_id, data FROM {_schema(owner)}.audit_events "  # noqa: S608
            "WHERE action = 'auth.backchannel_logout_failed'"
        )
    ).all()
    assert len(events) == 1 and events[0].target_id == app_client["client_id"]
    assert events[0].data["attempts"] == 1


def test_redirects_are_not_followed(api, client, app, settings, db_session, receiver):
    owner = api.signup("acme")
    app_client = _app_client(client, api.auth(owner), receiver)
    code_flow_tokens(client, app_client, "owner@acme.test")
    csrf = csrf_of(client.get("/oauth/end-session").get_data(as_text=True))
    client.post("/oauth/end-session", data={"decision": "logout", "csrf_token": csrf})
    receiver.statuses.extend([307])
    assert _deliver(app, settings, outbox_max_attempts=1) == {"failed": 1}
    assert len(receiver.requests) == 1
    (attempt,) = _attempts(db_session, app_client)
    assert attempt.status_code == 307


def test_private_destinations_are_refused_outside_development(
    api, client, app, settings, db_session, receiver
):
    owner = api.signup("acme")
    app_client = _app_client(client, api.auth(owner), receiver)
    code_flow_tokens(client, app_client, "owner@acme.test")
    csrf = csrf_of(client.get("/oauth/end-session").get_data(as_text=True))
    client.post("/oauth/end-session", data={"decision": "logout", "csrf_token": csrf})
    assert _deliver(app, settings, env="production") == {"failed": 1}  # at once: no retry
    assert receiver.requests == []
    (attempt,) = _attempts(db_session, app_client)
    assert attempt.status_code is None and "only https" in attempt.error  # an http loopback URI


def test_a_client_whose_uri_was_removed_gets_nothing(api, client, app, settings, db_session, receiver):
    owner = api.signup("acme")
    app_client = _app_client(client, api.auth(owner), receiver)
    code_flow_tokens(client, app_client, "owner@acme.test")
    csrf = csrf_of(client.get("/oauth/end-session").get_data(as_text=True))
    client.post("/oauth/end-session", data={"decision": "logout", "csrf_token": csrf})
    r = client.patch(
        f"/api/v1/clients/{app_client['client_id']}",
        json={"backchannel_logout_uri": ""},
        headers=api.auth(owner),
    )
    assert r.status_code == 200
    assert _deliver(app, settings) == {"sent": 1}
    assert receiver.requests == [] and _attempts(db_session, app_client) == []


# --- every trigger notifies the clients of that session, and only them ---------------------------


@pytest.fixture()
def two_browsers(api, client, receiver):
    """Browser 1 signed in to apps A and B; browser 2 to app C; each app has its own logout path."""
    owner = api.signup("acme")
    h = api.auth(owner)
    a = _app_client(client, h, receiver, "/a")
    b = _app_client(client, h, receiver, "/b")
    c = _app_client(client, h, receiver, "/c")
    quiet = _app_client(client, h, None)  # no back-channel URI: never notified
    tokens = {
        "a": code_flow_tokens(client, a, "owner@acme.test"),
        "b": code_flow_tokens(client, b, "owner@acme.test"),
        "quiet": code_flow_tokens(client, quiet, "owner@acme.test"),
    }
    other = app_client_browser_for(client)
    tokens["c"] = code_flow_tokens(other, c, "owner@acme.test")
    return SimpleNamespace(
        owner=owner, clients={"a": a, "b": b, "c": c, "quiet": quiet}, tokens=tokens, other=other
    )


def _notified(db_session, world) -> set[str]:
    names = {v["client_id"]: k for k, v in world.clients.items()}
    return {names[p["client_id"]] for p in _pending(db_session)}


def test_browser_logout_notifies_the_clients_of_that_browser(client, db_session, two_browsers):
    page = client.get("/oauth/end-session")
    csrf = csrf_of(page.get_data(as_text=True))
    assert client.post("/oauth/logout", data={"csrf_token": csrf}).status_code == 200
    assert _notified(db_session, two_browsers) == {"a", "b"}


def test_api_logout_notifies_only_that_sessions_client(api, client, db_session, two_browsers):
    r = client.post("/api/v1/auth/logout", headers=api.auth(two_browsers.tokens["b"]["access_token"]))
    assert r.status_code == 204
    assert _notified(db_session, two_browsers) == {"b"}


def test_revocation_notifies_only_that_sessions_client(client, db_session, two_browsers):
    r = client.post(
        "/oauth/revoke",
        data={
            "token": two_browsers.tokens["c"]["refresh_token"],
            "client_id": two_browsers.clients["c"]["client_id"],
        },
    )
    assert r.status_code == 200
    assert _notified(db_session, two_browsers) == {"c"}


def test_deleting_a_session_notifies_only_its_client(api, client, db_session, two_browsers):
    token = two_browsers.tokens["a"]["access_token"]
    sid = pyjwt.decode(token, options={"verify_signature": False})["sid"]
    r = client.delete(f"/api/v1/me/sessions/{sid}", headers=api.auth(token))
    assert r.status_code == 204
    assert _notified(db_session, two_browsers) == {"a"}


def test_an_admin_ending_a_members_sessions_notifies_every_client(api, client, db_session, two_browsers):
    admin = api.login("owner@acme.test").get_json()
    r = client.delete(f"/api/v1/members/{two_browsers.owner['user']['id']}/sessions", headers=api.auth(admin))
    assert r.status_code == 200
    assert _notified(db_session, two_browsers) == {"a", "b", "c"}
    assert len(_pending(db_session)) == 3  # one per (client, session), though families and sign-ins both end


def test_an_account_lock_notifies_every_client(app, db_session, two_browsers, monkeypatch):
    from saas.ops import cli_ops

    monkeypatch.setenv("SAAS_OPERATOR", "op-tester")
    cli_ops._set_user_status(
        SimpleNamespace(database=services(app).database), "owner@acme.test", "locked", "compromised"
    )
    assert _notified(db_session, two_browsers) == {"a", "b", "c"}


def test_a_new_sign_in_in_the_same_browser_notifies_nobody(client, db_session, two_browsers):
    """Signing in again (prompt=login) replaces the browser's sign-in; that is no logout."""
    code_flow_tokens(client, two_browsers.clients["a"], "owner@acme.test")
    _v, challenge = pkce_pair()
    r = client.get(
        "/oauth/authorize",
        query_string=authorize_params(two_browsers.clients["a"]["client_id"], challenge, prompt="login"),
    )
    assert r.status_code == 302
    assert _notified(db_session, two_browsers) == set()


def test_a_password_change_or_reset_notifies_every_client(app, db_session, two_browsers):
    """``accounts.set_password`` is what the password change and reset flows call."""
    from saas.auth import accounts
    from saas.identity.models import User

    user = db_session.get(User, uuid.UUID(two_browsers.owner["user"]["id"]))
    with app.app_context():
        changed = accounts.set_password(
            db_session, user, "a brand new passphrase 42", reason="password_reset"
        )
    assert changed > 0
    assert _notified(db_session, two_browsers) == {"a", "b", "c"}


def test_delivery_connects_to_the_address_it_checked(monkeypatch):
    """DNS rebinding: the name answers a public address to the check and loopback afterwards;
    the connection goes to the checked address, its certificate checked against the name."""
    answers = iter(["93.184.216.34", "127.0.0.1", "127.0.0.1"])
    connected: list[tuple] = []

    def getaddrinfo(host, port, *args, **kwargs):
        return [(2, 1, 6, "", (next(answers), port))]

    def create_connection(address, timeout=None, *args, **kwargs):
        connected.append(address)
        raise ConnectionRefusedError(111, "refused")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    with pytest.raises(backchannel.DeliveryError) as err:
        backchannel.deliver("https://rp.example/bc", "t", allow_private=False)
    assert connected == [("93.184.216.34", 443)]
    assert not err.value.permanent and "93.184" not in str(err.value) and "443" not in str(err.value)
    with pytest.raises(backchannel.DeliveryError) as err:
        backchannel.deliver("http://rp.example/bc", "t", allow_private=False)
    assert err.value.permanent and connected == [("93.184.216.34", 443)]  # http: never connected
    answers = iter(["10.0.0.5"])
    with pytest.raises(backchannel.DeliveryError) as err:
        backchannel.deliver("https://rp.example/bc", "t", allow_private=False)
    assert err.value.permanent and "non-public address" in str(err.value)
    assert "10.0.0.5" not in str(err.value)  # stored and audited where the tenant's admins read it
    assert connected == [("93.184.216.34", 443)]
