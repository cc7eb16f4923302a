"""List pages (saas.pagination): cursor pages that walk every row once, offset pages as before
with a bounded total, opaque signed cursors bound to their tenant and list, documents derived
from the resource's schema (a field added to a model, its schema and a migration appears in the
list and the single document with no other change)."""

from __future__ import annotations

import base64
import datetime
import json
import re
import uuid
from urllib.parse import parse_qs, urlsplit

import marshmallow as ma
import pytest
from flask.views import MethodView
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    event,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from saas import create_app, db
from saas.api import Blueprint
from saas.auth.context import require
from saas.db import TENANT_PLACEHOLDER, Database
from saas.errors import NotFound
from saas.pagination import Listing, _Renderer
from saas.services import services
from tenants import contacts
from tests.conftest import Api
from tests.helpers import assert_problem


@pytest.fixture()
def owner(api):
    return api.signup("pages")


@pytest.fixture()
def h(api, owner):
    return api.auth(owner)


def _schema(owner) -> str:
    return "t_" + uuid.UUID(owner["tenant"]["id"]).hex


def _create(client, h, **fields):
    r = client.post("/api/v1/contacts", json={"name": "Someone", **fields}, headers=h)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def _next(response) -> str | None:
    """The path and query of ``Link: <...>; rel="next"``, or None."""
    link = response.headers.get("Link")
    if link is None:
        return None
    found = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert found, link
    return found[1]


def _walk(client, h, first: str, between=None) -> list[dict]:
    """Every item of a cursor walk from ``first``, following ``Link``; ``between(n)`` runs
    after the n-th page."""
    items, url, n = [], first, 0
    while url is not None:
        r = client.get(url, headers=h)
        assert r.status_code == 200, r.get_json()
        meta = json.loads(r.headers["X-Pagination"])
        nxt = _next(r)
        assert meta["next_cursor"] == (parse_qs(urlsplit(nxt).query)["cursor"][0] if nxt else None)
        items += r.get_json()
        n += 1
        if between is not None:
            between(n)
        url = nxt
        assert n < 100
    return items


# --- cursor pages -------------------------------------------------------------------------------------


def _python_order(items, sort):
    """The list's order: the column (NULLs last ascending, first descending), then the id, both
    in the sort's direction."""
    key = sort.lstrip("-")
    desc = sort.startswith("-")

    def k(item):
        value = item[key]
        return (value is None, value or "", uuid.UUID(item["id"]))

    ordered = sorted(items, key=k)
    return ordered[::-1] if desc else ordered


@pytest.mark.parametrize("sort", ["-created_at", "created_at", "name", "-name", "email", "-email", "company"])
def test_cursor_walk_visits_every_row_once_in_order(client, h, connection, owner, sort):
    """Ties in the sort column (the tie-breaker decides) and NULLs (a nullable column) included."""
    for i in range(11):
        _create(
            client,
            h,
            name=f"N{i % 4}",  # ties
            email=None if i % 3 == 0 else f"e{i % 5}@x.test",  # NULLs and ties
            company=None if i % 2 else "Acme",
        )
    # a tie on created_at too
    connection.execute(text(f"UPDATE \"{_schema(owner)}\".contacts SET created_at = now() WHERE name = 'N1'"))  # noqa: S608
    everything = client.get(f"/api/v1/contacts?sort={sort}&page_size=100", headers=h).get_json()
    assert len(everything) == 11
    walked = _walk(client, h, f"/api/v1/contacts?sort={sort}&page_size=3&cursor=")
    assert [c["id"] for c in walked] == [c["id"] for c in everything]
    if sort.lstrip("-") != "created_at":
        assert [c["id"] for c in walked] == [c["id"] for c in _python_order(everything, sort)]


@pytest.mark.parametrize("sort", ["-created_at", "name", "email"])
def test_cursor_walk_under_inserts_and_deletes_has_no_duplicates_or_gaps(client, h, sort):
    """Rows inserted or deleted while a client walks: every row there for the whole walk is seen
    exactly once (an offset walk would repeat or skip rows here)."""
    initial = [_create(client, h, name=f"M{i:02d}", email=f"m{i:02d}@x.test")["id"] for i in range(12)]
    doomed = initial[7]
    added = []

    def churn(n):
        if n == 1:  # before and after the position, in every sort
            added.append(_create(client, h, name="A-first", email="a@x.test")["id"])
            added.append(_create(client, h, name="Z-last", email="z@x.test")["id"])
            assert client.delete(f"/api/v1/contacts/{doomed}", headers=h).status_code == 204

    walked = [c["id"] for c in _walk(client, h, f"/api/v1/contacts?sort={sort}&page_size=4&cursor=", churn)]
    assert len(walked) == len(set(walked))
    assert set(initial) - {doomed} <= set(walked)
    assert doomed not in walked
    assert set(walked) <= set(initial) | set(added)


