def test_signup_login_contacts(api, client):
    acme = api.signup("acme")
    assert acme["tenant"]["slug"] == "acme"
    h = api.auth(acme)
    r = client.post("/api/v1/contacts", json={"name": "Ada", "email": "ada@example.com"}, headers=h)
    assert r.status_code == 201, r.get_json()
    r = client.get("/api/v1/contacts", headers=h)
    assert r.status_code == 200
    assert [c["name"] for c in r.get_json()] == ["Ada"]
    r = api.login("owner@acme.test")
    assert r.status_code == 200, r.get_json()
