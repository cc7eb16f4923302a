"""Database access: one engine, a unit of work per request, and tenant-bound sessions.

Two metadata objects split the world (design invariants 2 to 5):

* :data:`shared_metadata` (schema ``saas``): the control plane: tenants, users, memberships...
* :data:`tenant_metadata` (placeholder schema ``tenant``, which never exists): the tables that
  every tenant schema holds. A session made by :meth:`Database.session` with a tenant schema
  maps the placeholder to the real schema through SQLAlchemy's ``schema_translate_map``; without
  it a tenant query names the schema ``tenant`` and fails loudly with ``UndefinedTable``.

No connection carries tenant state: the mapping lives on the SQLAlchemy ``Connection`` wrapper,
never on the pooled DBAPI connection, and nothing runs ``SET search_path`` outside ``SET LOCAL``.
"""

from __future__ import annotations

import re
import select
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, has_app_context
from sqlalchemy import Connection, Engine, MetaData, create_engine, event, exc
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.sql import Select

SHARED_SCHEMA = "saas"
TENANT_PLACEHOLDER = "tenant"
_SCHEMA_RE = re.compile(r"^t_[0-9a-f]{32}$")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

shared_metadata = MetaData(schema=SHARED_SCHEMA, naming_convention=NAMING)
tenant_metadata = MetaData(schema=TENANT_PLACEHOLDER, naming_convention=NAMING)


class SharedBase(DeclarativeBase):
    """Declarative base of control-plane tables (schema ``saas``)."""

    metadata = shared_metadata


class TenantBase(DeclarativeBase):
    """Declarative base of tables that live in every tenant schema (placeholder ``tenant``)."""

    metadata = tenant_metadata


def utcnow() -> datetime:
    return datetime.now(UTC)


def schema_name_for(tenant_id: uuid.UUID) -> str:
    """The tenant's schema name, derived from its id only (invariant 5): ``t_<32 hex digits>``."""
    return "t_" + tenant_id.hex


def check_schema_name(name: str) -> str:
    """Return ``name`` if it is a tenant schema name; raise ``ValueError`` otherwise."""
    if not _SCHEMA_RE.fullmatch(name):
        raise ValueError(f"not a tenant schema name: {name!r}")
    return name


def translate_map(schema: str | None) -> dict[str, str]:
    """``schema_translate_map`` for a tenant schema, or one that keeps the placeholder (fails loudly)."""
    return {TENANT_PLACEHOLDER: check_schema_name(schema) if schema else TENANT_PLACEHOLDER}


