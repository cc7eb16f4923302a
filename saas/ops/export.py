"""Tenant export and import (``saas tenants export`` / ``saas tenants import``).

Format ``saas.tenant-export`` version 3 (version 1 and 2 files, without the shared rows marked
*v2* and *v3* below, are still imported): UTF-8 JSON Lines, one JSON object per line.

1. header: ``{"format": "saas.tenant-export", "version": 1, "exported_at": ISO-8601,
   "tenant_revision": <tenant track revision of the schema>, "shared_revision": ...,
   "tenant": {"id", "slug", "name", "status", "plan", "settings", "created_at"}}``
2. shared rows: ``{"table": "saas.users", "row": {...}}`` (the members' users: id, email, name,
   password_hash, status, created_at) and ``{"table": "saas.memberships", "row": {...}}``;
   *v2*: every column of the tenant's ``saas.oauth_clients`` (secret as its hash),
   ``saas.oauth_consents``, ``saas.billing_accounts`` (Stripe ids included),
   ``saas.billing_overrides``, and the members' ``saas.mfa_factors`` (TOTP secret still
   encrypted under the source's ``SECRET_KEY``) and ``saas.mfa_recovery_codes`` (hashes);
   *v3*: the tenant's ``saas.custom_roles`` (name, description, permissions),
   ``saas.verified_domains``, ``saas.sso_connections`` (every column but ``secret_encrypted``:
   a secret sealed under this deployment's key is useless elsewhere and never leaves) and
   ``saas.scim_settings`` (SCIM tokens never);
3. tenant rows: ``{"table": "tenant.<name>", "row": {...}}`` for every table of the tenant
   schema (``contacts``, ``audit_events``, ...), in dependency order;
4. trailer: ``{"end": true, "counts": {"<table>": n, ...}}``; a file without it is truncated and
   refused.

Both directions stream: the export reads tenant tables through a server-side cursor (1,000 rows
per fetch); the import reads the file line by line and inserts tenant rows 1,000 at a time (the
shared rows, a tenant's members and their satellites, are held until the first tenant row).

Values: UUIDs and timestamps as strings (ISO 8601 with offset), JSON as JSON, arrays as lists.
The file holds password hashes and all tenant data: it is written with mode 0600; treat it as a
secret. Refresh tokens and pending invitations are not exported.

Import always creates a NEW tenant (new id, schema and slug) at the current tenant head; it
refuses a file whose ``tenant_revision`` differs from the head (migrate the source first).

An import file is input like any request: every line is checked before it is used, with the
API's own rules where the API writes such rows (tenant name and settings: the tenant schemas;
members' emails and roles: the invitation schemas, a role being built-in or one of the file's
custom roles; custom roles: ``saas.tenancy.roles`` (names, registry permissions); OAuth clients:
``saas.auth.clients``, so no ``javascript:`` redirect URI, no ``password`` grant, roles within
the role set; contacts: the contacts schema), and with the tables' column types elsewhere;
unknown fields, duplicated keys and unknown tables are refused. The first bad line raises
:class:`ImportFileError`, one line naming the line and field (``line 12 (saas.oauth_clients):
redirect_uris: ...``), and the caller's rollback leaves nothing behind (no tenant, schema, user,
invitation or mail).

**Untrusted by default.** Without ``trusted`` the import takes no plan (the tenant gets the
catalogue's default), no billing overrides, no secrets (password hashes, client secrets, MFA
factors and recovery codes), no consents, no audit history and no user or client ids; each
value left out is named, with its lines, in the import notes. Clients are registered anew by
the clients service (new ``client_id``, a new secret nobody knows: rotate it before use), with
at most the ``member`` role and never first-party. ``trusted`` (``saas tenants import
--trusted``, for a file of this service's own export kept safe) takes all of them, still
checked by the same rules.

**Existing accounts are never linked.** Users are matched by email: an account that exists
already is invited (``saas.tenancy.members.invite``: a pending membership, an invitation
mailed through the outbox, accepted with that account's own password), never made a member
silently, trusted or not; its MFA factors stay its own and the file's consents for it are
dropped. Without ``trusted`` every member is invited (a new account gets no password until it
accepts). A trusted file's new users keep their password hash, id (when free), MFA factors and
consents, and their active memberships. User ids inside tenant rows (``created_by``, audit
``actor_id``) follow the new ids.

**Custom roles** are imported (trusted or not: the API writes them) before the memberships, so
a member's or invitee's custom role resolves, with its permissions, on the target. A target
plan without ``custom_roles`` (an untrusted import's default plan, say) takes them anyway, as
a downgraded tenant keeps its roles (docs/auth.md, "Custom roles"): their holders keep them
working; creating, changing or assigning one waits for a plan that has the feature. The
import notes say so.

**Directory settings** (*v3*). Verified domains come in as pending claims (through
``saas.tenancy.domains.claim_domain``: ``verified_at`` NULL, a new token): the target deployment
must see the TXT record itself; the notes give each record to publish. A domain another tenant
of the target has verified is not claimed (noted). SSO connections come from a trusted file
only (their ``config`` is checked by the API against the identity provider, which an import does
not call), imported **disabled**, without a client secret, the notes saying to set it (PATCH)
and re-enable; their domains and roles are checked like the API's (the file's domains, a
built-in or imported role). SCIM settings (group roles, default role) are carried, trusted or
not, their roles checked the same way; no SCIM token is exported or created.

Shared rows of the tenant get new row ids and the new tenant id. A trusted import keeps an
OAuth client's ``client_id`` (and secret) when it is free, else gives it a new ``c_...`` one (the
file's source tenant still exists: a copy); consents follow the client mapping. The billing
account carries Stripe's customer and subscription ids, which must never silently bill two
tenants to one customer: they are **not** attached (no billing account row; the ids are named
in the import notes and the audit event); ``reuse_stripe_customer=True`` (``saas tenants
import --trusted --reuse-stripe-customer``, for a move after the source is gone) copies the
account, and fails with ``stripe_customer_in_use`` while another tenant holds that customer.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import uuid
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import marshmallow as ma
from sqlalchemy import ARRAY, Boolean, Engine, Integer, String, Table, func, insert, select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.types import Date, DateTime, Numeric, Uuid

from saas import audit
from saas.actions import ActionContext
from saas.audit import AuditAction
from saas.db import TENANT_PLACEHOLDER, schema_name_for, translate_map, utcnow
from saas.errors import AppError, Conflict, ErrorCode, ValidationError
from saas.identity.models import Membership, Tenant, User
from saas.identity.slugs import normalize_slug, slug_problems
from saas.memo import memoize

FORMAT = "saas.tenant-export"
VERSION = 3
#: versions :func:`import_tenant` reads
READABLE_VERSIONS = (1, 2, 3)
_USER_ID_COLUMNS = {"created_by", "updated_by", "user_id", "invited_by"}
#: an OAuth client's fields that the API registers (and checks): an import checks them the same way
CLIENT_API_FIELDS = (
    "name",
    "client_type",
    "redirect_uris",
    "grant_types",
    "scope",
    "role",
    "first_party",
    "post_logout_redirect_uris",
    "backchannel_logout_uri",
    "backchannel_logout_session_required",
)


def _encode(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot export {type(value).__name__}")


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, default=_encode, separators=(",", ":"), ensure_ascii=False) + "\n"


def _tenant_tables() -> list[Table]:
    """The tenant tables a file carries: all but those rebuilt by the importing side
    (``info={"export": False}``: the audit chain's head, since imported events are chained
    anew)."""
    from saas.product import tenant_tables

    return [t for t in tenant_tables() if t.info.get("export", True)]


def _shared_queries(tenant_id: uuid.UUID, user_ids: list[uuid.UUID]) -> list[tuple[str, Any]]:
    """(record table name, SELECT) for the tenant's v2 shared rows, in import order."""
    from saas.auth.models import Consent, MfaFactor, OAuthClient, RecoveryCode
    from saas.billing.models import BillingAccount, BillingOverride
    from saas.identity.models import CustomRole, SsoConnection, VerifiedDomain
    from saas.scim.models import ScimSettings

    def of_tenant(model: Any) -> Any:
        table = model.__table__
        return select(table).where(table.c.tenant_id == tenant_id).order_by(*table.primary_key.columns)

    def of_users(model: Any) -> Any:
        table = model.__table__
        return select(table).where(table.c.user_id.in_(user_ids)).order_by(table.c.id)

    return [
        ("saas.custom_roles", of_tenant(CustomRole)),
        ("saas.mfa_factors", of_users(MfaFactor)),
        ("saas.mfa_recovery_codes", of_users(RecoveryCode)),
        ("saas.oauth_clients", of_tenant(OAuthClient)),
        ("saas.oauth_consents", of_tenant(Consent)),
        ("saas.billing_accounts", of_tenant(BillingAccount)),
        ("saas.billing_overrides", of_tenant(BillingOverride)),
        ("saas.verified_domains", of_tenant(VerifiedDomain)),
        # the sealed client secret never leaves the deployment whose key sealed it
        ("saas.sso_connections", of_tenant(SsoConnection).with_only_columns(*_sso_columns())),
        ("saas.scim_settings", of_tenant(ScimSettings)),
    ]


