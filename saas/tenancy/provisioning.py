"""Tenant provisioning: tenant row, schema at the current head, owner user and membership,
all in one transaction (PostgreSQL DDL is transactional), so a failure at any step leaves
nothing behind.

The schema is created from the models (``CREATE TABLE`` for each tenant table, compiled once
per process) and stamped with the tenant track's head revision: the cost does not grow with the
number of migrations in the track's history.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import marshmallow as ma
from psycopg import sql as pgsql
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateIndex, CreateTable

from saas import audit
from saas.audit import AuditAction
from saas.db import schema_name_for
from saas.errors import Conflict, ErrorCode, ValidationError
from saas.identity.models import Membership, Tenant, User
from saas.identity.passwords import Passwords, password_problems
from saas.identity.slugs import normalize_slug, slug_problems
from saas.memo import memoize

_EMAIL = ma.validate.And(ma.validate.Length(min=3, max=320), ma.validate.Email())

#: test hook: called after the schema is created and before the rest (failure injection)
after_schema_created: Callable[[Session, Tenant], None] | None = None


class AccountExists(Conflict):
    """The owner's email belongs to an existing account (409 ``email_taken`` where it is not
    caught: the operator CLI). Signup catches it and answers as for a new address, mailing the
    account instead (``saas.tenancy.views.Signup``), so it does not tell who has an account."""

    code = ErrorCode.EMAIL_TAKEN

    def __init__(self, email: str) -> None:
        super().__init__("An account with that email exists.", extra={"field": "owner.email"})
        self.email = email


@dataclass
class Provisioned:
    tenant: Tenant
    owner: User
    membership: Membership


#: a schema name no real schema can have, quoted in the compiled DDL and replaced per tenant
_SENTINEL = "__TENANT_SCHEMA__"


@memoize("tenancy.tenant_ddl", maxsize=1)
def _tenant_ddl() -> tuple[str, ...]:
    """``CREATE TABLE``/``CREATE INDEX`` statements for the placeholder schema, compiled once."""
    from sqlalchemy import MetaData
    from sqlalchemy.dialects import postgresql

    from saas.product import tenant_tables

    dialect = postgresql.dialect()
    copy = MetaData()
    for table in tenant_tables():
        table.to_metadata(copy, schema=_SENTINEL)
    statements: list[str] = []
    for table in copy.sorted_tables:
        statements.append(str(CreateTable(table).compile(dialect=dialect)))
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            statements.append(str(CreateIndex(index).compile(dialect=dialect)))
    return tuple(statements)


def tenant_head() -> str:
    """The tenant migration track's head revision (read once per process)."""
    from saas.migrate import tenant_head_revision

    return tenant_head_revision()


def create_tenant_schema(conn: Connection, schema: str) -> None:
    """Create ``schema`` with every tenant table at head and stamp its ``alembic_version``.

    Runs inside the caller's transaction. ``schema`` must come from :func:`schema_name_for`.
    """
    quoted = pgsql.Identifier(schema).as_string(None)
    placeholder = f'"{_SENTINEL}".'
    head = tenant_head()
    script = [f"CREATE SCHEMA {quoted}"]
    script += [stmt.replace(placeholder, quoted + ".") for stmt in _tenant_ddl()]
    # the same table Alembic creates (constraint name included), so the catalogues are equal
    script.append(
        f"CREATE TABLE {quoted}.alembic_version "
        "(version_num VARCHAR(32) NOT NULL, CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
    )
    # one round trip: psycopg sends a multi-statement string when it carries no parameters
    conn.exec_driver_sql(";\n".join(script))
    conn.execute(text(f"INSERT INTO {quoted}.alembic_version (version_num) VALUES (:v)"), {"v": head})  # noqa: S608 - quoted identifier


def _tenant_fields(tenant: dict, errors: dict[str, dict[str, list[str]]]) -> tuple[str, str]:
    slug = normalize_slug(tenant.get("slug") or "")
    name = (tenant.get("name") or "").strip()
    if problems := slug_problems(slug):
        errors.setdefault("tenant", {})["slug"] = problems
    if not name:
        errors.setdefault("tenant", {})["name"] = ["Must not be empty."]
    return slug, name


def validate_tenant(tenant: dict) -> tuple[str, str]:
    """Normalise and check a new tenant's fields alone (a signed-in user's signup). Returns
    (slug, name).

    Raises:
        ValidationError: per-field errors under ``tenant.*``.
    """
    errors: dict[str, dict[str, list[str]]] = {}
    slug, name = _tenant_fields(tenant, errors)
    if errors:
        raise ValidationError(errors)
    return slug, name


