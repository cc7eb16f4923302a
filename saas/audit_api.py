"""``GET /api/v1/audit-events``: the tenant's audit log, newest first, filterable."""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView
from sqlalchemy import func, select

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
