"""SCIM 2.0 (docs/auth.md, "SCIM 2.0"; RFC 7643, RFC 7644) in process: tokens and their
permission, step-up and plan; filters, sorting and pagination; the PATCH shapes Entra ID and Okta
send; weak ETags and If-Match; deprovisioning ending sessions at once and freeing the seat;
groups mapped to roles; tenant isolation; SCIM error bodies with nothing changed."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import func, select

from saas.billing.service import seats_used
from saas.db import utcnow
from saas.identity.models import Membership, User, VerifiedDomain
from saas.scim.models import ScimGroup, ScimToken, ScimUser
from saas.security import token_hash
from saas.services import services
from tests.conftest import TEST_PASSWORD
from tests.helpers import assert_problem, bearer, give_plan, role_headers

SCIM = "application/scim+json"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


class Scim:
    """The SCIM endpoints of one tenant through the Flask test client."""

    def __init__(self, client, token: str):
        self.client, self.token = client, token

    def __call__(self, method: str, path: str, body=None, **headers):
        h = {"Authorization": f"Bearer {self.token}", **{k.replace("_", "-"): v for k, v in headers.items()}}
        kw = {"json": body} if body is not None else {}
        return self.client.open(f"/scim/v2{path}", method=method, headers=h, **kw)

    def user(self, user_name: str, email: str | None = None, **extra) -> dict:
        body = {
            "schemas": [USER],
            "userName": user_name,
            "emails": [{"value": email or user_name, "primary": True}],
        }
        r = self("POST", "/Users", {**body, **extra})
        assert r.status_code == 201, r.get_data(as_text=True)
        return r.get_json()

    def group(self, name: str, member_ids=()) -> dict:
        body = {"schemas": [GROUP], "displayName": name, "members": [{"value": m} for m in member_ids]}
        r = self("POST", "/Groups", body)
        assert r.status_code == 201, r.get_data(as_text=True)
        return r.get_json()

    def patch(self, path: str, *operations, **headers):
        return self("PATCH", path, {"schemas": [PATCH], "Operations": list(operations)}, **headers)


def scim_error(response, status: int, scim_type: str | None = None) -> dict:
    """Assert an RFC 7644 section 3.12 error: its schema, ``status`` as a string, ``scimType``."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == SCIM
    body = response.get_json()
    assert body["schemas"] == [ERROR] and body["status"] == str(status) and body["detail"]
    assert body.get("scimType") == scim_type, body
    assert "Traceback" not in response.get_data(as_text=True)
    return body


def _tenant(api, db_session, slug: str, plan: str = "enterprise", email: str | None = None):
    owner = api.signup(slug, email)
    if plan:
        give_plan(db_session, owner["tenant"]["id"], plan)
    return owner, api.auth(owner)


def _token(client, h) -> str:
    r = client.post("/api/v1/scim/tokens", json={"name": "Entra ID"}, headers=h)
    assert r.status_code == 201, r.get_json()
    return r.get_json()["token"]


@pytest.fixture()
def scim(client, api, db_session):
    owner, h = _tenant(api, db_session, f"scim-{uuid.uuid4().hex[:6]}")
    s = Scim(client, _token(client, h))
    s.owner, s.headers, s.tenant_id = owner, h, uuid.UUID(owner["tenant"]["id"])
    return s


def _events(client, headers, action: str) -> list[dict]:
    """The tenant's audit events of ``action``, oldest first, read through the API."""
    r = client.get(f"/api/v1/audit-events?action={action}", headers=headers)
    assert r.status_code == 200, r.get_json()
    return sorted(r.get_json(), key=lambda e: e["occurred_at"])


# --- tokens --------------------------------------------------------------------------------------


