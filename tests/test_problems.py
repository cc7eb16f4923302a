"""Every error is an RFC 9457 problem: 400/401/404/405/409/412/413/415/422 and a forced 500
that leaks nothing."""

from __future__ import annotations

import pytest

from saas.tenancy import members as members_service
from tests.helpers import PROBLEM, assert_problem


@pytest.fixture()
def h(api):
    return api.auth(api.signup("acme"))


@pytest.mark.parametrize("path", ["/nope", "/api/v1/nope", "/api/v2/contacts", "/api/v1/contacts/not-a-uuid"])
def test_unknown_routes_are_404_problems(client, h, path):
    body = assert_problem(client.get(path, headers=h), 404, "not_found")
    assert body["instance"] == path


def test_405_carries_allow(client, h):
    r = client.put("/api/v1/contacts", json={}, headers=h)
    assert_problem(r, 405, "method_not_allowed")
    allowed = {m.strip() for m in r.headers["Allow"].split(",")}
    assert {"GET", "POST"} <= allowed and "PUT" not in allowed
    r = client.delete("/api/v1/signup")
    assert_problem(r, 405)
    assert "POST" in r.headers["Allow"]


def test_415_for_non_json_bodies(client, h):
    r = client.post(
        "/api/v1/contacts", data="name=Ada", content_type="application/x-www-form-urlencoded", headers=h
    )
    assert_problem(r, 415, "unsupported_media_type")
    r = client.post("/api/v1/signup", data="hello", content_type="text/plain")
    assert_problem(r, 415)
    # +json media types are JSON
    r = client.post(
        "/api/v1/contacts", data='{"name": "Ada"}', content_type="application/merge-patch+json", headers=h
    )
    assert r.status_code == 201


def test_malformed_json_is_400_problem(client, h):
    r = client.post("/api/v1/contacts", data='{"name": ', content_type="application/json", headers=h)
    body = assert_problem(r, 400, "bad_request")
    assert "JSON" in body["detail"]
    r = client.post("/api/v1/auth/login", data="[1, 2", content_type="application/json")
    assert_problem(r, 400)


def test_json_of_the_wrong_shape_is_422(client, h):
    body = assert_problem(client.post("/api/v1/contacts", json=["a", "list"], headers=h), 422)
    assert body["errors"]
    body = assert_problem(client.post("/api/v1/contacts", json={"name": 12, "tags": "x"}, headers=h), 422)
    assert set(body["errors"]) == {"name", "tags"}


def test_oversized_body_is_413(client, h):
    big = '{"name": "' + "x" * (1024 * 1024) + '"}'
    r = client.post("/api/v1/contacts", data=big, content_type="application/json", headers=h)
    assert_problem(r, 413, "payload_too_large")


def test_422_lists_field_errors(client, h):
    r = client.post("/api/v1/contacts", json={"email": "nope", "unknown": 1}, headers=h)
    body = assert_problem(r, 422, "validation_error")
    assert set(body["errors"]) == {"name", "email", "unknown"}
    assert all(isinstance(v, list) and v for v in body["errors"].values())
    body = assert_problem(client.get("/api/v1/contacts?sort=password", headers=h), 422)
    assert set(body["errors"]) == {"sort"}
    body = assert_problem(client.get("/api/v1/contacts?page=0&page_size=1000", headers=h), 422)
    assert set(body["errors"]) == {"page", "page_size"}


def test_409_and_412(api, client, h):
    body = assert_problem(
        client.post(
            "/api/v1/signup",
            json={
                "tenant": {"name": "A", "slug": "acme"},
                "owner": {"email": "x@y.test", "password": "long enough pw"},
            },
        ),
        409,
        "slug_taken",
    )
    assert body["detail"]
    c = client.post("/api/v1/contacts", json={"name": "Ada"}, headers=h)
    r = client.patch(
        f"/api/v1/contacts/{c.get_json()['id']}", json={"name": "B"}, headers={**h, "If-Match": '"stale"'}
    )
    assert_problem(r, 412, "precondition_failed")


def test_401_has_bearer_challenge(client):
    r = client.get("/api/v1/me")
    assert_problem(r, 401)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_forced_500_leaks_nothing(client, h, monkeypatch, caplog):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internals: password=hunter2 at /srv/app.py line 42")

    monkeypatch.setattr(members_service, "list_members", explode)
    r = client.get("/api/v1/members", headers={**h, "X-Request-ID": "req-123"})
    body = assert_problem(r, 500, "internal_error")
    text = r.get_data(as_text=True)
    assert "hunter2" not in text and "RuntimeError" not in text and "line 42" not in text
    assert body["request_id"] == "req-123" == r.headers["X-Request-ID"]
    assert set(body) == {"type", "title", "status", "code", "detail", "instance", "request_id"}
    # the operator's log has it
    assert any("unhandled error" in rec.message for rec in caplog.records)