class Database:
    """The process's engine and the factory of sessions.

    ``bind`` is normally an :class:`~sqlalchemy.Engine`; tests pass a :class:`~sqlalchemy.Connection`
    inside an outer transaction so each test is rolled back (sessions then join it through
    savepoints).
    """

    def __init__(self, bind: Engine | Connection):
        self.bind = bind
        self._engines: dict[tuple[str | None, bool], Engine] = {}
        if isinstance(bind, Engine) and not event.contains(
            bind, "before_cursor_execute", _begin_before_write
        ):
            event.listen(bind, "before_cursor_execute", _begin_before_write)

    @classmethod
    def from_url(
        cls, url: str, *, pool_size: int = 10, max_overflow: int = 10, pre_ping: bool = True
    ) -> Database:
        """An engine on ``url``.

        ``pre_ping`` (``DB_POOL_PRE_PING``) checks each pooled connection before use, without a
        round trip: :func:`_check_alive` polls the socket, and only when the server has sent
        something to an idle connection (its termination notice, or end of file) pings it
        with ``SELECT 1``; a dead connection is replaced before the request sees it. Off, a
        request meeting a connection the server dropped fails once and the pool is refreshed.
        ``pool_recycle`` (30 minutes) bounds a connection's age either way."""
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_recycle=1800,
            # error messages (and so logs) never carry bound values: hashes, tokens, personal data
            hide_parameters=True,
        )
        _guard_search_path(engine)
        if pre_ping:
            event.listen(engine, "checkout", _check_alive)
        return cls(engine)

    @property
    def engine(self) -> Engine:
        return self.bind if isinstance(self.bind, Engine) else self.bind.engine

    def session(self, tenant_schema: str | None = None, *, lazy_begin: bool = False) -> Session:
        """A new session; tenant tables resolve to ``tenant_schema`` (or fail when it is None).

        Shared tables are always reachable (their schema is explicit).

        ``lazy_begin`` (the request's unit of work): the connection stays in autocommit while
        it only runs plain reads (see :func:`_plain_read`); the first other statement (a
        flush, ``FOR UPDATE``, DML, DDL, text SQL) opens the transaction, which the session's
        commit or rollback then ends as usual. A read-only request so sends no ``BEGIN`` and no
        ``COMMIT``. Under PostgreSQL's default READ COMMITTED each statement takes its own
        snapshot anyway, so the reads see what they would inside the transaction; every write
        is still atomic. Ignored when bound to a connection (tests' outer transaction).
        """
        if isinstance(self.bind, Connection):
            self.bind.execution_options(schema_translate_map=translate_map(tenant_schema))
            return Session(bind=self.bind, join_transaction_mode="create_savepoint", expire_on_commit=False)
        return Session(bind=self._engine_for(tenant_schema, lazy_begin), expire_on_commit=False)

    def _engine_for(self, tenant_schema: str | None, lazy_begin: bool) -> Engine:
        """The engine with this schema map (and lazy begin), made once per key: building an
        option engine per request cost ~40 us."""
        key = (tenant_schema, lazy_begin)
        engine = self._engines.get(key)
        if engine is None:
            options: dict[str, Any] = {"schema_translate_map": translate_map(tenant_schema)}
            if lazy_begin:
                options |= {"isolation_level": "AUTOCOMMIT", LAZY_BEGIN: True}
            engine = self.bind.execution_options(**options)
            if len(self._engines) >= 4096:  # bounded: one entry per tenant served recently
                self._engines.clear()
            self._engines[key] = engine
        return engine

    @contextmanager
    def transaction(self, tenant_schema: str | None = None) -> Iterator[Session]:
        """A session whose transaction commits when the block exits normally, else rolls back."""
        session = self.session(tenant_schema)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        if isinstance(self.bind, Engine):
            self.bind.dispose()


