"""Tenant export and import (``saas tenants export`` / ``saas tenants import``).

Format ``saas.tenant-export`` version 2 (version 1 files, without the shared rows marked *v2*
below, are still imported): UTF-8 JSON Lines, one JSON object per line.

1. header: ``{"format": "saas.tenant-export", "version": 1, "exported_at": ISO-8601,
   "tenant_revision": <tenant track revision of the schema>, "shared_revision": ...,
   "tenant": {"id", "slug", "name", "status", "plan", "settings", "created_at"}}``
2. shared rows: ``{"table": "saas.users", "row": {...}}`` (the members' users: id, email, name,
   password_hash, status, created_at) and ``{"table": "saas.memberships", "row": {...}}``;
   *v2*: every column of the tenant's ``saas.oauth_clients`` (secret as its hash),
   ``saas.oauth_consents``, ``saas.billing_accounts`` (Stripe ids included),
   ``saas.billing_overrides``, and the members' ``saas.mfa_factors`` (TOTP secret still
   encrypted under the source's ``SECRET_KEY``) and ``saas.mfa_recovery_codes`` (hashes);
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
refuses a file whose ``tenant_revision`` differs from the head (migrate the source first). Users
are matched by email (an existing account is linked, not overwritten: its own MFA factors stay,
the file's are ignored); a new user keeps its id when free and gets the file's MFA factors and
recovery codes (new row ids; the TOTP secrets decrypt only where ``SECRET_KEY`` is the
source's). User ids inside tenant rows (``created_by``, audit ``actor_id``) follow that mapping.

Shared rows of the tenant get new row ids and the new tenant id. OAuth clients keep their
``client_id`` (and secret) when it is free, else get a new ``c_...`` one (the file's source
tenant still exists: a copy); consents follow the client mapping. Billing overrides are copied.
The billing account carries Stripe's customer and subscription ids, which must never silently
bill two tenants to one customer: by default they are **not** attached (no billing account row;
the ids are named in the import notes and the audit event, and the tenant's plan is copied);
``reuse_stripe_customer=True`` (``saas tenants import --reuse-stripe-customer``, for a move
after the source is gone) copies the account, and fails with ``stripe_customer_in_use`` while
another tenant holds that customer.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, Table, func, insert, select
from sqlalchemy.orm import Session
from sqlalchemy.types import Date, DateTime, Numeric, Uuid

from saas import audit
from saas.db import TENANT_PLACEHOLDER, schema_name_for, tenant_metadata, utcnow
from saas.errors import Conflict, ValidationError
from saas.identity.models import User
from saas.tenancy.models import Membership, Tenant
from saas.tenancy.slugs import normalize_slug, slug_problems

FORMAT = "saas.tenant-export"
VERSION = 2
#: versions :func:`import_tenant` reads
READABLE_VERSIONS = (1, 2)
_USER_ID_COLUMNS = {"created_by", "updated_by", "user_id", "invited_by"}


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
    import tenants.models  # noqa: F401 - registers the product's tables

    return list(tenant_metadata.sorted_tables)


def _shared_queries(tenant_id: uuid.UUID, user_ids: list[uuid.UUID]) -> list[tuple[str, Any]]:
    """(record table name, SELECT) for the tenant's v2 shared rows, in import order."""
    from saas.auth.models import Consent, MfaFactor, OAuthClient, RecoveryCode
    from saas.billing.models import BillingAccount, BillingOverride

    def of_tenant(model: Any) -> Any:
        table = model.__table__
        return select(table).where(table.c.tenant_id == tenant_id).order_by(*table.primary_key.columns)

    def of_users(model: Any) -> Any:
        table = model.__table__
        return select(table).where(table.c.user_id.in_(user_ids)).order_by(table.c.id)

    return [
        ("saas.mfa_factors", of_users(MfaFactor)),
        ("saas.mfa_recovery_codes", of_users(RecoveryCode)),
        ("saas.oauth_clients", of_tenant(OAuthClient)),
        ("saas.oauth_consents", of_tenant(Consent)),
        ("saas.billing_accounts", of_tenant(BillingAccount)),
        ("saas.billing_overrides", of_tenant(BillingOverride)),
    ]


def export_tenant(engine: Engine, tenant_ref: str, out: IO[str]) -> dict[str, int]:
    """Write the tenant's export to ``out`` from one consistent snapshot (REPEATABLE READ).

    Returns:
        rows written per table.

    Raises:
        NotFound: no such tenant.
    """
    from saas.migrate import current_shared_revision
    from saas.ops.lifecycle import find_tenant

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
            order = list(table.primary_key.columns) or list(table.columns)[:1]
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