def test_a_token_is_shown_once_stored_hashed_listed_without_secret_and_revocable(client, api, db_session):
    _, h = _tenant(api, db_session, "scim-tokens")
    r = client.post("/api/v1/scim/tokens", json={"name": "Okta"}, headers=h)
    assert r.status_code == 201
    made = r.get_json()
    assert made["token"].startswith("saas_scim_") and len(made["token"]) > 50
    assert made["scim_base_url"].endswith("/scim/v2")
    row = db_session.get(ScimToken, uuid.UUID(made["id"]))
    assert row.token_hash == token_hash(made["token"]) and made["token"] not in str(vars(row))
    listed = client.get("/api/v1/scim/tokens", headers=h).get_json()
    assert [t["id"] for t in listed] == [made["id"]] and "token" not in listed[0]
    s = Scim(client, made["token"])
    assert s("GET", "/Users").status_code == 200
    assert client.get("/api/v1/scim/tokens", headers=h).get_json()[0]["last_used_at"] is not None
    assert client.delete(f"/api/v1/scim/tokens/{made['id']}", headers=h).status_code == 204
    scim_error(s("GET", "/Users"), 401)  # at its very next request
    assert client.get("/api/v1/scim/tokens", headers=h).get_json()[0]["revoked_at"] is not None
    assert [e["target"]["id"] for e in _events(client, h, "scim.token_created")] == [made["id"]]
    assert len(_events(client, h, "scim.token_revoked")) == 1


def test_token_endpoints_need_the_permission_the_plan_and_a_step_up(app, client, api, db_session):
    owner, h = _tenant(api, db_session, "scim-gates", plan="")
    assert_problem(
        client.post("/api/v1/scim/tokens", json={"name": "x"}, headers=h), 402, "entitlement_required"
    )
    give_plan(db_session, owner["tenant"]["id"], "enterprise")
    _, member = role_headers(app, owner["tenant"]["id"], "member")
    assert_problem(client.get("/api/v1/scim/tokens", headers=member), 403, "permission_denied")
    stale = services(app).tokens.issue(
        subject=owner["user"]["id"],
        tenant_id=owner["tenant"]["id"],
        roles=["owner"],
        scope="api",
        client_id="saas-api",
        auth_time=int(time.time()) - 3600,
    )
    r = client.post("/api/v1/scim/tokens", json={"name": "x"}, headers=bearer(stale.token))
    assert_problem(r, 401, "insufficient_user_authentication")
    r = client.put("/api/v1/scim/settings", json={"default_role": "viewer"}, headers=bearer(stale.token))
    assert_problem(r, 401, "insufficient_user_authentication")
    assert client.get("/api/v1/scim/tokens", headers=bearer(stale.token)).get_json() == []
    token = _token(client, h)
    assert Scim(client, token)("GET", "/Users").status_code == 200
    from saas.billing.models import BillingOverride
    from saas.identity.models import Tenant

    db_session.get(BillingOverride, uuid.UUID(owner["tenant"]["id"])).plan = "free"  # a downgrade
    db_session.get(Tenant, uuid.UUID(owner["tenant"]["id"])).plan = "free"
    db_session.flush()
    from saas.billing import entitlements

    entitlements.invalidate(db_session, uuid.UUID(owner["tenant"]["id"]))
    scim_error(Scim(client, token)("GET", "/Users"), 403)  # SCIM stops with the plan


def test_bad_or_missing_tokens_are_scim_401s(client):
    for header in (None, "Bearer nope", "Bearer saas_scim_" + "x" * 43, "Basic Zm9vOmJhcg=="):
        r = client.get("/scim/v2/Users", headers={"Authorization": header} if header else {})
        scim_error(r, 401)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_token_of_tenant_a_never_reaches_tenant_b(client, api, db_session):
    _, ha = _tenant(api, db_session, "scim-a")
    _, hb = _tenant(api, db_session, "scim-b")
    a, b = Scim(client, _token(client, ha)), Scim(client, _token(client, hb))
    bob = b.user("bob@b.example")
    group = b.group("Staff", [bob["id"]])
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        body = {"schemas": [USER], "userName": "x@a.example"} if method == "PUT" else None
        if method == "PATCH":
            body = {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "active", "value": False}]}
        scim_error(a(method, f"/Users/{bob['id']}", body), 404)
        scim_error(
            a(method, f"/Groups/{group['id']}", body if method != "PUT" else None),
            404 if method != "PUT" else 400 if False else 404,
        )
    assert a("GET", "/Users").get_json()["totalResults"] == 0
    assert a("GET", '/Users?filter=userName eq "bob@b.example"').get_json()["totalResults"] == 0
    r = a("POST", "/Groups", {"schemas": [GROUP], "displayName": "Steal", "members": [{"value": bob["id"]}]})
    scim_error(r, 400, "invalidValue")  # another tenant's user is no member here
    assert b("GET", f"/Users/{bob['id']}").get_json()["active"] is True
    assert client.delete(f"/api/v1/scim/tokens/{uuid.uuid4()}", headers=ha).status_code == 404
    token_b = client.get("/api/v1/scim/tokens", headers=hb).get_json()[0]["id"]
    assert_problem(client.delete(f"/api/v1/scim/tokens/{token_b}", headers=ha), 404)


