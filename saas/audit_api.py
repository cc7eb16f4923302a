"""``GET /api/v1/audit-events``: the tenant's audit log, newest first, filterable; and
``GET /api/v1/audit-events/export``: all of it (or a time range) streamed as CSV or JSON Lines."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import marshmallow as ma
import orjson
from flask import Response, g
from flask.views import MethodView
from sqlalchemy import func, select, tuple_

from saas import db
from saas.api import Blueprint
from saas.audit import AuditEvent
from saas.auth.context import require
from saas.errors import ValidationError

blp = Blueprint("audit", __name__, url_prefix="/api/v1/audit-events", description="Audit log")


class AuditQuerySchema(ma.Schema):
    actor = ma.fields.String(validate=ma.validate.Length(max=320), metadata={"description": "actor id"})
    action = ma.fields.String(validate=ma.validate.Length(max=64))
    since = ma.fields.AwareDateTime(metadata={"description": "ISO 8601, inclusive"})
    until = ma.fields.AwareDateTime(metadata={"description": "ISO 8601, exclusive"})


class AuditEventSchema(ma.Schema):
    id = ma.fields.String()
    occurred_at = ma.fields.DateTime()
    actor = ma.fields.Dict()
    action = ma.fields.String()
    target = ma.fields.Dict()
    ip = ma.fields.String(allow_none=True)
    user_agent = ma.fields.String(allow_none=True)
    request_id = ma.fields.String(allow_none=True)
    data = ma.fields.Dict()


@blp.route("")
class AuditEvents(MethodView):
    @require("audit:read")
    @blp.arguments(AuditQuerySchema, location="query")
    @blp.response(200, AuditEventSchema(many=True))
    @blp.paginate(page_size=50, max_page_size=200)
    def get(self, args, pagination_parameters):
        """Audit events of the caller's tenant."""
        query = select(AuditEvent)
        if args.get("actor"):
            query = query.where(AuditEvent.actor_id == args["actor"])
        if args.get("action"):
            query = query.where(AuditEvent.action == args["action"])
        if args.get("since") and args.get("until") and args["since"] >= args["until"]:
            raise ValidationError({"until": ["Must be after 'since'."]})
        if args.get("since"):
            query = query.where(AuditEvent.occurred_at >= args["since"])
        if args.get("until"):
            query = query.where(AuditEvent.occurred_at < args["until"])
        session = db.session()
        pagination_parameters.item_count = session.scalar(select(func.count()).select_from(query.subquery()))
        rows = session.scalars(
            query.order_by(AuditEvent.occurred_at.desc(), AuditEvent.id)
            .offset(pagination_parameters.first_item)
            .limit(pagination_parameters.page_size)
        )
        return [e.to_public() for e in rows]


# --- export ------------------------------------------------------------------------------------

#: events read per query while exporting (keyset pages on ``(occurred_at, seq)``)
EXPORT_BATCH_SIZE = 1000

#: the export's columns, in order (CSV header; JSON Lines nests actor and target as the list does)
EXPORT_COLUMNS = (
    "seq", "id", "occurred_at", "actor_type", "actor_id", "action", "target_type", "target_id", "ip",
    "user_agent", "request_id", "data", "prev_hash", "hash",
)  # fmt: skip

#: media types of the two formats (JSON Lines: https://jsonlines.org)
EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/jsonl; charset=utf-8"}

#: a cell starting with one of these is a formula to a spreadsheet (OWASP "CSV Injection")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class ExportQuerySchema(ma.Schema):
    format = ma.fields.String(
        required=True,
        validate=ma.validate.OneOf(sorted(EXPORT_TYPES)),
        metadata={"description": "csv or jsonl"},
    )
    since = ma.fields.AwareDateTime(metadata={"description": "ISO 8601 with an offset, inclusive"})
    until = ma.fields.AwareDateTime(metadata={"description": "ISO 8601 with an offset, exclusive"})


