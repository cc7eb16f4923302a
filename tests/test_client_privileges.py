"""A service client acts with its role, so managing it is acting with that role: an admin must not
reach an owner-role client (read, change, rotate, delete), and no client token can demote an
owner (that needs a person's step-up, RFC 9470)."""

from __future__ import annotations

import time

from saas.services import services
from tests.auth_helpers import client_credentials_token
from tests.helpers import add_member, assert_problem, bearer, role_headers


def _service_client(client, headers, role: str) -> dict:
    r = client.post(
        "/api/v1/clients",
        json={
            "name": f"{role} robot",
            "client_type": "confidential",
            "grant_types": ["client_credentials"],
            "redirect_uris": [],
            "scope": "api",
            "role": role,
        },
        headers=headers,
    )
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def test_admin_cannot_take_over_an_owner_role_client(api, app, client):
    owner = api.signup("acme")
    tid = owner["tenant"]["id"]
    robot = _service_client(client, api.auth(owner), "owner")
    _, admin = role_headers(app, tid, "admin")  # a fresh login: step-up is not what stops it
    path = f"/api/v1/clients/{robot['client_id']}"

    # the attack: rotate the owner-role client's secret and use it
    assert_problem(client.post(f"{path}/secret", headers=admin), 403, "role_not_assignable")
    assert_problem(client.get(path, headers=admin), 403, "role_not_assignable")
    assert_problem(client.patch(path, json={"name": "mine"}, headers=admin), 403, "role_not_assignable")
    assert_problem(client.delete(path, headers=admin), 403, "role_not_assignable")
    listed = [c["client_id"] for c in client.get("/api/v1/clients", headers=admin).get_json()]
    assert robot["client_id"] not in listed
    owner_list = client.get("/api/v1/clients", headers=api.auth(owner)).get_json()
    assert robot["client_id"] in [c["client_id"] for c in owner_list]
    # nothing changed: the original secret still works and the client is intact
    client_credentials_token(client, robot)
    kept = client.get(path, headers=api.auth(owner)).get_json()
    assert kept["name"] == "owner robot" and kept["role"] == "owner"

    # a client at or below the admin's role stays the admin's to manage
    helper = _service_client(client, api.auth(owner), "admin")
    hpath = f"/api/v1/clients/{helper['client_id']}"
    assert client.get(hpath, headers=admin).status_code == 200
    rotated = client.post(f"{hpath}/secret", headers=admin)
    assert rotated.status_code == 200 and rotated.get_json()["client_secret"] != helper["client_secret"]
    assert client.patch(hpath, json={"name": "renamed"}, headers=admin).status_code == 200
    assert client.delete(hpath, headers=admin).status_code == 204
    # the owner still manages the owner-role client
    assert client.post(f"{path}/secret", headers=api.auth(owner)).status_code == 200


def test_an_owner_role_client_cannot_demote_an_owner(api, app, client):
    owner = api.signup("acme")
    tid = owner["tenant"]["id"]
    other_owner = add_member(app, tid, "owner")  # so the last-owner rule is not what stops it
    robot = _service_client(client, api.auth(owner), "owner")
    robot_h = bearer(client_credentials_token(client, robot))
    for user_id in (owner["user"]["id"], other_owner.id):
        for role in ("admin", "member", "viewer"):
            r = client.patch(f"/api/v1/members/{user_id}", json={"role": role}, headers=robot_h)
            body = assert_problem(r, 401, "insufficient_user_authentication")
            assert 'error="insufficient_user_authentication"' in r.headers["WWW-Authenticate"]
            assert body["max_age"] > 0
    members = client.get("/api/v1/members", headers=api.auth(owner)).get_json()
    roles = {m["user_id"]: m["role"] for m in members}
    assert roles[owner["user"]["id"]] == "owner" and roles[str(other_owner.id)] == "owner"
    # the client may still change roles that need no step-up
    member = add_member(app, tid, "member")
    r = client.patch(f"/api/v1/members/{member.id}", json={"role": "viewer"}, headers=robot_h)
    assert r.status_code == 200, r.get_json()


def test_demoting_an_owner_needs_a_recent_login(api, app, client):
    owner = api.signup("acme")
    tid = owner["tenant"]["id"]
    other = add_member(app, tid, "owner")
    tokens = services(app).tokens
    stale = tokens.issue(
        subject=owner["user"]["id"],
        tenant_id=tid,
        roles=["owner"],
        scope="api",
        client_id="saas-api",
        auth_time=int(time.time()) - 3600,
    ).token
    r = client.patch(f"/api/v1/members/{other.id}", json={"role": "viewer"}, headers=bearer(stale))
    assert_problem(r, 401, "insufficient_user_authentication")
    r = client.patch(f"/api/v1/members/{other.id}", json={"role": "viewer"}, headers=api.auth(owner))
    assert r.status_code == 200 and r.get_json()["role"] == "viewer"


def test_an_admin_cannot_end_the_sessions_of_an_owner(api, app, client):
    """As removing or demoting them: ending a member's sessions needs a role that could assign
    theirs; an admin still ends a member's, and its own."""
    owner = api.signup("acme")
    tid = owner["tenant"]["id"]
    admin_user, admin = role_headers(app, tid, "admin")
    member_user, _member = role_headers(app, tid, "member")

    def end(user_id):
        return client.delete(f"/api/v1/members/{user_id}/sessions", headers=admin)

    assert_problem(end(owner["user"]["id"]), 403, "role_not_assignable")
    assert client.get("/api/v1/me", headers=api.auth(owner)).status_code == 200  # still signed in
    assert end(member_user.id).status_code == 200
    assert end(admin_user.id).status_code == 200
