"""The audit log's hash chain (docs/audit.md, "Tamper evidence") and its export
(``GET /api/v1/audit-events/export``), in the test's rolled-back transaction: every event links
to the one before it, each kind of tampering is named at its first broken link, redaction
keeps the chain verifiable, existing events are chained by the migration, and the export
streams keyset batches, is CSV-injection safe and refuses bad parameters with problems."""

from __future__ import annotations

import csv
import io
import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Text, cast, event, select, text

from saas import audit, audit_api
from saas.audit import GENESIS, AuditAction, AuditChain, AuditEvent, verify_chain
from saas.db import schema_name_for, translate_map
from saas.services import services
from tests.helpers import assert_problem, role_headers

#: the tests' clock (no test depends on today's date)
NOW = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture()
def owner(api):
    return api.signup("chain")


def _schema(owner) -> str:
    return schema_name_for(uuid.UUID(owner["tenant"]["id"]))


@pytest.fixture()
def tenant_session(app, owner, connection):
    session = services(app).database.session(_schema(owner))
    yield session
    session.close()


def _event(when: datetime, action: AuditAction = AuditAction.CONTACT_CREATED, **data) -> dict:
    """The values of one event at ``when`` (as :func:`saas.audit.record` builds them)."""
    return {
        "id": uuid.uuid4(), "occurred_at": when, "actor_type": "system", "actor_id": None,
        "action": action, "target_type": None, "target_id": None, "ip": "192.0.2.7",
        "user_agent": "chain-test/1", "request_id": None, "data": data,
    }  # fmt: skip


def _contacts(client, headers, n: int, **extra_headers) -> None:
    for i in range(n):
        r = client.post("/api/v1/contacts", json={"name": f"c{i}"}, headers={**headers, **extra_headers})
        assert r.status_code == 201, r.get_json()


def test_every_event_links_to_the_one_before_and_the_head_is_the_last(api, client, owner, tenant_session):
    _contacts(client, api.auth(owner), 3)
    rows = tenant_session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1)) and len(rows) == 5  # signup's 2 + 3
    assert rows[0].prev_hash == GENESIS
    for before, after in itertools.pairwise(rows):
        assert after.prev_hash == before.hash
    assert len({r.hash for r in rows}) == len(rows)
    chain = tenant_session.get(AuditChain, 1)
    assert (chain.head_seq, chain.head_hash, chain.anchor_seq) == (5, rows[-1].hash, 0)
    report = verify_chain(tenant_session)
    assert report.ok and report.checked == 5 and report.head_hash == rows[-1].hash


@pytest.mark.parametrize(
    ("tamper", "seq", "reason"),
    [
        ("UPDATE {s}.audit_events SET data = '{{\"fields\": [\"x\"]}}' WHERE seq = 3", 3, "edited"),
        ("UPDATE {s}.audit_events SET actor_id = 'someone-else' WHERE seq = 2", 2, "edited"),
        ("UPDATE {s}.audit_events SET ip = '203.0.113.9' WHERE seq = 4", 4, "edited"),
        ("UPDATE {s}.audit_events SET occurred_at = occurred_at - interval '1 s' WHERE seq = 1", 1, "edited"),
        ("DELETE FROM {s}.audit_events WHERE seq = 3", 4, "event 3 is missing"),
        ("DELETE FROM {s}.audit_events WHERE seq = 5", 5, "head is event 5 but the last event kept is 4"),
        # an edit whose own hash is recomputed still breaks the next link
        ("UPDATE {s}.audit_events SET hash = repeat('a', 64) WHERE seq = 2", 2, "edited"),
        ("UPDATE {s}.audit_events SET prev_hash = (SELECT prev_hash FROM {s}.audit_events WHERE seq = 2)"
         " WHERE seq = 3", 3, "prev_hash is not the hash of the event before it"),
        ("UPDATE {s}.audit_events SET nonce = NULL WHERE seq = 2", 2, "neither a nonce nor a redacted"),
        ("DELETE FROM {s}.audit_chain", 1, "events without a chain head"),
        ("UPDATE {s}.audit_chain SET head_hash = repeat('b', 64)", 5, "head hash is not the last event's"),
    ],
)  # fmt: skip
def test_verify_names_the_first_broken_link(api, client, owner, tenant_session, tamper, seq, reason):
    _contacts(client, api.auth(owner), 3)
    assert verify_chain(tenant_session).ok
    ids = dict(tenant_session.execute(select(AuditEvent.seq, AuditEvent.id)).all())
    tenant_session.execute(text(tamper.format(s=f'"{_schema(owner)}"')))
    report = verify_chain(tenant_session, batch_size=2)  # across page boundaries too
    assert not report.ok
    assert report.broken_seq == seq and reason in report.reason, report
    if "head" not in reason:
        assert report.broken_id == str(ids[seq])
    assert report.checked == (2 if "missing" in reason else 5 if "head hash" in reason else seq - 1)