# --- users: provisioning, filters, pagination ------------------------------------------------------


def test_create_provisions_a_member_with_the_default_role_and_a_seat(scim, db_session):
    before = seats_used(db_session, scim.tenant_id)
    made = scim.user(
        "ada@corp.example", name={"givenName": "Ada", "familyName": "Lovelace"}, externalId="e-1"
    )
    assert made["active"] is True and made["meta"]["version"] == 'W/"1"'
    assert made["meta"]["location"].endswith(f"/scim/v2/Users/{made['id']}")
    m = db_session.scalars(select(Membership).where(Membership.user_id == uuid.UUID(made["id"]))).one()
    assert m.role == "member" and m.status == "active"
    assert seats_used(db_session, scim.tenant_id) == before + 1
    user = db_session.get(User, uuid.UUID(made["id"]))
    assert user.email == "ada@corp.example" and user.password_hash is None and not user.email_verified
    events = _events(scim.client, scim.headers, "member.provisioned")
    assert events[-1]["actor"]["type"] == "scim" and events[-1]["data"]["source"] == "scim"
    scim_error(
        scim(
            "POST",
            "/Users",
            {"schemas": [USER], "userName": "ADA@corp.example", "emails": [{"value": "z@corp.example"}]},
        ),
        409,
        "uniqueness",
    )


def test_an_email_on_a_verified_domain_counts_as_verified(scim, db_session):
    db_session.add(
        VerifiedDomain(tenant_id=scim.tenant_id, domain="verified.example", token="t", verified_at=utcnow())
    )
    db_session.flush()
    on = scim.user("on@verified.example")
    off = scim.user("off@elsewhere.example")
    assert db_session.get(User, uuid.UUID(on["id"])).email_verified
    assert not db_session.get(User, uuid.UUID(off["id"])).email_verified


def test_an_existing_account_off_the_verified_domains_is_never_attached(api, scim, db_session):
    api.signup("other-co", email="carol@otherco.example")
    email = "carol@otherco.example"
    body = {"schemas": [USER], "userName": email, "emails": [{"value": email}]}
    r = scim("POST", "/Users", body)
    assert scim_error(r, 409, "uniqueness")["detail"].startswith("An account with this address exists")
    assert scim("GET", '/Users?filter=userName eq "carol@otherco.example"').get_json()["totalResults"] == 0


def test_filters_sorting_and_pagination(scim):
    for i, (given, family) in enumerate([("Ann", "Zed"), ("Bob", "Young"), ("Cid", "Xu"), ("Dee", "Wu")]):
        scim.user(
            f"{given.lower()}@corp.example",
            name={"givenName": given, "familyName": family},
            externalId=f"x{i}",
        )

    def names(query: str) -> list[str]:
        r = scim("GET", f"/Users?{query}")
        assert r.status_code == 200 and r.mimetype == SCIM, r.get_data(as_text=True)
        return [u["userName"] for u in r.get_json()["Resources"]]

    assert names('filter=userName eq "BOB@corp.example"') == ["bob@corp.example"]  # caseExact false
    assert names('filter=userName sw "c"') == ["cid@corp.example"]
    assert names('filter=name.familyName co "U"&sortBy=userName') == [
        "bob@corp.example",
        "cid@corp.example",
        "dee@corp.example",
    ]
    assert names(
        'filter=externalId pr and (name.givenName eq "Ann" or name.givenName eq "Dee")&sortBy=userName'
    ) == ["ann@corp.example", "dee@corp.example"]
    assert names(
        'filter=emails[type eq "work" and value ew "@corp.example"]'
        ' and not (userName eq "ann@corp.example")&sortBy=userName'
    ) == [
        "bob@corp.example",
        "cid@corp.example",
        "dee@corp.example",
    ]
    assert names('filter=externalId eq "X1"') == []  # externalId is caseExact
    assert names("filter=active eq true&sortBy=name.familyName") == [
        "dee@corp.example",
        "cid@corp.example",
        "bob@corp.example",
        "ann@corp.example",
    ]
    assert names("sortBy=userName&sortOrder=descending&count=2") == ["dee@corp.example", "cid@corp.example"]
    page = scim("GET", "/Users?sortBy=userName&startIndex=2&count=2").get_json()
    assert page["totalResults"] == 4 and page["startIndex"] == 2 and page["itemsPerPage"] == 2
    assert [u["userName"] for u in page["Resources"]] == ["bob@corp.example", "cid@corp.example"]
    assert scim("GET", "/Users?count=0").get_json() | {"Resources": None} == {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": 4,
        "startIndex": 1,
        "itemsPerPage": 0,
        "Resources": None,
    }
    only = scim("GET", '/Users?filter=userName eq "ann@corp.example"&attributes=userName').get_json()[
        "Resources"
    ][0]
    assert set(only) == {"schemas", "id", "userName"}
    r = scim(
        "POST",
        "/Users/.search",
        {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
            "filter": 'name.givenName sw "B"',
            "excludedAttributes": ["emails"],
        },
    )
    assert [u["userName"] for u in r.get_json()["Resources"]] == ["bob@corp.example"]
    assert "emails" not in r.get_json()["Resources"][0]
    for bad in (
        "userName eq",
        'nickName eq "x"',
        'userName eq "a" and',
        "active gt true",
        'meta.created gt "nope"',
    ):
        scim_error(scim("GET", f"/Users?filter={bad}"), 400, "invalidFilter")
    scim_error(scim("GET", "/Users?sortBy=password"), 400, "invalidFilter")
    scim_error(scim("GET", "/Users?count=ten"), 400, "invalidValue")