def test_cursor_page_metadata_and_link(client, h):
    for i in range(5):
        _create(client, h, name=f"P{i}")
    r = client.get("/api/v1/contacts?sort=name&page_size=2&q=P&cursor=", headers=h)
    assert [c["name"] for c in r.get_json()] == ["P0", "P1"]
    meta = json.loads(r.headers["X-Pagination"])
    assert list(meta) == ["next_cursor"]  # not counted unless asked
    url = urlsplit(_next(r))
    assert url.path == "/api/v1/contacts"
    query = parse_qs(url.query)
    assert query == {"sort": ["name"], "page_size": ["2"], "q": ["P"], "cursor": [meta["next_cursor"]]}
    last = client.get("/api/v1/contacts?sort=name&page_size=5&cursor=", headers=h)
    assert len(last.get_json()) == 5 and "Link" not in last.headers
    assert json.loads(last.headers["X-Pagination"]) == {"next_cursor": None}


def test_count_exact_on_cursor_and_offset_pages(client, h):
    for i in range(4):
        _create(client, h, name=f"C{i}", tags=["t"] if i else [])
    r = client.get("/api/v1/contacts?page_size=2&cursor=&count=exact&tag=t", headers=h)
    assert json.loads(r.headers["X-Pagination"])["total"] == 3
    follow = client.get(_next(r), headers=h)
    assert json.loads(follow.headers["X-Pagination"]) == {"total": 3, "next_cursor": None}
    assert len(follow.get_json()) == 1
    r = client.get("/api/v1/contacts?page_size=3&count=exact", headers=h)
    assert json.loads(r.headers["X-Pagination"]) == {
        "total": 4, "total_pages": 2, "first_page": 1, "last_page": 2, "page": 1, "next_page": 2,
    }  # fmt: skip
    assert_problem(client.get("/api/v1/contacts?count=estimate", headers=h), 422)


def test_offset_total_is_exact_up_to_the_cap_then_a_lower_bound(client, h, monkeypatch):
    monkeypatch.setattr(contacts.CONTACTS, "count_cap", 4)
    for i in range(9):
        _create(client, h, name=f"K{i}")

    def meta(query):
        r = client.get(f"/api/v1/contacts?sort=name&{query}", headers=h)
        assert r.status_code == 200
        return [c["name"] for c in r.get_json()], json.loads(r.headers["X-Pagination"]), _next(r)

    names, m, nxt = meta("page_size=2")
    assert names == ["K0", "K1"]
    # the window count reads offset + page_size + cap = 6 rows at most: a bound
    assert m == {"total_at_least": 6, "first_page": 1, "page": 1, "next_page": 2}
    assert nxt is not None
    names, m, _ = meta("page_size=2&page=2")  # 8 rows read: still a bound
    assert names == ["K2", "K3"]
    assert m == {"total_at_least": 8, "first_page": 1, "page": 2, "previous_page": 1, "next_page": 3}
    names, m, _ = meta("page_size=2&page=3")  # 10 rows allowed, 9 there: exact
    assert names == ["K4", "K5"] and m["total"] == 9 and m["last_page"] == 5 and m["next_page"] == 4
    names, m, nxt = meta("page_size=2&page=5")
    assert names == ["K8"] and m["total"] == 9 and "next_page" not in m and nxt is None
    names, m, _ = meta("page_size=2&page=50")  # past the end: counted apart, to the cap
    assert names == [] and m == {"total_at_least": 4, "first_page": 1}
    names, m, _ = meta("page_size=2&count=exact")
    assert m["total"] == 9 and m["total_pages"] == 5
    names, m, _ = meta("page_size=2&page=50&count=exact")
    assert names == [] and m == {"total": 9, "total_pages": 5, "first_page": 1, "last_page": 5}


def test_offset_page_links_its_next_page_as_a_cursor(client, h):
    for i in range(5):
        _create(client, h, name=f"L{i}")
    r = client.get("/api/v1/contacts?sort=-name&page_size=2&page=2", headers=h)
    assert [c["name"] for c in r.get_json()] == ["L2", "L1"]
    follow = client.get(_next(r), headers=h)
    assert [c["name"] for c in follow.get_json()] == ["L0"]
    assert "page" not in parse_qs(urlsplit(_next(r)).query)


