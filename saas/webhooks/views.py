"""``/api/v1/webhooks``: the tenant's webhook endpoints, the event catalogue, attempts, replays
and tests (service: :mod:`saas.webhooks.endpoints`; docs/webhooks.md).

Every route needs ``webhooks:manage`` (owners and admins); the ones that change an endpoint
also need a verified email. Subscribing to a group of events needs the permission that reads
its data (``contact.*``: ``contacts:read``, ``audit.*``: ``audit:read``...). Secrets are
returned once, by the creation and the rotation, never by a read.
"""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from saas import db
from saas.actions import ActionContext
from saas.api import Blueprint
from saas.auth.context import current_principal, require, require_verified_email
from saas.services import services
from saas.webhooks import catalogue, endpoints

blp = Blueprint("webhooks", __name__, url_prefix="/api/v1/webhooks", description="Outgoing webhooks")

MANAGE = "webhooks:manage"


class EndpointInSchema(ma.Schema):
    url = ma.fields.String(
        required=True,
        metadata={"description": "https; a public address (checked now and at every attempt)",
                  "example": "https://hooks.example.com/saas"},
    )  # fmt: skip
    events = ma.fields.List(
        ma.fields.String(),
        required=True,
        metadata={"description": "Event types or groups (`contact.*`, `audit.*`)", "example": ["contact.*"]},
    )
    description = ma.fields.String(load_default="", metadata={"description": "At most 500 characters"})
    rate_limit = ma.fields.Integer(
        metadata={"description": "Messages per second at most (default and highest: WEBHOOKS_RATE_LIMIT)"}
    )


class EndpointPatchSchema(ma.Schema):
    url = ma.fields.String()
    events = ma.fields.List(ma.fields.String())
    description = ma.fields.String()
    rate_limit = ma.fields.Integer()
    enabled = ma.fields.Boolean(
        metadata={"description": "true re-enables a disabled endpoint; false disables it"}
    )


class EndpointSchema(ma.Schema):
    id = ma.fields.UUID()
    url = ma.fields.String()
    description = ma.fields.String()
    events = ma.fields.List(ma.fields.String())
    rate_limit = ma.fields.Integer()
    status = ma.fields.String(metadata={"enum": ["enabled", "disabled"]})
    disabled_reason = ma.fields.String(
        allow_none=True, metadata={"enum": ["gone", "failing", "manual", None]}
    )
    disabled_at = ma.fields.DateTime(allow_none=True)
    failing_since = ma.fields.DateTime(
        allow_none=True, metadata={"description": "The first failed attempt since the last success"}
    )
    previous_secrets_expire_at = ma.fields.List(
        ma.fields.String(), metadata={"description": "When each rotated secret still signing stops"}
    )
    created_at = ma.fields.DateTime()
    updated_at = ma.fields.DateTime()


class CreatedEndpointSchema(EndpointSchema):
    secret = ma.fields.String(metadata={"description": "whsec_...: shown once, never again"})


class RotateInSchema(ma.Schema):
    keep_previous_seconds = ma.fields.Integer(
        load_default=endpoints.ROTATION_OVERLAP,
        metadata={"description": "How long the old secret keeps signing: 0 to 86400 (default)"},
    )


class RotatedSchema(ma.Schema):
    secret = ma.fields.String(metadata={"description": "The new whsec_... secret: shown once"})
    previous_secret_expires_at = ma.fields.DateTime(allow_none=True)


class EventTypeSchema(ma.Schema):
    name = ma.fields.String(metadata={"example": "contact.created"})
    group = ma.fields.String(metadata={"example": "contact"})
    description = ma.fields.String()
    schema = ma.fields.Dict(metadata={"description": "JSON Schema (2020-12) of the message's data"})


