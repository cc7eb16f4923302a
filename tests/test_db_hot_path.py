"""The request unit of work's round trips (issue 5's hot path), on a real engine and pool.

* lazy begin: a request that only reads sends no ``BEGIN`` and no ``COMMIT`` (its connection
  stays in autocommit); the first write opens the transaction, which still commits or rolls
  back as a whole;
* plain reads are an allow-list (``saas.db._plain_read``): anything else, including a SELECT of
  a function outside ``SAFE_FUNCTIONS``, a row lock in a subquery, a writing CTE or a streamed
  result (server-side cursor), opens the transaction first; the verdict is cached per compiled
  statement, shared by every tenant;
* liveness check: a pooled connection is checked out with no ``SELECT 1`` round trip, yet one
  the server has terminated, or one idle long enough for a NAT to have dropped it silently, is
  replaced before the request uses it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from flask import Flask, abort
from psycopg.pq import TransactionStatus
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    event,
    exc,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, column_property

from saas import db as saas_db
from saas.db import Database
from saas.services import EXTENSION

_meta = MetaData()
_rows = Table("hot_path_rows", _meta, Column("id", Integer, primary_key=True))
_tenant_meta = MetaData(schema=saas_db.TENANT_PLACEHOLDER)
_tenant_rows = Table("hot_path_tenant_rows", _tenant_meta, Column("id", Integer, primary_key=True))
_SCHEMAS = ["t_" + uuid.UUID(int=n).hex for n in (0xD1, 0xD2, 0xD3)]
#: a user-defined VOLATILE function that writes: SELECT of it is not a read
_BUMP = text(
    "CREATE FUNCTION hot_path_bump() RETURNS integer LANGUAGE sql VOLATILE AS "
    "$$ INSERT INTO hot_path_rows (id) VALUES (99) RETURNING id $$"
)


@pytest.fixture()
def database(database_url) -> Iterator[Database]:
    setup = create_engine(database_url)
    with setup.begin() as conn:
        conn.execute(text("DROP FUNCTION IF EXISTS hot_path_bump()"))
        _meta.drop_all(conn)
        _meta.create_all(conn)
        conn.execute(_BUMP)
        for schema in _SCHEMAS:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            conn.execute(text(f"CREATE SCHEMA {schema}"))
            _tenant_meta.create_all(conn.execution_options(schema_translate_map={"tenant": schema}))
    setup.dispose()
    database = Database.from_url(database_url, pool_size=1, max_overflow=0)
    yield database
    with database.engine.begin() as conn:
        conn.execute(text("DROP FUNCTION IF EXISTS hot_path_bump()"))
        _meta.drop_all(conn)
        for schema in _SCHEMAS:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    database.dispose()


def _statuses(engine) -> list[tuple[str, TransactionStatus]]:
    """(first word of each statement, the connection's transaction status right after it)."""
    seen: list[tuple[str, TransactionStatus]] = []

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, cursor, statement, params, context, many):
        seen.append((statement.split()[0].upper(), cursor.connection.info.transaction_status))

    return seen


def _count(database: Database) -> int:
    with database.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(_rows))


def test_lazy_session_reads_outside_a_transaction(database):
    seen = _statuses(database.engine)
    session = database.session(lazy_begin=True)
    assert session.execute(select(_rows.c.id)).all() == []
    assert session.scalar(select(func.count()).select_from(_rows)) == 0
    session.commit()
    session.close()
    assert seen == [("SELECT", TransactionStatus.IDLE)] * 2  # no BEGIN was sent, so no COMMIT


