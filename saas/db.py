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
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from flask import Flask, Response, g, has_app_context
from sqlalchemy import JSON, Connection, Engine, MetaData, create_engine, event, exc
from sqlalchemy import select as sql_select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.sql import ColumnElement, Select, visitors
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import ColumnClause, TextClause
from sqlalchemy.sql.functions import FunctionElement

from saas.errors import NotFound
from saas.memo import Memo
from saas.services import services

SHARED_SCHEMA = "saas"
TENANT_PLACEHOLDER = "tenant"
_SCHEMA_RE = re.compile(r"^t_[0-9a-f]{32}$")

#: a mapped class (:func:`tenant_row`, :func:`tenant_rows`)
T = TypeVar("T")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

shared_metadata = MetaData(schema=SHARED_SCHEMA, naming_convention=NAMING)
tenant_metadata = MetaData(schema=TENANT_PLACEHOLDER, naming_convention=NAMING)


#: a JSON column: ``jsonb`` on PostgreSQL, plain JSON elsewhere
JSONType = JSON().with_variant(JSONB(), "postgresql")


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


def tenant_rows(
    session: Session, model: type[T], tenant_id: uuid.UUID, *order_by: Any, where: tuple[Any, ...] = ()
) -> list[T]:
    """The rows of ``model`` (a table with a ``tenant_id`` column) owned by ``tenant_id``, in
    ``order_by`` order (columns or ``column.desc()``), filtered further by ``where``."""
    query = sql_select(model).where(model.tenant_id == tenant_id, *where)  # type: ignore[attr-defined]
    return list(session.scalars(query.order_by(*order_by)))


def tenant_row(
    session: Session,
    model: type[T],
    tenant_id: uuid.UUID,
    row_id: Any,
    *,
    noun: str,
    detail: str | None = None,
    key: ColumnElement[Any] | Any = None,
    where: tuple[Any, ...] = (),
    lock: bool = False,
) -> T:
    """The row of ``model`` whose ``key`` column (default ``model.id``) is ``row_id`` and which
    ``tenant_id`` owns (tenant isolation, invariant 1: another tenant's row is the same 404 as a
    missing one); ``where`` narrows it further (e.g. to its creator), ``lock`` reads it
    ``FOR UPDATE``.

    Raises:
        NotFound: no such row; detail ``detail``, else ``"No such <noun> in this tenant."``.
    """
    column = model.id if key is None else key  # type: ignore[attr-defined]
    query = sql_select(model).where(column == row_id, model.tenant_id == tenant_id, *where)  # type: ignore[attr-defined]
    if lock:
        query = query.with_for_update()
    row = session.scalars(query).first()
    if row is None:
        raise NotFound(detail or f"No such {noun} in this tenant.")
    return row


