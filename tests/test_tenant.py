"""The caller's tenant: ``GET``/``PATCH /api/v1/tenant`` and ``GET /api/v1/me``."""

from __future__ import annotations

import pytest

from tests.helpers import assert_problem, mailed_invitation_token, role_headers


@pytest.fixture()
def owner(api):
    return api.signup("acme", name="Acme Inc")


def test_get_tenant_and_me(api, client, owner):
    h = api.auth(owner)
    t = client.get("/api/v1/tenant", headers=h).get_json()
    assert t["slug"] == "acme" and t["name"] == "Acme Inc" and t["status"] == "active" and t["settings"] == {}
    assert "schema_name" not in t and "schema" not in t  # internals stay internal
    me = client.get("/api/v1/me", headers=h).get_json()
    assert me["user"]["email"] == "owner@acme.test" and me["role"] == "owner"
    assert "password_hash" not in str(me)


def test_patch_name_and_merge_settings(api, client, owner):
    h = api.auth(owner)
    r = client.patch(
        "/api/v1/tenant", json={"name": "  Acme Two  ", "settings": {"password_min_length": 12}}, headers=h
    )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["name"] == "Acme Two"
    assert client.get("/api/v1/tenant", headers=h).get_json()["settings"]["password_min_length"] == 12
    r = client.patch("/api/v1/tenant", json={"settings": {"require_mfa": True}}, headers=h)
    assert r.get_json()["settings"] == {"require_mfa": True, "password_min_length": 12}
    # require_mfa ended this password-only session (tests/test_session_policies.py)
    assert client.get("/api/v1/tenant", headers=h).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "   "},
        {"settings": {"unknown_key": 1}},
        {"settings": {"password_min_length": 4}},
        {"slug": "renamed"},
        {"status": "active"},
    ],
)
def test_patch_validation(api, client, owner, body):
    assert_problem(client.patch("/api/v1/tenant", json=body, headers=api.auth(owner)), 422)
    assert client.get("/api/v1/tenant", headers=api.auth(owner)).get_json()["slug"] == "acme"


def test_password_policy_applies_to_invitations(api, client, owner):
    h = api.auth(owner)
    client.patch("/api/v1/tenant", json={"settings": {"password_min_length": 16}}, headers=h)
    invited = client.post("/api/v1/members", json={"email": "n@acme.test", "role": "viewer"}, headers=h)
    assert invited.status_code == 201, invited.get_json()
    token = mailed_invitation_token(client.application, "n@acme.test")
    r = client.post("/api/v1/invitations/accept", json={"token": token, "password": "fifteen chars!!"})
    assert "16" in assert_problem(r, 422)["errors"]["password"][0]
    r = client.post("/api/v1/invitations/accept", json={"token": token, "password": "sixteen chars!!!"})
    assert r.status_code == 200


def test_viewer_reads_but_cannot_patch(app, client, owner):
    _, viewer = role_headers(app, owner["tenant"]["id"], "viewer")
    assert client.get("/api/v1/tenant", headers=viewer).status_code == 200
    assert_problem(
        client.patch("/api/v1/tenant", json={"name": "X"}, headers=viewer), 403, "permission_denied"
    )