def validate_signup(tenant: dict, owner: dict, min_password: int = 8) -> tuple[str, str, str, str, str]:
    """Normalise and check signup input. Returns (slug, name, email, password, owner name).

    Raises:
        ValidationError: per-field errors under ``tenant.*`` and ``owner.*``.
    """
    errors: dict[str, dict[str, list[str]]] = {}
    slug, name = _tenant_fields(tenant, errors)
    email = (owner.get("email") or "").strip()
    password = owner.get("password") or ""
    owner_name = (owner.get("name") or "").strip()
    try:
        _EMAIL(email)
    except ma.ValidationError as exc:
        errors.setdefault("owner", {})["email"] = list(exc.messages)
    if problems := password_problems(password, min_password):
        errors.setdefault("owner", {})["password"] = problems
    if errors:
        raise ValidationError(errors)
    return slug, name, email, password, owner_name


def provision_tenant(
    session: Session,
    passwords: Passwords,
    *,
    slug: str,
    name: str,
    owner_email: str,
    owner_password: str | None,
    owner_name: str = "",
    settings: dict | None = None,
    owner: User | None = None,
) -> Provisioned:
    """Create a tenant, its schema and its owner in ``session``'s transaction (not committed).

    The owner is a new user, or the passwordless placeholder an invitation created for an address
    nobody had signed up with (``saas.tenancy.members.invite``): the owner claims it, its pending
    invitations still needing their mailed tokens. An existing account is never attached to a
    tenant here, so signup never hands a tenant to someone else's account.

    ``owner``: an existing account that creates the tenant itself (signed in); ``owner_email``
    and ``owner_password`` are then ignored.

    Raises:
        Conflict: ``slug_taken``. AccountExists: ``email_taken``, an account has that email.
    """
    from saas.auth.service import find_user_by_email
    from saas.tenancy.members import has_account

    if session.query(Tenant.id).filter(Tenant.slug == slug).first():
        raise Conflict("That slug is taken.", code=ErrorCode.SLUG_TAKEN, extra={"field": "tenant.slug"})
    placeholder = find_user_by_email(session, owner_email) if owner is None else None
    if placeholder is not None:
        # locked: an invitation accepted at the same moment sets the password first, or waits
        placeholder = session.get(User, placeholder.id, with_for_update=True, populate_existing=True)
        assert placeholder is not None
        if has_account(session, placeholder) or not owner_password:
            raise AccountExists(placeholder.email)
        # the address is invited elsewhere: its first password meets those tenants' minimum too
        from saas.auth.accounts import password_min_length

        if problems := password_problems(owner_password, password_min_length(session, placeholder.id)):
            raise ValidationError({"owner": {"password": problems}})
    tenant_id = uuid.uuid4()
    schema = schema_name_for(tenant_id)
    password_hash = passwords.hash(owner_password) if owner_password and owner is None else None
    savepoint = session.begin_nested()
    try:
        tenant = Tenant(id=tenant_id, slug=slug, name=name, schema_name=schema, settings=settings or {})
        tenant.schema_version = tenant_head()
        session.add(tenant)
        if owner is None and placeholder is not None:
            owner = placeholder
            owner.email, owner.password_hash = owner_email, password_hash
            owner.name = owner_name or owner.name
        elif owner is None:
            owner = User(email=owner_email, name=owner_name, password_hash=password_hash)
            session.add(owner)
        session.flush()
        create_tenant_schema(session.connection(), schema)
        if after_schema_created is not None:
            after_schema_created(session, tenant)
        membership = Membership(user_id=owner.id, tenant_id=tenant.id, role="owner", status="active")
        session.add(membership)
        session.flush()
        audit.record(
            session,
            AuditAction.TENANT_CREATED,
            tenant_id=tenant_id,
            target_type="tenant",
            target_id=tenant.id,
            data={"slug": slug, "owner": str(owner.id)},
            actor=audit.Actor("user", str(owner.id)),
        )
        savepoint.commit()
    except IntegrityError as exc:
        # a concurrent signup won the race between the checks above and the insert
        savepoint.rollback()
        constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None) or ""
        if constraint == "uq_users_email_lower":
            raise AccountExists(owner_email) from None
        if constraint == "uq_tenants_slug":
            raise Conflict(
                "That slug is taken.", code=ErrorCode.SLUG_TAKEN, extra={"field": "tenant.slug"}
            ) from None
        raise
    except BaseException:
        savepoint.rollback()
        raise
    return Provisioned(tenant, owner, membership)
