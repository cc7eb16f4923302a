"""Tenant isolation (design invariants 1 to 5): two tenants with identical data cannot see or
change each other's contacts, members or audit events through any endpoint."""

from __future__ import annotations

import re
import uuid

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import ProgrammingError

from saas import create_app
from saas.db import Database, check_schema_name, schema_name_for, translate_map
from saas.identity.models import Membership, Tenant
from saas.services import services
from tenants.models import Contact
from tests.helpers import assert_problem, bearer, drop_tenant, token_for

CONTACT = {"name": "Ada Lovelace", "email": "ada@example.test", "company": "Engines", "tags": ["vip"]}


@pytest.fixture()
def pair(api, client):
    """Tenants A and B, each with the same contact and the same kind of owner."""
    out = {}
    for slug in ("acme", "globex"):
        signup = api.signup(slug)
        h = api.auth(signup)
        r = client.post("/api/v1/contacts", json=CONTACT, headers=h)
        assert r.status_code == 201
        out[slug] = {
            "h": h,
            "tenant_id": signup["tenant"]["id"],
            "user_id": signup["user"]["id"],
            "contact_id": r.get_json()["id"],
            "etag": r.headers["ETag"],
        }
    return out["acme"], out["globex"]


def _contact_of_a(client, a):
    r = client.get(f"/api/v1/contacts/{a['contact_id']}", headers=a["h"])
    assert r.status_code == 200
    return r.get_json()


def test_lists_show_only_own_rows(client, pair):
    a, b = pair
    for who in (a, b):
        contacts = client.get("/api/v1/contacts", headers=who["h"]).get_json()
        assert [c["id"] for c in contacts] == [who["contact_id"]]
        members = client.get("/api/v1/members", headers=who["h"]).get_json()
        assert [m["user_id"] for m in members] == [who["user_id"]]
        events = client.get("/api/v1/audit-events", headers=who["h"]).get_json()
        assert events
        own = {who["user_id"], who["contact_id"], who["tenant_id"]}
        for e in events:
            assert e["actor"]["id"] == who["user_id"]
            assert e["target"]["id"] in own
        me = client.get("/api/v1/me", headers=who["h"]).get_json()
        assert me["tenant"]["id"] == who["tenant_id"]
        assert client.get("/api/v1/tenant", headers=who["h"]).get_json()["id"] == who["tenant_id"]


@pytest.mark.parametrize(
    ("method", "kind", "body"),
    [
        ("get", "contact", None),
        ("patch", "contact", {"name": "Hijacked"}),
        ("delete", "contact", None),
        ("patch", "member", {"role": "viewer"}),
        ("delete", "member", None),
    ],
)
def test_id_guessing_is_404_and_changes_nothing(client, pair, method, kind, body):
    a, b = pair
    target = a["contact_id"] if kind == "contact" else a["user_id"]
    path = f"/api/v1/contacts/{target}" if kind == "contact" else f"/api/v1/members/{target}"
    headers = dict(b["h"])
    if kind == "contact" and method != "get":
        headers["If-Match"] = a["etag"]  # even with A's current ETag
    r = getattr(client, method)(path, json=body, headers=headers)
    assert_problem(r, 404, "not_found")
    # A's data is unchanged
    contact = _contact_of_a(client, a)
    assert contact["name"] == CONTACT["name"]
    members = client.get("/api/v1/members", headers=a["h"]).get_json()
    assert [(m["user_id"], m["role"]) for m in members] == [(a["user_id"], "owner")]


def test_every_id_route_is_covered_by_the_guessing_test(app):
    """Routes taking an object id under /api/v1: the ones above must be among them, and any
    contact or member id route answers another tenant's id with 404 (checked generically)."""
    id_rules = {
        r.rule for r in app.url_map.iter_rules() if r.rule.startswith("/api/v1") and "<uuid:" in r.rule
    }
    assert "/api/v1/contacts/<uuid:contact_id>" in id_rules
    assert "/api/v1/members/<uuid:user_id>" in id_rules


VALID_BODIES = {"contact_id": {"name": "x"}, "user_id": {"role": "viewer"}}