class AttemptSchema(ma.Schema):
    id = ma.fields.UUID()
    endpoint_id = ma.fields.UUID()
    delivery_id = ma.fields.UUID()
    message_id = ma.fields.String()
    event_type = ma.fields.String()
    attempt = ma.fields.Integer(metadata={"description": "1 for the first attempt of its delivery"})
    attempted_at = ma.fields.DateTime()
    outcome = ma.fields.String(metadata={"enum": ["delivered", "failed", "gone"]})
    status_code = ma.fields.Integer(allow_none=True)
    latency_ms = ma.fields.Integer(allow_none=True)
    response_body = ma.fields.String(allow_none=True, metadata={"description": "The first 1024 bytes"})
    error = ma.fields.String(allow_none=True)


class AttemptArgs(ma.Schema):
    limit = ma.fields.Integer(load_default=50, validate=ma.validate.Range(1, 100))
    before = ma.fields.UUID(metadata={"description": "An attempt id: the page after it"})
    message_id = ma.fields.String(validate=ma.validate.Length(max=40))


class ReplayInSchema(ma.Schema):
    endpoint_id = ma.fields.UUID(
        metadata={"description": "Only this endpoint (default: every one it went to)"}
    )


class QueuedDeliverySchema(ma.Schema):
    id = ma.fields.UUID()
    endpoint_id = ma.fields.UUID()


class QueuedSchema(ma.Schema):
    message_id = ma.fields.String()
    deliveries = ma.fields.List(ma.fields.Nested(QueuedDeliverySchema))


def _egress() -> endpoints.Egress:
    return endpoints.Egress.from_settings(services().settings)


def _queued(message_id: str, deliveries) -> dict:
    return {
        "message_id": message_id,
        "deliveries": [{"id": d.id, "endpoint_id": d.endpoint_id} for d in deliveries],
    }


@blp.route("/event-types")
class EventTypes(MethodView):
    @require(MANAGE)
    @blp.response(200, EventTypeSchema(many=True))
    def get(self):
        """The catalogue of event types, each with the JSON Schema of its ``data``; ``audit.*``
        stands for every ``audit.<action>``."""
        return catalogue.listing()


@blp.route("/endpoints")
class Endpoints(MethodView):
    @require(MANAGE)
    @blp.response(200, EndpointSchema(many=True))
    def get(self):
        """The tenant's endpoints, oldest first (never their secrets)."""
        rows = endpoints.list_endpoints(db.session(), current_principal().tenant_id)
        return [endpoints.to_public(r) for r in rows]

    @require(MANAGE)
    @require_verified_email
    @blp.arguments(EndpointInSchema)
    @blp.response(201, CreatedEndpointSchema)
    @blp.alt_response(403, description="permission_denied: a group whose data you may not read")
    @blp.alt_response(409, description="webhook_endpoint_limit: the tenant has 20 endpoints already")
    @blp.alt_response(
        422, description="A refused URL (not https, private address, unresolvable), unknown events"
    )
    def post(self, body):
        """Create an endpoint; ``secret`` (``whsec_...``) is shown once: verify each message's
        ``webhook-signature`` with it (Standard Webhooks)."""
        endpoint, secret = endpoints.create_endpoint(ActionContext.from_request(), body, _egress())
        return {**endpoints.to_public(endpoint), "secret": secret}


@blp.route("/endpoints/<uuid:endpoint_id>")
class EndpointItem(MethodView):
    @require(MANAGE)
    @blp.response(200, EndpointSchema)
    @blp.alt_response(404, description="No such webhook endpoint in this tenant")
    def get(self, endpoint_id):
        """One endpoint (another tenant's is a 404)."""
        return endpoints.to_public(
            endpoints.get_endpoint(db.session(), current_principal().tenant_id, endpoint_id)
        )

    @require(MANAGE)
    @require_verified_email
    @blp.arguments(EndpointPatchSchema)
    @blp.response(200, EndpointSchema)
    @blp.alt_response(403, description="permission_denied: a group whose data you may not read")
    @blp.alt_response(404, description="No such webhook endpoint in this tenant")
    @blp.alt_response(422, description="A refused URL, unknown events, a rate out of range")
    def patch(self, body, endpoint_id):
        """Change an endpoint; ``enabled: true`` re-enables a disabled one."""
        ctx = ActionContext.from_request()
        endpoint = endpoints.get_endpoint(ctx.session, current_principal().tenant_id, endpoint_id, lock=True)
        return endpoints.to_public(endpoints.update_endpoint(ctx, endpoint, body, _egress()))

    @require(MANAGE)
    @require_verified_email
    @blp.response(204)
    @blp.alt_response(404, description="No such webhook endpoint in this tenant")
    def delete(self, endpoint_id):
        """Delete an endpoint, its deliveries and attempts."""
        ctx = ActionContext.from_request()
        endpoint = endpoints.get_endpoint(ctx.session, current_principal().tenant_id, endpoint_id)
        endpoints.delete_endpoint(ctx, endpoint)