def _check_alive(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Pool ``checkout`` hook: refuse a connection the server has closed, with no round trip.

    An idle connection outside a transaction receives nothing from PostgreSQL unless the
    server ends it (``pg_terminate_backend``, restart, ``idle_session_timeout``: an
    ``ErrorResponse`` then end of file) or reports an asynchronous message (a parameter change,
    a notice). So the socket is polled (no wait); only when it is readable does a real
    ``SELECT 1`` decide. Raising :class:`~sqlalchemy.exc.DisconnectionError` makes the pool
    discard the connection and check out another (SQLAlchemy's "pessimistic disconnect
    handling", docs: core/pooling.html#custom-legacy-pessimistic-ping).
    """
    if dbapi_connection.closed or getattr(dbapi_connection, "broken", False):
        raise exc.DisconnectionError("connection closed")
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    if not poller.poll(0):
        return
    try:
        _ping(dbapi_connection)
    except Exception as error:  # any failure of the ping means "not usable"
        raise exc.DisconnectionError(f"connection closed by the server: {type(error).__name__}") from error


def _ping(dbapi_connection: Any) -> None:
    """``SELECT 1`` outside a transaction (as SQLAlchemy's psycopg ``do_ping``)."""
    before = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        dbapi_connection.execute("SELECT 1")
    finally:
        if not dbapi_connection.closed:
            dbapi_connection.autocommit = before


#: execution option of the request's engine: autocommit until the first statement that is not
#: a plain read (:meth:`Database.session` with ``lazy_begin``)
LAZY_BEGIN = "saas_lazy_begin"

#: words that make a statement more than a plain read: DML (also inside a CTE), row locks,
#: functions with side effects (sequences, settings, advisory locks, notifications)
_NOT_A_READ = re.compile(
    r"\b(?:insert|update|delete|merge|share|nextval|setval|set_config|pg_advisory\w*|pg_notify"
    r"|txid_current|pg_current_xact_id\w*|lo_\w+|dblink\w*)\b",
    re.IGNORECASE,
)


def _plain_read(context: Any, statement: str) -> bool:
    """A SELECT compiled by SQLAlchemy from a :class:`~sqlalchemy.sql.Select` with no row lock
    and none of :data:`_NOT_A_READ`'s words; text SQL, DML and DDL are never plain reads."""
    compiled = getattr(context, "compiled", None)
    if compiled is None or not isinstance(compiled.statement, Select):
        return False
    if compiled.statement._for_update_arg is not None:
        return False
    words = _WORDS_SEEN.get(statement)
    if words is None:  # statements repeat (SQLAlchemy caches their compiled text): scan once
        if len(_WORDS_SEEN) >= 2048:
            _WORDS_SEEN.clear()
        words = _WORDS_SEEN[statement] = _NOT_A_READ.search(statement) is not None
    return not words


#: statement text -> whether :data:`_NOT_A_READ` matches it
_WORDS_SEEN: dict[str, bool] = {}


def _begin_before_write(
    conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
) -> None:
    """``before_cursor_execute``: on a lazy-begin connection still in autocommit, leave
    autocommit before any statement that is not a plain read, so psycopg sends ``BEGIN`` first
    and the statement runs in the transaction the session commits or rolls back. SQLAlchemy
    restores the pool's isolation level (autocommit off) when the connection is checked in."""
    if context is None or not context.execution_options.get(LAZY_BEGIN):
        return
    dbapi_connection = cursor.connection
    if dbapi_connection.autocommit and not _plain_read(context, statement):
        dbapi_connection.autocommit = False


#: ``SET [SESSION] search_path`` (not ``SET LOCAL``) at the start of any statement of a script
_SESSION_SEARCH_PATH = re.compile(r"(?:^|;)\s*set\s+(?:session\s+)?search_path\b", re.IGNORECASE)
#: ``set_config('search_path', ..., false)``: the function form of a session-level SET
_SET_CONFIG_SESSION = re.compile(
    r"set_config\s*\(\s*'search_path'\s*,.*?,\s*false\s*\)", re.IGNORECASE | re.DOTALL
)


def _guard_search_path(engine: Engine) -> None:
    """Refuse a session-level ``SET search_path`` (it would leak through the pool; invariant 3)."""

    @event.listens_for(engine, "before_cursor_execute", retval=False)
    def _check(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if "search_path" not in statement:
            return
        if _SESSION_SEARCH_PATH.search(statement) or _SET_CONFIG_SESSION.search(statement):
            raise RuntimeError("session-level SET search_path is forbidden; use SET LOCAL")


# --- request-scoped unit of work ---------------------------------------------------------------


def database() -> Database:
    from flask import current_app

    return current_app.extensions["saas.db"]


def set_tenant_schema(schema: str | None) -> None:
    """Bind this request's unit of work to a tenant schema; must precede the first query."""
    if "db_session" in g and g.get("db_tenant_schema") != schema:
        raise RuntimeError("tenant context changed after the request's session was opened")
    g.db_tenant_schema = schema


def session() -> Session:
    """This request's session (one unit of work, committed once after the view when it succeeds)."""
    if "db_session" not in g:
        g.db_session = database().session(g.get("db_tenant_schema"), lazy_begin=True)
    return g.db_session


def init_app(app: Flask, db: Database) -> None:
    app.extensions["saas.db"] = db

    @app.after_request
    def _commit(response: Response) -> Response:
        sess: Session | None = g.pop("db_session", None) if has_app_context() else None
        if sess is None:
            return response
        try:
            if response.status_code < 400:
                sess.commit()
            else:
                sess.rollback()
        finally:
            sess.close()
        return response

    @app.teardown_request
    def _cleanup(exc: BaseException | None) -> None:
        sess: Session | None = g.pop("db_session", None)
        if sess is not None:
            sess.rollback()
            sess.close()