def test_generic_id_guessing_over_url_map(app, client, pair):
    a, b = pair
    ids = {"contact_id": a["contact_id"], "user_id": a["user_id"]}
    checked = 0
    for rule in app.url_map.iter_rules():
        params = re.findall(r"<uuid:(\w+)>", rule.rule)
        if not rule.rule.startswith("/api/v1") or not params or not set(params) <= set(ids):
            continue
        path = rule.rule
        for p in params:
            path = path.replace(f"<uuid:{p}>", ids[p])
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            body = VALID_BODIES.get(params[-1]) if method in ("POST", "PUT", "PATCH") else None
            r = client.open(path, method=method, json=body, headers=b["h"])
            assert r.status_code == 404, (method, path, r.status_code)
            checked += 1
    assert checked >= 5
    assert _contact_of_a(client, a)["name"] == CONTACT["name"]


def test_tenant_context_only_from_token_body_and_query_ignored(client, pair):
    """Invariant 1: a ``tenant_id`` in the query or the body never selects the tenant."""
    a, b = pair
    r = client.get(f"/api/v1/contacts?tenant_id={a['tenant_id']}", headers=b["h"])
    assert r.status_code == 200
    assert [c["id"] for c in r.get_json()] == [b["contact_id"]]
    r = client.get(f"/api/v1/members?tenant_id={a['tenant_id']}", headers=b["h"])
    assert [m["user_id"] for m in r.get_json()] == [b["user_id"]]
    r = client.post("/api/v1/contacts", json={**CONTACT, "tenant_id": a["tenant_id"]}, headers=b["h"])
    assert r.status_code in (201, 422)  # refused as an unknown field, or created in B
    if r.status_code == 422:
        assert "tenant_id" in r.get_json()["errors"]
    assert len(client.get("/api/v1/contacts", headers=a["h"]).get_json()) == 1
    r = client.get("/api/v1/me", headers={**b["h"], "X-Tenant-ID": a["tenant_id"]})
    assert r.get_json()["tenant"]["id"] == b["tenant_id"]


def test_token_of_one_tenant_with_claims_of_another_is_refused(app, client, pair):
    """A's user with a token naming B's tenant is no member there: 401, nothing leaks."""
    a, b = pair
    forged = token_for(app, a["user_id"], b["tenant_id"], "owner")
    r = client.get("/api/v1/contacts", headers=bearer(forged))
    body = assert_problem(r, 401)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert b["contact_id"] not in r.get_data(as_text=True)
    assert body["code"] == "unauthorized"


def test_token_signed_by_another_key_is_refused(client, pair, tmp_path):
    from saas.auth.keys import KeyStore
    from saas.auth.tokens import TokenService

    a, _ = pair
    other = TokenService(KeyStore(tmp_path / "keys"), "http://localhost:8000", "saas-api", 600)
    token = other.issue(
        subject=a["user_id"], tenant_id=a["tenant_id"], roles=["owner"], scope="api", client_id="saas-api"
    ).token
    assert_problem(client.get("/api/v1/contacts", headers=bearer(token)), 401)


# --- invariant 2: tenant tables resolve only through a tenant-bound session ---------------------


def test_tenant_query_without_tenant_context_fails_loudly(app, connection):
    session = services(app).database.session()  # no tenant schema
    with pytest.raises(ProgrammingError) as excinfo:
        session.execute(select(Contact)).all()
    assert '"tenant.contacts"' in str(excinfo.value) or 'schema "tenant"' in str(excinfo.value)
    session.rollback()
    session.close()
    # the placeholder schema never exists in the database
    assert connection.scalar(text("SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant'")) == 0


def test_tenant_query_on_engine_without_context_fails(engine):
    db = Database(engine)
    with db.session() as session, pytest.raises(ProgrammingError, match="tenant"):
        session.execute(select(Contact.id)).all()


def test_translate_map_refuses_non_tenant_schemas():
    assert translate_map(None) == {"tenant": "tenant"}
    good = schema_name_for(uuid.uuid4())
    assert translate_map(good) == {"tenant": good}
    for bad in ("public", "saas", 't_1"; DROP SCHEMA saas; --', "t_" + "0" * 31, "T_" + "a" * 32):
        with pytest.raises(ValueError):
            check_schema_name(bad)
        with pytest.raises(ValueError):
            translate_map(bad)


# --- invariant 5: schema names derived from ids ------------------------------------------------


def test_schema_name_is_derived_from_the_tenant_id(db_session, pair):
    a, b = pair
    for who in (a, b):
        tenant = db_session.get(Tenant, uuid.UUID(who["tenant_id"]))
        assert tenant.schema_name == "t_" + uuid.UUID(who["tenant_id"]).hex
        assert tenant.schema_name == schema_name_for(tenant.id)
        assert tenant.slug not in tenant.schema_name


# --- invariant 4: no foreign key leaves a tenant schema ----------------------------------------


