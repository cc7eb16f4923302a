"""Introspection (RFC 7662) tells a token's details only to a resource server allowed to see it
(section 4): its audience, or a client of the token's tenant marked ``resource_server``. Any
other client gets ``{"active": false}``, the answer for an unknown token (section 2.2)."""

from __future__ import annotations

import base64

from saas.services import services
from tests.auth_helpers import code_flow_tokens, register_client
from tests.helpers import assert_problem, role_headers

INACTIVE = {"active": False}


def _basic(svc: dict) -> dict:
    raw = f"{svc['client_id']}:{svc['client_secret']}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def _confidential(client, headers, **fields) -> dict:
    return register_client(
        client,
        headers,
        client_type="confidential",
        grant_types=["client_credentials"],
        redirect_uris=[],
        scope="api",
        role="viewer",
        **fields,
    )


def _owner_tokens(api, client, slug: str = "acme") -> tuple[dict, dict]:
    owner = api.signup(slug)
    app_client = register_client(client, api.auth(owner), first_party=True, client_type="public")
    tokens = code_flow_tokens(client, app_client, f"owner@{slug}.test")
    return owner, tokens


def _introspect(client, svc: dict, token: str):
    r = client.post("/oauth/introspect", data={"token": token}, headers=_basic(svc))
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()


def test_a_plain_confidential_client_learns_nothing(api, client):
    owner, tokens = _owner_tokens(api, client)
    plain = _confidential(client, api.auth(owner))
    assert plain["resource_server"] is False
    unknown = _introspect(client, plain, "no-such-token")
    assert unknown == INACTIVE
    for token in (tokens["access_token"], tokens["refresh_token"]):
        assert _introspect(client, plain, token) == unknown  # not even that the token is live
    # nor about its own client_credentials token
    own = client.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=_basic(plain))
    assert _introspect(client, plain, own.get_json()["access_token"]) == INACTIVE


def test_a_resource_server_of_the_tenant_sees_the_token(api, client):
    owner, tokens = _owner_tokens(api, client)
    rs = _confidential(client, api.auth(owner), resource_server=True)
    assert rs["resource_server"] is True
    seen = _introspect(client, rs, tokens["access_token"])
    assert seen["active"] is True and seen["sub"] == owner["user"]["id"]
    assert seen["tid"] == owner["tenant"]["id"] and seen["roles"] == ["owner"]
    refresh = _introspect(client, rs, tokens["refresh_token"])
    assert refresh["active"] is True and refresh["token_type"] == "refresh_token"


def test_another_tenants_resource_server_learns_nothing(api, client):
    _owner, tokens = _owner_tokens(api, client, "acme")
    other = api.signup("globex")
    theirs = _confidential(client, api.auth(other), resource_server=True)
    for token in (tokens["access_token"], tokens["refresh_token"]):
        assert _introspect(client, theirs, token) == INACTIVE


def test_the_tokens_audience_sees_it(api, app, client):
    owner = api.signup("acme")
    plain = _confidential(client, api.auth(owner))
    tokens = services(app).tokens
    issued = tokens.issue(
        subject=owner["user"]["id"],
        tenant_id=owner["tenant"]["id"],
        roles=["owner"],
        scope="api",
        client_id="saas-api",
        extra={"aud": [tokens.audience, plain["client_id"]]},
    )
    seen = _introspect(client, plain, issued.token)
    assert seen["active"] is True and plain["client_id"] in seen["aud"]


def test_admins_mark_resource_servers_confidential_only(api, app, client):
    owner = api.signup("acme")
    _, admin = role_headers(app, owner["tenant"]["id"], "admin")
    _owner2, tokens = owner, api.login("owner@acme.test").get_json()
    svc = _confidential(client, admin)
    assert _introspect(client, svc, tokens["access_token"]) == INACTIVE
    r = client.patch(f"/api/v1/clients/{svc['client_id']}", json={"resource_server": True}, headers=admin)
    assert r.status_code == 200 and r.get_json()["resource_server"] is True
    assert _introspect(client, svc, tokens["access_token"])["active"] is True
    spa = client.post(
        "/api/v1/clients",
        json={
            "name": "SPA",
            "client_type": "public",
            "redirect_uris": ["https://app.example.com/cb"],
            "resource_server": True,
        },
        headers=admin,
    )
    body = assert_problem(spa, 422)
    assert "resource_server" in body["errors"]
    # a member (no clients:manage) cannot mark one
    _, member = role_headers(app, owner["tenant"]["id"], "member")
    r = client.patch(f"/api/v1/clients/{svc['client_id']}", json={"resource_server": False}, headers=member)
    assert_problem(r, 403, "permission_denied")