class Database:
    """The process's engine and the factory of sessions.

    ``bind`` is normally an :class:`~sqlalchemy.Engine`; tests pass a :class:`~sqlalchemy.Connection`
    inside an outer transaction so each test is rolled back (sessions then join it through
    savepoints).
    """

    def __init__(self, bind: Engine | Connection):
        self.bind = bind
        #: (tenant schema, lazy begin) -> the option engine (one per tenant served recently)
        self._engines: Memo[tuple[str | None, bool], Engine] = Memo("db.option_engines", maxsize=4096)
        if isinstance(bind, Engine) and not event.contains(
            bind, "before_cursor_execute", _begin_before_write
        ):
            event.listen(bind, "before_cursor_execute", _begin_before_write)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        pool_size: int = 10,
        max_overflow: int = 10,
        pre_ping: bool = True,
        prepared_statements: bool = False,
        setting: str = "DATABASE_URL",
    ) -> Database:
        """An engine on ``url``.

        ``prepared_statements`` (``DB_PREPARED_STATEMENTS``, off by default): off, every
        connection runs with psycopg's ``prepare_threshold = None`` (:func:`connect_args`), so
        no statement is ever prepared on a server connection and any PgBouncer pool mode that
        keeps a transaction on one server connection is safe. On, the connection is verified
        first (:func:`verify_prepared_statements`, one connection, three short transactions)
        and :class:`~saas.settings.SettingsError` naming ``setting`` is raised unless it is
        proven to reach PostgreSQL directly or through a pooler that tracks prepared
        statements (PgBouncer >= 1.21 with ``max_prepared_statements`` > 0).

        ``pre_ping`` (``DB_POOL_PRE_PING``) checks each pooled connection before use
        (:func:`_check_alive`): a connection idle in the pool for less than
        :data:`PING_AFTER_IDLE_SECONDS` costs a socket poll, no round trip (a ``SELECT 1`` only
        when the server has written to it, e.g. terminated it); one idle longer is pinged with
        ``SELECT 1``, which catches a connection a NAT or load balancer dropped silently (no FIN
        or RST reaches an idle socket). A dead connection is replaced before the request sees
        it. Off, a request meeting a connection the server dropped fails once and the pool is
        refreshed. TCP keepalives (:data:`KEEPALIVES`) keep idle connections through NAT
        tables and let the kernel notice a dead peer; ``pool_recycle`` (30 minutes) bounds a
        connection's age either way."""
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_recycle=1800,
            # error messages (and so logs) never carry bound values: hashes, tokens, personal data
            hide_parameters=True,
            connect_args=connect_args(prepared_statements),
        )
        _guard_search_path(engine)
        if not prepared_statements:
            event.listen(engine, "connect", _refuse_prepared_statements)
        if pre_ping:
            event.listen(engine, "checkin", _record_checkin)
            event.listen(engine, "checkout", _check_alive)
        if prepared_statements:
            verify_prepared_statements(engine, setting)
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
            engine = self._engines.put(key, self.bind.execution_options(**options))
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


#: libpq TCP options of the engine's connections (seconds, except ``tcp_user_timeout`` in ms):
#: a keepalive after 30 s idle, every 10 s, 3 unanswered -> the kernel closes the socket (so a
#: NAT/LB that dropped the flow is noticed in about a minute, and a flow kept alive is not
#: dropped); data left unacknowledged for 30 s likewise (bounds a ping on a dead path, which
#: would otherwise wait for TCP's retransmissions, ~15 minutes).
#: Source: PostgreSQL docs, libpq-connect.html#LIBPQ-PARAMKEYWORDS.
KEEPALIVES: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def connect_args(prepared_statements: bool = False) -> dict[str, Any]:
    """psycopg ``connect()`` arguments of every engine the application makes: TCP keepalives
    and, unless ``prepared_statements``, ``prepare_threshold = None``.

    psycopg 3 prepares a statement on the server after it ran ``prepare_threshold`` (5) times on
    one client connection, and later sends only its name. Behind a pooler in transaction mode
    the next transaction may run on another server connection, where that name is unknown or
    names another statement: a tenant's schema is part of each statement's text, so the name
    can point to another tenant's query (rows of another tenant, or ``InvalidSqlStatementName``
    / ``DuplicatePreparedStatement``). Source: psycopg docs, advanced/prepare.html and
    advanced/pgbouncer.html; PgBouncer docs, config.html#max_prepared_statements."""
    args: dict[str, Any] = dict(KEEPALIVES)
    if not prepared_statements:
        args["prepare_threshold"] = None
    return args


def _refuse_prepared_statements(dbapi_connection: Any, record: Any) -> None:
    """Pool ``connect`` hook: every new connection has prepared statements off, whatever made it."""
    dbapi_connection.prepare_threshold = None


#: marks the probe statements of :func:`verify_prepared_statements` in ``pg_prepared_statements``
_PROBE = "saas prepared-statement probe"


