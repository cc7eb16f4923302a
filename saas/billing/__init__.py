"""Billing: plans, entitlements, Stripe subscriptions, webhooks, seats and usage metering.

Everything that enforces a limit (rate limits, seats, feature gates) asks
:func:`saas.billing.entitlements.entitlements_for` and nothing else.

:func:`init_app` validates the plan catalogue and the Stripe settings (start-up fails with one
line on an invalid catalogue or a missing price id), stores the billing handle in
``services(app).billing`` (None when billing is off), registers the blueprints and
the read-only guard.
"""

from __future__ import annotations

from flask import Flask, g, request

from saas.errors import PaymentRequired

#: paths a read-only (unpaid) tenant may still write to: paying, signing in and out
READ_ONLY_EXEMPT = ("/api/v1/billing", "/api/v1/auth/", "/oauth/", "/webhooks/")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def enforce_read_only() -> None:
    """``before_request`` hook: a tenant past its grace period (``past_due``) may read but not
    write: every write method on a tenant route answers 402 ``payment_required``."""
    if (
        request.method in SAFE_METHODS
        or g.get("principal") is None
        or request.path.startswith(READ_ONLY_EXEMPT)
    ):
        return
    from saas.auth.context import current_principal
    from saas.billing.entitlements import entitlements_for

    principal = current_principal()
    if entitlements_for(principal.tenant).read_only:
        raise PaymentRequired(
            "The subscription's payment is overdue and the grace period has ended: the tenant is "
            "read-only until the invoice is paid (POST /api/v1/billing/portal).",
            extra={"read_only": True},
        )


def init_app(app: Flask, smorest) -> None:
    """Set up billing's hooks and routes on ``app`` (called once by ``create_app``; the billing
    handle and the catalogue check are in :func:`saas.bootstrap.build_services`)."""
    import logging

    from saas.billing import views

    logging.getLogger("stripe").setLevel(logging.WARNING)  # the SDK logs each request at INFO

    app.before_request(enforce_read_only)
    smorest.register_blueprint(views.blp)
    smorest.register_blueprint(views.hooks)