def _sso_columns() -> list[Any]:
    from saas.identity.models import SsoConnection

    return [c for c in SsoConnection.__table__.columns if c.name != "secret_encrypted"]


def export_tenant(engine: Engine, tenant_ref: str, out: IO[str]) -> dict[str, int]:
    """Write the tenant's export to ``out`` from one consistent snapshot (REPEATABLE READ).

    Returns:
        rows written per table.

    Raises:
        NotFound: no such tenant.
    """
    from saas.identity.models import find_tenant
    from saas.migrate import current_shared_revision

    counts: dict[str, int] = {}
    shared_revision = current_shared_revision(engine)
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        session = Session(bind=conn)
        tenant = find_tenant(session, tenant_ref)
        schema = tenant.schema_name
        revision = conn.exec_driver_sql(f'SELECT version_num FROM "{schema}".alembic_version').scalar()  # noqa: S608
        header = {
            "format": FORMAT,
            "version": VERSION,
            "exported_at": utcnow(),
            "tenant_revision": revision,
            "shared_revision": shared_revision,
            "tenant": {
                "id": tenant.id,
                "slug": tenant.slug,
                "name": tenant.name,
                "status": tenant.status,
                "plan": tenant.plan,
                "settings": tenant.settings or {},
                "created_at": tenant.created_at,
            },
        }
        out.write(_line(header))
        memberships = session.scalars(select(Membership).where(Membership.tenant_id == tenant.id)).all()
        users = session.scalars(select(User).where(User.id.in_([m.user_id for m in memberships]))).all()
        for user in users:
            row = {
                c: getattr(user, c) for c in ("id", "email", "name", "password_hash", "status", "created_at")
            }
            out.write(_line({"table": "saas.users", "row": row}))
        counts["saas.users"] = len(users)
        for m in memberships:
            row = {c: getattr(m, c) for c in ("id", "user_id", "role", "status", "invited_by", "created_at")}
            out.write(_line({"table": "saas.memberships", "row": row}))
        counts["saas.memberships"] = len(memberships)
        for key, query in _shared_queries(tenant.id, [u.id for u in users]):
            n = 0
            for row in conn.execute(query).mappings():
                out.write(_line({"table": key, "row": dict(row)}))
                n += 1
            counts[key] = n
        # a server-side cursor fetched 1,000 rows at a time: a large tenant is never held in memory
        tconn = conn.execution_options(
            schema_translate_map={TENANT_PLACEHOLDER: schema}, stream_results=True, yield_per=1000
        )
        for table in _tenant_tables():
            n = 0
            # the audit log in its chain's order (an import chains the events again in that order)
            order = (
                [table.c.seq]
                if "seq" in table.c
                else list(table.primary_key.columns) or list(table.columns)[:1]
            )
            for row in tconn.execute(select(table).order_by(*order)).mappings():
                out.write(_line({"table": f"tenant.{table.name}", "row": dict(row)}))
                n += 1
            counts[f"tenant.{table.name}"] = n
        out.write(_line({"end": True, "counts": counts}))
    return counts


def export_to_file(engine: Engine, tenant_ref: str, path: Path) -> dict[str, int]:
    """:func:`export_tenant` into ``path`` (created 0600; written to a temporary name, renamed
    when complete, so a failed export never leaves a file that looks whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            counts = export_tenant(engine, tenant_ref, out)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return counts


# --- import ------------------------------------------------------------------------------------


class ImportFileError(ValidationError):
    """A bad import file, as one line: ``line 12 (saas.oauth_clients): redirect_uris[0]: ...``.

    ``line`` is the file's line number (1-based; the header is line 1), or a range of lines
    (``"40-1039"``: a batch the database refused), or None for the file as a whole.
    """

    def __init__(
        self,
        line: int | str | None,
        message: str,
        *,
        field: str | None = None,
        table: str | None = None,
        column: int | None = None,
    ) -> None:
        where = "file" if line is None else f"line{'s' if isinstance(line, str) else ''} {line}"
        if column is not None:
            where += f", column {column}"
        if table:
            where += f" ({table})"
        text = f"{where}: {field}: {message}" if field else f"{where}: {message}"
        super().__init__({field or "file": [message]}, detail=text)
        self.line, self.field = line, field


def _first_error(messages: Any, prefix: str = "") -> tuple[str, str]:
    """(dotted field path, message) of the first error of a marshmallow/``ValidationError``
    messages tree (``{"redirect_uris": {0: ["..."]}}`` -> ``("redirect_uris[0]", "...")``)."""
    if isinstance(messages, dict) and messages:
        key, value = next(iter(messages.items()))
        if key == "_schema":
            name = prefix
        elif isinstance(key, int):
            name = f"{prefix}[{key}]"
        else:
            name = f"{prefix}.{key}" if prefix else str(key)
        return _first_error(value, name)
    if isinstance(messages, list) and messages:
        if isinstance(messages[0], dict | list):
            return _first_error(messages[0], prefix)
        return prefix, str(messages[0])
    return prefix, str(messages)


def _refused(exc: AppError, line: int, table: str, prefix: str = "") -> ImportFileError:
    """A service's refusal of a record (the API's own rules) as the file's error at ``line``."""
    errors = exc.extra.get("errors")
    if errors:
        field, message = _first_error(errors, prefix)
        return ImportFileError(line, message, field=field or None, table=table)
    return ImportFileError(line, f"{exc.code}: {exc.detail or exc.title}", table=table)