@blp.route("/endpoints/<uuid:endpoint_id>/secret/rotate")
class RotateSecret(MethodView):
    @require(MANAGE)
    @require_verified_email
    @blp.arguments(RotateInSchema)
    @blp.response(200, RotatedSchema)
    @blp.alt_response(404, description="No such webhook endpoint in this tenant")
    def post(self, body, endpoint_id):
        """A new secret (shown once); the old one keeps signing beside it (one more ``v1,``
        signature) for ``keep_previous_seconds``, 24 hours by default, 0 for a leaked one."""
        ctx = ActionContext.from_request()
        endpoint = endpoints.get_endpoint(ctx.session, current_principal().tenant_id, endpoint_id, lock=True)
        secret, expires = endpoints.rotate_secret(ctx, endpoint, body["keep_previous_seconds"])
        return {"secret": secret, "previous_secret_expires_at": expires}


@blp.route("/endpoints/<uuid:endpoint_id>/test")
class TestEndpoint(MethodView):
    @require(MANAGE)
    @require_verified_email
    @blp.response(202, QueuedSchema)
    @blp.alt_response(404, description="No such webhook endpoint in this tenant")
    @blp.alt_response(409, description="webhook_endpoint_disabled")
    def post(self, endpoint_id):
        """Queue a ``webhook.test`` message to this endpoint; its attempts show how it went."""
        ctx = ActionContext.from_request()
        endpoint = endpoints.get_endpoint(ctx.session, current_principal().tenant_id, endpoint_id)
        queued = endpoints.send_test(ctx, endpoint)
        return _queued(queued.message_id, [queued])


@blp.route("/endpoints/<uuid:endpoint_id>/attempts")
class Attempts(MethodView):
    @require(MANAGE)
    @blp.arguments(AttemptArgs, location="query")
    @blp.response(200, AttemptSchema(many=True))
    @blp.alt_response(404, description="No such webhook endpoint in this tenant")
    def get(self, args, endpoint_id):
        """The endpoint's delivery attempts, newest first (kept 30 days): ``?before=<attempt
        id>`` for the next page, ``?message_id=`` for one message's."""
        session = db.session()
        endpoint = endpoints.get_endpoint(session, current_principal().tenant_id, endpoint_id)
        rows = endpoints.list_attempts(
            session,
            endpoint,
            limit=args["limit"],
            before=args.get("before"),
            message_id=args.get("message_id"),
        )
        return [r.to_public() for r in rows]


@blp.route("/messages/<string:message_id>/replay")
class Replay(MethodView):
    @require(MANAGE)
    @require_verified_email
    @blp.arguments(ReplayInSchema)
    @blp.response(202, QueuedSchema)
    @blp.alt_response(404, description="No such webhook message (or endpoint) in this tenant")
    @blp.alt_response(409, description="webhook_endpoint_disabled")
    def post(self, body, message_id):
        """Send a message again (same body and ``webhook-id``) to one endpoint or to every
        enabled endpoint it went to."""
        ctx = ActionContext.from_request()
        tenant_id = current_principal().tenant_id
        message = endpoints.get_message(ctx.session, tenant_id, message_id)
        endpoint = (
            endpoints.get_endpoint(ctx.session, tenant_id, body["endpoint_id"])
            if body.get("endpoint_id")
            else None
        )
        return _queued(message.id, endpoints.replay(ctx, message, endpoint))