@pytest.mark.parametrize(
    "statement",
    [
        insert(_rows).values(id=1),
        select(_rows.c.id).with_for_update(),
        text("SELECT 1"),  # text SQL: its effects are unknown, so it is never a plain read
        select(func.pg_advisory_xact_lock(42)),
        select(func.pg_try_advisory_xact_lock(42)),
        select(func.set_config("application_name", "x", True)),
        select(func.hot_path_bump()),
        select(func.count()).select_from(select(_rows.c.id).with_for_update().subquery()),
        select(insert(_rows).values(id=7).returning(_rows.c.id).cte("w").c.id),
        select(_rows.c.id).where(text("id > 0")),
        select(func.pg_catalog.lower("x")),
    ],
    ids=[
        "insert",
        "for-update",
        "text",
        "advisory-lock",
        "try-advisory-lock",
        "set-config",
        "volatile-user-function",
        "locking-subquery",
        "writing-cte",
        "text-fragment",
        "schema-qualified-function",
    ],
)
def test_lazy_session_begins_before_anything_but_a_plain_read(database, statement):
    seen = _statuses(database.engine)
    session = database.session(lazy_begin=True)
    session.execute(select(_rows.c.id))
    session.execute(statement)
    assert seen[0] == ("SELECT", TransactionStatus.IDLE)
    assert seen[1][1] == TransactionStatus.INTRANS
    session.rollback()
    session.close()
    assert _count(database) == 0


class _RowWithProperty(DeclarativeBase):
    pass


class _Row(_RowWithProperty):
    """An ORM entity whose column_property calls a function outside the safe set: it appears only
    in the Core statement the ORM compiles, not in ``select(_Row)`` itself."""

    __table__ = _rows
    noise = column_property(func.random())


def test_orm_column_property_functions_are_checked(database):
    seen = _statuses(database.engine)
    session = database.session(lazy_begin=True)
    session.scalars(select(_Row)).all()
    session.rollback()
    session.close()
    assert seen[0][1] == TransactionStatus.INTRANS


def test_a_writing_function_selected_mid_request_is_rolled_back_with_it(database):
    """A SELECT of a VOLATILE function that writes is not a read: it runs in the transaction,
    so the failing request's rollback takes its write too."""
    session = database.session(lazy_begin=True)
    assert session.scalar(select(func.hot_path_bump())) == 99
    session.rollback()
    session.close()
    assert _count(database) == 0


@pytest.mark.parametrize(
    "statement",
    [
        select(func.count()).select_from(_rows),
        select(func.lower(func.coalesce(func.max(_rows.c.id), 0).cast(Text))),
        select(_rows.c.id, func.row_number().over(order_by=_rows.c.id)),
        select(func.count()).select_from(select(_rows.c.id).where(_rows.c.id > 0).subquery()),
        select(func.now(), func.array_agg(_rows.c.id)),
    ],
    ids=["count", "nested-safe-functions", "window", "subquery", "now-array-agg"],
)
def test_lazy_session_keeps_plain_reads_outside_a_transaction(database, statement):
    seen = _statuses(database.engine)
    session = database.session(lazy_begin=True)
    session.execute(statement).all()
    session.commit()
    session.close()
    assert seen == [("SELECT", TransactionStatus.IDLE)]


@pytest.mark.parametrize("option", [{"yield_per": 2}, {"stream_results": True}])
def test_streamed_results_run_in_a_transaction(database, option):
    """A server-side cursor (``DECLARE``) needs a transaction block: PostgreSQL refuses it in
    autocommit ("DECLARE CURSOR can only be used in transaction blocks")."""
    with database.transaction() as setup:
        setup.execute(insert(_rows), [{"id": n} for n in range(1, 6)])
    seen = _statuses(database.engine)
    session = database.session(lazy_begin=True)
    rows = [
        row.id for row in session.execute(select(_rows.c.id).order_by(_rows.c.id), execution_options=option)
    ]
    session.commit()
    session.close()
    assert rows == [1, 2, 3, 4, 5]
    assert seen and all(status != TransactionStatus.IDLE for _, status in seen)


def test_plain_read_verdict_is_computed_once_per_compiled_statement(database, monkeypatch):
    """The compiled form is shared by every tenant (the schema map is applied after
    compilation), so the tree is walked once, not once per tenant's statement text."""
    walks: list[object] = []
    real = saas_db._select_is_plain_read
    monkeypatch.setattr(saas_db, "_select_is_plain_read", lambda s: walks.append(s) or real(s))
    statement = select(func.count()).select_from(_tenant_rows).where(_tenant_rows.c.id > 41)
    texts: set[str] = set()
    event.listen(database.engine, "before_cursor_execute", lambda c, cur, st, *a: texts.add(st))
    for _ in range(2):
        for schema in _SCHEMAS:
            session = database.session(schema, lazy_begin=True)
            assert session.scalar(statement) == 0
            session.close()
    assert len(texts) == len(_SCHEMAS)  # one statement text per tenant...
    assert len(walks) == 1  # ...one walk