def test_one_statement_per_cursor_page(client, h, connection):
    for i in range(3):
        _create(client, h, name=f"S{i}")
    first = client.get("/api/v1/contacts?page_size=2&cursor=", headers=h)
    statements: list[str] = []

    def record(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().split(None, 1)[0].upper() == "SELECT":
            statements.append(statement)

    event.listen(connection.engine, "before_cursor_execute", record)
    try:
        r = client.get(_next(first), headers=h)
    finally:
        event.remove(connection.engine, "before_cursor_execute", record)
    assert r.status_code == 200 and len(r.get_json()) == 1
    assert len(statements) == 1 and "count(" not in statements[0].lower()


def _plans(client, h, connection, url) -> list[str]:
    """EXPLAIN of the list statements ``url`` runs (sequential scans off: the table is tiny)."""
    seen: list[tuple[str, dict]] = []

    def record(conn, cursor, statement, params, context, executemany):
        if "contacts" in statement and statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, params))

    event.listen(connection.engine, "before_cursor_execute", record)
    try:
        assert client.get(url, headers=h).status_code == 200
    finally:
        event.remove(connection.engine, "before_cursor_execute", record)
    connection.execute(text("SET LOCAL enable_seqscan = off"))
    plans = []
    for statement, params in seen:
        rows = connection.exec_driver_sql("EXPLAIN " + statement, params).all()
        plans.append("\n".join(r[0] for r in rows))
    connection.execute(text("SET LOCAL enable_seqscan = on"))
    return plans


@pytest.mark.parametrize("sort", ["-created_at", "created_at", "name", "-email", "email", "updated_at"])
def test_pages_read_the_index_of_their_sort_and_sort_nothing(client, h, connection, sort):
    for i in range(6):
        _create(client, h, name=f"I{i}", email=None if i == 2 else f"i{i}@x.test")
    key = sort.lstrip("-")
    start = client.get(f"/api/v1/contacts?sort={sort}&page_size=2&cursor=", headers=h)
    for url in (f"/api/v1/contacts?sort={sort}&page_size=2", _next(start)):
        for plan in _plans(client, h, connection, url):
            assert f"ix_contacts_{key}_id" in plan, plan
            assert "Sort" not in plan.replace("Sort Key", "") or "Merge Append" in plan, plan


# --- cursors that are not this list's ---------------------------------------------------------------


def test_malformed_or_altered_cursor_is_a_400_problem(client, h):
    for i in range(3):
        _create(client, h, name=f"T{i}")
    good = parse_qs(urlsplit(_next(client.get("/api/v1/contacts?page_size=1&cursor=", headers=h))).query)
    cursor = good["cursor"][0]
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    payload = raw[:-16]
    forged_payload = payload.replace(b'"-created_at",', b'"-created_at","2000-01-01T00:00:00+00:00",', 1)
    altered = [
        "x",  # too short
        "!!!not-base64!!!",
        cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BA"),  # the signature
        base64.urlsafe_b64encode(forged_payload + raw[-16:]).decode().rstrip("="),  # the values
        base64.urlsafe_b64encode(b'["-created_at","2000-01-01T00:00:00+00:00","' + b"0" * 32 + b'"]')
        .decode()
        .rstrip("="),  # unsigned
    ]
    for bad in altered:
        body = assert_problem(client.get(f"/api/v1/contacts?page_size=1&cursor={bad}", headers=h), 400)
        assert body["code"] == "invalid_cursor" and "not one this list issued" in body["detail"]
    body = assert_problem(
        client.get(f"/api/v1/contacts?page_size=1&sort=name&cursor={cursor}", headers=h), 400
    )
    assert body["code"] == "invalid_cursor" and "sort=-created_at" in body["detail"]
    body = assert_problem(client.get(f"/api/v1/contacts?page=2&cursor={cursor}", headers=h), 400)
    assert "either page or cursor" in body["detail"]
    assert_problem(client.get("/api/v1/contacts?cursor=" + "A" * 3000, headers=h), 422)


