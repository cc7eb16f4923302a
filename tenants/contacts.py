"""Contacts API: list (paginated, searchable, sortable), create, read, update with ETag and
``If-Match`` (RFC 9110 section 13.1.1), delete. Every change is audited."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import marshmallow as ma
from flask import current_app, request
from flask.views import MethodView
from sqlalchemy import (
    Integer,
    Select,
    Text,
    bindparam,
    cast,
    func,
    literal_column,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm.exc import StaleDataError

from saas import audit, db
from saas.api import Blueprint, QueryArgsSchema
from saas.auth.context import current_principal, require
from saas.errors import Conflict, NotFound, PreconditionFailed
from saas.memo import memoize
from tenants.models import Contact

blp = Blueprint("contacts", __name__, url_prefix="/api/v1/contacts", description="Contacts (tenant CRM)")

SORTS = {
    "name": Contact.name,
    "email": Contact.email,
    "company": Contact.company,
    "created_at": Contact.created_at,
    "updated_at": Contact.updated_at,
}

Tag = ma.fields.String(validate=ma.validate.Length(min=1, max=50))


class ContactSchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))
    email = ma.fields.Email(allow_none=True, validate=ma.validate.Length(max=320))
    phone = ma.fields.String(allow_none=True, validate=ma.validate.Length(max=64))
    company = ma.fields.String(allow_none=True, validate=ma.validate.Length(max=200))
    tags = ma.fields.List(Tag, validate=ma.validate.Length(max=50), load_default=list)
    created_at = ma.fields.DateTime(dump_only=True)
    updated_at = ma.fields.DateTime(dump_only=True)
    created_by = ma.fields.String(dump_only=True, allow_none=True)


class ContactPatchSchema(ContactSchema):
    name = ma.fields.String(validate=ma.validate.Length(min=1, max=200))
    tags = ma.fields.List(Tag, validate=ma.validate.Length(max=50))


class ContactQuerySchema(QueryArgsSchema):
    q = ma.fields.String(validate=ma.validate.Length(max=200), metadata={"description": "search"})
    tag = ma.fields.String(validate=ma.validate.Length(max=50))
    sort = ma.fields.String(
        load_default="-created_at",
        validate=ma.validate.OneOf([*SORTS, *(f"-{k}" for k in SORTS)]),
        metadata={"description": "field name, '-' prefix for descending"},
    )


def etag_of(contact: Contact) -> str:
    digest = hashlib.sha256(f"{contact.id}:{contact.version}".encode()).hexdigest()[:32]
    return f'"{digest}"'


def _dump(contact: Contact) -> dict:
    return {
        "id": str(contact.id),
        "name": contact.name,
        "email": contact.email,
        "phone": contact.phone,
        "company": contact.company,
        "tags": list(contact.tags or []),
        "created_at": contact.created_at,
        "updated_at": contact.updated_at,
        "created_by": str(contact.created_by) if contact.created_by else None,
    }


#: the list's document keys, in the order the JSON provider writes them (sorted)
_LIST_KEYS = ("company", "created_at", "created_by", "email", "id", "name", "phone", "tags", "updated_at")
_TABLE = Contact.__table__
#: the table under a short alias in the list's statements: the schema is named once (the
#: schema map rewrites every schema-qualified name on each execution)
_ROWS = _TABLE.alias("c")
_FIRST, _SIZE = bindparam("first_item", type_=Integer), bindparam("page_size", type_=Integer)


_TIMESTAMPS = frozenset({"created_at", "updated_at"})


def _isoformat(column: Any) -> Any:
    """``column`` (``timestamptz``) as the text Python's ``datetime.isoformat()`` writes for it
    (in the session's time zone, as psycopg returns it): six fractional digits unless they are
    all zero, then none, and a ``+HH:MM`` offset. PostgreSQL's own JSON form drops trailing
    zeros (``.74679``), which is the same instant but not the same document. (``.000000`` can
    only be the fraction: the other fields have no dot.)"""
    return func.replace(func.to_char(column, _ISO_TEMPLATE), _NO_FRACTION, _EMPTY).label(column.name)


#: constants written into the statement (bound parameters would be sent with every execution)
_ISO_TEMPLATE = literal_column("""'YYYY-MM-DD"T"HH24:MI:SS.USTZH:TZM'""")
_NO_FRACTION, _EMPTY, _COMMA = literal_column("'.000000'"), literal_column("''"), literal_column("','")


def _page_document(sort: str, conditions: tuple = ()) -> Select:
    """One statement answering a page: ``(json_text, total)``.

    PostgreSQL writes the page's JSON array elements itself (``row_to_json`` of each row,
    joined in the page's order; the caller adds the brackets) and the size of the filtered
    set as a window count; both NULL for an empty page. The document is the one
    ``ContactSchema`` dumps, byte for byte as the JSON provider writes it: keys sorted,
    compact, timestamps in ISO 8601 with their offset, UUIDs as text (test_contacts proves
    it against the single-contact documents). No value is decoded into Python and encoded
    again: PostgREST's approach, and the list's hot path.

    ``sort`` is a ``SORTS`` key, ``-`` for descending; offset and limit are bound per request.
    """
    column = _ROWS.c[sort.lstrip("-")]
    descending = sort.startswith("-")
    page = (
        select(*(_ROWS.c[key] for key in _LIST_KEYS), func.count().over().label("total"))
        .where(*conditions)
        .order_by(column.desc() if descending else column.asc(), _ROWS.c.id)
        .offset(_FIRST)
        .limit(_SIZE)
        .subquery("page")
    )
    document = (
        select(*(_isoformat(page.c[key]) if key in _TIMESTAMPS else page.c[key] for key in _LIST_KEYS))
        .correlate(page)
        .lateral("doc")
    )
    order = page.c[column.name].desc() if descending else page.c[column.name].asc()
    elements = func.string_agg(
        cast(func.row_to_json(document.table_valued()), Text),
        aggregate_order_by(_COMMA, order, page.c.id),
    )
    return select(elements, func.max(page.c.total)).select_from(page).join(document, true())


#: the unfiltered page statement of each sort (the common case), built once (built per request,
#: it doubles the list's instructions per request: docs/benchmarks.md)
_unfiltered_page_document = memoize("contacts.page_statements", maxsize=2 * len(SORTS))(_page_document)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def get_contact(contact_id: uuid.UUID) -> Contact:
    """A contact of the caller's tenant (the session is bound to its schema), or 404."""
    contact = db.session().get(Contact, contact_id)
    if contact is None:
        raise NotFound("No such contact.")
    return contact


@blp.route("")
class Contacts(MethodView):
    @require("contacts:read")
    @blp.arguments(ContactQuerySchema(), location="query")  # an instance: not rebuilt per request
    @blp.response(200, ContactSchema(many=True))
    @blp.paginate()
    def get(self, args, pagination_parameters):
        """Contacts, newest first by default; ``q`` searches name, email and company."""
        conditions = []
        if args.get("q"):
            pattern = f"%{_escape_like(args['q'])}%"
            conditions.append(
                or_(_ROWS.c.name.ilike(pattern), _ROWS.c.email.ilike(pattern), _ROWS.c.company.ilike(pattern))
            )
        if args.get("tag"):
            conditions.append(_ROWS.c.tags.contains([args["tag"]]))
        sort = args["sort"]
        if sort.lstrip("-") not in SORTS:  # the schema validated it; never build SQL from input
            raise ValueError(sort)
        query = _page_document(sort, tuple(conditions)) if conditions else _unfiltered_page_document(sort)
        params = {
            "first_item": pagination_parameters.first_item,
            "page_size": pagination_parameters.page_size,
        }
        with db.read_connection() as connection:  # a read-only request: no session, no BEGIN
            elements, total = connection.execute(query, params).one()
            if total is None and pagination_parameters.first_item > 0:
                # past the last page: the window count saw no row
                total = connection.scalar(select(func.count()).select_from(_ROWS).where(*conditions))
        pagination_parameters.item_count = total or 0
        # the JSON document as PostgreSQL wrote it (see _page_document)
        return current_app.response_class(f"[{elements or ''}]\n", mimetype="application/json")

    @require("contacts:write")
    @blp.arguments(ContactSchema)
    @blp.response(201, ContactSchema)
    def post(self, body):
        """Create a contact."""
        principal = current_principal()
        contact = Contact(**body, created_by=principal.user_id)
        session = db.session()
        session.add(contact)
        session.flush()
        audit.record(session, "contact.created", target_type="contact", target_id=contact.id)
        return _dump(contact), 201, {"ETag": etag_of(contact)}


@blp.route("/<uuid:contact_id>")
class ContactResource(MethodView):
    @require("contacts:read")
    @blp.response(200, ContactSchema)
    @blp.alt_response(404, description="No such contact in this tenant")
    def get(self, contact_id):
        """One contact, with its ``ETag``."""
        contact = get_contact(contact_id)
        return _dump(contact), 200, {"ETag": etag_of(contact)}

    @require("contacts:write")
    @blp.arguments(ContactPatchSchema(partial=True))
    @blp.response(200, ContactSchema)
    @blp.alt_response(412, description="If-Match does not match the current ETag")
    def patch(self, body, contact_id):
        """Change a contact. Send ``If-Match`` with the ETag you read to avoid lost updates."""
        contact = get_contact(contact_id)
        _check_if_match(contact)
        changed = {k: v for k, v in body.items() if getattr(contact, k) != v}
        for key, value in changed.items():
            setattr(contact, key, value)
        if changed:
            contact.updated_at = db.utcnow()
            _flush_versioned()
            audit.record(
                db.session(),
                "contact.updated",
                target_type="contact",
                target_id=contact.id,
                data={"fields": sorted(changed)},
            )
        return _dump(contact), 200, {"ETag": etag_of(contact)}

    @require("contacts:write")
    @blp.response(204)
    def delete(self, contact_id):
        """Delete a contact (``If-Match`` honoured when sent)."""
        contact = get_contact(contact_id)
        _check_if_match(contact)
        session = db.session()
        session.delete(contact)
        _flush_versioned()
        audit.record(session, "contact.deleted", target_type="contact", target_id=contact_id)


def _flush_versioned() -> None:
    """Flush a change to a contact read earlier in this request. A concurrent request that
    changed or deleted it first makes the versioned UPDATE/DELETE match no row: that is a lost
    update averted, reported as 412 when the client sent If-Match, else 409."""
    try:
        db.session().flush()
    except StaleDataError:
        if request.headers.get("If-Match"):
            raise PreconditionFailed("The contact has changed since you read it; fetch it again.") from None
        raise Conflict(
            "The contact was changed by another request at the same time; fetch it and retry.",
            code="concurrent_update",
        ) from None


def _check_if_match(contact: Contact) -> None:
    if_match = request.headers.get("If-Match")
    if not if_match:
        return
    current = etag_of(contact)
    candidates = [t.strip() for t in if_match.split(",")]
    # strong comparison (RFC 9110 section 13.1.1): a weak tag W/"..." never matches If-Match
    if "*" not in candidates and current not in candidates:
        raise PreconditionFailed("The contact has changed since you read it; fetch it again.")
