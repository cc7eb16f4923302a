"""The contacts list's hot path (issue 5): no marshmallow schema built per request, and the
page query cached per sort yet still filtered, paginated and tenant-bound."""

from __future__ import annotations

import marshmallow as ma
from flask_smorest import Blueprint as SmorestBlueprint

from saas.api import Blueprint


def test_pagination_metadata_matches_flask_smorest():
    for page, size, total in [(1, 10, 0), (1, 10, 5), (2, 10, 25), (3, 10, 25), (5, 10, 25), (2, 20, 21)]:
        assert Blueprint._make_pagination_metadata(page, size, total) == (
            SmorestBlueprint._make_pagination_metadata(page, size, total)
        )


def test_a_list_request_builds_no_schema(api, monkeypatch):
    owner = api.signup("hotpath")
    h = api.auth(owner)
    for i in range(3):
        assert api.client.post("/api/v1/contacts", headers=h, json={"name": f"C{i}"}).status_code == 201
    assert api.client.get("/api/v1/contacts?page_size=2", headers=h).status_code == 200  # warm
    built: list[type] = []
    real_init = ma.Schema.__init__

    def counting(self, *args, **kwargs):
        built.append(type(self))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(ma.Schema, "__init__", counting)
    r = api.client.get("/api/v1/contacts?page_size=2&page=2&sort=name", headers=h)
    assert r.status_code == 200
    assert [c["name"] for c in r.get_json()] == ["C2"]
    assert '"total": 3' in r.headers["X-Pagination"]
    r = api.client.get("/api/v1/contacts?q=C1&sort=-name", headers=h)
    assert [c["name"] for c in r.get_json()] == ["C1"]
    assert built == []


def test_parsed_query_arguments_are_kept_per_query_string_never_shared(api, monkeypatch):
    """Memoised query parsing (saas.api._SchemaReusingParser): the second request with a query
    string loads nothing, yet each request gets its own pagination object (two tenants, one
    query string, their own totals) and invalid input is refused every time."""
    totals = {}
    headers = {}
    for slug, n in (("memo-a", 3), ("memo-b", 1)):
        headers[slug] = api.auth(api.signup(slug))
        for i in range(n):
            api.client.post("/api/v1/contacts", headers=headers[slug], json={"name": f"{slug}{i}"})
    loads: list[type] = []
    real_load = ma.Schema.load

    def counting(self, *args, **kwargs):
        loads.append(type(self))
        return real_load(self, *args, **kwargs)

    monkeypatch.setattr(ma.Schema, "load", counting)
    query = "/api/v1/contacts?page_size=2&sort=name&q=memo"
    for _ in range(2):
        for slug in ("memo-a", "memo-b"):
            r = api.client.get(query, headers=headers[slug])
            assert r.status_code == 200
            totals.setdefault(slug, set()).add(r.headers["X-Pagination"])
    assert len(loads) == 2  # query arguments and pagination, once each for the four requests
    assert totals == {
        "memo-a": {
            '{"total": 3, "total_pages": 2, "first_page": 1, "last_page": 2, "page": 1, "next_page": 2}'
        },
        "memo-b": {'{"total": 1, "total_pages": 1, "first_page": 1, "last_page": 1, "page": 1}'},
    }
    for _ in range(2):
        bad = api.client.get("/api/v1/contacts?sort=nope", headers=headers["memo-a"])
        assert bad.status_code == 422