def test_an_edit_with_every_later_hash_recomputed_is_caught_at_the_head(api, client, owner, tenant_session):
    """Rewriting the chain from an edited event on (hashes recomputed) but leaving the chain row
    is caught; rewriting the chain row too is what the head printed by verify, kept elsewhere,
    is for (docs/audit.md)."""
    _contacts(client, api.auth(owner), 2)
    rows = tenant_session.execute(
        select(AuditEvent.__table__, cast(AuditEvent.data, Text).label("data_text")).order_by(AuditEvent.seq)
    ).all()
    prev = rows[1].hash
    for r in rows[2:]:
        detail = audit.detail_digest(r.nonce, r.ip, "forged", r.data_text)
        digest = audit.event_hash(seq=r.seq, prev_hash=prev, detail=detail,
                                  **{k: getattr(r, k) for k in audit._HASHED})  # fmt: skip
        tenant_session.execute(
            AuditEvent.__table__.update().where(AuditEvent.seq == r.seq)
            .values(user_agent="forged", prev_hash=prev, hash=digest)
        )  # fmt: skip
        prev = digest
    report = verify_chain(tenant_session)
    assert not report.ok and report.reason == "the chain row's head hash is not the last event's hash"


def test_redaction_keeps_the_chain_verifiable_and_the_rest_covered(api, client, owner, tenant_session, app):
    """Account deletion's pseudonymisation (saas.tenancy.self_service) goes through
    ``audit.redact``: the values are gone, the nonce too, the chain still verifies; the fields
    the hash names directly stay covered."""
    from saas.identity.models import User
    from saas.tenancy.self_service import _pseudonymise_audit

    _contacts(client, api.auth(owner), 2, **{"User-Agent": "browser/1"})
    user = tenant_session.get(User, uuid.UUID(owner["user"]["id"]))
    changed = _pseudonymise_audit(tenant_session, user)
    mine = tenant_session.scalars(select(AuditEvent).where(AuditEvent.actor_id == owner["user"]["id"])).all()
    assert changed >= 2 and mine
    assert all(e.ip is None and e.user_agent is None and e.nonce is None and e.detail_digest for e in mine)
    report = verify_chain(tenant_session)
    assert report.ok and report.redacted >= 2
    # redacting again (another erasure) keeps the first digest
    before = {e.id: e.detail_digest for e in mine}
    audit.redact(tenant_session, AuditEvent.__table__.c.actor_id == owner["user"]["id"], {"user_agent": None})
    tenant_session.expire_all()
    assert {e.id: e.detail_digest for e in tenant_session.scalars(
        select(AuditEvent).where(AuditEvent.actor_id == owner["user"]["id"]))} == before  # fmt: skip
    assert verify_chain(tenant_session).ok
    with pytest.raises(ValueError, match="only ip, user_agent and data"):
        audit.redact(tenant_session, AuditEvent.__table__.c.seq == 1, {"action": "x"})
    tenant_session.execute(
        AuditEvent.__table__.update().where(AuditEvent.id == mine[0].id).values(action="x.y")
    )
    report = verify_chain(tenant_session)
    assert not report.ok and report.broken_seq == mine[0].seq