def verify_prepared_statements(engine: Engine, setting: str = "DATABASE_URL") -> str:
    """Prove that prepared statements are safe on ``engine``'s connections; return how.

    On one connection, three transactions each run a probe statement prepared by psycopg
    (``prepare=True``: a protocol-level Parse under a name of psycopg's; the statement returns
    its server's ``pg_backend_pid()``), read the names under which ``pg_prepared_statements``
    holds the probe, and ``DEALLOCATE`` it again (a pooler would otherwise hand the server
    connection, statement included, to another client). Proven safe when either:

    * ``direct``: every transaction ran on the backend whose process id the server announced
      at connection start (``BackendKeyData``, libpq's ``PQbackendPID``). PostgreSQL announces
      its own backend; a pooler announces a key of its own (PgBouncer: random) because it
      picks a server connection only later;
    * ``tracking pooler``: the server holds the probe only under names of the form
      ``PGBOUNCER_<n>``, i.e. PgBouncer >= 1.21 with ``max_prepared_statements`` > 0, which
      renames each client's prepared statements per server connection and prepares them again
      wherever the client's next transaction runs.

    Anything else (a pooler passing the client's statement names through, whatever its pool
    mode: a client cannot tell session from transaction pooling) is refused.

    Raises:
        SettingsError: not proven; one line naming ``setting`` and ``DB_PREPARED_STATEMENTS``.
    """
    from psycopg import Error as PsycopgError
    from psycopg import sql as pgsql

    from saas.settings import SettingsError

    def refuse(why: str) -> SettingsError:
        return SettingsError(
            f"DB_PREPARED_STATEMENTS: on, but {why}; set DB_PREPARED_STATEMENTS=off, point {setting} "
            "at PostgreSQL directly, or use PgBouncer >= 1.21 with max_prepared_statements > 0"
        )

    try:
        raw = engine.raw_connection()
    except Exception as exc:  # no connection: nothing can be proven
        first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
        raise refuse(f"{setting} could not be reached to verify it ({type(exc).__name__}: {first})") from None
    try:
        conn = raw.driver_connection
        announced = conn.info.backend_pid
        backends: set[int] = set()
        names: set[str] = set()
        try:
            for _ in range(3):
                marker = f"/* {_PROBE} {uuid.uuid4().hex} */"
                with conn.cursor() as cur:
                    cur.execute(f"SELECT pg_backend_pid() {marker}", prepare=True)  # type: ignore[call-overload]
                    backends.add(cur.fetchone()[0])
                    cur.execute(
                        "SELECT name FROM pg_prepared_statements WHERE strpos(statement, %s) > 0",
                        (marker,),
                        prepare=False,
                    )
                    found = {row[0] for row in cur.fetchall()}
                    for name in found - {n for n in found if n.startswith("PGBOUNCER_")}:
                        # leave nothing on the server connection (a pooler would hand it to
                        # another client); PgBouncer's own names are its to manage
                        cur.execute(f"DEALLOCATE {pgsql.Identifier(name).as_string(None)}", prepare=False)
                    names |= found
                conn.commit()
        except PsycopgError as exc:
            raise refuse(f"a prepared statement failed on {setting} ({type(exc).__name__}): its "
                         "server connections are shared by a pooler") from None  # fmt: skip
        finally:
            raw.invalidate()  # psycopg's cache of the probes goes with it; the pool opens a new one
    finally:
        raw.close()
    how = prepared_statements_verdict(announced, backends, names)
    if how is None:
        raise refuse(
            f"{setting} goes through a connection pooler that does not track prepared statements "
            f"(server backends {sorted(backends)}, announced {announced}, statement names {sorted(names)})"
        )
    return how


def prepared_statements_verdict(announced: int, backends: set[int], names: set[str]) -> str | None:
    """:func:`verify_prepared_statements`' decision: ``"direct"``, ``"tracking pooler"`` or
    None (not proven). ``announced``: the startup ``BackendKeyData`` process id; ``backends``:
    ``pg_backend_pid()`` of each probe transaction; ``names``: the probe's names in
    ``pg_prepared_statements``."""
    if not names:
        return None
    if backends == {announced} and not any(n.startswith("PGBOUNCER_") for n in names):
        return "direct"
    if all(re.fullmatch(r"PGBOUNCER_\d+", n) for n in names):
        return "tracking pooler"
    return None