def csv_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet runs: text starting with ``= + - @``, a tab or a carriage
    return gets a leading ``'`` (OWASP, "CSV Injection"); other values are left as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _export_rows(
    database: db.Database, schema: str, since: datetime | None, until: datetime | None, batch_size: int
) -> Iterator[list[Any]]:
    """The tenant's events from ``since`` to ``until``, oldest first, as lists of rows read
    ``batch_size`` at a time with keyset pages on the ``(occurred_at, seq)`` index: each page is
    one short query (no transaction stays open while the client reads), and at most one page is
    in memory at a time."""
    table = AuditEvent.__table__
    columns = [table.c[name] for name in EXPORT_COLUMNS]
    session = database.session(schema, lazy_begin=True)
    try:
        after: tuple[datetime, int] | None = None
        while True:
            query = select(*columns).order_by(table.c.occurred_at, table.c.seq).limit(batch_size)
            if since is not None:
                query = query.where(table.c.occurred_at >= since)
            if until is not None:
                query = query.where(table.c.occurred_at < until)
            if after is not None:
                query = query.where(tuple_(table.c.occurred_at, table.c.seq) > tuple_(*after))
            rows = session.execute(query).all()
            if rows:
                yield rows
            if len(rows) < batch_size:
                return
            after = (rows[-1].occurred_at, rows[-1].seq)
    finally:
        session.close()


def _jsonl(batches: Iterator[list[Any]]) -> Iterator[bytes]:
    for rows in batches:
        out = bytearray()
        for r in rows:
            out += orjson.dumps(
                {"seq": r.seq, "id": str(r.id), "occurred_at": r.occurred_at,
                 "actor": {"type": r.actor_type, "id": r.actor_id}, "action": r.action,
                 "target": {"type": r.target_type, "id": r.target_id}, "ip": r.ip,
                 "user_agent": r.user_agent, "request_id": r.request_id, "data": r.data or {},
                 "prev_hash": r.prev_hash, "hash": r.hash},
                option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE,
            )  # fmt: skip
        yield bytes(out)


def _csv(batches: Iterator[list[Any]]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180 section 2
    writer.writerow(EXPORT_COLUMNS)
    yield buffer.getvalue().encode()
    for rows in batches:
        buffer.seek(0)
        buffer.truncate()
        for r in rows:
            values = r._asdict()
            values["id"] = str(r.id)
            values["occurred_at"] = r.occurred_at.isoformat()
            values["data"] = orjson.dumps(r.data or {}, option=orjson.OPT_SORT_KEYS).decode()
            writer.writerow([csv_cell(values[c]) for c in EXPORT_COLUMNS])
        yield buffer.getvalue().encode()


def _closing(body: Iterator[bytes], batches: Iterator[list[Any]]) -> Iterator[bytes]:
    """``body``, and the page reader closed (its session with it) however the stream ends: read
    to the end, or dropped by a client that went away (the server closes the response)."""
    try:
        yield from body
    finally:
        batches.close()  # type: ignore[attr-defined]


@blp.route("/export")
class AuditEventsExport(MethodView):
    @require("audit:read")
    @blp.arguments(ExportQuerySchema, location="query")
    @blp.doc(
        responses={
            "200": {
                "description": "The events, oldest first, streamed",
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "application/jsonl": {"schema": {"type": "string"}},
                },
            }
        }
    )
    def get(self, args):
        """Export the caller's tenant's audit events from ``since`` to ``until`` (both
        optional), oldest first (``occurred_at``, then ``seq``), streamed without holding them
        in memory.

        ``format=csv``: RFC 4180 with a header row (``EXPORT_COLUMNS``), ``data`` as JSON, any
        text cell starting with ``= + - @`` (a spreadsheet formula) prefixed with ``'``.
        ``format=jsonl``: one JSON object per line, shaped as the list's items plus ``seq``,
        ``prev_hash`` and ``hash`` (the hash chain, docs/audit.md). A stream cut short ends
        without HTTP/1.1's last chunk, which clients report as an error.

        Errors: 422 for a missing or unknown ``format``, a ``since``/``until`` that is not
        ISO 8601 with an offset, or ``until`` not after ``since``; 401/403 as the list."""
        since, until = args.get("since"), args.get("until")
        if since and until and since >= until:
            raise ValidationError({"until": ["Must be after 'since'."]})
        batches = _export_rows(db.database(), g.db_tenant_schema, since, until, EXPORT_BATCH_SIZE)
        encode = _csv if args["format"] == "csv" else _jsonl
        return Response(
            _closing(encode(batches), batches),
            content_type=EXPORT_TYPES[args["format"]],
            headers={"Content-Disposition": f'attachment; filename="audit-events.{args["format"]}"'},
        )
