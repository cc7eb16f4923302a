"""Contacts API: create, read, list (pagination, search, tags, sort), update and delete with
ETag and If-Match (RFC 9110 section 13.1.1)."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import text

from tests.helpers import assert_problem


@pytest.fixture()
def h(api):
    return api.auth(api.signup("acme"))


def _create(client, h, **fields):
    r = client.post("/api/v1/contacts", json={"name": "Someone", **fields}, headers=h)
    assert r.status_code == 201, r.get_json()
    return r


def test_create_and_read(client, h):
    r = _create(client, h, email="ada@example.test", phone="+44 1", company="Engines", tags=["vip", "uk"])
    body = r.get_json()
    uuid.UUID(body["id"])  # public ids are UUIDs
    assert body["tags"] == ["vip", "uk"] and body["created_by"] and body["created_at"]
    etag = r.headers["ETag"]
    got = client.get(f"/api/v1/contacts/{body['id']}", headers=h)
    assert got.status_code == 200 and got.headers["ETag"] == etag
    assert got.get_json() == body
    assert got.headers["Cache-Control"] == "private, no-store"


def test_defaults_and_nulls(client, h):
    body = _create(client, h).get_json()
    assert body["tags"] == [] and body["email"] is None and body["company"] is None


def _names(r):
    return [c["name"] for c in r.get_json()]


def test_pagination_header(client, h):
    for i in range(7):
        _create(client, h, name=f"C{i}")
    r = client.get("/api/v1/contacts?page=2&page_size=3&sort=name", headers=h)
    assert r.status_code == 200
    assert _names(r) == ["C3", "C4", "C5"]
    meta = json.loads(r.headers["X-Pagination"])
    assert meta["total"] == 7 and meta["total_pages"] == 3 and meta["page"] == 2
    assert meta["previous_page"] == 1 and meta["next_page"] == 3
    r = client.get("/api/v1/contacts?page=3&page_size=3&sort=name", headers=h)
    assert _names(r) == ["C6"]
    r = client.get("/api/v1/contacts?page=9&page_size=3", headers=h)
    assert r.status_code == 200 and r.get_json() == []


def test_list_documents_are_the_single_documents_byte_for_byte(app, api, client, connection):
    """The list's JSON is written by PostgreSQL (tenants.contacts._page_document): it must be the
    document the API writes for each contact, in the JSON provider's exact form, whatever the
    text, the timestamps' fractions and the session's time zone."""
    acme = api.signup("acme")
    h = api.auth(acme)
    odd = 'Zoë "Q" \\ Ünïcödé \u2028 \t tab'
    _create(client, h, name=odd, email="z@example.test", tags=["vip", "ü", 'q"'])
    _create(client, h, name="Plain", phone="+1 555", company="Acme\nCo", tags=[])
    _create(client, h, name="Emoji 🚀 </script>", tags=["a/b"])
    schema = "t_" + uuid.UUID(acme["tenant"]["id"]).hex
    # fractions Python writes with six digits and PostgreSQL's JSON would shorten, or drop
    stamps = (
        "created_at = CASE name WHEN 'Plain' THEN '2026-01-02 03:04:05.746790+00'::timestamptz"
        " ELSE '2026-01-02 03:04:05+00'::timestamptz END,"
        " updated_at = '2026-06-30 23:59:59.000001+00'::timestamptz"
    )
    connection.execute(text(f'UPDATE "{schema}".contacts SET {stamps}'))  # noqa: S608 - test data
    connection.execute(text("SET LOCAL TIME ZONE 'Asia/Kolkata'"))  # offsets as +05:30
    r = client.get("/api/v1/contacts?sort=name", headers=h)
    assert r.status_code == 200 and r.mimetype == "application/json"
    items = r.get_json()
    assert [item["name"] for item in items] == sorted(item["name"] for item in items)
    singles = [client.get(f"/api/v1/contacts/{item['id']}", headers=h).get_json() for item in items]
    assert items == singles
    assert {item["created_at"] for item in items} == {
        "2026-01-02T08:34:05+05:30",
        "2026-01-02T08:34:05.746790+05:30",
    }
    assert r.get_data() == app.json.dumpb(singles) + b"\n"  # same bytes as the provider's
    with_filter = client.get("/api/v1/contacts?q=emoji&tag=a/b", headers=h)
    emoji = [s for s in singles if s["name"].startswith("Emoji")]
    assert with_filter.get_data() == app.json.dumpb(emoji) + b"\n"


def test_search_name_email_company(client, h):
    _create(client, h, name="Grace Hopper", email="grace@navy.test", company="US Navy")
    _create(client, h, name="Alan Turing", email="alan@bletchley.test", company="GC&CS")
    _create(client, h, name="Kathleen Booth", email="kb@birkbeck.test", company="Birkbeck NAVY lab")
    assert _names(client.get("/api/v1/contacts?q=turing", headers=h)) == ["Alan Turing"]
    assert _names(client.get("/api/v1/contacts?q=bletchley", headers=h)) == ["Alan Turing"]
    assert sorted(_names(client.get("/api/v1/contacts?q=navy", headers=h))) == [
        "Grace Hopper",
        "Kathleen Booth",
    ]
    assert _names(client.get("/api/v1/contacts?q=nobody", headers=h)) == []


def test_search_treats_like_wildcards_literally(client, h):
    _create(client, h, name="100% Cotton")
    _create(client, h, name="1000 Cottons")
    _create(client, h, name="snake_case Ltd")
    _create(client, h, name="snakeXcase Ltd")
    _create(client, h, name="back\\slash")
    assert _names(client.get("/api/v1/contacts?q=100%25", headers=h)) == ["100% Cotton"]
    assert _names(client.get("/api/v1/contacts?q=%25", headers=h)) == ["100% Cotton"]
    assert _names(client.get("/api/v1/contacts?q=snake_case", headers=h)) == ["snake_case Ltd"]
    assert _names(client.get("/api/v1/contacts?q=_", headers=h)) == ["snake_case Ltd"]
    assert _names(client.get("/api/v1/contacts?q=k%5Cs", headers=h)) == ["back\\slash"]


def test_sort_and_tags(client, h):
    _create(client, h, name="bravo", company="Zed", tags=["a"])
    _create(client, h, name="alpha", company="Yak", tags=["a", "b"])
    _create(client, h, name="charlie", company="Xen", tags=["b"])
    assert _names(client.get("/api/v1/contacts?sort=name", headers=h)) == ["alpha", "bravo", "charlie"]
    assert _names(client.get("/api/v1/contacts?sort=-name", headers=h)) == ["charlie", "bravo", "alpha"]
    assert _names(client.get("/api/v1/contacts?sort=company", headers=h)) == ["charlie", "alpha", "bravo"]
    # default: newest first
    assert _names(client.get("/api/v1/contacts", headers=h)) == ["charlie", "alpha", "bravo"]
    assert _names(client.get("/api/v1/contacts?tag=a&sort=name", headers=h)) == ["alpha", "bravo"]
    assert _names(client.get("/api/v1/contacts?tag=b&q=char", headers=h)) == ["charlie"]
    assert_problem(client.get("/api/v1/contacts?sort=tags", headers=h), 422)


def test_patch_with_etag(client, h):
    r = _create(client, h, name="Ada", tags=["x"])
    cid, etag = r.get_json()["id"], r.headers["ETag"]
    r = client.patch(f"/api/v1/contacts/{cid}", json={"company": "Engines"}, headers={**h, "If-Match": etag})
    assert r.status_code == 200, r.get_json()
    new_etag = r.headers["ETag"]
    assert new_etag != etag
    assert (
        r.get_json()["company"] == "Engines"
        and r.get_json()["name"] == "Ada"
        and r.get_json()["tags"] == ["x"]
    )
    assert r.get_json()["updated_at"] >= r.get_json()["created_at"]
    # the old ETag is stale now
    stale = client.patch(
        f"/api/v1/contacts/{cid}", json={"name": "Lost update"}, headers={**h, "If-Match": etag}
    )
    assert_problem(stale, 412, "precondition_failed")
    assert client.get(f"/api/v1/contacts/{cid}", headers=h).get_json()["name"] == "Ada"
    # If-Match uses the strong comparison (RFC 9110 section 13.1.1): a weak tag never matches
    weak = client.patch(
        f"/api/v1/contacts/{cid}", json={"phone": "1"}, headers={**h, "If-Match": f"W/{new_etag}"}
    )
    assert_problem(weak, 412)
    # a list containing the current tag, and *, match
    for template in ('"nope", {}', "*"):
        if_match = template.format(new_etag)
        r = client.patch(
            f"/api/v1/contacts/{cid}", json={"phone": if_match[:10]}, headers={**h, "If-Match": if_match}
        )
        assert r.status_code == 200, (if_match, r.get_json())
        assert r.headers["ETag"] != new_etag
        new_etag = r.headers["ETag"]
    # without If-Match the update applies (the header is optional)
    assert client.patch(f"/api/v1/contacts/{cid}", json={"tags": []}, headers=h).get_json()["tags"] == []


def test_patch_with_no_change_keeps_etag(client, h):
    r = _create(client, h, name="Ada")
    cid, etag = r.get_json()["id"], r.headers["ETag"]
    r = client.patch(f"/api/v1/contacts/{cid}", json={"name": "Ada"}, headers={**h, "If-Match": etag})
    assert r.status_code == 200 and r.headers["ETag"] == etag


def test_patch_validation(client, h):
    cid = _create(client, h).get_json()["id"]
    body = assert_problem(
        client.patch(f"/api/v1/contacts/{cid}", json={"name": "", "email": "x"}, headers=h), 422
    )
    assert set(body["errors"]) == {"name", "email"}
    assert_problem(client.patch(f"/api/v1/contacts/{cid}", json={"name": None}, headers=h), 422)
    assert_problem(client.patch(f"/api/v1/contacts/{cid}", json={"id": str(uuid.uuid4())}, headers=h), 422)


def test_delete_with_if_match(client, h):
    r = _create(client, h, name="Ada")
    cid, etag = r.get_json()["id"], r.headers["ETag"]
    client.patch(f"/api/v1/contacts/{cid}", json={"name": "Ada L"}, headers=h)
    assert_problem(client.delete(f"/api/v1/contacts/{cid}", headers={**h, "If-Match": etag}), 412)
    current = client.get(f"/api/v1/contacts/{cid}", headers=h).headers["ETag"]
    r = client.delete(f"/api/v1/contacts/{cid}", headers={**h, "If-Match": current})
    assert r.status_code == 204 and r.get_data() == b""
    assert_problem(client.get(f"/api/v1/contacts/{cid}", headers=h), 404, "not_found")
    assert_problem(client.delete(f"/api/v1/contacts/{cid}", headers=h), 404)


def test_limits(client, h):
    assert_problem(client.post("/api/v1/contacts", json={"name": "x" * 201}, headers=h), 422)
    assert_problem(client.post("/api/v1/contacts", json={"name": "x", "tags": ["t"] * 51}, headers=h), 422)
    assert_problem(client.post("/api/v1/contacts", json={"name": "x", "tags": [""]}, headers=h), 422)
    assert_problem(client.get("/api/v1/contacts?q=" + "x" * 201, headers=h), 422)


@pytest.mark.parametrize(
    ("method", "if_match", "status"),
    [("patch", True, 412), ("patch", False, 409), ("delete", True, 412), ("delete", False, 409)],
)
def test_concurrent_change_between_read_and_write(client, h, monkeypatch, method, if_match, status):
    """Another request commits a change between this request's read and its write: the
    versioned write matches no row, and the lost update is refused instead of a 500."""
    from sqlalchemy import update

    from saas import db
    from tenants import contacts
    from tenants.models import Contact

    r = _create(client, h, name="Ada")
    cid, etag = r.get_json()["id"], r.headers["ETag"]
    check = contacts._check_if_match

    def racing_check(contact):
        check(contact)
        table = Contact.__table__
        db.session().connection().execute(  # Core, bypassing the session's identity map
            update(table).where(table.c.id == contact.id).values(version=table.c.version + 1, name="Other")
        )

    monkeypatch.setattr(contacts, "_check_if_match", racing_check)
    headers = {**h, "If-Match": etag} if if_match else h
    body = {"name": "Mine"} if method == "patch" else None
    r = getattr(client, method)(f"/api/v1/contacts/{cid}", json=body, headers=headers)
    assert_problem(r, status)
    monkeypatch.undo()
    # the request rolled back entirely: the contact is as it was before it
    got = client.get(f"/api/v1/contacts/{cid}", headers=h)
    assert got.get_json()["name"] == "Ada" and got.headers["ETag"] == etag