def _column_field(column: Any) -> ma.fields.Field:
    """A marshmallow field checking a value for ``column`` (type, length, NULL) as the export
    writes it (UUIDs and timestamps as ISO strings)."""
    kind = column.type
    required = not column.nullable and column.default is None and column.server_default is None
    kw: dict[str, Any] = {"allow_none": bool(column.nullable), "required": required}
    if isinstance(kind, Uuid):
        return ma.fields.UUID(**kw)
    if isinstance(kind, DateTime):
        return ma.fields.AwareDateTime(format="iso", **kw)
    if isinstance(kind, Date):
        return ma.fields.Date(**kw)
    if isinstance(kind, Boolean):
        return ma.fields.Boolean(**kw)
    if isinstance(kind, Integer):
        return ma.fields.Integer(strict=True, **kw)
    if isinstance(kind, Numeric):
        return ma.fields.Decimal(**kw)
    if isinstance(kind, String):
        length = getattr(kind, "length", None)
        return ma.fields.String(validate=ma.validate.Length(max=length) if length else None, **kw)
    if isinstance(kind, ARRAY):
        return ma.fields.List(ma.fields.String(), **kw)
    return ma.fields.Raw(**kw)  # JSON


def _row_schema(
    table: Table, overrides: dict[str, ma.fields.Field] | None = None, without: tuple[str, ...] = ()
) -> ma.Schema:
    """A schema of every column of ``table`` but ``without`` (unknown keys refused), with
    ``overrides`` (the API's own fields) in place of the plain column checks."""
    fields: dict[str, ma.fields.Field] = {
        c.name: _column_field(c) for c in table.columns if c.name not in without
    }
    fields.update(overrides or {})
    return ma.Schema.from_dict(fields, name=f"Import_{table.name}")()


def _api_fields(schema: type[ma.Schema], *names: str, **changes: Any) -> dict[str, ma.fields.Field]:
    """Copies of the API schema's own field checks (so the import applies the API's rules)."""
    out = {}
    for name in names:
        field = copy.deepcopy(schema._declared_fields[name])
        for key, value in changes.items():
            setattr(field, key, value)
        out[name] = field
    return out


def _resource_schema(model: Any, schema: type[ma.Schema]) -> ma.Schema:
    """A product table's row check: the API schema's own checks of the fields it writes, the
    column checks elsewhere, and a version counter (``version_id_col``) of at least 1."""
    columns = model.__table__.columns
    writable = [n for n, f in schema._declared_fields.items() if not f.dump_only and n in columns]
    overrides = _api_fields(schema, *writable)
    version = model.__mapper__.version_id_col
    if version is not None:
        overrides[version.name] = ma.fields.Integer(strict=True, validate=ma.validate.Range(min=1))
    return _row_schema(model.__table__, overrides)


def _plan_ids() -> list[str]:
    from saas.billing import entitlements as ent

    return list(ent.catalogue()[1])


def _valid_limits(limits: Any) -> None:
    from saas.billing import entitlements as ent

    for key, value in (limits or {}).items():
        if key in ent.LIMIT_KEYS and not ent.valid_limit(value):
            raise ma.ValidationError(f"{key}: expected an integer >= -1.")
        if not isinstance(value, bool | int | str):
            raise ma.ValidationError(f"{key}: expected a boolean, an integer or a string.")


@memoize("ops.import_schemas", maxsize=1)
def _schemas() -> dict[str, ma.Schema]:
    """The check of each record kind: the API's schemas where the API writes such rows (tenant
    name and settings, invitations' emails and roles, OAuth clients, contacts), the tables'
    column types elsewhere. Unknown fields are refused everywhere."""
    from saas.audit import AuditEvent
    from saas.auth.models import Consent, MfaFactor, OAuthClient, RecoveryCode
    from saas.auth.schemas import ClientSchema
    from saas.billing.entitlements import INTERVALS
    from saas.billing.models import BillingAccount, BillingOverride
    from saas.identity.models import CustomRole, SsoConnection, VerifiedDomain
    from saas.product import product
    from saas.scim.models import ScimSettings
    from saas.tenancy.views import (
        InviteSchema,
        OwnerInSchema,
        TenantInSchema,
        TenantSettingsSchema,
    )

    plans = ma.validate.OneOf(_plan_ids())
    users = User.__table__
    memberships = Membership.__table__
    tenant = ma.Schema.from_dict(
        {
            "id": ma.fields.UUID(required=True),
            "slug": ma.fields.String(validate=ma.validate.Length(max=63)),
            **_api_fields(TenantInSchema, "name"),
            "status": ma.fields.String(validate=ma.validate.OneOf(["active", "suspended"])),
            "plan": ma.fields.String(allow_none=True, validate=plans),
            "settings": ma.fields.Nested(TenantSettingsSchema, allow_none=True),
            "created_at": ma.fields.AwareDateTime(format="iso", allow_none=True),
        },
        name="ImportTenant",
    )
    schemas: dict[str, ma.Schema] = {
        "header": ma.Schema.from_dict(
            {
                "format": ma.fields.String(required=True, validate=ma.validate.Equal(FORMAT)),
                "version": ma.fields.Integer(
                    strict=True, required=True, validate=ma.validate.OneOf(READABLE_VERSIONS)
                ),
                "exported_at": ma.fields.AwareDateTime(format="iso"),
                "tenant_revision": ma.fields.String(required=True, allow_none=True),
                "shared_revision": ma.fields.String(allow_none=True),
                "tenant": ma.fields.Nested(tenant, required=True),
            },
            name="ImportHeader",
        )(),
        "record": ma.Schema.from_dict(
            {"table": ma.fields.String(required=True), "row": ma.fields.Dict(required=True)},
            name="ImportRecord",
        )(),
        "trailer": ma.Schema.from_dict(
            {
                "end": ma.fields.Boolean(required=True, validate=ma.validate.Equal(True)),
                "counts": ma.fields.Dict(
                    keys=ma.fields.String(), values=ma.fields.Integer(strict=True), required=True
                ),
            },
            name="ImportTrailer",
        )(),
        "saas.users": ma.Schema.from_dict(
            {
                "id": ma.fields.UUID(required=True),
                **_api_fields(InviteSchema, "email"),
                **_api_fields(OwnerInSchema, "name"),
                "password_hash": ma.fields.String(
                    allow_none=True,
                    validate=[
                        ma.validate.Length(max=users.c.password_hash.type.length),
                        ma.validate.Regexp(r"^\$argon2(id|i|d)\$", error="Not an argon2 hash."),
                    ],
                ),
                "status": ma.fields.String(validate=ma.validate.OneOf(["active", "locked"])),
                "created_at": ma.fields.AwareDateTime(format="iso", allow_none=True),
            },
            name="ImportUser",
        )(),
        "saas.memberships": ma.Schema.from_dict(
            {
                "id": _column_field(memberships.c.id),
                "user_id": ma.fields.UUID(required=True),
                # a built-in role or one of the file's custom roles: checked by _members
                "role": ma.fields.String(
                    required=True, validate=ma.validate.Length(min=1, max=memberships.c.role.type.length)
                ),
                "status": ma.fields.String(validate=ma.validate.OneOf(["active", "invited"])),
                "invited_by": ma.fields.UUID(allow_none=True),
                "created_at": ma.fields.AwareDateTime(format="iso", allow_none=True),
            },
            name="ImportMembership",
        )(),
        # name, permissions and description are checked by the roles service (_custom_roles)
        "saas.custom_roles": _row_schema(CustomRole.__table__),
        "saas.mfa_factors": _row_schema(MfaFactor.__table__),
        "saas.mfa_recovery_codes": _row_schema(RecoveryCode.__table__),
        "saas.oauth_clients": _row_schema(
            OAuthClient.__table__,
            {
                **_api_fields(ClientSchema, *CLIENT_API_FIELDS),
                "client_id": ma.fields.String(
                    required=True,
                    validate=[ma.validate.Length(min=1, max=64), ma.validate.Regexp(r"^[A-Za-z0-9_-]+$")],
                ),
                "secret_hash": ma.fields.String(
                    allow_none=True,
                    validate=ma.validate.Regexp(r"^[0-9a-f]{64}$", error="Not a SHA-256 hash."),
                ),
            },
        ),
        "saas.oauth_consents": _row_schema(Consent.__table__),
        "saas.billing_accounts": _row_schema(
            BillingAccount.__table__,
            {
                "plan": ma.fields.String(allow_none=True, validate=plans),
                "interval": ma.fields.String(allow_none=True, validate=ma.validate.OneOf(INTERVALS)),
            },
        ),
        "saas.billing_overrides": _row_schema(
            BillingOverride.__table__,
            {
                "plan": ma.fields.String(allow_none=True, validate=plans),
                "limits": ma.fields.Dict(keys=ma.fields.String(), validate=_valid_limits),
            },
        ),
        # v3 directory settings: the domain and roles are checked by _domains, _sso, _scim
        "saas.verified_domains": _row_schema(VerifiedDomain.__table__),
        "saas.sso_connections": _row_schema(SsoConnection.__table__, without=("secret_encrypted",)),
        "saas.scim_settings": _row_schema(
            ScimSettings.__table__,
            {"group_roles": ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())},
        ),
        # the chain's columns are optional (files of before it) and never taken: events are chained anew
        "tenant.audit_events": _row_schema(
            AuditEvent.__table__,
            {c: ma.fields.Raw(allow_none=True, load_default=None) for c in audit.CHAIN_COLUMNS},
        ),
    }
    for name, resource in product().resources.items():  # the API's checks of the product's rows
        schemas[f"tenant.{name}"] = _resource_schema(resource.model, resource.schema)
    for table in _tenant_tables():  # a tenant table without an API of its own: column checks
        schemas.setdefault(f"tenant.{table.name}", _row_schema(table))
    return schemas


