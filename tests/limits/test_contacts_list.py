"""The contacts list after its hot-path rewrite (one statement, window count): same pages,
totals and filters as before."""

from __future__ import annotations

import json


def test_pages_totals_filters(api, client):
    h = api.auth(api.signup("listing"))
    for i in range(5):
        body = {
            "name": f"Person {i}",
            "company": "Acme" if i % 2 else "Other",
            "tags": ["vip"] if i < 2 else [],
        }
        assert client.post("/api/v1/contacts", json=body, headers=h).status_code == 201

    def page(query):
        r = client.get(f"/api/v1/contacts?{query}", headers=h)
        assert r.status_code == 200, r.get_json()
        return [c["name"] for c in r.get_json()], json.loads(r.headers["X-Pagination"])["total"]

    assert page("page_size=2&sort=name") == (["Person 0", "Person 1"], 5)
    assert page("page_size=2&page=3&sort=name") == (["Person 4"], 5)
    assert page("page_size=2&page=9&sort=name") == ([], 5)  # beyond the end: counted apart
    assert page("q=acme&sort=name") == (["Person 1", "Person 3"], 2)
    assert page("tag=vip&sort=-name") == (["Person 1", "Person 0"], 2)
    assert page("q=nobody") == ([], 0)