# --- PATCH as Entra ID and Okta send it -------------------------------------------------------------


def test_entra_id_patch_shapes(scim, db_session):
    u = scim.user(
        "grace@corp.example",
        externalId="g-1",
        schemas=[USER, ENTERPRISE],
        emails=[{"value": "grace@corp.example", "type": "work", "primary": True}],
    )
    path = f"/Users/{u['id']}"
    r = scim.patch(
        path,
        {
            "op": "Replace",
            "value": {
                "displayName": "Grace H",
                "name.givenName": "Grace",
                'emails[type eq "work"].value': "grace.h@corp.example",
                f"{ENTERPRISE}:department": "Navy",
            },
        },
        {"op": "Add", "path": "name.familyName", "value": "Hopper"},
        {"op": "Add", "path": f"{ENTERPRISE}:manager", "value": u["id"]},
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert body["displayName"] == "Grace H" and body["name"] == {"givenName": "Grace", "familyName": "Hopper"}
    assert body[ENTERPRISE]["department"] == "Navy" and body[ENTERPRISE]["manager"]["value"] == u["id"]
    assert body["meta"]["version"] == 'W/"2"' and r.headers["ETag"] == 'W/"2"'
    work = [e for e in body["emails"] if e.get("type") == "work"]
    assert work and work[0]["value"] == "grace.h@corp.example"
    assert scim("GET", '/Users?filter=name.familyName eq "Hopper"').get_json()["totalResults"] == 1
    # Entra's deprovisioning: active as the string "False"
    r = scim.patch(path, {"op": "Replace", "path": "active", "value": "False"})
    assert r.status_code == 200 and r.get_json()["active"] is False
    m = db_session.scalars(select(Membership).where(Membership.user_id == uuid.UUID(u["id"]))).one()
    assert m.status == "suspended"
    r = scim.patch(path, {"op": "replace", "value": {"active": True}})  # path-less replace with a dict
    assert r.status_code == 200 and r.get_json()["active"] is True
    db_session.refresh(m)
    assert m.status == "active"


def test_okta_patch_and_put_shapes(scim, db_session):
    a, b = scim.user("a@corp.example"), scim.user("b@corp.example")
    g = scim.group("Engineering")
    gpath = f"/Groups/{g['id']}"
    r = scim.patch(
        gpath,
        {"op": "add", "path": "members", "value": [{"value": a["id"], "display": "A"}, {"value": b["id"]}]},
    )
    assert r.status_code == 200 and {m["value"] for m in r.get_json()["members"]} == {a["id"], b["id"]}
    r = scim.patch(gpath, {"op": "remove", "path": f'members[value eq "{a["id"]}"]'})
    assert [m["value"] for m in r.get_json()["members"]] == [b["id"]]
    r = scim.patch(
        gpath, {"op": "Remove", "path": "members", "value": [{"value": b["id"]}]}
    )  # Entra's removal
    assert r.status_code == 200 and "members" not in r.get_json()
    r = scim.patch(gpath, {"op": "replace", "value": {"id": g["id"], "displayName": "Eng"}})  # Okta's rename
    assert r.get_json()["displayName"] == "Eng"
    # Okta deactivates with PUT active false (and sends a password, never stored)
    put = {
        "schemas": [USER],
        "userName": "a@corp.example",
        "active": False,
        "password": "hunter2-secret",
        "emails": [{"value": "a@corp.example", "primary": True, "type": "work"}],
    }
    r = scim("PUT", f"/Users/{a['id']}", put)
    assert r.status_code == 200 and r.get_json()["active"] is False and "password" not in r.get_json()
    assert "hunter2" not in str(db_session.get(ScimUser, (scim.tenant_id, uuid.UUID(a["id"]))).data)
    assert db_session.get(User, uuid.UUID(a["id"])).password_hash is None


def test_etags_and_if_match(scim):
    u = scim.user("e@corp.example")
    path = f"/Users/{u['id']}"
    r = scim("GET", path)
    assert r.headers["ETag"] == 'W/"1"' == r.get_json()["meta"]["version"]
    assert scim("GET", path, If_None_Match='W/"1"').status_code == 304
    op = {"op": "replace", "path": "displayName", "value": "E"}
    assert scim.patch(path, op, If_Match='W/"1"').headers["ETag"] == 'W/"2"'
    scim_error(scim.patch(path, {**op, "value": "stale"}, If_Match='W/"1"'), 412)
    scim_error(scim("PUT", path, {"schemas": [USER], "userName": "x@corp.example"}, If_Match='W/"1"'), 412)
    scim_error(scim("DELETE", path, If_Match='"1"'), 412)
    assert scim("GET", path).get_json()["displayName"] == "E"  # nothing changed
    assert scim.patch(path, {**op, "value": "F"}, If_Match="*").status_code == 200
    g = scim.group("Ops")
    scim_error(
        scim.patch(
            f"/Groups/{g['id']}", {"op": "replace", "path": "displayName", "value": "X"}, If_Match='W/"9"'
        ),
        412,
    )
    assert scim("DELETE", f"/Groups/{g['id']}", If_Match='W/"1"').status_code == 204


def test_bad_bodies_are_scim_400s_and_change_nothing(scim, db_session):
    u = scim.user("keep@corp.example", displayName="Keep")
    path = f"/Users/{u['id']}"
    count = db_session.scalar(select(func.count()).select_from(ScimUser))
    members_before = db_session.scalar(select(func.count()).select_from(Membership))
    cases = [
        ("POST", "/Users", {"schemas": [USER]}, "invalidValue"),  # no userName
        ("POST", "/Users", {"schemas": [USER], "userName": "noemail"}, "invalidValue"),
        ("POST", "/Users", {"schemas": [USER], "userName": "n@corp.example", "emails": "x"}, "invalidValue"),
        ("POST", "/Users", ["not", "an", "object"], "invalidSyntax"),
        ("POST", "/Groups", {"schemas": [GROUP]}, "invalidValue"),
        (
            "POST",
            "/Groups",
            {"schemas": [GROUP], "displayName": "G", "members": [{"value": str(uuid.uuid4())}]},
            "invalidValue",
        ),
        (
            "PATCH",
            path,
            {"schemas": [PATCH], "Operations": [{"op": "explode", "path": "displayName"}]},
            "invalidValue",
        ),
        (
            "PATCH",
            path,
            {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "nope", "value": 1}]},
            "invalidValue",
        ),
        (
            "PATCH",
            path,
            {
                "schemas": [PATCH],
                "Operations": [
                    {"op": "replace", "path": "displayName", "value": "Changed"},
                    {"op": "remove", "path": "userName"},
                ],
            },
            "invalidValue",
        ),
        ("PUT", path, {"schemas": [USER], "displayName": "Changed"}, "invalidValue"),
    ]
    for method, where, body, scim_type in cases:
        r = scim(method, where, body)
        assert r.status_code == 400, (method, where, body, r.get_data(as_text=True))
        assert r.get_json()["schemas"] == [ERROR] and r.get_json()["status"] == "400"
        assert r.get_json().get("scimType") in (scim_type, "invalidPath", "mutability", "noTarget"), (
            r.get_json()
        )
    r = scim.client.post(
        "/scim/v2/Users",
        data=b"{not json",
        headers={"Authorization": f"Bearer {scim.token}", "Content-Type": SCIM},
    )
    scim_error(r, 400, "invalidSyntax")
    assert db_session.scalar(select(func.count()).select_from(ScimUser)) == count
    assert db_session.scalar(select(func.count()).select_from(Membership)) == members_before
    got = scim("GET", path).get_json()
    assert got["displayName"] == "Keep" and got["meta"]["version"] == 'W/"1"'
    scim_error(scim("GET", "/Nope"), 404)
    scim_error(scim("POST", "/Schemas"), 405)


