"""Contacts API: list (paginated, searchable, sortable), create, read, update with ETag and
``If-Match`` (RFC 9110 section 13.1.1), delete. Every change is audited."""

from __future__ import annotations

import hashlib
import uuid

import marshmallow as ma
from flask import request
from flask.views import MethodView
from sqlalchemy import or_
from sqlalchemy.orm.exc import StaleDataError

from saas.product import (
    ActionContext,
    AuditAction,
    Blueprint,
    Conflict,
    ErrorCode,
    Listing,
    NotFound,
    PreconditionFailed,
    current_principal,
    emit_webhook,
    require,
    session,
    utcnow,
)
from tenants.models import Contact

blp = Blueprint("contacts", __name__, url_prefix="/api/v1/contacts", description="Contacts (tenant CRM)")

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


#: the list: its columns and documents come from ContactSchema (saas.pagination)
CONTACTS = Listing(
    Contact,
    ContactSchema,
    sorts=("name", "email", "company", "created_at", "updated_at"),
    default_sort="-created_at",
)


class ContactQuerySchema(CONTACTS.Args):
    q = ma.fields.String(validate=ma.validate.Length(max=200), metadata={"description": "search"})
    tag = ma.fields.String(validate=ma.validate.Length(max=50))


_DOCUMENT = ContactSchema()


def _emit(event_type: str, data: dict) -> None:
    """The webhook message of a change (saas.webhooks, in the request's transaction)."""
    emit_webhook(session(), current_principal().tenant_id, event_type, data)


def etag_of(contact: Contact) -> str:
    digest = hashlib.sha256(f"{contact.id}:{contact.version}".encode()).hexdigest()[:32]
    return f'"{digest}"'


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def get_contact(contact_id: uuid.UUID) -> Contact:
    """A contact of the caller's tenant (the session is bound to its schema), or 404."""
    contact = session().get(Contact, contact_id)
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
        """Contacts, newest first by default; ``q`` searches name, email and company.

        Offset pages (``page``) or cursor pages (``cursor``, empty to start; the next one is in
        ``Link``); ``count=exact`` for the exact total of a large set."""
        conditions = []
        if args.get("q"):
            pattern = f"%{_escape_like(args['q'])}%"
            conditions.append(
                or_(Contact.name.ilike(pattern), Contact.email.ilike(pattern), Contact.company.ilike(pattern))
            )
        if args.get("tag"):
            conditions.append(Contact.tags.contains([args["tag"]]))
        return CONTACTS.page(args, pagination_parameters, where=conditions)

    @require("contacts:write")
    @blp.arguments(ContactSchema)
    @blp.response(201, ContactSchema)
    def post(self, body):
        """Create a contact."""
        principal = current_principal()
        contact = Contact(**body, created_by=principal.user_id)
        ctx = ActionContext.from_request()
        ctx.session.add(contact)
        ctx.session.flush()
        ctx.record(AuditAction.CONTACT_CREATED, target_type="contact", target_id=contact.id)
        _emit("contact.created", {"contact": _DOCUMENT.dump(contact)})
        return contact, 201, {"ETag": etag_of(contact)}


@blp.route("/<uuid:contact_id>")
class ContactResource(MethodView):
    @require("contacts:read")
    @blp.response(200, ContactSchema)
    @blp.alt_response(404, description="No such contact in this tenant")
    def get(self, contact_id):
        """One contact, with its ``ETag``."""
        contact = get_contact(contact_id)
        return contact, 200, {"ETag": etag_of(contact)}

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
            contact.updated_at = utcnow()
            _flush_versioned()
            ActionContext.from_request().record(
                AuditAction.CONTACT_UPDATED,
                target_type="contact",
                target_id=contact.id,
                data={"fields": sorted(changed)},
            )
            _emit("contact.updated", {"contact": _DOCUMENT.dump(contact), "changed": sorted(changed)})
        return contact, 200, {"ETag": etag_of(contact)}

    @require("contacts:write")
    @blp.response(204)
    def delete(self, contact_id):
        """Delete a contact (``If-Match`` honoured when sent)."""
        contact = get_contact(contact_id)
        _check_if_match(contact)
        ctx = ActionContext.from_request()
        ctx.session.delete(contact)
        _flush_versioned()
        ctx.record(AuditAction.CONTACT_DELETED, target_type="contact", target_id=contact_id)
        _emit("contact.deleted", {"contact": {"id": contact_id}})


def _flush_versioned() -> None:
    """Flush a change to a contact read earlier in this request. A concurrent request that
    changed or deleted it first makes the versioned UPDATE/DELETE match no row: that is a lost
    update averted, reported as 412 when the client sent If-Match, else 409."""
    try:
        session().flush()
    except StaleDataError:
        if request.headers.get("If-Match"):
            raise PreconditionFailed("The contact has changed since you read it; fetch it again.") from None
        raise Conflict(
            "The contact was changed by another request at the same time; fetch it and retry.",
            code=ErrorCode.CONCURRENT_UPDATE,
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