def test_the_append_is_never_a_plain_read():
    """The request's unit of work begins its transaction before the statement that locks the
    chain row (saas.db's lazy begin runs plain reads in autocommit, where the lock would end
    at once and two appends could fork the chain)."""
    from saas.db import _select_is_plain_read

    assert _select_is_plain_read(audit._head_statement(1, [{}])) is False


def test_a_batch_appended_at_once_is_one_chain(tenant_session):
    rows = [_event(NOW - timedelta(minutes=i), n=i, big=10**20, f=1e16) for i in range(5)]
    audit.append(tenant_session, rows)
    events = tenant_session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
    assert [e.data.get("n") for e in events[-5:]] == [0, 1, 2, 3, 4]
    assert verify_chain(tenant_session).ok  # numbers the server normalises (1e16) hash as stored


def test_a_batch_of_thousands_is_one_chain(tenant_session):
    """More events than one statement's 65,535 parameters hold (16 each), under the one lock."""
    audit.append(tenant_session, [_event(NOW, n=i) for i in range(4100)])
    report = verify_chain(tenant_session)
    assert report.ok and report.checked == report.head_seq == 4102  # the signup's 2 and these


def test_the_migration_chains_the_events_already_there(connection):
    """A schema at the tenant track's revision before the chain, with events, upgraded: its
    events are chained oldest first, the chain row's head is the last, and new events go on."""
    from saas.migrate import upgrade_tenant_schema

    schema, empty = schema_name_for(uuid.uuid4()), schema_name_for(uuid.uuid4())
    for s in (schema, empty):
        connection.exec_driver_sql(f'CREATE SCHEMA "{s}"')
        upgrade_tenant_schema(connection, s, "0002")
    times = [NOW - timedelta(days=d) for d in (3, 1, 2)]
    ids = [uuid.uuid4() for _ in times]
    for event_id, when in zip(ids, times, strict=True):
        connection.execute(
            text(f'INSERT INTO "{schema}".audit_events (id, occurred_at, actor_type, action, ip, data)'  # noqa: S608
                 " VALUES (:id, :t, 'user', 'contact.created', '192.0.2.1', CAST(:d AS jsonb))"),
            {"id": event_id, "t": when, "d": json.dumps({"n": 1.5, "s": "ü"})},
        )  # fmt: skip
    for s in (schema, empty):
        upgrade_tenant_schema(connection, s)
    options = {"schema_translate_map": translate_map(schema)}
    rows = connection.execute(
        select(AuditEvent.id, AuditEvent.seq).order_by(AuditEvent.seq), execution_options=options
    ).all()
    assert [r.id for r in rows] == [ids[0], ids[2], ids[1]] and [r.seq for r in rows] == [1, 2, 3]
    from sqlalchemy.orm import Session

    session = Session(bind=connection, join_transaction_mode="create_savepoint")
    report = verify_chain(session, options=options)
    assert report.ok and report.checked == 3 and report.head_seq == 3
    audit.record(session, AuditAction.TENANT_UPDATED, actor=audit.SYSTEM, schema=schema)
    report = verify_chain(session, options=options)
    assert report.ok and report.checked == 4
    empty_options = {"schema_translate_map": translate_map(empty)}
    chain = connection.execute(select(AuditChain.__table__), execution_options=empty_options).one()
    assert (chain.head_seq, chain.head_hash) == (0, GENESIS)
    assert verify_chain(session, options=empty_options).ok
    # and back: the columns, the table and the index are gone, the events stay
    from alembic import command

    from saas.migrate import alembic_config

    cfg = alembic_config("tenant")
    cfg.attributes["connection"], cfg.attributes["schema"] = connection, schema
    command.downgrade(cfg, "0002")
    columns = connection.scalars(
        text(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = :s AND table_name = 'audit_events'"
        ),
        {"s": schema},
    ).all()
    assert "seq" not in columns and "hash" not in columns and len(columns) == 11
    assert connection.scalar(text("SELECT to_regclass(:t)"), {"t": f"{schema}.audit_chain"}) is None
    assert connection.scalar(text(f'SELECT count(*) FROM "{schema}".audit_events')) == 4  # noqa: S608


