"""Helpers for the auth tests: PKCE pairs, client registration, the hosted flow via the test client."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from urllib.parse import parse_qs, urlsplit

from tests.conftest import TEST_PASSWORD

REDIRECT = "https://app.example.com/callback"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def basic_auth(client_id: str, secret: str) -> dict:
    """The ``Authorization`` header of HTTP Basic client authentication (RFC 6749 section 2.3.1)."""
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def client_credentials_token(client, svc: dict) -> str:
    """An access token of the registered confidential client ``svc`` (its id and secret)."""
    r = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic_auth(svc["client_id"], svc["client_secret"]),
    )
    assert r.status_code == 200, r.get_json()
    return r.get_json()["access_token"]


def register_client(client, headers, **fields) -> dict:
    body = {"name": "Test app", "redirect_uris": [REDIRECT], **fields}
    response = client.post("/api/v1/clients", json=body, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def authorize_params(client_id: str, challenge: str, **extra) -> dict:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "openid email api",
        "state": "st-123",
        "nonce": "n-456",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(extra)
    return {k: v for k, v in params.items() if v is not None}


def browser_login(client, client_id: str, email: str, challenge: str, password: str = TEST_PASSWORD, **extra):
    """Drive the hosted pages with the Flask test client up to the redirect back to the client.
    Returns the final response (a redirect to REDIRECT, or a page needing more steps)."""
    response = client.get("/oauth/authorize", query_string=authorize_params(client_id, challenge, **extra))
    if response.status_code == 302 and response.headers["Location"].endswith("/oauth/login"):
        page = client.get("/oauth/login")
        assert page.status_code == 200
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        response = client.post(
            "/oauth/login",
            data={"email": email, "password": password, "csrf_token": csrf_of(page.get_data(as_text=True))},
        )
    return response


def code_for(client, client_id: str, email: str, **extra) -> tuple[str, str]:
    """(code, verifier) for a first-party client and a user with no MFA."""
    verifier, challenge = pkce_pair()
    response = browser_login(client, client_id, email, challenge, **extra)
    assert response.status_code == 302, response.get_data(as_text=True)
    location = response.headers["Location"]
    assert location.startswith(REDIRECT), location
    params = query_of(location)
    assert params["state"] == "st-123"
    return params["code"], verifier


def redeem_code(client, client_id: str, verifier: str, code: str, redirect_uri: str = REDIRECT) -> dict:
    """The token response (asserted 200) of the authorization ``code`` of the public client
    ``client_id`` redeemed at ``/oauth/token`` with its PKCE ``verifier`` (RFC 7636 section 4.5)."""
    r = client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "client_id": client_id,
            "redirect_uri": redirect_uri,
        },
    )
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def code_flow_tokens(client, app_client: dict, email: str) -> dict:
    """The token response of a browser login (hosted pages, PKCE) of ``email`` through the public
    first-party ``app_client``, its code redeemed at ``/oauth/token``."""
    code, verifier = code_for(client, app_client["client_id"], email)
    return redeem_code(client, app_client["client_id"], verifier, code, app_client["redirect_uris"][0])


def login_request(client, client_id: str):
    """``(PKCE verifier, response)`` of a fresh authorization request of the first-party
    ``client_id`` with ``prompt=login`` (a browser signed in already signs in again), state
    ``st-1``, no nonce; the response is the redirect to the hosted login page."""
    verifier, challenge = pkce_pair()
    params = authorize_params(client_id, challenge, state="st-1", nonce=None, prompt="login")
    return verifier, client.get("/oauth/authorize", query_string=params)


def email_step(client, email: str):
    """The login page's first step (home realm discovery): ``email`` posted with the page's CSRF
    token; the response is the redirect to the user's IdP, or the page's password step."""
    page = client.get("/oauth/login")
    return client.post(
        "/oauth/login",
        data={"email": email, "step": "email", "csrf_token": csrf_of(page.get_data(as_text=True))},
    )