def test_a_cursor_is_bound_to_its_tenant(api, client):
    """Tenant B replaying tenant A's cursor gets the answer any garbage gets: no row of either
    tenant, nothing telling it apart from a cursor that never existed."""
    a = api.auth(api.signup("cursor-a"))
    b = api.auth(api.signup("cursor-b"))
    for i in range(3):
        _create(client, a, name=f"Secret A{i}", email=f"a{i}@a.test")
        _create(client, b, name=f"B{i}")
    for sort in ("-created_at", "name", "email"):
        link = _next(client.get(f"/api/v1/contacts?sort={sort}&page_size=1&cursor=", headers=a))
        assert client.get(link, headers=a).status_code == 200
        replay = client.get(link, headers=b)
        body = assert_problem(replay, 400, "invalid_cursor")
        garbage = assert_problem(
            client.get(f"/api/v1/contacts?sort={sort}&cursor=AAAAAAAAAAAAAAAAAAAAAAAAAA", headers=b), 400
        )
        assert body["detail"] == garbage["detail"]
        assert "Secret" not in replay.get_data(as_text=True) and "a.test" not in replay.get_data(as_text=True)
        assert "Link" not in replay.headers and "X-Pagination" not in replay.headers


# --- the document comes from the schema --------------------------------------------------------------

_meta = MetaData(schema=TENANT_PLACEHOLDER)


class _Base(DeclarativeBase):
    metadata = _meta