def _read_header(lines: Iterator[str]) -> dict[str, Any]:
    try:
        header = json.loads(next(lines))
    except (StopIteration, json.JSONDecodeError):
        raise ValidationError({"file": ["Not a tenant export (no header line)."]}) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else None
        raise ValidationError({"file": [f"Not a tenant export (format {got!r})."]})
    if header.get("version") not in READABLE_VERSIONS:
        raise ValidationError({"file": [f"Unsupported export version {header.get('version')!r}."]})
    return header


def _records(lines: Iterator[str], trailer: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(table, row) for each record line, one at a time; fills ``trailer`` from the last line.

    Raises:
        ValidationError: a line that is not JSON or not a record; no trailer (truncated).
    """
    for number, raw in enumerate(lines, start=2):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            raise ValidationError({"file": [f"Line {number} is not JSON."]}) from None
        if isinstance(obj, dict) and obj.get("end"):
            trailer.update(obj)
            return
        if not (
            isinstance(obj, dict) and isinstance(obj.get("table"), str) and isinstance(obj.get("row"), dict)
        ):
            raise ValidationError({"file": [f"Line {number} is not a table record."]})
        yield obj["table"], obj["row"]
    raise ValidationError({"file": ["The export is truncated (no trailer line)."]})


def _convert(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for column in table.columns:
        if column.name not in row:
            continue
        value = row[column.name]
        if value is not None:
            if isinstance(column.type, Uuid):
                value = uuid.UUID(value)
            elif isinstance(column.type, DateTime):
                value = datetime.fromisoformat(value)
            elif isinstance(column.type, Date):
                value = date.fromisoformat(value)
            elif isinstance(column.type, Numeric) and column.type.asdecimal:
                value = Decimal(value)
        values[column.name] = value
    return values


def import_tenant(
    session: Session,
    lines: Iterator[str],
    *,
    slug: str,
    name: str | None,
    actor: audit.Actor,
    reuse_stripe_customer: bool = False,
    notes: list[str] | None = None,
) -> tuple[Tenant, dict[str, int]]:
    """Restore an export into a new tenant in ``session``'s transaction (not committed).

    Args:
        reuse_stripe_customer: attach the file's Stripe customer and subscription to the new
            tenant (see the module docstring); by default they are left out.
        notes: appended with what the operator must know (a renamed ``client_id``, Stripe ids
            not attached).

    Returns:
        (the new tenant, rows inserted per table).

    Raises:
        ValidationError: malformed or truncated file, counts that do not match, bad slug, or an
            export at another tenant revision.
        Conflict: the slug is taken (``slug_taken``), or the Stripe customer to reuse belongs
            to another tenant (``stripe_customer_in_use``).
    """
    from saas.migrate import tenant_head_revision
    from saas.tenancy.provisioning import create_tenant_schema

    header = _read_header(lines)
    head = tenant_head_revision()
    if header.get("tenant_revision") != head:
        raise ValidationError(
            {
                "file": [
                    f"Exported at tenant revision {header.get('tenant_revision')!r}; "
                    f"this database is at {head!r}."
                ]
            }
        )
    slug = normalize_slug(slug)
    if problems := slug_problems(slug):
        raise ValidationError({"slug": problems})
    if session.scalar(select(func.count()).select_from(Tenant).where(Tenant.slug == slug)):
        raise Conflict("That slug is taken.", code="slug_taken")

    source = header["tenant"]
    tenant_id = uuid.uuid4()
    schema = schema_name_for(tenant_id)
    tenant = Tenant(
        id=tenant_id,
        slug=slug,
        name=(name or source.get("name") or slug)[:200],
        schema_name=schema,
        plan=source.get("plan") or "free",
        settings=source.get("settings") or {},
        schema_version=head,
    )
    session.add(tenant)
    session.flush()
    create_tenant_schema(session.connection(), schema)

    # Streamed: the shared rows (members and their satellites: small) are gathered and applied
    # at the first tenant row; tenant rows are inserted 1,000 at a time, in file order (an
    # export's order is the tables' dependency order). Any error raises and the caller's
    # transaction rolls everything back, schema included.
    tables = {f"tenant.{t.name}": t for t in _tenant_tables()}
    counts: dict[str, int] = {}
    found: dict[str, int] = {}
    shared: dict[str, list[dict[str, Any]]] = {}
    user_map: dict[str, str] = {}
    billing_note: dict[str, Any] = {}
    shared_done = False
    conn: Connection = session.connection()
    translate = {"schema_translate_map": {TENANT_PLACEHOLDER: schema}}
    batch: list[dict[str, Any]] = []
    batch_table: Table | None = None

    def flush_batch() -> None:
        if batch and batch_table is not None:
            conn.execute(insert(batch_table), batch, execution_options=translate)
            batch.clear()

    def apply_shared() -> None:
        nonlocal shared_done, billing_note
        created = _import_members(session, shared, tenant_id, user_map, counts)
        billing_note = _import_shared(
            session, shared, tenant_id, user_map, created, reuse_stripe_customer, counts, notes
        )
        shared_done = True

    trailer: dict[str, Any] = {}
    for key, row in _records(lines, trailer):
        found[key] = found.get(key, 0) + 1
        if key.startswith("saas."):
            if shared_done:
                raise ValidationError(
                    {"file": [f"A {key} row after the tenant rows (not an export's order)."]}
                )
            shared.setdefault(key, []).append(row)
            continue
        table = tables.get(key)
        if table is None:
            raise ValidationError({"file": [f"Unknown tenant table {key!r}."]})
        if not shared_done:
            apply_shared()
        if table is not batch_table:
            flush_batch()
            batch_table = table
        values = _convert(table, row)
        for column in _USER_ID_COLUMNS & values.keys():
            if values[column] is not None and str(values[column]) in user_map:
                values[column] = uuid.UUID(user_map[str(values[column])])
        if table.name == "audit_events" and values.get("actor_type") == "user":
            values["actor_id"] = user_map.get(values.get("actor_id") or "", values.get("actor_id"))
        batch.append(values)
        counts[key] = counts.get(key, 0) + 1
        if len(batch) >= 1000:
            flush_batch()
    if not shared_done:
        apply_shared()
    flush_batch()
    expected = trailer.get("counts") or {}
    if any(found.get(t, 0) != n for t, n in expected.items()) or set(found) - set(expected):
        raise ValidationError({"file": ["Row counts do not match the trailer (a damaged file)."]})
    for key in tables:
        counts.setdefault(key, 0)
    audit.record(
        session,
        "tenant.imported",
        target_type="tenant",
        target_id=tenant_id,
        data={
            "source_tenant": source.get("id"),
            "source_slug": source.get("slug"),
            "rows": counts,
            **billing_note,
        },
        actor=actor,
        schema=schema,
    )
    session.flush()
    return tenant, counts


def _import_members(
    session: Session,
    shared: dict[str, list[dict[str, Any]]],
    tenant_id: uuid.UUID,
    user_map: dict[str, str],
    counts: dict[str, int],
) -> set[str]:
    """Users (linked by email or created) and memberships; fills ``user_map`` (source id ->
    new id) and returns the source ids of the users this import created."""
    created: set[str] = set()
    for row in shared.get("saas.users", []):
        existing = session.scalar(select(User).where(func.lower(User.email) == row["email"].lower()))
        if existing is not None:
            user_map[row["id"]] = str(existing.id)
            continue
        wanted = uuid.UUID(row["id"])
        new_id = wanted if session.get(User, wanted) is None else uuid.uuid4()
        session.add(
            User(
                id=new_id,
                email=row["email"],
                name=row.get("name") or "",
                password_hash=row.get("password_hash"),
                status=row.get("status") or "active",
            )
        )
        user_map[row["id"]] = str(new_id)
        created.add(row["id"])
    session.flush()
    for row in shared.get("saas.memberships", []):
        if row.get("user_id") not in user_map:
            raise ValidationError(
                {"file": [f"A membership names user {row.get('user_id')!r}, who is not in the export."]}
            )
        session.add(
            Membership(
                user_id=uuid.UUID(user_map[row["user_id"]]),
                tenant_id=tenant_id,
                role=row["role"],
                status=row.get("status") or "active",
                invited_by=uuid.UUID(user_map[row["invited_by"]])
                if row.get("invited_by") in user_map
                else None,
            )
        )
    session.flush()
    counts["saas.users"] = len(shared.get("saas.users", []))
    counts["saas.memberships"] = len(shared.get("saas.memberships", []))
    return created


def _import_shared(
    session: Session,
    by_table: dict[str, list[dict[str, Any]]],
    tenant_id: uuid.UUID,
    user_map: dict[str, str],
    created_users: set[str],
    reuse_stripe_customer: bool,
    counts: dict[str, int],
    notes: list[str] | None,
) -> dict[str, Any]:
    """Insert the v2 shared rows for the new tenant; returns what the audit event records about
    billing."""
    from saas.auth.models import Consent, MfaFactor, OAuthClient, RecoveryCode
    from saas.billing.models import BillingAccount, BillingOverride

    notes = notes if notes is not None else []
    conn = session.connection()

    def mapped_user(value: Any) -> uuid.UUID | None:
        return uuid.UUID(user_map[str(value)]) if value is not None and str(value) in user_map else None

    def insert_rows(key: str, model: Any, rows: list[dict[str, Any]]) -> None:
        if rows:
            conn.execute(insert(model.__table__), rows)
        counts[key] = len(rows)

    # MFA: only for users this import created (an existing account keeps its own factors)
    for key, model in (("saas.mfa_factors", MfaFactor), ("saas.mfa_recovery_codes", RecoveryCode)):
        rows = []
        for raw in by_table.get(key, []):
            if raw.get("user_id") not in created_users:
                continue
            values = _convert(model.__table__, raw)
            values.update(id=uuid.uuid4(), user_id=mapped_user(raw["user_id"]))
            if model is RecoveryCode:
                values.setdefault("hash_scheme", "sha256")  # a file from before keyed hashes
            rows.append(values)
        insert_rows(key, model, rows)

    client_map: dict[str, str] = {}
    rows = []
    for raw in by_table.get("saas.oauth_clients", []):
        values = _convert(OAuthClient.__table__, raw)
        wanted = values["client_id"]
        taken = session.scalar(select(func.count()).where(OAuthClient.__table__.c.client_id == wanted))
        new_client_id = f"c_{secrets.token_urlsafe(16)}" if taken else wanted
        if taken:
            notes.append(f"OAuth client {wanted} is in use: imported as {new_client_id}")
        client_map[wanted] = new_client_id
        values.update(id=uuid.uuid4(), tenant_id=tenant_id, client_id=new_client_id,
                      created_by=mapped_user(values.get("created_by")))  # fmt: skip
        rows.append(values)
    insert_rows("saas.oauth_clients", OAuthClient, rows)

    rows = []
    for raw in by_table.get("saas.oauth_consents", []):
        user = mapped_user(raw.get("user_id"))
        if user is None:
            continue
        values = _convert(Consent.__table__, raw)
        values.update(id=uuid.uuid4(), tenant_id=tenant_id, user_id=user,
                      client_id=client_map.get(values["client_id"], values["client_id"]))  # fmt: skip
        rows.append(values)
    insert_rows("saas.oauth_consents", Consent, rows)

    rows = []
    for raw in by_table.get("saas.billing_overrides", []):
        values = _convert(BillingOverride.__table__, raw)
        values["tenant_id"] = tenant_id
        rows.append(values)
    insert_rows("saas.billing_overrides", BillingOverride, rows)

    billing: dict[str, Any] = {}
    rows = []
    for raw in by_table.get("saas.billing_accounts", []):
        values = _convert(BillingAccount.__table__, raw)
        customer = values.get("stripe_customer_id")
        billing = {
            "source_stripe_customer_id": customer,
            "source_stripe_subscription_id": values.get("stripe_subscription_id"),
            "stripe_customer_attached": bool(reuse_stripe_customer and customer),
        }
        if not reuse_stripe_customer:
            if customer:
                notes.append(
                    f"Stripe customer {customer} was NOT attached (it may still bill the source "
                    "tenant); re-run with --reuse-stripe-customer to move it, or subscribe anew"
                )
            continue
        holder = session.scalar(
            select(BillingAccount.__table__.c.tenant_id).where(
                BillingAccount.__table__.c.stripe_customer_id == customer
            )
        )
        if customer and holder is not None:
            raise Conflict(
                f"Stripe customer {customer} belongs to tenant {holder}: delete that tenant first.",
                code="stripe_customer_in_use",
            )
        values["tenant_id"] = tenant_id
        rows.append(values)
        notes.append(f"Stripe customer {customer} attached to the new tenant")
    insert_rows("saas.billing_accounts", BillingAccount, rows)
    session.flush()
    return billing