def _api_tenant_tables() -> frozenset[str]:
    """Tenant tables written through an API's rules (the product's resources); the others (the
    audit log) are history that no API writes, taken only from a trusted file."""
    from saas.product import product

    return frozenset(f"tenant.{name}" for name in product().resources)


#: the order in which an export writes the shared tables (a v1 file has the first two only)
_SHARED_TABLES = (
    "saas.users",
    "saas.memberships",
    "saas.custom_roles",
    "saas.mfa_factors",
    "saas.mfa_recovery_codes",
    "saas.oauth_clients",
    "saas.oauth_consents",
    "saas.billing_accounts",
    "saas.billing_overrides",
    "saas.verified_domains",
    "saas.sso_connections",
    "saas.scim_settings",
)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"{key}: the key appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_lines(lines: Iterator[str]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line.

    Raises:
        ImportFileError: a line that is not UTF-8 or not JSON (with its line and column), or
            an object with a duplicated key.
    """
    it = iter(lines)
    number = 0
    while True:
        number += 1
        try:
            raw = next(it)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            raise ImportFileError(number, f"not UTF-8 text ({exc.reason})") from None
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise ImportFileError(number, f"not JSON ({exc.msg})", column=exc.colno) from None
        except ValueError as exc:
            raise ImportFileError(number, f"not JSON ({exc})") from None


def _load(kind: str, data: Any, line: int, table: str | None = None) -> dict[str, Any]:
    """``data`` checked by the record kind's schema.

    Raises:
        ImportFileError: naming ``line`` and the first bad field.
    """
    from saas.api import text_errors

    try:
        # NUL and unpaired surrogates, refused as the API refuses them (a record's row is
        # checked when it is loaded as its table's row, so its fields are named)
        found = text_errors(data) if kind != "record" else None
    except ValueError as exc:
        raise ImportFileError(line, str(exc), table=table) from None
    if found:
        field, message = _first_error(found if isinstance(found, dict) else {"": found})
        raise ImportFileError(line, message, field=field or None, table=table)
    try:
        return _schemas()[kind].load(data)
    except ma.ValidationError as exc:
        field, message = _first_error(exc.messages)
        raise ImportFileError(line, message, field=field or None, table=table) from None


class _Untaken:
    """What an untrusted import leaves out, by field, with the lines it came from."""

    def __init__(self) -> None:
        self.lines: dict[str, list[int]] = {}

    def add(self, what: str, line: int) -> None:
        self.lines.setdefault(what, []).append(line)

    def notes(self) -> list[str]:
        out = []
        for what, lines in self.lines.items():
            shown = ", ".join(str(n) for n in lines[:5]) + (
                f"... ({len(lines)} in all)" if len(lines) > 5 else ""
            )
            out.append(f"not taken (needs --trusted): {what} (line{'s' if len(lines) > 1 else ''} {shown})")
        return out


class _Record:
    __slots__ = ("line", "values")

    def __init__(self, line: int, values: dict[str, Any]) -> None:
        self.line, self.values = line, values


def import_tenant(
    session: Session,
    lines: Iterator[str],
    *,
    slug: str,
    name: str | None,
    actor: audit.Actor,
    trusted: bool = False,
    reuse_stripe_customer: bool = False,
    invitation_ttl_seconds: int = 7 * 24 * 3600,
    notes: list[str] | None = None,
) -> tuple[Tenant, dict[str, int]]:
    """Restore an export into a new tenant in ``session``'s transaction (not committed).

    Every record is checked before it is used, with the API's own rules where the API writes
    such rows (see the module docstring); the first bad one raises and the caller's rollback
    leaves nothing (no tenant, schema, user, invitation or outbox row). Needs a Flask app
    context (the invitations read the tenant's entitlements and queue their mail).

    Args:
        trusted: take the file's plan, billing overrides, secrets (password hashes, client
            secrets, MFA factors and recovery codes), consents, audit history and user and
            client ids; without it those are left out and named in ``notes``.
        reuse_stripe_customer: attach the file's Stripe customer and subscription to the new
            tenant (see the module docstring); needs ``trusted``.
        invitation_ttl_seconds: lifetime of the invitations sent to the members.
        notes: appended with what the operator must know (invitations, new ``client_id``s,
            what was not taken, Stripe ids not attached).

    Returns:
        (the new tenant, rows inserted per table).

    Raises:
        ImportFileError: a malformed, truncated or refused file; names the line and field.
        ValidationError: bad slug or name; ``reuse_stripe_customer`` without ``trusted``.
        Conflict: the slug is taken (``slug_taken``), or the Stripe customer to reuse belongs
            to another tenant (``stripe_customer_in_use``).
    """
    if reuse_stripe_customer and not trusted:
        raise ValidationError(
            {"reuse_stripe_customer": ["Takes Stripe ids from the file: only with a trusted import."]}
        )
    importer = _Importer(session, actor, trusted, reuse_stripe_customer, invitation_ttl_seconds)
    tenant, counts = importer.run(_json_lines(lines), slug, name)
    if notes is not None:
        notes.extend(importer.notes + importer.untaken.notes())
    return tenant, counts


class _Importer:
    """The state of one import (see :func:`import_tenant`)."""

    def __init__(
        self, session: Session, actor: audit.Actor, trusted: bool, reuse_stripe_customer: bool, ttl: int
    ) -> None:
        self.session = session
        self.actor = actor
        self.trusted = trusted
        self.reuse_stripe_customer = reuse_stripe_customer
        self.ttl = ttl
        self.notes: list[str] = []
        self.untaken = _Untaken()
        self.counts: dict[str, int] = {}
        self.user_map: dict[uuid.UUID, uuid.UUID] = {}  # source user id -> new user id
        self.created: set[uuid.UUID] = set()  # source ids of the users this import created
        self.client_map: dict[str, str] = {}
        self.invited: list[str] = []
        self.billing_note: dict[str, Any] = {}
        self.roles: dict[str, tuple[Any, uuid.UUID | None]] = {}  # name -> (CustomRole, source created_by)
        self.file_domains: set[str] = set()  # the file's verified domains
        self.claimed: set[str] = set()  # those claimed by the new tenant (pending)

    # -- the file, in order -----------------------------------------------------------------

    def run(
        self, records: Iterator[tuple[int, Any]], slug: str, name: str | None
    ) -> tuple[Tenant, dict[str, int]]:
        from saas.migrate import tenant_head_revision

        try:
            line, raw = next(records)
        except StopIteration:
            raise ImportFileError(None, "empty (no header line)") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ImportFileError(line, f"not a {FORMAT} header", field="format")
        header = _load("header", raw, line)
        head = tenant_head_revision()
        if header["tenant_revision"] != head:
            raise ImportFileError(
                line,
                f"exported at tenant revision {header['tenant_revision']!r}; this database is at "
                f"{head!r} (migrate the source first)",
                field="tenant_revision",
            )
        self.source = header["tenant"]
        self._create_tenant(line, slug, name)

        tables = {f"tenant.{t.name}": t for t in _tenant_tables()}
        shared: dict[str, list[_Record]] = {}
        found: dict[str, int] = {}
        shared_done = False
        trailer: dict[str, Any] | None = None
        self.batch: list[dict[str, Any]] = []
        self.batch_table: Table | None = None
        self.batch_lines: tuple[int, int] = (0, 0)
        for line, raw in records:
            if trailer is not None:
                raise ImportFileError(line, "a line after the trailer")
            if isinstance(raw, dict) and "end" in raw:
                trailer = _load("trailer", raw, line)
                trailer_line = line
                continue
            record = _load("record", raw, line)
            key, row = record["table"], record["row"]
            found[key] = found.get(key, 0) + 1
            if key in _SHARED_TABLES:
                if shared_done:
                    raise ImportFileError(line, "a shared row after the tenant rows (not an export's order)",
                                          field="table")  # fmt: skip
                shared.setdefault(key, []).append(_Record(line, _load(key, row, line, key)))
                continue
            table = tables.get(key)
            if table is None:
                raise ImportFileError(line, f"unknown table {key!r}", field="table")
            if not shared_done:
                self._apply_shared(shared)
                shared_done = True
            self._tenant_row(table, key, _load(key, row, line, key), line)
        if trailer is None:
            raise ImportFileError(None, "the export is truncated (no trailer line)")
        if not shared_done:
            self._apply_shared(shared)
        self._flush_batch()
        expected = trailer["counts"]
        for key in sorted(set(expected) | set(found)):
            if found.get(key, 0) != expected.get(key, 0):
                raise ImportFileError(
                    trailer_line,
                    f"row counts do not match the trailer (a damaged file): {found.get(key, 0)} "
                    f"{key} rows, the trailer says {expected.get(key, 0)}",
                    field=f"counts.{key}",
                )
        for key in tables:
            self.counts.setdefault(key, 0)
        if self.invited:
            shown = ", ".join(self.invited[:10]) + (
                f"... ({len(self.invited)} in all)" if len(self.invited) > 10 else ""
            )
            self.notes.insert(0, f"invited (an invitation mailed to each; no account linked): {shown}")
        audit.record(
            self.session,
            AuditAction.TENANT_IMPORTED,
            target_type="tenant",
            target_id=self.tenant.id,
            data={
                "source_tenant": str(self.source["id"]),
                "source_slug": self.source.get("slug"),
                "trusted": self.trusted,
                "rows": self.counts,
                "invited": len(self.invited),
                **self.billing_note,
            },
            actor=self.actor,
            tenant_id=self.tenant.id,
        )
        self.session.flush()
        return self.tenant, self.counts

    def _create_tenant(self, line: int, slug: str, name: str | None) -> None:
        from saas.billing import entitlements as ent
        from saas.migrate import tenant_head_revision
        from saas.tenancy.provisioning import create_tenant_schema
        from saas.tenancy.views import TenantInSchema

        slug = normalize_slug(slug)
        if problems := slug_problems(slug):
            raise ValidationError({"slug": problems})
        if name is not None:
            try:
                TenantInSchema(only=("name",)).load({"name": name})
            except ma.ValidationError as exc:
                raise ValidationError({"name": exc.messages["name"]}) from None
        if self.session.scalar(select(func.count()).select_from(Tenant).where(Tenant.slug == slug)):
            raise Conflict("That slug is taken.", code=ErrorCode.SLUG_TAKEN)
        default_plan = ent.catalogue()[0]
        plan = self.source.get("plan") or default_plan
        if plan != default_plan and not self.trusted:
            self.untaken.add(f"tenant.plan {plan!r} (the tenant is on {default_plan!r})", line)
            plan = default_plan
        tenant_id = uuid.uuid4()
        schema = schema_name_for(tenant_id)
        self.tenant = Tenant(
            id=tenant_id,
            slug=slug,
            name=(name or self.source["name"]).strip(),
            schema_name=schema,
            plan=plan,
            settings=self.source.get("settings") or {},
            schema_version=tenant_head_revision(),
        )
        self.session.add(self.tenant)
        self.session.flush()
        create_tenant_schema(self.session.connection(), schema)
        # the services called below (invitations, clients) write the tenant's audit log through
        # the session: its connection maps the placeholder schema to the new one
        self.session.connection().execution_options(schema_translate_map=translate_map(schema))

    # -- shared rows ------------------------------------------------------------------------

    def _apply_shared(self, shared: dict[str, list[_Record]]) -> None:
        self._billing(shared)
        self._custom_roles(shared.get("saas.custom_roles", []))
        self._members(shared)
        self._mfa(shared)
        self._clients(shared.get("saas.oauth_clients", []))
        self._consents(shared.get("saas.oauth_consents", []))
        self._domains(shared.get("saas.verified_domains", []))
        self._sso(shared.get("saas.sso_connections", []))
        self._scim(shared.get("saas.scim_settings", []))
        self.session.flush()

    def _insert(self, key: str, model: Any, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.session.connection().execute(insert(model.__table__), rows)
        self.counts[key] = len(rows)

    def _billing(self, shared: dict[str, list[_Record]]) -> None:
        """Overrides (trusted) and the billing account (``reuse_stripe_customer``), before the
        members: the seat check of their invitations reads the tenant's entitlements."""
        from saas.billing import entitlements as ent
        from saas.billing.models import BillingAccount, BillingOverride

        rows = []
        for record in shared.get("saas.billing_overrides", []):
            if not self.trusted:
                self.untaken.add("saas.billing_overrides", record.line)
                continue
            rows.append({**record.values, "tenant_id": self.tenant.id})
        self._insert("saas.billing_overrides", BillingOverride, rows)

        rows = []
        for record in shared.get("saas.billing_accounts", []):
            values = record.values
            customer = values.get("stripe_customer_id")
            self.billing_note = {
                "source_stripe_customer_id": customer,
                "source_stripe_subscription_id": values.get("stripe_subscription_id"),
                "stripe_customer_attached": bool(self.reuse_stripe_customer and customer),
            }
            if not self.reuse_stripe_customer:
                if customer:
                    self.notes.append(
                        f"Stripe customer {customer} was NOT attached (it may still bill the source "
                        "tenant); re-run with --trusted --reuse-stripe-customer to move it, or subscribe anew"
                    )
                continue
            holder = self.session.scalar(
                select(BillingAccount.__table__.c.tenant_id).where(
                    BillingAccount.__table__.c.stripe_customer_id == customer
                )
            )
            if customer and holder is not None:
                raise Conflict(
                    f"Stripe customer {customer} belongs to tenant {holder}: delete that tenant first.",
                    code=ErrorCode.STRIPE_CUSTOMER_IN_USE,
                )
            rows.append({**values, "tenant_id": self.tenant.id})
            self.notes.append(f"Stripe customer {customer} attached to the new tenant")
        self._insert("saas.billing_accounts", BillingAccount, rows)
        if self.counts["saas.billing_overrides"] or self.counts["saas.billing_accounts"]:
            ent.invalidate(self.session, self.tenant.id)

    def _custom_roles(self, records: list[_Record]) -> None:
        """The tenant's custom roles, before the members (whose roles name them), checked by the
        roles service's own rules (:func:`saas.tenancy.roles.validate_name`, registry
        permissions, description), trusted or not. A plan without ``custom_roles`` takes them
        anyway (a downgraded tenant keeps its roles: they keep working for their holders), said
        in the notes. ``created_by`` follows the user mapping once the members are in."""
        from saas.billing import entitlements as ent
        from saas.identity.models import CustomRole
        from saas.tenancy import roles as roles_service

        for record in records:
            values = record.values
            try:
                name = roles_service.validate_name(values["name"])
                permissions = roles_service.validate_permissions(values.get("permissions") or [])
                description = roles_service.validate_description(values.get("description") or "")
            except AppError as exc:
                raise _refused(exc, record.line, "saas.custom_roles") from None
            if name in self.roles:
                raise ImportFileError(record.line, "the role name appears twice", field="name",
                                      table="saas.custom_roles")  # fmt: skip
            role = CustomRole(
                id=uuid.uuid4(), tenant_id=self.tenant.id, name=name, description=description,
                permissions=permissions, created_by=None,
            )  # fmt: skip
            if values.get("created_at"):
                role.created_at = values["created_at"]
            if values.get("updated_at"):
                role.updated_at = values["updated_at"]
            self.session.add(role)
            self.roles[name] = (role, values.get("created_by"))
        self.session.flush()
        self.counts["saas.custom_roles"] = len(self.roles)
        if self.roles and not ent.has(self.tenant, roles_service.FEATURE):
            self.notes.append(
                f"custom roles imported on plan {self.tenant.plan!r}, which lacks 'custom_roles': "
                f"{', '.join(sorted(self.roles))} keep working for their holders; creating, changing "
                "or assigning one needs a plan with the feature"
            )

    def _check_member_role(self, record: _Record) -> None:
        self._check_role(record.values["role"], record.line, "saas.memberships", "role")

    def _check_role(self, role: Any, line: int, table: str, field: str) -> None:
        """``role`` is built-in or one of the file's custom roles."""
        from saas.rbac import ROLE_ORDER

        if role not in ROLE_ORDER and role not in self.roles:
            names = ", ".join([*ROLE_ORDER, *sorted(self.roles)])
            raise ImportFileError(line, f"Must be one of: {names}.", field=field, table=table)

    def _operator_ctx(self) -> ActionContext:
        """The operator's stand-in: an owner of the new tenant, for the services' rules."""
        from saas.auth.context import Principal
        from saas.rbac import ROLES

        operator = Principal(
            None, self.tenant.id, None, frozenset(), {}, roles=("owner",), permissions=ROLES["owner"],
            tenant=self.tenant,
        )  # fmt: skip
        return ActionContext(self.session, self.actor, operator)

    def _domains(self, records: list[_Record]) -> None:
        """Verified domains, as pending claims of the new tenant (``claim_domain``: a new token,
        ``verified_at`` NULL): this deployment must see the TXT record itself."""
        from saas.tenancy import domains

        for record in records:
            self.file_domains.add(record.values["domain"])
            try:
                row = domains.claim_domain(self._operator_ctx(), self.tenant.id, record.values["domain"])
            except Conflict as exc:
                if exc.code == ErrorCode.DOMAIN_TAKEN:
                    self.notes.append(
                        f"line {record.line}: domain {record.values['domain']} is verified by another "
                        "tenant here: not claimed"
                    )
                    continue
                raise _refused(exc, record.line, "saas.verified_domains") from None
            except AppError as exc:
                raise _refused(exc, record.line, "saas.verified_domains") from None
            self.claimed.add(row.domain)
            challenge = domains.challenge_for(row)
            self.notes.append(
                f"domain {row.domain} imported as a pending claim: publish TXT {challenge.name} "
                f'"{challenge.value}" and verify it (POST /api/v1/domains/{row.id}/verify)'
            )
        self.counts["saas.verified_domains"] = len(self.claimed)

    def _sso(self, records: list[_Record]) -> None:
        """SSO connections, from a trusted file only (the API checks ``config`` against the
        identity provider, which an import does not call), imported disabled and without a
        client secret; domains must be the file's, roles built-in or the file's."""
        from saas.auth.sso.protocol import protocol_types
        from saas.identity.models import SsoConnection

        n = 0
        for record in records:
            values = record.values
            if not self.trusted:
                self.untaken.add("saas.sso_connections", record.line)
                continue
            if values["type"] not in protocol_types():
                raise ImportFileError(record.line, f"Must be one of: {', '.join(protocol_types())}.",
                                      field="type", table="saas.sso_connections")  # fmt: skip
            config, mapping, names = values.get("config"), values.get("role_mapping"), values.get("domains")
            if not isinstance(config, dict):
                raise ImportFileError(
                    record.line, "Not an object.", field="config", table="saas.sso_connections"
                )
            if not isinstance(mapping, dict) or not all(isinstance(k, str) for k in mapping):
                raise ImportFileError(record.line, "Not an object.", field="role_mapping",
                                      table="saas.sso_connections")  # fmt: skip
            if not isinstance(names, list) or not all(isinstance(d, str) for d in names):
                raise ImportFileError(record.line, "A list of domain names.", field="domains",
                                      table="saas.sso_connections")  # fmt: skip
            foreign = [d for d in names if d not in self.file_domains]
            if foreign:
                raise ImportFileError(record.line, f"Not a domain of the export: {', '.join(foreign)}.",
                                      field="domains", table="saas.sso_connections")  # fmt: skip
            if unclaimed := [d for d in names if d not in self.claimed]:
                self.notes.append(
                    f"line {record.line}: SSO connection without {', '.join(unclaimed)} (not claimed)"
                )
                names = [d for d in names if d in self.claimed]
            self._check_role(values.get("default_role") or "member", record.line, "saas.sso_connections",
                             "default_role")  # fmt: skip
            for key, role in mapping.items():
                self._check_role(role, record.line, "saas.sso_connections", f"role_mapping.{key}")
            created_by = self.user_map.get(values["created_by"]) if values.get("created_by") else None
            connection = SsoConnection(
                id=uuid.uuid4(), tenant_id=self.tenant.id, type=values["type"], name=values.get("name") or "",
                enabled=False, domains=names, default_role=values.get("default_role") or "member",
                role_mapping=mapping, config=config, secret_encrypted=None, created_by=created_by,
            )  # fmt: skip
            self.session.add(connection)
            self.session.flush()
            n += 1
            self.notes.append(
                f"line {record.line}: SSO connection {connection.name or values['id']} imported DISABLED as "
                f"{connection.id}, without its client secret: set it (PATCH /api/v1/sso/connections/"
                f"{connection.id}) and re-enable it"
            )
        self.counts["saas.sso_connections"] = n

    def _scim(self, records: list[_Record]) -> None:
        """SCIM settings (group roles, default role: built-in or the file's roles); SCIM tokens
        are never exported: the operator issues new ones."""
        from saas.scim.models import ScimSettings

        n = 0
        for record in records:
            values = record.values
            if n:
                raise ImportFileError(record.line, "a second SCIM settings row", table="saas.scim_settings")
            group_roles = values.get("group_roles") or {}
            self._check_role(values.get("default_role") or "member", record.line, "saas.scim_settings",
                             "default_role")  # fmt: skip
            for key, role in group_roles.items():
                self._check_role(role, record.line, "saas.scim_settings", f"group_roles.{key}")
            self.session.add(
                ScimSettings(
                    tenant_id=self.tenant.id,
                    default_role=values.get("default_role") or "member",
                    group_roles={k.strip(): v for k, v in group_roles.items()},
                )
            )
            n += 1
        self.session.flush()
        self.counts["saas.scim_settings"] = n

    def _members(self, shared: dict[str, list[_Record]]) -> None:
        """Users and memberships. An account that exists already (matched by email) is only
        ever invited (``members.invite``: a pending membership and an invitation mailed through
        the outbox, accepted with that account's own password); so is every member of an
        untrusted file (the account is created without a password, set on acceptance). A
        trusted file's new users keep their password hash (and id when free) and their
        active memberships."""
        from saas.auth.context import Principal
        from saas.auth.service import find_user_by_email
        from saas.rbac import ROLES
        from saas.tenancy import members

        users: dict[uuid.UUID, _Record] = {}
        emails: dict[str, int] = {}
        for record in shared.get("saas.users", []):
            user_id, email = record.values["id"], record.values["email"].strip().lower()
            if user_id in users:
                raise ImportFileError(record.line, f"the user appears twice (line {users[user_id].line})",
                                      field="id", table="saas.users")  # fmt: skip
            if email in emails:
                raise ImportFileError(record.line, f"the email appears twice (line {emails[email]})",
                                      field="email", table="saas.users")  # fmt: skip
            users[user_id], emails[email] = record, record.line
            if record.values.get("password_hash") and not self.trusted:
                self.untaken.add("saas.users.password_hash", record.line)

        operator = Principal(
            None, self.tenant.id, None, frozenset(), {}, roles=("owner",), permissions=ROLES["owner"],
            tenant=self.tenant,
        )  # fmt: skip
        as_operator = ActionContext(self.session, self.actor, operator)
        direct: list[tuple[Membership, uuid.UUID | None]] = []
        for record in shared.get("saas.memberships", []):
            values = record.values
            source_id = values["user_id"]
            user_record = users.get(source_id)
            if user_record is None:
                raise ImportFileError(record.line, f"names user {source_id}, who is not in the export",
                                      field="user_id", table="saas.memberships")  # fmt: skip
            if source_id in self.user_map:
                raise ImportFileError(record.line, "a second membership of this user",
                                      field="user_id", table="saas.memberships")  # fmt: skip
            self._check_member_role(record)
            user_values = user_record.values
            existing = find_user_by_email(self.session, user_values["email"])
            if existing is None and self.trusted:
                wanted = user_values["id"]
                user = User(
                    id=wanted if self.session.get(User, wanted) is None else uuid.uuid4(),
                    email=user_values["email"].strip(),
                    name=user_values.get("name") or "",
                    password_hash=user_values.get("password_hash"),
                    status=user_values.get("status") or "active",
                )
                self.session.add(user)
                self.session.flush()
                self.created.add(source_id)
                if (values.get("status") or "active") == "active":
                    membership = Membership(user_id=user.id, tenant_id=self.tenant.id, role=values["role"])
                    self.session.add(membership)
                    self.session.flush()
                    self.user_map[source_id] = user.id
                    direct.append((membership, values.get("invited_by")))
                    continue
            try:
                result = members.invite(
                    as_operator, user_values["email"], values["role"], self.ttl, check_plan=False
                )
            except AppError as exc:
                raise _refused(exc, record.line, "saas.memberships") from None
            user_id = result.membership.user_id
            self.user_map[source_id] = user_id
            if existing is None and not self.trusted:
                self.created.add(source_id)
                new_user = self.session.get(User, user_id)
                if new_user is not None and user_values.get("name"):
                    new_user.name = user_values["name"]
            self.invited.append(f"{user_values['email']} as {values['role']} (line {record.line})")
        for membership, invited_by in direct:
            membership.invited_by = self.user_map.get(invited_by) if invited_by else None
        for role, created_by in self.roles.values():
            role.created_by = self.user_map.get(created_by) if created_by else None
        self.session.flush()
        self.counts["saas.users"] = len(self.created)
        self.counts["saas.memberships"] = len(self.user_map)

    def _mfa(self, shared: dict[str, list[_Record]]) -> None:
        """MFA factors and recovery codes (secrets): from a trusted file, for the users it
        created only (an existing account keeps its own)."""
        from saas.auth.models import MfaFactor, RecoveryCode

        for key, model in (("saas.mfa_factors", MfaFactor), ("saas.mfa_recovery_codes", RecoveryCode)):
            rows = []
            for record in shared.get(key, []):
                source_user = record.values["user_id"]
                if not self.trusted:
                    self.untaken.add(key, record.line)
                    continue
                if source_user not in self.created:
                    continue
                values = {**record.values, "id": uuid.uuid4(), "user_id": self.user_map[source_user]}
                if model is RecoveryCode:
                    values.setdefault("hash_scheme", "sha256")  # a file from before keyed hashes
                rows.append(values)
            self._insert(key, model, rows)

    def _clients(self, records: list[_Record]) -> None:
        """OAuth clients, through the clients service's rules (redirect URIs, grants, scopes,
        roles). Untrusted: registered anew by ``create_client`` (a new ``client_id``, a new
        secret nobody knows: rotate it before use), at most the ``member`` role and never
        first-party (the API grants more only to an owner or admin after step-up). Trusted:
        the file's ``client_id`` (when free), secret hash, role and consent setting."""
        from saas.auth import clients as clients_service
        from saas.auth.models import OAuthClient

        for record in records:
            values = record.values
            data = {k: values[k] for k in CLIENT_API_FIELDS if k in values}
            created_by = self.user_map.get(values["created_by"]) if values.get("created_by") else None
            wanted = values["client_id"]
            if wanted in self.client_map:
                raise ImportFileError(record.line, "the client appears twice", field="client_id",
                                      table="saas.oauth_clients")  # fmt: skip
            if not self.trusted:
                if data.get("role") in ("owner", "admin"):
                    self.untaken.add(
                        f"saas.oauth_clients.role {data['role']!r} (given 'member')", record.line
                    )
                    data["role"] = "member"
                if data.get("first_party"):
                    self.untaken.add("saas.oauth_clients.first_party (consent is asked)", record.line)
                    data["first_party"] = False
                if values.get("secret_hash"):
                    self.untaken.add("saas.oauth_clients.secret_hash", record.line)
                try:
                    client, _secret = clients_service.create_client(
                        ActionContext(self.session, self.actor), self.tenant.id, data, created_by
                    )
                except AppError as exc:
                    raise _refused(exc, record.line, "saas.oauth_clients") from None
                self.client_map[wanted] = client.client_id
                self.notes.append(
                    f"line {record.line}: OAuth client {wanted} imported as {client.client_id}"
                    + (
                        " with a new secret: rotate it before use"
                        if client.client_type == "confidential"
                        else ""
                    )
                )
                continue
            client_type = data.get("client_type") or "confidential"
            try:
                cleaned = clients_service.validate_client_fields(data, client_type)
            except AppError as exc:
                raise _refused(exc, record.line, "saas.oauth_clients") from None
            if client_type == "public" and values.get("secret_hash"):
                raise ImportFileError(record.line, "a public client has no secret", field="secret_hash",
                                      table="saas.oauth_clients")  # fmt: skip
            taken = self.session.scalar(
                select(func.count()).where(OAuthClient.__table__.c.client_id == wanted)
            )
            new_client_id = f"c_{secrets.token_urlsafe(16)}" if taken else wanted
            if taken:
                self.notes.append(
                    f"line {record.line}: OAuth client {wanted} is in use: imported as {new_client_id}"
                )
            self.client_map[wanted] = new_client_id
            self.session.connection().execute(
                insert(OAuthClient.__table__),
                [{**values, **cleaned, "id": uuid.uuid4(), "tenant_id": self.tenant.id,
                  "client_id": new_client_id, "client_type": client_type, "created_by": created_by}],
            )  # fmt: skip
        self.counts["saas.oauth_clients"] = len(self.client_map)

    def _consents(self, records: list[_Record]) -> None:
        """Consents (a person's decision, not the file's): from a trusted file, for the users
        it created, to the clients it carried."""
        from saas.auth import clients as clients_service
        from saas.auth.models import Consent

        rows = []
        for record in records:
            values = record.values
            if not self.trusted:
                self.untaken.add("saas.oauth_consents", record.line)
                continue
            if values["client_id"] not in self.client_map:
                raise ImportFileError(record.line, "names a client that is not in the export",
                                      field="client_id", table="saas.oauth_consents")  # fmt: skip
            try:
                scope = clients_service.validate_client_fields(
                    {"scope": values.get("scope") or ""}, "confidential"
                )
            except AppError as exc:
                raise _refused(exc, record.line, "saas.oauth_consents") from None
            if values["user_id"] not in self.created:
                continue
            rows.append({**values, **scope, "id": uuid.uuid4(), "tenant_id": self.tenant.id,
                         "user_id": self.user_map[values["user_id"]],
                         "client_id": self.client_map[values["client_id"]]})  # fmt: skip
        self._insert("saas.oauth_consents", Consent, rows)

    # -- tenant rows ------------------------------------------------------------------------

    def _tenant_row(self, table: Table, key: str, values: dict[str, Any], line: int) -> None:
        """One tenant row, batched 1,000 at a time. Contacts (checked by the contacts API's
        schema) always; the audit log and other tables no API writes, from a trusted file only."""
        if key not in _api_tenant_tables() and not self.trusted:
            self.untaken.add(key, line)
            return
        for column in _USER_ID_COLUMNS & values.keys():
            if values[column] is not None:
                mapped = self.user_map.get(values[column])
                values[column] = mapped if mapped is not None or self.trusted else None
        if table.name == "audit_events" and values.get("actor_type") == "user" and values.get("actor_id"):
            try:
                mapped = self.user_map.get(uuid.UUID(values["actor_id"]))
            except ValueError:
                mapped = None
            if mapped is not None:
                values["actor_id"] = str(mapped)
        if table is not self.batch_table:
            self._flush_batch()
            self.batch_table = table
            self.batch_lines = (line, line)
        if not self.batch:
            self.batch_lines = (line, line)
        self.batch.append(values)
        self.batch_lines = (self.batch_lines[0], line)
        self.counts[key] = self.counts.get(key, 0) + 1
        if len(self.batch) >= 1000:
            self._flush_batch()

    def _flush_batch(self) -> None:
        if not self.batch or self.batch_table is None:
            return
        try:
            if self.batch_table.name == "audit_events":  # the history joins this tenant's own chain
                columns = [c.name for c in self.batch_table.columns if c.name not in audit.CHAIN_COLUMNS]
                rows = [{c: r.get(c) for c in columns} | {"data": r.get("data") or {}}
                        for r in audit.chained_history(self.batch)]  # fmt: skip
                audit.append(self.session, rows)
            else:
                self.session.connection().execute(insert(self.batch_table), self.batch)
        except (IntegrityError, DataError) as exc:
            diag = getattr(exc.orig, "diag", None)
            detail = (getattr(diag, "message_detail", None) or getattr(diag, "message_primary", None)
                      or type(exc.orig).__name__)  # fmt: skip
            first, last = self.batch_lines
            raise ImportFileError(f"{first}-{last}", f"refused by the database: {detail}",
                                  table=f"tenant.{self.batch_table.name}") from None  # fmt: skip
        self.batch.clear()
