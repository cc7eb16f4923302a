"""The request unit of work's round trips (issue 5's hot path), on a real engine and pool.

* lazy begin: a request that only reads sends no ``BEGIN`` and no ``COMMIT`` (its connection
  stays in autocommit); the first write opens the transaction, which still commits or rolls
  back as a whole;
* liveness check: a pooled connection is checked out with no ``SELECT 1`` round trip, yet one
  the server has terminated is replaced before the request uses it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from flask import Flask, abort
from psycopg.pq import TransactionStatus
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, event, func, insert, select, text

from saas import db as saas_db
from saas.db import Database

_meta = MetaData()
_rows = Table("hot_path_rows", _meta, Column("id", Integer, primary_key=True))


@pytest.fixture()
def database(database_url) -> Iterator[Database]:
    setup = create_engine(database_url)
    with setup.begin() as conn:
        _meta.drop_all(conn)
        _meta.create_all(conn)
    setup.dispose()
    database = Database.from_url(database_url, pool_size=1, max_overflow=0)
    yield database
    with database.engine.begin() as conn:
        _meta.drop_all(conn)
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
        select(func.set_config("application_name", "x", True)),
    ],
    ids=["insert", "for-update", "text", "advisory-lock", "set-config"],
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
    saas_db.init_app(app, database)
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
