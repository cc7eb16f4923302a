"""Billing HTTP API (``/api/v1/billing``) and the Stripe webhook endpoint (``/webhooks/stripe``)."""

from __future__ import annotations

import marshmallow as ma
from flask import request
from flask.views import MethodView

from saas import db
from saas.actions import ActionContext
from saas.api import Blueprint
from saas.auth.context import current_principal, require, require_verified_email
from saas.auth.stepup import require_step_up
from saas.billing import service, usage, webhooks
from saas.billing.entitlements import INTERVALS, catalogue
from saas.services import services

blp = Blueprint("billing", __name__, url_prefix="/api/v1/billing", description="Plan, checkout, portal")
hooks = Blueprint("stripe_webhooks", __name__, url_prefix="/webhooks", description="Stripe webhooks")

#: every billing operation answers 503 ``billing_not_configured`` on a deployment without Stripe
OFF = "billing_not_configured: billing is off on this deployment (no STRIPE_SECRET_KEY)"


class CheckoutSchema(ma.Schema):
    plan = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=32))
    interval = ma.fields.String(load_default="month", validate=ma.validate.OneOf(INTERVALS))
    promotion_code = ma.fields.String(
        load_default=None,
        validate=ma.validate.Regexp(service.PROMOTION_CODE_PATTERN, error="Not a promotion code."),
        metadata={"description": "a customer-facing promotion code, applied at once (unknown: 422)"},
    )


class UrlSchema(ma.Schema):
    url = ma.fields.String(metadata={"description": "Stripe-hosted page to redirect the browser to"})


class SeatsSchema(ma.Schema):
    used = ma.fields.Integer()
    allowed = ma.fields.Integer(allow_none=True, metadata={"description": "null: unlimited"})


class ApiCallsSchema(ma.Schema):
    period = ma.fields.String(
        metadata={
            "description": "the usage period's label: the subscription period's start "
            "(YYYYMMDDTHHMMSSZ), or the calendar month (YYYY-MM) without a live subscription",
            "example": "20261115T093000Z",
        }
    )
    start = ma.fields.DateTime(metadata={"description": "the usage period's start (inclusive)"})
    end = ma.fields.DateTime(metadata={"description": "the usage period's end (exclusive): the quota resets"})
    used = ma.fields.Integer(allow_none=True)
    allowed = ma.fields.Integer(allow_none=True)


class FeatureSchema(ma.Schema):
    name = ma.fields.String(metadata={"example": "sso"})
    enabled = ma.fields.Boolean(metadata={"description": "what entitlements.has(tenant, name) answers"})
    value = ma.fields.Raw(allow_none=True, metadata={"description": "the entitlement (a flag, or a value)"})
    cheapest_plan = ma.fields.String(
        allow_none=True, metadata={"description": "the first plan of the catalogue granting it"}
    )


class TaxIdSchema(ma.Schema):
    id = ma.fields.String()
    type = ma.fields.String(metadata={"example": "eu_vat"})
    value = ma.fields.String()
    country = ma.fields.String(allow_none=True)
    verification = ma.fields.String(allow_none=True, metadata={"description": "pending | verified | ..."})


class CustomerSchema(ma.Schema):
    email = ma.fields.String(allow_none=True)
    address = ma.fields.Dict(allow_none=True, metadata={"description": "line1, line2, postal_code, city..."})
    tax_ids = ma.fields.List(ma.fields.Nested(TaxIdSchema))


class BillingSchema(ma.Schema):
    plan = ma.fields.String()
    status = ma.fields.String(allow_none=True, metadata={"description": "Stripe subscription status"})
    current_period_end = ma.fields.DateTime(allow_none=True)
    cancel_at_period_end = ma.fields.Boolean()
    trial_end = ma.fields.DateTime(allow_none=True, metadata={"description": "while trialing"})
    grace_until = ma.fields.DateTime(allow_none=True)
    open_invoice_url = ma.fields.String(
        allow_none=True, metadata={"description": "while past_due: the unpaid invoice's hosted page"}
    )
    read_only = ma.fields.Boolean()
    seats = ma.fields.Nested(SeatsSchema)
    api_calls = ma.fields.Nested(ApiCallsSchema)
    entitlements = ma.fields.Dict()
    features = ma.fields.List(ma.fields.Nested(FeatureSchema))
    customer = ma.fields.Nested(CustomerSchema)


class InvoiceQuerySchema(ma.Schema):
    limit = ma.fields.Integer(load_default=10, validate=ma.validate.Range(min=1, max=100))
    starting_after = ma.fields.String(
        load_default=None,
        validate=ma.validate.Regexp(service.INVOICE_ID_PATTERN, error="Not an invoice id."),
        metadata={"description": "the last id of the previous page (next_starting_after)"},
    )