def test_500_rolls_back_the_unit_of_work(client, h, monkeypatch):
    from tenants import contacts

    def explode(contact):
        raise RuntimeError("after the insert")

    monkeypatch.setattr(contacts, "etag_of", explode)
    assert_problem(client.post("/api/v1/contacts", json={"name": "Ghost"}, headers=h), 500)
    monkeypatch.undo()
    assert client.get("/api/v1/contacts?q=Ghost", headers=h).get_json() == []


def test_request_id_is_echoed_or_generated(client):
    r = client.get("/healthz", headers={"X-Request-ID": "abc-1"})
    assert r.headers["X-Request-ID"] == "abc-1"
    r = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["X-Request-ID"] != "bad id with spaces" and len(r.headers["X-Request-ID"]) == 32


def test_problem_content_type_everywhere(client):
    for r in (client.get("/nope"), client.get("/api/v1/me"), client.post("/api/v1/auth/login", json={})):
        assert r.headers["Content-Type"].startswith(PROBLEM)


# --- hostile input is a 4xx, never a 500 ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("get", "/api/v1/contacts?q=a%00b", None, "q"),
        ("get", "/api/v1/contacts?tag=%00", None, "tag"),
        ("get", "/api/v1/audit-events?actor=%00", None, "actor"),
        ("post", "/api/v1/contacts", {"name": "a\u0000b"}, "name"),
        ("post", "/api/v1/contacts", {"name": "ok", "tags": ["fine", "b\u0000d"]}, "tags"),
    ],
)
def test_nul_characters_are_422_naming_the_field(client, h, method, path, body, field):
    r = getattr(client, method)(path, json=body, headers=h)
    errors = assert_problem(r, 422, "validation_error")["errors"]
    assert field in errors


def test_nul_in_signup_is_422(client):
    r = client.post(
        "/api/v1/signup",
        json={
            "tenant": {"name": "N\u0000", "slug": "nulco"},
            "owner": {"email": "n@n.test", "password": "long pw ok"},
        },
    )
    assert assert_problem(r, 422)["errors"] == {
        "tenant": {"name": ["Must not contain NUL characters (U+0000)."]}
    }


DEEP = ['{"a":' * 5000 + "1" + "}" * 5000, "[" * 1000 + "]" * 1000, '{"a":' * 40 + "1" + "}" * 40]


@pytest.mark.parametrize(
    "path", ["/api/v1/auth/login", "/api/v1/signup", "/api/v1/contacts", "/api/v1/nowhere"]
)
@pytest.mark.parametrize("body", DEEP, ids=["object-5000", "array-1000", "object-40"])
def test_deeply_nested_json_is_400_not_500(client, h, path, body):
    """Deeper than the decoder's recursion limit, or than any schema of the API nests."""
    r = client.post(path, data=body, content_type="application/json", headers=h)
    assert r.status_code in (400, 404), r.get_data(as_text=True)[:300]
    assert r.mimetype == PROBLEM


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("post", "/api/v1/contacts", {"name": "a\ud800b"}, "name"),
        ("patch", "/api/v1/tenant", {"name": "\udfff"}, "name"),
        ("post", "/api/v1/clients", {"name": "x\ud83d", "redirect_uris": ["https://a.test/cb"]}, "name"),
        ("post", "/api/v1/auth/login", {"email": "\ud800@x.test", "password": "pw"}, "email"),
    ],
)
def test_unpaired_surrogates_are_422_naming_the_field(client, h, method, path, body, field):
    """A JSON ``\\ud800`` escape decodes to text neither UTF-8 nor PostgreSQL can hold."""
    r = getattr(client, method)(path, json=body, headers=h)
    errors = assert_problem(r, 422, "validation_error")["errors"]
    assert field in errors and "surrogate" in errors[field][0]


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_nul_in_a_path_parameter_is_404(client, h, method):
    r = getattr(client, method)("/api/v1/clients/a%00b", json={}, headers=h)
    assert_problem(r, 404)
    assert_problem(client.post("/api/v1/clients/%00/secret", headers=h), 404)


def test_absurd_page_is_422(client, h):
    body = assert_problem(client.get("/api/v1/contacts?page=99999999999999999999", headers=h), 422)
    assert "page" in body["errors"]
    assert_problem(client.get("/api/v1/audit-events?page=99999999999999999999", headers=h), 422)
    assert client.get("/api/v1/contacts?page=1000000", headers=h).get_json() == []


def test_long_request_id_is_replaced_not_a_500(client, h):
    r = client.post("/api/v1/contacts", json={"name": "x"}, headers={**h, "X-Request-ID": "a" * 100})
    assert r.status_code == 201
    assert r.headers["X-Request-ID"] != "a" * 100
    r = client.post("/api/v1/contacts", json={"name": "y"}, headers={**h, "X-Request-ID": "b" * 64})
    assert r.status_code == 201 and r.headers["X-Request-ID"] == "b" * 64