# --- deprovisioning -------------------------------------------------------------------------------


def _sign_in(app, client, db_session, user_id, email: str, tenant: str) -> dict:
    user = db_session.get(User, uuid.UUID(user_id))
    user.password_hash = services(app).passwords.hash(TEST_PASSWORD)
    db_session.flush()
    r = client.post("/api/v1/auth/login", json={"email": email, "password": TEST_PASSWORD, "tenant": tenant})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


@pytest.mark.parametrize("how", ["active-false", "delete"])
def test_deprovisioning_ends_sessions_at_once_and_frees_the_seat(app, client, scim, db_session, how):
    u = scim.user("leaver@corp.example")
    tokens = _sign_in(app, client, db_session, u["id"], "leaver@corp.example", scim.owner["tenant"]["slug"])
    h = bearer(tokens["access_token"])
    assert client.get("/api/v1/me", headers=h).status_code == 200
    seats = seats_used(db_session, scim.tenant_id)
    if how == "delete":
        assert scim("DELETE", f"/Users/{u['id']}").status_code == 204
        scim_error(scim("GET", f"/Users/{u['id']}"), 404)
    else:
        r = scim.patch(f"/Users/{u['id']}", {"op": "replace", "path": "active", "value": False})
        assert r.status_code == 200 and r.get_json()["active"] is False
    assert client.get("/api/v1/me", headers=h).status_code == 401  # the very next request
    r = client.post(
        "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert r.status_code in (400, 401) and r.get_json()["error"] == "invalid_grant"
    assert seats_used(db_session, scim.tenant_id) == seats - 1
    action = "member.removed" if how == "delete" else "member.deactivated"
    assert [e["data"]["source"] for e in _events(client, scim.headers, action)] == ["scim"]
    r = client.post(
        "/api/v1/auth/login",
        json={
            "email": "leaver@corp.example",
            "password": TEST_PASSWORD,
            "tenant": scim.owner["tenant"]["slug"],
        },
    )
    assert r.status_code in (401, 403)


def test_scim_never_deactivates_or_demotes_the_last_owner(client, api, db_session):
    _, h = _tenant(api, db_session, "scim-owner", email="boss@owner.example")
    scim = Scim(client, _token(client, h))
    o = scim.user("boss@owner.example")  # linked to the existing owner, role kept
    m = db_session.scalars(select(Membership).where(Membership.user_id == uuid.UUID(o["id"]))).one()
    assert m.role == "owner"
    scim_error(scim.patch(f"/Users/{o['id']}", {"op": "replace", "path": "active", "value": False}), 409)
    scim_error(scim("DELETE", f"/Users/{o['id']}"), 409)
    g = scim.group("Viewer", [o["id"]])  # maps to viewer by name
    assert g["members"][0]["value"] == o["id"]
    db_session.refresh(m)
    assert m.role == "owner" and m.status == "active"


# --- groups to roles -----------------------------------------------------------------------------


def test_groups_map_to_roles_most_powerful_wins(client, scim, db_session):
    r = client.put(
        "/api/v1/scim/settings",
        json={"group_roles": {"Engineering": "admin"}, "default_role": "viewer"},
        headers=scim.headers,
    )
    assert r.status_code == 200 and r.get_json() == {
        "group_roles": {"Engineering": "admin"},
        "default_role": "viewer",
    }
    u = scim.user("dev@corp.example")

    def role() -> str:
        db_session.expire_all()
        return db_session.scalars(
            select(Membership.role).where(Membership.user_id == uuid.UUID(u["id"]))
        ).one()

    assert role() == "viewer"  # the default role
    member_group = scim.group("member", [u["id"]])  # a group named like a role
    assert role() == "member"
    eng = scim.group("engineering", [u["id"]])  # the mapping, case-insensitively
    assert role() == "admin"
    assert {g["display"] for g in scim("GET", f"/Users/{u['id']}").get_json()["groups"]} == {
        "member",
        "engineering",
    }
    scim.patch(f"/Groups/{eng['id']}", {"op": "remove", "path": f'members[value eq "{u["id"]}"]'})
    assert role() == "member"
    scim("DELETE", f"/Groups/{member_group['id']}")
    assert role() == "viewer"
    changes = _events(client, scim.headers, "member.role_changed")
    assert [(e["data"]["from"], e["data"]["to"], e["data"]["source"]) for e in changes] == [
        ("viewer", "member", "scim"),
        ("member", "admin", "scim"),
        ("admin", "member", "scim"),
        ("member", "viewer", "scim"),
    ]
    assert len(_events(client, scim.headers, "scim.group_created")) == 2


def test_settings_refuse_unknown_roles_and_roles_above_the_caller(app, client, scim):
    r = client.put("/api/v1/scim/settings", json={"group_roles": {"X": "emperor"}}, headers=scim.headers)
    assert_problem(r, 422)
    _, admin = role_headers(app, scim.tenant_id, "admin")
    r = client.put("/api/v1/scim/settings", json={"group_roles": {"Root": "owner"}}, headers=admin)
    assert_problem(r, 403, "role_not_assignable")
    assert client.get("/api/v1/scim/settings", headers=admin).get_json() == {
        "group_roles": {},
        "default_role": "member",
    }


def test_a_group_names_are_unique_per_tenant(scim, db_session):
    scim.group("Sales")
    scim_error(scim("POST", "/Groups", {"schemas": [GROUP], "displayName": "sales"}), 409, "uniqueness")
    assert (
        db_session.scalar(
            select(func.count()).select_from(ScimGroup).where(ScimGroup.tenant_id == scim.tenant_id)
        )
        == 1
    )
    r = scim("GET", '/Groups?filter=displayName eq "SALES"&excludedAttributes=members')
    assert r.get_json()["totalResults"] == 1


def test_a_member_removed_through_the_api_can_be_provisioned_again(client, scim, db_session):
    u = scim.user("again@corp.example")
    g = scim.group("Team", [u["id"]])
    r = client.delete(f"/api/v1/members/{u['id']}", headers=scim.headers)
    assert r.status_code == 204, r.get_json()
    scim_error(scim("GET", f"/Users/{u['id']}"), 404)
    assert "members" not in scim("GET", f"/Groups/{g['id']}").get_json()
    again = scim.user("again@corp.example")
    assert again["id"] == u["id"] and again["active"] is True
    assert (
        db_session.scalars(select(Membership.status).where(Membership.user_id == uuid.UUID(u["id"]))).one()
        == "active"
    )


def test_a_full_plan_refuses_a_new_member_as_a_scim_error_and_reactivation_takes_a_seat(
    app, client, scim, db_session
):
    from saas.billing import entitlements
    from saas.billing.models import BillingOverride

    u = scim.user("first@corp.example")  # the owner and this member: two seats
    db_session.get(BillingOverride, scim.tenant_id).limits = {"seats": 2}
    db_session.flush()
    with app.app_context():  # the cached billing state in the app's Redis goes too
        entitlements.invalidate(db_session, scim.tenant_id)
    r = scim("POST", "/Users", {"schemas": [USER], "userName": "second@corp.example",
                                "emails": [{"value": "second@corp.example"}]})  # fmt: skip
    body = scim_error(r, 402)
    assert "seat" in body["detail"].lower()
    assert scim("GET", '/Users?filter=userName eq "second@corp.example"').get_json()["totalResults"] == 0
    scim.patch(f"/Users/{u['id']}", {"op": "replace", "path": "active", "value": False})  # frees the seat
    assert scim.user("second@corp.example")["active"] is True
    r = scim.patch(f"/Users/{u['id']}", {"op": "replace", "path": "active", "value": True})  # no seat left
    scim_error(r, 402)
    assert scim("GET", f"/Users/{u['id']}").get_json()["active"] is False