class InvoiceSchema(ma.Schema):
    id = ma.fields.String()
    number = ma.fields.String(allow_none=True)
    status = ma.fields.String(
        allow_none=True, metadata={"description": "draft | open | paid | void | uncollectible"}
    )
    currency = ma.fields.String()
    amount_due = ma.fields.Integer(metadata={"description": "smallest currency unit (cents)"})
    amount_paid = ma.fields.Integer()
    amount_remaining = ma.fields.Integer(allow_none=True)
    subtotal = ma.fields.Integer(allow_none=True)
    total = ma.fields.Integer(allow_none=True)
    created = ma.fields.DateTime(allow_none=True)
    due_date = ma.fields.DateTime(allow_none=True)
    period_start = ma.fields.DateTime(allow_none=True)
    period_end = ma.fields.DateTime(allow_none=True)
    hosted_invoice_url = ma.fields.String(allow_none=True)
    invoice_pdf = ma.fields.String(allow_none=True)


class InvoicePageSchema(ma.Schema):
    data = ma.fields.List(ma.fields.Nested(InvoiceSchema))
    has_more = ma.fields.Boolean()
    next_starting_after = ma.fields.String(allow_none=True)


class WebhookAckSchema(ma.Schema):
    received = ma.fields.Boolean()
    status = ma.fields.String(metadata={"description": "processed | ignored | duplicate"})


def _email(principal) -> str | None:
    membership = principal.membership
    return membership.user.email if membership is not None else None


@blp.route("")
class BillingView(MethodView):
    @require("billing:manage")
    @blp.alt_response(503, description=OFF)
    @blp.response(200, BillingSchema)
    def get(self):
        """Plan, status, period end, seats, API calls this period, entitlements."""
        service.current_billing()
        principal = current_principal()
        period = usage.current_period(principal.tenant)
        calls = usage.read_usage(services().redis, principal.tenant_id, period.label)
        return service.describe(db.session(), principal.tenant, calls, period)


@blp.route("/checkout")
class CheckoutView(MethodView):
    @require("billing:manage")
    @require_verified_email
    @blp.alt_response(503, description=OFF)
    @require_step_up()
    @blp.arguments(CheckoutSchema)
    @blp.response(200, UrlSchema)
    def post(self, body):
        """Start a Stripe Checkout Session (mode subscription) for a paid plan."""
        billing = service.current_billing()
        principal = current_principal()
        if body["plan"] not in catalogue()[1]:
            from saas.errors import ValidationError

            raise ValidationError({"plan": ["Unknown plan."]})
        url = service.start_checkout(
            ActionContext.from_request(),
            billing,
            principal.tenant,
            _email(principal),
            body["plan"],
            body["interval"],
            promotion_code=body["promotion_code"],
        )
        return {"url": url}


@blp.route("/invoices")
class InvoicesView(MethodView):
    @require("billing:manage")
    @blp.alt_response(503, description=OFF)
    @blp.arguments(InvoiceQuerySchema, location="query")
    @blp.response(200, InvoicePageSchema)
    def get(self, query):
        """The tenant's Stripe invoices, newest first, a page at a time (``limit``, ``starting_after``)."""
        billing = service.current_billing()
        principal = current_principal()
        return service.list_invoices(
            db.session(),
            billing,
            principal.tenant,
            limit=query["limit"],
            starting_after=query["starting_after"],
        )


@blp.route("/portal")
class PortalView(MethodView):
    @require("billing:manage")
    @require_verified_email
    @blp.alt_response(503, description=OFF)
    @require_step_up()
    @blp.response(200, UrlSchema)
    def post(self):
        """Open a Stripe Billing Portal session (change plan, payment method, cancel)."""
        billing = service.current_billing()
        principal = current_principal()
        return {
            "url": service.open_portal(
                ActionContext.from_request(), billing, principal.tenant, _email(principal)
            )
        }


@blp.route("/checkout/<string:session_id>/sync")
class CheckoutSyncView(MethodView):
    @require("billing:manage")
    @blp.alt_response(503, description=OFF)
    @blp.response(200, BillingSchema)
    def get(self, session_id: str):
        """Apply a completed Checkout Session now (the return page), before the webhook lands."""
        billing = service.current_billing()
        principal = current_principal()
        ctx = ActionContext.from_request()
        service.sync_checkout(ctx, billing, principal.tenant, session_id)
        period = usage.current_period(principal.tenant)
        calls = usage.read_usage(services().redis, principal.tenant_id, period.label)
        return service.describe(ctx.session, principal.tenant, calls, period)


@hooks.route("/stripe")
class StripeWebhookView(MethodView):
    @hooks.response(200, WebhookAckSchema)
    @hooks.alt_response(400, description="bad or missing signature: nothing stored")
    @hooks.alt_response(500, description="processing failed: rolled back, Stripe retries")
    @hooks.alt_response(503, description=OFF)
    def post(self):
        """Stripe webhook: verified on the raw body, applied exactly once, order-proof."""
        billing = service.current_billing()
        payload = request.get_data(cache=False)
        event = webhooks.verify(billing, payload, request.headers.get("Stripe-Signature"))
        outcome = webhooks.receive(db.database(), billing, event)
        return {"received": True, "status": outcome.status}