def test_lazy_session_writes_are_atomic_and_the_pool_is_restored(database):
    session = database.session(lazy_begin=True)
    session.execute(select(_rows.c.id))
    session.execute(insert(_rows).values(id=1))
    session.execute(insert(_rows).values(id=2))
    session.rollback()  # both writes go, not only the second
    session.close()
    assert _count(database) == 0
    session = database.session(lazy_begin=True)
    session.execute(insert(_rows).values(id=3))
    session.commit()
    session.close()
    assert _count(database) == 1
    # the pooled connection is back to the pool's mode: a plain session reads in a transaction
    seen = _statuses(database.engine)
    with database.transaction() as plain:
        plain.execute(select(_rows.c.id))
    assert seen == [("SELECT", TransactionStatus.INTRANS)]


def test_request_unit_of_work_is_lazy_and_atomic(database):
    """The after_request hook: a read-only request opens no transaction; a failing request
    that wrote leaves nothing; a succeeding one commits."""
    app = Flask("t")
    _with_database(app, database)
    seen = _statuses(database.engine)

    @app.get("/read")
    def read():
        return {"n": saas_db.session().scalar(select(func.count()).select_from(_rows))}

    @app.post("/write/<int:status>")
    def write(status: int):
        saas_db.session().execute(insert(_rows).values(id=1))
        if status >= 400:
            abort(status)
        return {}, status

    client = app.test_client()
    assert client.get("/read").json == {"n": 0}
    assert seen == [("SELECT", TransactionStatus.IDLE)]
    assert client.post("/write/409").status_code == 409
    assert _count(database) == 0
    assert client.post("/write/201").status_code == 201
    assert _count(database) == 1


def test_checkout_sends_no_ping_but_replaces_a_terminated_connection(database, monkeypatch):
    pings: list[object] = []
    real_ping = saas_db._ping
    monkeypatch.setattr(saas_db, "_ping", lambda c: pings.append(c) or real_ping(c))
    with database.engine.connect() as conn:
        first_pid = conn.scalar(text("SELECT pg_backend_pid()"))
    with database.engine.connect() as conn:  # healthy: no round trip before use
        assert conn.scalar(text("SELECT pg_backend_pid()")) == first_pid
    assert pings == []

    admin = create_engine(database.engine.url)
    with admin.begin() as conn:
        assert conn.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": first_pid})
    admin.dispose()
    time.sleep(0.2)  # the server's notice and end of file reach the idle socket

    session = database.session(lazy_begin=True)  # a request meeting the dead connection
    new_pid = session.scalar(select(func.pg_backend_pid()))
    session.close()
    assert new_pid != first_pid
    assert len(pings) == 1  # the socket was readable: one real ping, which failed


def test_checkout_keeps_a_live_connection_with_unread_messages(database, monkeypatch):
    """Something readable on a live connection (here a NOTIFY it listens to) costs one ping,
    not the connection."""
    pings: list[object] = []
    real_ping = saas_db._ping
    monkeypatch.setattr(saas_db, "_ping", lambda c: pings.append(c) or real_ping(c))
    channel = "hot_path_" + uuid.uuid4().hex[:8]
    with database.engine.connect() as conn:
        pid = conn.scalar(text("SELECT pg_backend_pid()"))
        conn.execute(text(f"LISTEN {channel}"))
        conn.commit()
    admin = create_engine(database.engine.url)
    with admin.begin() as conn:
        conn.execute(text(f"NOTIFY {channel}"))
    admin.dispose()
    time.sleep(0.2)
    with database.engine.connect() as conn:
        assert conn.scalar(text("SELECT pg_backend_pid()")) == pid
        conn.execute(text(f"UNLISTEN {channel}"))
        conn.commit()
    assert len(pings) == 1