def test_no_foreign_key_leaves_a_tenant_schema(connection, pair):
    rows = connection.execute(
        text(
            """
            SELECT c.conname, src.nspname AS src_schema, dst.nspname AS dst_schema
            FROM pg_constraint c
            JOIN pg_class sc ON sc.oid = c.conrelid
            JOIN pg_namespace src ON src.oid = sc.relnamespace
            JOIN pg_class dc ON dc.oid = c.confrelid
            JOIN pg_namespace dst ON dst.oid = dc.relnamespace
            WHERE c.contype = 'f' AND (src.nspname LIKE 't\\_%' OR dst.nspname LIKE 't\\_%')
              AND src.nspname <> dst.nspname
            """
        )
    ).all()
    assert rows == []
    # and tenant schemas exist for both tenants (the query above had something to look at)
    n = connection.scalar(text("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 't\\_%'"))
    assert n >= 2


def test_tenant_metadata_declares_no_foreign_keys():
    import tenants.models  # noqa: F401
    from saas.db import tenant_metadata

    assert [fk for t in tenant_metadata.tables.values() for fk in t.foreign_keys] == []


# --- invariant 3: no pooled connection carries tenant state -------------------------------------


def test_search_path_guard_refuses_session_level_set(engine):
    with engine.connect() as conn:
        for stmt in (
            "SET search_path TO public",
            "set  session search_path = public",
            "  SET\nsearch_path TO public",
            "SELECT set_config('search_path', 'public', false)",
        ):
            with pytest.raises(RuntimeError, match="search_path"):
                conn.exec_driver_sql(stmt)
            conn.rollback()
        with conn.begin():
            conn.exec_driver_sql("SET LOCAL search_path TO public")  # allowed: transaction-scoped
            conn.exec_driver_sql("SELECT set_config('search_path', 'public', true)")


@pytest.fixture()
def committed_tenant(app, engine):
    """A tenant provisioned for real (committed), dropped afterwards."""
    from saas.tenancy.provisioning import provision_tenant

    db = Database(engine)
    slug = f"pool-{uuid.uuid4().hex[:8]}"
    with app.app_context(), db.transaction() as session:
        done = provision_tenant(
            session,
            services(app).passwords,
            slug=slug,
            name="Pool",
            owner_email=f"o@{slug}.test",
            owner_password=None,
        )
        tenant_id, user_id = done.tenant.id, done.owner.id
    yield tenant_id, user_id
    drop_tenant(engine, tenant_id)


def test_no_pooled_connection_carries_tenant_state(
    app, settings, redis_client, database_url, committed_tenant
):
    tenant_id, user_id = committed_tenant
    eng = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        from saas.db import _guard_search_path

        _guard_search_path(eng)
        with eng.connect() as conn:
            default_path = conn.scalar(text("SHOW search_path"))
        real = create_app(settings, database=Database(eng), redis=redis_client)
        h = bearer(token_for(real, user_id, tenant_id, "owner"))
        with real.test_client() as c:
            r = c.post("/api/v1/contacts", json=CONTACT, headers=h)
            assert r.status_code == 201, r.get_json()
            assert len(c.get("/api/v1/contacts", headers=h).get_json()) == 1
        # the one pooled connection served the tenant request; it carries no tenant state now
        assert eng.pool.checkedout() == 0
        with eng.connect() as conn:
            assert conn.scalar(text("SHOW search_path")) == default_path
            assert "t_" not in conn.scalar(text("SELECT current_schemas(false)::text"))
            # a tenant-table query on this connection without context still fails
            with pytest.raises(ProgrammingError):
                conn.execute(select(Contact.id)).all()
    finally:
        eng.dispose()


def test_tenant_migration_uses_set_local(engine, committed_tenant):
    from saas.migrate import upgrade_tenant_schema

    tenant_id, _ = committed_tenant
    with engine.connect() as conn:
        default_path = conn.scalar(text("SHOW search_path"))
        conn.rollback()
        with conn.begin():
            upgrade_tenant_schema(conn, schema_name_for(tenant_id))
        assert conn.scalar(text("SHOW search_path")) == default_path


def test_membership_rows_are_scoped_by_tenant(db_session, pair):
    a, b = pair
    rows = db_session.execute(select(Membership.tenant_id, Membership.user_id)).all()
    assert {(str(t), str(u)) for t, u in rows} >= {
        (a["tenant_id"], a["user_id"]),
        (b["tenant_id"], b["user_id"]),
    }
