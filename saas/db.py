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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, has_app_context
from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session

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

    @classmethod
    def from_url(
        cls, url: str, *, pool_size: int = 10, max_overflow: int = 10, pre_ping: bool = True
    ) -> Database:
        """An engine on ``url``. ``pre_ping`` tests each pooled connection with a round trip
        before use (``DB_POOL_PRE_PING``): off, a request meeting a connection the server dropped
        fails once and the pool is refreshed; on, every request pays one more round trip."""
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=pre_ping,
            pool_recycle=1800,
            # error messages (and so logs) never carry bound values: hashes, tokens, personal data
            hide_parameters=True,
        )
        _guard_search_path(engine)
        return cls(engine)

    @property
    def engine(self) -> Engine:
        return self.bind if isinstance(self.bind, Engine) else self.bind.engine

    def session(self, tenant_schema: str | None = None) -> Session:
        """A new session; tenant tables resolve to ``tenant_schema`` (or fail when it is None).

        Shared tables are always reachable (their schema is explicit).
        """
        mapping = translate_map(tenant_schema)
        if isinstance(self.bind, Connection):
            self.bind.execution_options(schema_translate_map=mapping)
            return Session(bind=self.bind, join_transaction_mode="create_savepoint", expire_on_commit=False)
        return Session(bind=self.bind.execution_options(schema_translate_map=mapping), expire_on_commit=False)

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
        g.db_session = database().session(g.get("db_tenant_schema"))
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