def _terminate(database: Database, pid: int) -> None:
    admin = create_engine(database.engine.url)
    with admin.begin() as conn:
        assert conn.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    admin.dispose()
    time.sleep(0.2)


class _SilentPoll:
    """``select.poll`` as it behaves on a flow a NAT or load balancer dropped: nothing arrives,
    so nothing is readable (the server's notice and FIN never reach the socket)."""

    def register(self, *args):
        pass

    def poll(self, timeout):
        return []


def _idle_pooled_connection(database: Database) -> tuple[int, object]:
    """(backend pid, pool record) of the pool's one connection, now checked in."""
    with database.engine.connect() as conn:
        pid = conn.scalar(text("SELECT pg_backend_pid()"))
        record = conn.connection._connection_record
    assert saas_db._CHECKED_IN_AT in record.info
    return pid, record


def test_checkout_pings_a_connection_idle_too_long_and_replaces_it_when_dead(database, monkeypatch):
    """Item: a NAT idle timeout drops the flow silently. The socket poll sees nothing, but the
    connection has been idle longer than PING_AFTER_IDLE_SECONDS, so a real ping decides."""
    monkeypatch.setattr(saas_db.select, "poll", _SilentPoll)
    pings: list[object] = []
    real_ping = saas_db._ping
    monkeypatch.setattr(saas_db, "_ping", lambda c: pings.append(c) or real_ping(c))
    pid, record = _idle_pooled_connection(database)
    record.info[saas_db._CHECKED_IN_AT] -= saas_db.PING_AFTER_IDLE_SECONDS + 1  # a long idle
    _terminate(database, pid)

    app = Flask("t")
    _with_database(app, database)

    @app.get("/pid")
    def backend_pid():
        return {"pid": saas_db.session().scalar(select(func.pg_backend_pid()))}

    response = app.test_client().get("/pid")
    assert response.status_code == 200
    assert response.json["pid"] != pid
    assert len(pings) == 1  # the idle connection was pinged, failed, and was replaced


def test_checkout_without_a_long_idle_trusts_a_silent_socket(database, monkeypatch):
    """The counterpart: a recently used connection costs no ping (so the dead one of a silent
    drop fails the statement: what the idle ping above prevents)."""
    monkeypatch.setattr(saas_db.select, "poll", _SilentPoll)
    pings: list[object] = []
    monkeypatch.setattr(saas_db, "_ping", lambda c: pings.append(c))
    pid, _ = _idle_pooled_connection(database)
    _terminate(database, pid)
    session = database.session(lazy_begin=True)
    with pytest.raises(exc.OperationalError):
        session.scalar(select(func.pg_backend_pid()))
    session.close()
    assert pings == []


def test_checkout_pings_a_live_connection_idle_too_long_and_keeps_it(database, monkeypatch):
    pings: list[object] = []
    real_ping = saas_db._ping
    monkeypatch.setattr(saas_db, "_ping", lambda c: pings.append(c) or real_ping(c))
    pid, record = _idle_pooled_connection(database)
    record.info[saas_db._CHECKED_IN_AT] -= saas_db.PING_AFTER_IDLE_SECONDS + 1
    with database.engine.connect() as conn:
        assert conn.scalar(text("SELECT pg_backend_pid()")) == pid
    assert len(pings) == 1
    with database.engine.connect() as conn:  # checked in again just now: no ping
        assert conn.scalar(text("SELECT pg_backend_pid()")) == pid
    assert len(pings) == 1


def test_connections_use_tcp_keepalives(database):
    with database.engine.connect() as conn:
        parameters = conn.connection.dbapi_connection.info.get_parameters()
    assert {k: parameters.get(k) for k in saas_db.KEEPALIVES} == {
        k: str(v) for k, v in saas_db.KEEPALIVES.items()
    }


def _with_database(app: Flask, database: Database) -> None:
    """A bare app whose only service is ``database``, with the request unit of work."""
    app.extensions[EXTENSION] = SimpleNamespace(database=database)
    saas_db.init_app(app)