class Gadget(_Base):
    """Version 1 of a product resource written for this test: a table, its model, its schema."""

    __tablename__ = "gadgets"
    __table_args__ = (Index("ix_gadgets_created_at_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), default=db.utcnow)


class GadgetSchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    name = ma.fields.String(required=True)
    created_at = ma.fields.DateTime(dump_only=True)


# Version 2 is the change under test, "a field added": the model gains a column, the schema a
# field, and a migration adds the column (below, ALTER TABLE). Nothing else is written for it.
_meta_v2 = MetaData(schema=TENANT_PLACEHOLDER)


class _BaseV2(DeclarativeBase):
    metadata = _meta_v2


class GadgetV2(_BaseV2):
    __tablename__ = "gadgets"
    __table_args__ = (Index("ix_gadgets_created_at_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), default=db.utcnow)
    colour: Mapped[str | None] = mapped_column(String(20))  # the new column


class GadgetSchemaV2(GadgetSchema):
    colour = ma.fields.String(allow_none=True)  # the new field


def _gadget_resource(name: str, model, schema) -> Blueprint:
    """The resource's code, written once like tenants/contacts.py: a list and a single document."""
    blp = Blueprint(name, __name__, url_prefix=f"/api/v1/{name}")
    listing = Listing(model, schema, sorts=("created_at",), default_sort="-created_at")

    @blp.route("")
    class Items(MethodView):
        @require("contacts:read")
        @blp.arguments(listing.Args(), location="query")
        @blp.response(200, schema(many=True))
        @blp.paginate()
        def get(self, args, pagination_parameters):
            return listing.page(args, pagination_parameters)

    @blp.route("/<uuid:item_id>")
    class Item(MethodView):
        @require("contacts:read")
        @blp.response(200, schema)
        def get(self, item_id):
            item = db.session().get(model, item_id)
            if item is None:
                raise NotFound("No such item.")
            return item

    return blp


@pytest.fixture()
def gadget_app(settings, engine, redis_client, connection):
    app = create_app(settings, database=Database(engine), redis=redis_client)
    app.testing = True
    services(app).database.bind = connection
    smorest = app.extensions["flask-smorest"]["blp_name_to_api"]["contacts"]
    smorest.register_blueprint(_gadget_resource("gadgets", Gadget, GadgetSchema))
    smorest.register_blueprint(_gadget_resource("gadgets-v2", GadgetV2, GadgetSchemaV2))
    return app


def test_a_field_added_to_model_schema_and_migration_appears_in_list_and_document(gadget_app, connection):
    client = gadget_app.test_client()
    owner = Api(client).signup("gadgets")
    h = Api.auth(owner)
    schema = _schema(owner)
    tenant = connection.execution_options(schema_translate_map={TENANT_PLACEHOLDER: schema})
    _meta.create_all(tenant)  # version 1's migration
    tenant.execute(Gadget.__table__.insert(), [{"id": uuid.uuid4(), "name": f"G{i}"} for i in range(3)])
    before = client.get("/api/v1/gadgets", headers=h).get_json()
    assert len(before) == 3 and set(before[0]) == {"id", "name", "created_at"}

    connection.execute(text(f'ALTER TABLE "{schema}".gadgets ADD COLUMN colour varchar(20)'))  # the migration
    connection.execute(text(f"UPDATE \"{schema}\".gadgets SET colour = 'teal' WHERE name = 'G1'"))  # noqa: S608
    r = client.get("/api/v1/gadgets-v2", headers=h)
    items = r.get_json()
    assert {item["name"]: item["colour"] for item in items} == {"G0": None, "G1": "teal", "G2": None}
    singles = [client.get(f"/api/v1/gadgets-v2/{item['id']}", headers=h).get_json() for item in items]
    assert items == singles and set(singles[0]) == {"id", "name", "created_at", "colour"}
    assert r.get_data() == gadget_app.json.dumpb(singles) + b"\n"
    # the new version's cursor pages too, and a cursor is bound to its list
    walked = _walk(client, h, "/api/v1/gadgets-v2?page_size=2&cursor=")
    assert walked == items
    link = _next(client.get("/api/v1/gadgets-v2?page_size=2&cursor=", headers=h))
    foreign = client.get(link.replace("/gadgets-v2", "/contacts"), headers=h)
    assert_problem(foreign, 400, "invalid_cursor")


class _Shout(ma.fields.String):
    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else value.upper()


def test_each_field_is_rendered_as_the_schema_dumps_it():
    """The list's renderer against ``Schema.dump`` over the same rows: fields it passes through,
    converts (isoformat, str of a UUID) and hands to marshmallow (a custom field, data_key,
    attribute, a number as a string)."""
    table = Table(
        "render_probe",
        MetaData(),
        Column("id", Uuid, primary_key=True),
        Column("label", Text),
        Column("at", DateTime(timezone=True)),
        Column("n", Integer),
        Column("tags", ARRAY(Text)),
        Column("doc", JSONB),
        Column("owner", Uuid),
    )

    class Probe(ma.Schema):
        id = ma.fields.UUID()
        label = ma.fields.String(allow_none=True)
        loud = _Shout(attribute="label", dump_only=True)
        at = ma.fields.DateTime(allow_none=True)
        stamp = ma.fields.DateTime(attribute="at", format="rfc", allow_none=True, dump_only=True)
        n = ma.fields.Integer(allow_none=True)
        n_text = ma.fields.Integer(attribute="n", as_string=True, allow_none=True, dump_only=True)
        tags = ma.fields.List(ma.fields.String())
        doc = ma.fields.Dict()
        raw = ma.fields.Raw(attribute="doc", dump_only=True)
        owner = ma.fields.String(data_key="ownerId", allow_none=True)

    listing = Listing(table, Probe, sorts=("id",), default_sort="id")
    tz = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    at = datetime.datetime(2026, 1, 2, 3, 4, 5, 746790, tzinfo=tz)
    rows = [
        {
            "id": uuid.uuid4(), "label": "a é", "at": at,
            "n": 7, "tags": ["x", "y"], "doc": {"k": [1, "v"]}, "owner": uuid.uuid4(),
        },
        {
            "id": uuid.uuid4(), "label": None, "at": at.replace(microsecond=0),
            "n": None, "tags": [], "doc": {}, "owner": None,
        },
    ]  # fmt: skip
    as_rows = [tuple(row[label] for label in listing._labels) for row in rows]
    assert listing._renderer.render(as_rows) == Probe().dump(rows, many=True)
    fast = {key for _, key, _ in listing._renderer.converts}
    slow = {key for _, key, _, _ in listing._renderer.serializers}
    assert fast == {"id", "at", "ownerId"} and slow == {"loud", "stamp", "n_text"}

    class Hooked(Probe):
        @ma.post_dump
        def mark(self, data, **kwargs):
            return {**data, "hooked": True}

    hooked = Listing(table, Hooked, sorts=("id",), default_sort="id")
    assert hooked._renderer.render(as_rows) == Hooked().dump(rows, many=True)


def test_contacts_list_renders_its_schema_without_marshmallow():
    renderer: _Renderer = contacts.CONTACTS._renderer
    assert renderer.serializers == [] and not renderer.with_hooks
    assert renderer.keys == tuple(contacts.ContactSchema().dump_fields)


def test_a_listing_refuses_what_it_cannot_serve():
    table = Table("refusals", MetaData(), Column("id", Integer, primary_key=True), Column("name", Text))

    class Unindexed(ma.Schema):
        id = ma.fields.Integer()
        name = ma.fields.String()

    with pytest.raises(TypeError, match=r"needs an index on \(name, id\)"):
        Listing(table, Unindexed, sorts=("name",), default_sort="name")

    class NotAColumn(Unindexed):
        shout = ma.fields.String(attribute="nothing")

    with pytest.raises(TypeError, match="'nothing' is not a column"):
        Listing(table, NotAColumn, sorts=("id",), default_sort="id")
    assert select(*Listing(table, Unindexed, sorts=("id",), default_sort="-id")._columns) is not None