# --- export ------------------------------------------------------------------------------------


def _export(client, headers, **params):
    return client.get("/api/v1/audit-events/export", query_string=params, headers=headers)


def test_export_jsonl_is_every_event_oldest_first_with_the_chain(api, client, owner):
    h = api.auth(owner)
    _contacts(client, h, 3)
    r = _export(client, h, format="jsonl")
    assert r.status_code == 200 and r.mimetype == "application/jsonl"
    assert r.headers["Content-Disposition"] == 'attachment; filename="audit-events.jsonl"'
    assert r.headers["Cache-Control"].startswith("private, no-store")
    lines = [json.loads(line) for line in r.get_data(as_text=True).splitlines()]
    assert [e["seq"] for e in lines] == [1, 2, 3, 4, 5]
    assert [e["action"] for e in lines][-3:] == ["contact.created"] * 3
    listed = client.get("/api/v1/audit-events", headers=h).get_json()
    assert {e["id"] for e in listed} == {e["id"] for e in lines}
    by_id = {e["id"]: e for e in listed}
    for e in lines:  # the list's shape, plus the chain
        assert {k: v for k, v in e.items() if k not in ("seq", "prev_hash", "hash")} == by_id[e["id"]]
    for before, after in itertools.pairwise(lines):
        assert after["prev_hash"] == before["hash"]


def test_export_csv_is_rfc4180_and_formula_safe(api, client, owner):
    h = api.auth(owner)
    hostile = '=HYPERLINK("https://evil.test","x")'
    _contacts(client, h, 1, **{"User-Agent": hostile})
    _contacts(client, h, 1, **{"User-Agent": "-2+3+cmd|' /C calc'!A0"})
    _contacts(client, h, 1, **{"User-Agent": "@SUM(1+1)"})
    r = _export(client, h, format="csv")
    assert r.status_code == 200 and r.mimetype == "text/csv" and r.mimetype_params["charset"] == "utf-8"
    body = r.get_data(as_text=True)
    assert body.endswith("\r\n")
    rows = list(csv.DictReader(io.StringIO(body)))
    assert list(rows[0]) == list(audit_api.EXPORT_COLUMNS)
    created = rows[-3]
    assert created["action"] == "contact.created" and created["seq"] == "3"
    assert created["user_agent"] == "'" + hostile  # never a formula in a spreadsheet
    assert [r["user_agent"] for r in rows[-2:]] == ["'-2+3+cmd|' /C calc'!A0", "'@SUM(1+1)"]
    assert json.loads(created["data"]) == {} and created["ip"] == "127.0.0.1"
    assert not any(v.startswith(("=", "+", "-", "@")) for row in rows for v in row.values() if v)


@pytest.mark.parametrize("value", ["=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1"])
def test_csv_cell_prefixes_every_formula_start(value):
    assert audit_api.csv_cell(value) == "'" + value
    assert (
        audit_api.csv_cell("plain") == "plain"
        and audit_api.csv_cell(3) == 3
        and audit_api.csv_cell(None) is None
    )