#: a pooled connection idle longer than this (seconds) is pinged with ``SELECT 1`` at checkout:
#: NAT and load balancer idle timeouts drop a flow without telling either end
PING_AFTER_IDLE_SECONDS = 30.0

#: key of the pool record's ``info``: ``time.monotonic()`` when the connection was checked in
_CHECKED_IN_AT = "saas_checked_in_at"


def _record_checkin(dbapi_connection: Any, record: Any) -> None:
    """Pool ``checkin`` hook: remember when the connection went idle (``record.info``)."""
    if record is not None:
        record.info[_CHECKED_IN_AT] = time.monotonic()


def _check_alive(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Pool ``checkout`` hook: refuse a connection that is dead, with a round trip only when needed.

    * idle in the pool longer than :data:`PING_AFTER_IDLE_SECONDS` (``record.info``, set by
      :func:`_record_checkin`): ``SELECT 1``. A NAT or load balancer that dropped the flow sends
      nothing, so nothing short of a packet tells; the ping fails (RST, or
      ``tcp_user_timeout``) and the connection is replaced.
    * otherwise: the socket is polled (no wait). An idle connection outside a transaction
      receives nothing from PostgreSQL unless the server ends it (``pg_terminate_backend``,
      restart, ``idle_session_timeout``: an ``ErrorResponse`` then end of file) or reports an
      asynchronous message (a parameter change, a notice); only when it is readable does a
      ``SELECT 1`` decide.

    A fresh connection (never checked in) is used as is. Raising
    :class:`~sqlalchemy.exc.DisconnectionError` makes the pool discard the connection and check
    out another (SQLAlchemy's "pessimistic disconnect handling", docs:
    core/pooling.html#custom-legacy-pessimistic-ping).
    """
    if dbapi_connection.closed or getattr(dbapi_connection, "broken", False):
        raise exc.DisconnectionError("connection closed")
    checked_in_at = record.info.get(_CHECKED_IN_AT) if record is not None else None
    idle_too_long = checked_in_at is not None and time.monotonic() - checked_in_at > PING_AFTER_IDLE_SECONDS
    if not idle_too_long:
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

#: functions a plain read may call: side-effect free (STABLE or IMMUTABLE in PostgreSQL), the
#: ones the request path's SELECTs use (aggregates of lists and counts, case-folded lookups,
#: window numbering) and a few of the same kind. Anything else (sequences, advisory locks,
#: ``set_config``, a user-defined VOLATILE function that writes) makes the statement open the
#: transaction first.
SAFE_FUNCTIONS = frozenset(
    {
        "count", "min", "max", "sum", "avg", "bool_and", "bool_or", "every",
        "lower", "upper", "length", "char_length", "coalesce", "nullif", "greatest", "least",
        "now", "current_timestamp", "current_date", "localtimestamp",
        "array_agg", "string_agg", "json_agg", "jsonb_agg", "json_build_object",
        "jsonb_build_object", "json_object_agg", "jsonb_object_agg",
        "row_number", "rank", "dense_rank",
    }
)  # fmt: skip

#: literal SQL fragments allowed in a plain read: ``*`` (``count(*)``) and bare identifiers
_SAFE_LITERAL = re.compile(r'[\w."*]*')

#: execution options that make psycopg use a server-side cursor (``DECLARE`` needs a transaction)
_STREAMING = ("stream_results", "yield_per")


def _plain_read(context: Any, statement: str) -> bool:
    """Whether the statement may run outside the request's transaction: an allow-list.

    A plain read is compiled by SQLAlchemy from a :class:`~sqlalchemy.sql.Select` (ORM or Core)
    with no ``stream_results``/``yield_per`` execution option, and whose whole tree holds no
    row lock (``FOR UPDATE/SHARE``, also in a subquery), no DML (a data-modifying CTE), no
    text SQL, and no call of a function outside :data:`SAFE_FUNCTIONS`. Text SQL, DML and DDL
    are never plain reads. The tree walk runs once per compiled form (SQLAlchemy caches those,
    across tenants: the schema map is applied after compilation); the verdict is kept on the
    compiled object."""
    compiled = getattr(context, "compiled", None)
    if compiled is None or not isinstance(compiled.statement, Select):
        return False
    options = context.execution_options
    if any(options.get(name) for name in _STREAMING):
        return False
    verdict = getattr(compiled, _VERDICT, None)
    if verdict is None:
        # an ORM select's columns (column_property expressions, eager joins) appear only in the
        # Core statement its compile state built: walk that one too
        core = getattr(getattr(compiled, "compile_state", None), "statement", None)
        verdict = _select_is_plain_read(compiled.statement) and (
            core is None or core is compiled.statement or _select_is_plain_read(core)
        )
        setattr(compiled, _VERDICT, verdict)
    return verdict


#: attribute of a compiled statement holding :func:`_plain_read`'s verdict on its tree
_VERDICT = "_saas_plain_read"


def _select_is_plain_read(statement: Any) -> bool:
    """The statement-only part of :func:`_plain_read` (one walk of the expression tree)."""
    for element in visitors.iterate(statement):
        if isinstance(element, Select) and element._for_update_arg is not None:
            return False
        if isinstance(element, (UpdateBase, TextClause)):
            return False
        if isinstance(element, FunctionElement):
            name = getattr(element, "name", None)
            if getattr(element, "packagenames", ()) or not isinstance(name, str):
                return False
            if name.lower() not in SAFE_FUNCTIONS:
                return False
        elif (
            isinstance(element, ColumnClause)
            and element.is_literal
            and not _SAFE_LITERAL.fullmatch(element.name)
        ):
            return False
    return True


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

    return services().database


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


class EarlyCommit(StrEnum):
    """Why a unit of work commits before its request fails: each names a write that must outlive
    the failing response (the request's ``after_request`` hook rolls back anything after it)."""

    #: a failed sign-in's counter, lock and audit events (or the timing stand-in that hides
    #: that the account does not exist): the attempt counts although the answer is 401
    SIGN_IN_FAILURE = "sign_in_failure"
    #: a throttled sign-in's audit event (``auth.login_throttled``); the answer is 429
    SIGN_IN_THROTTLED = "sign_in_throttled"
    #: an MFA code's failure counter (and the factor's lock): the answer is 401 or 403
    MFA_FAILURE = "mfa_failure"
    #: a refresh token whose membership is gone: its family is revoked, the answer 400
    REFRESH_MEMBERSHIP_GONE = "refresh_membership_gone"
    #: a refresh token used twice: its family is revoked (RFC 9700 section 4.14.2)
    REFRESH_TOKEN_REUSED = "refresh_token_reused"  # noqa: S105 - a reason, not a secret
    #: an authorization code used twice: the tokens issued from it are revoked (RFC 9700 section 4.4)
    AUTHORIZATION_CODE_REUSED = "authorization_code_reused"
    #: an authorization code consumed by a token request that then fails (RFC 6749 section 4.1.2:
    #: a code is used once, whatever the outcome)
    AUTHORIZATION_CODE_CONSUMED = "authorization_code_consumed"
    #: a new Stripe customer's id: the next Stripe call may fail, and the customer must not be
    #: created twice (the idempotency key covers 24 hours only)
    STRIPE_CUSTOMER_CREATED = "stripe_customer_created"
    #: a refused SSO sign-in's audit event (``sso.login_failed``): the answer is an error page
    SSO_LOGIN_FAILED = "sso_login_failed"


def commit_early(session: Session, reason: EarlyCommit) -> None:
    """Commit ``session``'s unit of work now, before the request fails, for ``reason``.

    This is the one place besides the unit of work's owner (``after_request``, a CLI command's or
    job's :meth:`Database.transaction`) that commits: the rule that a failing request writes
    nothing has exactly the exceptions :class:`EarlyCommit` lists, and a test checks that no
    other module calls ``commit()``.

    Raises:
        ValueError: ``reason`` is not an :class:`EarlyCommit`.
    """
    EarlyCommit(reason)
    session.commit()


def init_app(app: Flask) -> None:
    """Commit the request's unit of work after a successful view, roll it back otherwise."""

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