def test_export_since_and_until(api, client, owner, tenant_session):
    audit.append(tenant_session, [_event(NOW - timedelta(days=d), d=d) for d in (3, 2, 1)])
    h = api.auth(owner)
    r = _export(client, h, format="jsonl", since=(NOW - timedelta(days=2)).isoformat(), until=NOW.isoformat())
    assert [json.loads(x)["data"]["d"] for x in r.get_data(as_text=True).splitlines()] == [2, 1]
    r = _export(client, h, format="jsonl", since=(NOW - timedelta(days=9)).isoformat(),
                until=(NOW - timedelta(days=2)).isoformat())  # fmt: skip
    assert [json.loads(x)["data"]["d"] for x in r.get_data(as_text=True).splitlines()] == [3]
    r = _export(client, h, format="csv", since=(NOW + timedelta(days=3650)).isoformat())
    assert r.get_data(as_text=True) == ",".join(audit_api.EXPORT_COLUMNS) + "\r\n"  # the header only


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "format"),
        ({"format": "xml"}, "format"),
        ({"format": "csv", "since": "yesterday"}, "since"),
        ({"format": "csv", "since": "2031-01-01T00:00:00"}, "since"),  # naive
        ({"format": "jsonl", "until": "2031-13-01T00:00:00Z"}, "until"),
        ({"format": "jsonl", "since": "2031-01-02T00:00:00Z", "until": "2031-01-01T00:00:00Z"}, "until"),
        ({"format": "jsonl", "since": "2031-01-01T00:00:00Z", "until": "2031-01-01T00:00:00Z"}, "until"),
    ],
)
def test_bad_parameters_are_problems(api, client, owner, params, field):
    body = assert_problem(_export(client, api.auth(owner), **params), 422)
    assert field in json.dumps(body["errors"])


def test_export_needs_audit_read_and_shows_only_the_callers_tenant(api, client, app, owner):
    other = api.signup("chain-other")
    _contacts(client, api.auth(other), 2)
    r = _export(client, api.auth(owner), format="jsonl", tenant_id=other["tenant"]["id"])
    if r.status_code == 200:  # an unknown parameter is ignored or refused, never obeyed
        ids = {json.loads(x)["target"]["id"] for x in r.get_data(as_text=True).splitlines()}
        assert ids == {owner["tenant"]["id"], owner["user"]["id"]}
    else:
        assert_problem(r, 422)
    _user, member = role_headers(app, owner["tenant"]["id"], "member")
    assert_problem(_export(client, member, format="csv"), 403)
    assert_problem(client.get("/api/v1/audit-events/export?format=csv"), 401)


def test_export_reads_keyset_batches_lazily(api, client, owner, monkeypatch, engine, tenant_session):
    """The response streams: no event is read before the body is, and then one query per
    ``EXPORT_BATCH_SIZE`` events, each a page after the last one's ``(occurred_at, seq)``."""
    audit.append(tenant_session, [_event(NOW + timedelta(seconds=i), i=i) for i in range(7)])
    monkeypatch.setattr(audit_api, "EXPORT_BATCH_SIZE", 3)
    pages: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if "audit_events" in statement and "LIMIT" in statement:
            pages.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        r = client.get(
            "/api/v1/audit-events/export",
            query_string={"format": "csv"},
            headers=api.auth(owner),
            buffered=False,
        )
        assert r.status_code == 200 and pages == []  # answered, nothing read yet
        chunks = iter(r.response)
        header = next(chunks)
        assert header.startswith(b"seq,id,") and pages == []
        first = next(chunks)
        assert len(pages) == 1 and first.count(b"\r\n") == 3
        rest = b"".join(chunks)
        r.close()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    # 9 events (the signup's 2 and 7): pages of 3, 3, 3 and an empty one that ends the stream
    assert len(pages) == 4 and rest.count(b"\r\n") == 6
    assert "seq) >" not in pages[0] and all("seq) >" in p for p in pages[1:])  # keyset, never OFFSET
    assert not any("OFFSET" in p for p in pages)


def test_a_client_that_goes_away_stops_the_reads(api, client, owner, monkeypatch, engine, tenant_session):
    """Closing the response mid-stream (the server does when its client went away) closes the
    page reader: no further page is read."""
    audit.append(tenant_session, [_event(NOW + timedelta(seconds=i), i=i) for i in range(7)])
    monkeypatch.setattr(audit_api, "EXPORT_BATCH_SIZE", 2)
    pages: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if "audit_events" in statement and "LIMIT" in statement:
            pages.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        r = client.get(
            "/api/v1/audit-events/export",
            query_string={"format": "jsonl"},
            headers=api.auth(owner),
            buffered=False,
        )
        chunks = iter(r.response)
        assert next(chunks).count(b"\n") == 2 and len(pages) == 1
        r.close()
        assert list(chunks) == [] and len(pages) == 1
    finally:
        event.remove(engine, "before_cursor_execute", count)
