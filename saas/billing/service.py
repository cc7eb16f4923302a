"""Billing services: Stripe customer, Checkout and Billing Portal sessions, applying a Stripe
subscription to a tenant's state, reconciliation and seats.

Every function takes the session (the caller's unit of work) and the :class:`Billing` handle,
raises :class:`saas.errors.AppError` subclasses, and audits each change in the tenant's log.

The Stripe API version is pinned (:data:`STRIPE_API_VERSION`); since ``2025-03-31.basil`` the
billing period fields live on subscription items (``items.data[].current_period_end``), which
:func:`apply_subscription` reads (falling back to the subscription's for older shapes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import stripe
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from saas import audit, db, outbox
from saas.actions import ActionContext
from saas.audit import AuditAction
from saas.billing import entitlements as ent
from saas.billing.models import BillingAccount
from saas.billing.periods import Period
from saas.db import utcnow
from saas.errors import (
    AppError,
    Conflict,
    ErrorCode,
    NotFound,
    PaymentRequired,
    ServiceUnavailable,
    ValidationError,
)
from saas.identity.models import Membership, Tenant
from saas.services import services
from saas.settings import Settings
from saas.webhooks import events as webhook_events

log = logging.getLogger("saas.billing")

#: The Stripe API version this code is written against (the one stripe-python 16.1 pins).
STRIPE_API_VERSION = "2026-10-28.endive"
#: Who changes billing state when Stripe tells us (audit actor).
STRIPE_ACTOR = audit.Actor("system", "stripe")
#: Stripe HTTP timeout (seconds) per attempt, and retries (SDK default: 80 s, no retries): a
#: request path waits at most about 3 x 10 s plus backoff for Stripe
STRIPE_TIMEOUT_SECONDS = 10.0
STRIPE_MAX_NETWORK_RETRIES = 2
#: Outbox topic of a seat-quantity push (handler: :func:`saas.billing.jobs.sync_seats`)
SYNC_SEATS_TOPIC = "billing.sync_seats"


class BillingNotConfigured(ServiceUnavailable):
    code, title = ErrorCode.BILLING_NOT_CONFIGURED, "Billing is not configured"

    def __init__(self) -> None:
        super().__init__("Billing is off on this deployment (no STRIPE_SECRET_KEY).")


class StripeUnavailable(ServiceUnavailable):
    code, title = ErrorCode.STRIPE_UNAVAILABLE, "Payment provider unavailable"


@dataclass
class Billing:
    """The billing handle of one app: settings, the pinned Stripe client, the price table."""

    settings: Settings
    client: stripe.StripeClient
    prices: dict[str, tuple[str, str]]  # Stripe price id -> (plan id, interval)

    def price_for(self, plan_id: str, interval: str) -> str:
        """The Stripe price id of ``plan_id`` billed per ``interval`` (``month`` | ``year``).

        Raises:
            ValidationError: unknown plan, free plan, or no price configured for that interval.
        """
        _, plans = ent.catalogue()
        p = plans.get(plan_id)
        if p is None or not p.price_env:
            paid = [q.id for q in plans.values() if q.price_env]
            raise ValidationError({"plan": [f"Must be one of: {', '.join(paid)}."]})
        env_name = p.price_env.get(interval)
        price = self.settings.stripe_prices.get(env_name or "")
        if not price:
            raise ValidationError({"interval": [f"Plan '{plan_id}' is not offered per {interval}."]})
        return price

    @property
    def grace(self) -> timedelta:
        return timedelta(days=self.settings.billing_grace_days)


def make_client(settings: Settings) -> stripe.StripeClient:
    """A Stripe client pinned to :data:`STRIPE_API_VERSION`, talking to ``STRIPE_API_BASE``,
    with a :data:`STRIPE_TIMEOUT_SECONDS` timeout and :data:`STRIPE_MAX_NETWORK_RETRIES` retries
    (the SDK retries with idempotency keys; https://docs.stripe.com/error-low-level)."""
    base = settings.stripe_api_base.rstrip("/")
    return stripe.StripeClient(
        settings.stripe_secret_key or "",
        stripe_version=STRIPE_API_VERSION,
        base_addresses={"api": base, "meter_events": base},
        max_network_retries=STRIPE_MAX_NETWORK_RETRIES,
        http_client=stripe.RequestsClient(timeout=STRIPE_TIMEOUT_SECONDS),
    )


def make_billing(settings: Settings) -> Billing | None:
    """The app's billing handle, or None when billing is off.

    Raises:
        CatalogueError: the plan catalogue is invalid, or a paid plan lacks its price id.
    """
    prices = ent.validate_prices(settings.stripe_prices, settings.billing_enabled)
    if not settings.billing_enabled:
        return None
    return Billing(settings, make_client(settings), prices)


def current_billing() -> Billing:
    """This app's billing handle.

    Raises:
        BillingNotConfigured: 503 ``billing_not_configured`` when billing is off.
    """
    handle = services().billing
    if handle is None:
        raise BillingNotConfigured()
    return handle


def plain(obj: Any) -> Any:
    """A Stripe object as plain dicts and lists (webhook payloads already are)."""
    if isinstance(obj, stripe.StripeObject):
        return obj.to_dict()
    return obj


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if value else None


def _stripe_call(what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except stripe.StripeError as exc:
        log.warning("stripe %s failed: %s", what, exc.__class__.__name__)
        raise StripeUnavailable(f"Stripe could not {what}; try again shortly.") from None


# --- accounts ----------------------------------------------------------------------------------


def get_account(session: Session, tenant_id: uuid.UUID, *, lock: bool = False) -> BillingAccount | None:
    query = select(BillingAccount).where(BillingAccount.tenant_id == tenant_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def account_for_customer(session: Session, customer_id: str, *, lock: bool = False) -> BillingAccount | None:
    query = select(BillingAccount).where(BillingAccount.stripe_customer_id == customer_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def ensure_account(session: Session, tenant_id: uuid.UUID) -> BillingAccount:
    """The tenant's account row, created (and locked) if missing."""
    from sqlalchemy.dialects.postgresql import insert

    session.execute(
        insert(BillingAccount.__table__)
        .values(tenant_id=tenant_id, cancel_at_period_end=False, created_at=utcnow(), updated_at=utcnow())
        .on_conflict_do_nothing(index_elements=["tenant_id"])
    )
    account = get_account(session, tenant_id, lock=True)
    assert account is not None
    session.refresh(account)
    return account


def ensure_customer(
    ctx: ActionContext, billing: Billing, tenant: Tenant, email: str | None
) -> BillingAccount:
    """The tenant's account with a Stripe customer (created once: idempotency key per tenant).

    A newly created customer's id is committed at once (``db.commit_early``: the unit of work
    so far, which must hold nothing else), so a later failure of the request (Checkout
    refused, Stripe down) cannot roll it back: Stripe's idempotency key only lasts 24 hours, after
    which a lost id would mean a duplicate customer. The account row is locked meanwhile, so
    concurrent requests of one tenant create one customer. Call it before any other write.

    Raises:
        StripeUnavailable: Stripe refused or could not be reached.
    """
    session = ctx.session
    account = ensure_account(session, tenant.id)
    if account.stripe_customer_id and account.customer_deleted_at is None:
        return account
    generation = (
        "" if account.customer_deleted_at is None else f"-{int(account.customer_deleted_at.timestamp())}"
    )
    customer = _stripe_call(
        "create the customer",
        lambda: billing.client.v1.customers.create(
            params={
                "name": tenant.name,
                **({"email": email} if email else {}),
                "metadata": {"tenant_id": str(tenant.id), "tenant_slug": tenant.slug},
            },
            options={"idempotency_key": f"customer-{tenant.id}{generation}"},
        ),
    )
    account.stripe_customer_id = customer.id
    account.customer_email = email
    account.customer_deleted_at = None
    account.customer_event_created = None  # a new customer: its own event clock
    ctx.record(
        AuditAction.BILLING_CUSTOMER_CREATED,
        target_type="stripe_customer",
        target_id=customer.id,
        tenant_id=tenant.id,
    )
    db.commit_early(session, db.EarlyCommit.STRIPE_CUSTOMER_CREATED)  # the request goes on
    return account


# --- seats -------------------------------------------------------------------------------------


def seats_used(session: Session, tenant_id: uuid.UUID, *, include_invited: bool = False) -> int:
    """Members holding a seat: active ones (and pending invitations when ``include_invited``)."""
    statuses = ("active", "invited") if include_invited else ("active",)
    return (
        session.scalar(
            select(func.count()).where(Membership.tenant_id == tenant_id, Membership.status.in_(statuses))
        )
        or 0
    )


def check_seat_available(session: Session, tenant: Tenant) -> None:
    """Refuse one more member (invitation) beyond the seat entitlement.

    Raises:
        PaymentRequired: 402 ``seats_exceeded`` naming ``required_plan``, the first plan of the
        catalogue that would allow it (None when no plan would).
    """
    entitlements = ent.entitlements_for(tenant)
    if entitlements.seats is None:
        return
    # serialize concurrent invitations of one tenant, so two cannot both take the last seat
    session.execute(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update())
    used = seats_used(session, tenant.id, include_invited=True)
    if used + 1 <= entitlements.seats:
        return
    allowing = [p.id for p in ent.plans_allowing(used + 1) if p.id != entitlements.plan]
    required = allowing[0] if allowing else None
    raise PaymentRequired(
        f"Your plan '{entitlements.plan}' includes {entitlements.seats} seats and {used} are taken"
        + (f"; the '{required}' plan allows more." if required else "."),
        code=ErrorCode.SEATS_EXCEEDED,
        title="Seat limit reached",
        extra={
            "plan": entitlements.plan,
            "seats": entitlements.seats,
            "seats_used": used,
            "required_plan": required,
        },
    )


def members_changed(session: Session, tenant_id: uuid.UUID) -> None:
    """A member became active or left: queue a seat-quantity push in the caller's transaction.

    Locks the tenant's billing account (serializing with webhooks and other member changes)
    and, for a live per-seat subscription, enqueues the outbox message
    ``billing.sync_seats`` ``{"tenant_id": "<uuid>"}``: it is delivered after commit, survives a
    crash, and its handler (:func:`saas.billing.jobs.sync_seats`) reads the member count when it
    sends, so pushes cannot reach Stripe out of order. No Stripe call happens in the request.
    """
    if services().billing is None:
        return
    account = get_account(session, tenant_id, lock=True)
    if (
        account is None
        or not account.subscription_item_id
        or account.status not in (ent.PAID_STATUSES | ent.GRACE_STATUSES)
        or not ent.plan(account.plan).per_seat
    ):
        return
    outbox.enqueue(session, SYNC_SEATS_TOPIC, {"tenant_id": str(tenant_id)}, tenant_id=tenant_id)


def update_quantity(billing: Billing, item_id: str, quantity: int) -> None:
    """Set a subscription item's quantity with proration (Stripe ``proration_behavior``)."""
    billing.client.v1.subscription_items.update(
        item_id, params={"quantity": quantity, "proration_behavior": "create_prorations"}
    )


# --- checkout, portal ----------------------------------------------------------------------------


def _return_url(billing: Billing) -> str:
    return (billing.settings.billing_return_url or billing.settings.issuer.rstrip("/") + "/billing").rstrip(
        "/"
    )


#: what a promotion code may look like before we ask Stripe (its codes are letters and digits)
PROMOTION_CODE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
UNKNOWN_PROMOTION_CODE = "Unknown, expired or inactive promotion code."


def find_promotion_code(billing: Billing, code: str, customer_id: str | None) -> str:
    """The id (``promo_...``) of the active promotion code ``code`` (case-insensitive) that this
    customer may redeem: Stripe ``GET /v1/promotion_codes?code=&active=true``
    (https://docs.stripe.com/api/promotion_codes/list); a code restricted to another customer
    does not count.

    Raises:
        ValidationError: 422 on ``promotion_code``: no such active code for this customer.
        StripeUnavailable: Stripe refused or could not be reached.
    """
    found = _stripe_call(
        "look up the promotion code",
        lambda: billing.client.v1.promotion_codes.list(params={"code": code, "active": True, "limit": 10}),
    )
    for promo in (plain(p) for p in found.data):
        owner = promo.get("customer")
        owner = owner if isinstance(owner, str) or owner is None else owner.get("id")
        if promo.get("active") and (owner is None or owner == customer_id):
            return promo["id"]
    raise ValidationError({"promotion_code": [UNKNOWN_PROMOTION_CODE]})


def checkout_params(
    billing: Billing,
    tenant: Tenant,
    account: BillingAccount,
    plan_id: str,
    price: str,
    quantity: int,
    promotion_code_id: str | None,
) -> dict[str, Any]:
    """The Checkout Session's parameters (https://docs.stripe.com/api/checkout/sessions/create):

    * a plan's ``trial_days`` -> ``subscription_data.trial_period_days``, for the tenant's first
      subscription only (a tenant that subscribed before gets no second trial), with
      ``payment_method_collection`` from the plan, else ``BILLING_TRIAL_PAYMENT_METHOD``; a trial
      without a card (``if_required``) ends in cancellation when no card was added
      (``trial_settings.end_behavior.missing_payment_method = cancel``);
    * ``promotion_code_id`` -> ``discounts=[{"promotion_code": id}]``; else
      ``allow_promotion_codes`` when ``BILLING_ALLOW_PROMOTION_CODES`` (Stripe accepts one of the two);
    * ``BILLING_AUTOMATIC_TAX`` -> ``automatic_tax[enabled]`` with ``customer_update[address]=auto``,
      ``BILLING_TAX_ID_COLLECTION`` -> ``tax_id_collection[enabled]`` with ``customer_update[name]=auto``
      (Stripe requires both updates for an existing customer).
    """
    settings = billing.settings
    p = ent.plan(plan_id)
    base = _return_url(billing)
    metadata = {"tenant_id": str(tenant.id), "plan": plan_id}
    subscription_data: dict[str, Any] = {"metadata": dict(metadata)}
    params: dict[str, Any] = {
        "mode": "subscription",
        "customer": account.stripe_customer_id,
        "client_reference_id": str(tenant.id),
        "line_items": [{"price": price, "quantity": quantity}],
        "success_url": base + "/return?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": base + "/cancel",
        "metadata": metadata,
        "subscription_data": subscription_data,
    }
    if p.trial_days and account.stripe_subscription_id is None:
        collection = p.payment_method_collection or settings.billing_trial_payment_method
        subscription_data["trial_period_days"] = p.trial_days
        params["payment_method_collection"] = collection
        if collection == "if_required":
            subscription_data["trial_settings"] = {"end_behavior": {"missing_payment_method": "cancel"}}
    if promotion_code_id:
        params["discounts"] = [{"promotion_code": promotion_code_id}]
    elif settings.billing_allow_promotion_codes:
        params["allow_promotion_codes"] = True
    customer_update: dict[str, str] = {}
    if settings.billing_automatic_tax:
        params["automatic_tax"] = {"enabled": True}
        customer_update["address"] = "auto"
    if settings.billing_tax_id_collection:
        params["tax_id_collection"] = {"enabled": True}
        customer_update["name"] = "auto"
    if customer_update:
        params["customer_update"] = customer_update
    return params


def start_checkout(
    ctx: ActionContext,
    billing: Billing,
    tenant: Tenant,
    email: str | None,
    plan_id: str,
    interval: str,
    promotion_code: str | None = None,
) -> str:
    """A Stripe Checkout Session (mode ``subscription``) for ``plan_id``; returns its URL.

    ``client_reference_id`` is the tenant id; the idempotency key covers the tenant, every
    parameter (:func:`checkout_params`: price, quantity, trial, discount, tax) and the hour, so
    a double click returns the same session. ``promotion_code`` (the code a person types) is
    looked up before anything is written (:func:`find_promotion_code`).

    Raises:
        ValidationError: unknown plan or interval; unknown, inactive or unredeemable promotion
        code (422 on ``promotion_code``, nothing written). Conflict ``subscription_exists``: the
        tenant already has a live subscription (change it in the portal). StripeUnavailable.
    """
    session = ctx.session
    price = billing.price_for(plan_id, interval)
    promo_id = None
    if promotion_code is not None:
        existing = get_account(session, tenant.id)
        live = existing is not None and existing.customer_deleted_at is None
        known_customer = existing.stripe_customer_id if live and existing else None
        promo_id = find_promotion_code(billing, promotion_code, known_customer)
    account = ensure_customer(ctx, billing, tenant, email)
    if account.stripe_subscription_id and account.status in (ent.PAID_STATUSES | ent.GRACE_STATUSES):
        raise Conflict(
            "This tenant already has a subscription; change it in the billing portal.",
            code=ErrorCode.SUBSCRIPTION_EXISTS,
        )
    quantity = max(seats_used(session, tenant.id), 1) if ent.plan(plan_id).per_seat else 1
    params = checkout_params(billing, tenant, account, plan_id, price, quantity, promo_id)
    key_material = f"{tenant.id}:{int(time.time() // 3600)}:{json.dumps(params, sort_keys=True)}"
    try:
        checkout = billing.client.v1.checkout.sessions.create(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": "checkout-" + hashlib.sha256(key_material.encode()).hexdigest()[:32]},
        )
    except stripe.InvalidRequestError as exc:
        if promo_id and str(getattr(exc, "param", "") or "").startswith("discounts"):
            # Stripe refuses to redeem it for this customer (first-time only, minimum amount...)
            raise ValidationError({"promotion_code": [UNKNOWN_PROMOTION_CODE]}) from None
        log.warning("stripe start checkout failed: %s", exc.__class__.__name__)
        raise StripeUnavailable("Stripe could not start checkout; try again shortly.") from None
    except stripe.StripeError as exc:
        log.warning("stripe start checkout failed: %s", exc.__class__.__name__)
        raise StripeUnavailable("Stripe could not start checkout; try again shortly.") from None
    sub_data = params["subscription_data"]
    ctx.record(
        AuditAction.BILLING_CHECKOUT_STARTED,
        target_type="checkout_session",
        target_id=checkout.id,
        data={
            "plan": plan_id,
            "interval": interval,
            "quantity": quantity,
            "trial_days": sub_data.get("trial_period_days"),
            "payment_method_collection": params.get("payment_method_collection"),
            "promotion_code": promo_id,
            "automatic_tax": "automatic_tax" in params,
            "tax_id_collection": "tax_id_collection" in params,
        },
        tenant_id=tenant.id,
    )
    return checkout.url


def open_portal(ctx: ActionContext, billing: Billing, tenant: Tenant, email: str | None) -> str:
    """A Stripe Billing Portal session URL for the tenant's customer (created if missing).

    Raises:
        StripeUnavailable: Stripe refused or could not be reached.
    """
    account = ensure_customer(ctx, billing, tenant, email)
    portal = _stripe_call(
        "open the billing portal",
        lambda: billing.client.v1.billing_portal.sessions.create(
            params={"customer": account.stripe_customer_id or "", "return_url": _return_url(billing)}
        ),
    )
    ctx.record(
        AuditAction.BILLING_PORTAL_OPENED,
        target_type="stripe_customer",
        target_id=account.stripe_customer_id,
        tenant_id=tenant.id,
    )
    return portal.url


def sync_checkout(
    ctx: ActionContext, billing: Billing, tenant: Tenant, session_id: str
) -> BillingAccount | None:
    """Apply a completed Checkout Session right away (the return page calls this, so the tenant
    sees its plan before the webhook lands). Idempotent with the webhook.

    Raises:
        NotFound: no such session for this tenant (another tenant's session is a 404 too).
        Conflict ``checkout_incomplete``: the session is not complete yet.
    """
    if not session_id.startswith("cs_") or len(session_id) > 255:
        raise NotFound("No such checkout session.")
    try:
        checkout = plain(billing.client.v1.checkout.sessions.retrieve(session_id))
    except stripe.InvalidRequestError:
        raise NotFound("No such checkout session.") from None
    except stripe.StripeError:
        raise StripeUnavailable("Stripe could not be reached; try again shortly.") from None
    if checkout.get("client_reference_id") != str(tenant.id):
        raise NotFound("No such checkout session.")
    if checkout.get("status") != "complete" or not checkout.get("subscription"):
        raise Conflict("The checkout is not complete yet.", code=ErrorCode.CHECKOUT_INCOMPLETE)
    session = ctx.session
    account = ensure_account(session, tenant.id)
    if not account.stripe_customer_id:
        account.stripe_customer_id = checkout.get("customer")
    sub_id = checkout["subscription"]
    sub_id = sub_id if isinstance(sub_id, str) else sub_id["id"]
    subscription = _stripe_call(
        "read the subscription",
        lambda: billing.client.v1.subscriptions.retrieve(sub_id, params={"expand": SUBSCRIPTION_EXPAND}),
    )
    apply_subscription(
        session, billing, account, plain(subscription), source="checkout_sync", actor=ctx.actor
    )
    return account


# --- applying Stripe state ---------------------------------------------------------------------


def plan_of_price(billing: Billing, price: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """(plan id, interval) of a Stripe price: from the configured price ids, else the price's
    ``metadata.plan``; (None, None) when unknown."""
    if not price:
        return None, None
    found = billing.prices.get(price.get("id", ""))
    if found:
        return found
    meta_plan = (price.get("metadata") or {}).get("plan")
    _, plans = ent.catalogue()
    if meta_plan in plans:
        return meta_plan, (price.get("recurring") or {}).get("interval")
    return None, None


def past_due_start(sub: Mapping[str, Any]) -> datetime | None:
    """When the unpaid invoice behind a ``past_due`` subscription fell due, from Stripe's data:
    the expanded ``latest_invoice``'s ``due_date`` (``send_invoice`` collection), else its
    ``status_transitions.finalized_at`` (``charge_automatically``: the first charge is attempted
    when the invoice is finalized), else its ``created``. None when the invoice is not expanded
    or is not unpaid (https://docs.stripe.com/api/invoices/object).
    """
    invoice = sub.get("latest_invoice")
    if not isinstance(invoice, Mapping) or invoice.get("status") not in ("open", "uncollectible"):
        return None
    transitions = invoice.get("status_transitions") or {}
    return _ts(invoice.get("due_date") or transitions.get("finalized_at") or invoice.get("created"))


def open_invoice_url(sub: Mapping[str, Any]) -> str | None:
    """The hosted page (``hosted_invoice_url``) of the subscription's unpaid latest invoice, when
    it is expanded and ``open``: where the dunning mails send the tenant to pay."""
    invoice = sub.get("latest_invoice")
    if isinstance(invoice, Mapping) and invoice.get("status") == "open":
        url = invoice.get("hosted_invoice_url")
        return url if isinstance(url, str) and url.startswith("https://") else None
    return None


#: expand the latest invoice when reading a subscription (for :func:`past_due_start`)
SUBSCRIPTION_EXPAND = ["latest_invoice"]


def apply_subscription(
    session: Session,
    billing: Billing,
    account: BillingAccount,
    sub: Mapping[str, Any],
    *,
    source: str,
    actor: audit.Actor | None = STRIPE_ACTOR,
    event_id: str | None = None,
) -> bool:
    """Make the tenant's state match a Stripe subscription object; returns whether it changed.

    Maps status to entitlements through :func:`saas.billing.entitlements.compute_entitlements`:
    ``past_due``: the grace period (``BILLING_GRACE_DAYS``) runs from :func:`past_due_start`
    (Stripe's time, so a late event or sync never restarts it); leaving ``past_due`` ends it.
    A terminal subscription other than the tenant's current one is ignored (one subscription per
    tenant; a stale second one never clobbers the live one). Audits ``billing.subscription_changed``
    and invalidates the entitlements cache.
    """
    tenant = session.get(Tenant, account.tenant_id)
    assert tenant is not None
    sub_id = sub["id"]
    status = sub.get("status")
    if account.stripe_subscription_id and account.stripe_subscription_id != sub_id:
        if status in ent.FREE_STATUSES:
            log.info("ignoring terminal subscription %s of tenant %s", sub_id, tenant.id)
            return False
        if account.status not in ent.FREE_STATUSES:
            log.warning("tenant %s has a second live subscription %s; it replaces %s",
                        tenant.id, sub_id, account.stripe_subscription_id)  # fmt: skip
    items = ((sub.get("items") or {}).get("data")) or []
    item = items[0] if items else {}
    plan_id, interval = plan_of_price(billing, item.get("price"))
    if plan_id is None and (sub.get("metadata") or {}).get("plan") in ent.catalogue()[1]:
        plan_id = sub["metadata"]["plan"]
    if plan_id is None:
        log.warning("subscription %s has a price outside the catalogue; default plan applies", sub_id)
    period_start = item.get("current_period_start") or sub.get("current_period_start")
    period_end = item.get("current_period_end") or sub.get("current_period_end")
    before = _snapshot(account)
    now = utcnow()
    # the period as it was (if live) stays registered for usage reporting: when this change
    # moves the period or ends the subscription, its last slice is still to be reported
    keep_usage_period(session, account)
    account.stripe_subscription_id = sub_id
    account.subscription_item_id = item.get("id")
    account.price_id = (item.get("price") or {}).get("id")
    account.plan = plan_id
    account.interval = interval
    account.status = status
    account.quantity = item.get("quantity")
    account.current_period_start = _ts(period_start)
    account.current_period_end = _ts(period_end)
    account.cancel_at_period_end = bool(sub.get("cancel_at_period_end"))
    account.trial_end = _ts(sub.get("trial_end"))
    if status in ent.GRACE_STATUSES:
        # the grace period runs from when Stripe's unpaid invoice fell due, so a late webhook or
        # sync never restarts it; our first sight of past_due only when Stripe's time is unknown
        candidates = [t for t in (past_due_start(sub), account.past_due_since) if t is not None]
        since = min(candidates) if candidates else now  # a second failed invoice never extends it
        account.past_due_since = since
        account.grace_until = since + billing.grace
    else:
        account.past_due_since = None
        account.grace_until = None
    account.open_invoice_url = open_invoice_url(sub) if status in ent.GRACE_STATUSES else None
    if not account.stripe_customer_id and isinstance(sub.get("customer"), str):
        account.stripe_customer_id = sub["customer"]
    account.synced_at = now
    keep_usage_period(session, account)  # the new period is reported from now on
    after = _snapshot(account)
    changed = before != after
    tenant.plan = ent.effective_plan_id(tenant.plan, ent.load_state(session, tenant.id))
    if changed:
        audit.record(
            session,
            AuditAction.BILLING_SUBSCRIPTION_CHANGED,
            target_type="subscription",
            target_id=sub_id,
            data={"from": before, "to": after, "source": source, **({"event": event_id} if event_id else {})},
            actor=actor,
            tenant_id=tenant.id,
        )
        webhook_events.emit(
            session,
            tenant.id,
            "subscription.updated",
            {"subscription": after, "previous": before, "source": source},
        )
    ent.invalidate(session, tenant.id)
    session.flush()
    return changed


def keep_usage_period(session: Session, account: BillingAccount) -> None:
    """Register the account's current subscription period for usage reporting
    (``billing_usage_periods``, see :mod:`saas.billing.usage`) unless it is already there: a
    live subscription (``trialing``, ``active``, ``past_due``) with its period synced and a
    Stripe customer. Its end moves with the subscription's while the period is open."""
    keep_usage_periods(session, [account])


def keep_usage_periods(session: Session, accounts: Iterable[BillingAccount]) -> int:
    """:func:`keep_usage_period` for many accounts in one statement; returns how many periods
    were offered (inserted, or already there)."""
    from sqlalchemy.dialects.postgresql import insert

    from saas.billing.models import UsagePeriod
    from saas.billing.periods import label_of

    rows = [
        {
            "tenant_id": a.tenant_id, "period": label_of(a.current_period_start),
            "starts_at": a.current_period_start, "ends_at": a.current_period_end,
            "stripe_customer_id": a.stripe_customer_id, "reported": 0, "slices": 0, "created_at": utcnow(),
        }
        for a in accounts
        if a.current_period_start is not None
        and a.current_period_end is not None
        and a.current_period_end > a.current_period_start
        and a.stripe_customer_id
        and a.status in (ent.PAID_STATUSES | ent.GRACE_STATUSES)
    ]  # fmt: skip
    if not rows:
        return 0
    table = UsagePeriod.__table__
    stmt = insert(table)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["tenant_id", "period"],
            set_={"ends_at": stmt.excluded.ends_at},
            where=table.c.closed_at.is_(None) & (table.c.ends_at != stmt.excluded.ends_at),
        ),
        rows,
    )
    return len(rows)


def _snapshot(account: BillingAccount) -> dict[str, Any]:
    return {
        "plan": account.plan,
        "status": account.status,
        "quantity": account.quantity,
        "cancel_at_period_end": bool(account.cancel_at_period_end),
        "current_period_end": account.current_period_end.isoformat() if account.current_period_end else None,
    }


def sync_tenant(session: Session, billing: Billing, tenant: Tenant, *, actor: audit.Actor | None) -> str:
    """Reconcile the tenant's state from Stripe (drift repair after missed webhooks).

    Picks the tenant's live subscription (else the newest one) among the customer's, applies
    it, and sets a per-seat subscription's quantity to the active members. Returns a one-word
    outcome: ``no_customer`` | ``no_subscription`` | ``changed`` | ``unchanged``.
    """
    account = get_account(session, tenant.id, lock=True)
    if account is None or not account.stripe_customer_id:
        return "no_customer"
    customer_id = account.stripe_customer_id
    subs = _stripe_call(
        "list subscriptions",
        lambda: billing.client.v1.subscriptions.list(
            params={"customer": customer_id, "status": "all", "limit": 20, "expand": ["data.latest_invoice"]}
        ),
    )
    candidates = [plain(s) for s in subs.data]
    if not candidates:
        return "no_subscription"
    live = [s for s in candidates if s.get("status") not in ent.FREE_STATUSES]
    pick = max(live or candidates, key=lambda s: s.get("created") or 0)
    changed = apply_subscription(session, billing, account, pick, source="sync", actor=actor)
    if (
        account.subscription_item_id
        and ent.plan(account.plan).per_seat
        and account.status in (ent.PAID_STATUSES | ent.GRACE_STATUSES)
    ):
        quantity = max(seats_used(session, tenant.id), 1)
        if quantity != account.quantity:
            item_id = account.subscription_item_id
            _stripe_call("update the seats", lambda: update_quantity(billing, item_id, quantity))
            audit.record(
                session,
                AuditAction.BILLING_SEATS_SYNCED,
                target_type="subscription",
                target_id=account.stripe_subscription_id,
                data={"from": account.quantity, "to": quantity},
                actor=actor,
                tenant_id=tenant.id,
            )
            account.quantity = quantity
            changed = True
    session.flush()
    return "changed" if changed else "unchanged"


def describe(session: Session, tenant: Tenant, api_calls: int | None, period: Period) -> dict[str, Any]:
    """The ``GET /api/v1/billing`` document (also ``saas billing show``): plan, subscription
    status and dates, seats, API calls counted in the tenant's usage ``period``
    (:func:`saas.billing.usage.current_period`), entitlements, the catalogue's ``features``
    (:func:`saas.billing.entitlements.describe_features`) and the Stripe ``customer``'s email,
    address and tax ids as last synced."""
    account = get_account(session, tenant.id)
    entitlements = ent.entitlements_for(tenant)
    live_customer = account is not None and account.stripe_customer_id and not account.customer_deleted_at
    return {
        "plan": entitlements.plan,
        "status": account.status if account and account.stripe_subscription_id else None,
        "current_period_end": account.current_period_end if account else None,
        "cancel_at_period_end": bool(account and account.cancel_at_period_end),
        "trial_end": account.trial_end if account and account.status == "trialing" else None,
        "grace_until": account.grace_until if account else None,
        "open_invoice_url": account.open_invoice_url if account else None,
        "read_only": entitlements.read_only,
        "seats": {"used": seats_used(session, tenant.id), "allowed": entitlements.seats},
        "api_calls": {
            "period": period.label,
            "start": period.start,
            "end": period.end,
            "used": api_calls,
            "allowed": entitlements.monthly_api_calls,
        },
        "entitlements": entitlements.to_dict(),
        "features": ent.describe_features(entitlements),
        "customer": {
            "email": account.customer_email if account and live_customer else None,
            "address": account.customer_address if account and live_customer else None,
            "tax_ids": list(account.customer_tax_ids or []) if account and live_customer else [],
        },
    }


# --- invoices ----------------------------------------------------------------------------------

#: ``starting_after``: a Stripe invoice id
INVOICE_ID_PATTERN = r"^in_[A-Za-z0-9]{1,250}$"


def invoice_view(invoice: Mapping[str, Any]) -> dict[str, Any]:
    """One invoice as ``GET /api/v1/billing/invoices`` lists it. Amounts are integers in the
    currency's smallest unit (cents for ``usd``), as Stripe gives them; times are UTC
    (https://docs.stripe.com/api/invoices/object)."""
    return {
        "id": invoice.get("id"),
        "number": invoice.get("number"),
        "status": invoice.get("status"),
        "currency": invoice.get("currency"),
        "amount_due": invoice.get("amount_due"),
        "amount_paid": invoice.get("amount_paid"),
        "amount_remaining": invoice.get("amount_remaining"),
        "subtotal": invoice.get("subtotal"),
        "total": invoice.get("total"),
        "created": _ts(invoice.get("created")),
        "due_date": _ts(invoice.get("due_date")),
        "period_start": _ts(invoice.get("period_start")),
        "period_end": _ts(invoice.get("period_end")),
        "hosted_invoice_url": invoice.get("hosted_invoice_url"),
        "invoice_pdf": invoice.get("invoice_pdf"),
    }


def list_invoices(
    session: Session, billing: Billing, tenant: Tenant, *, limit: int, starting_after: str | None
) -> dict[str, Any]:
    """A page of the tenant's Stripe invoices, newest first: Stripe ``GET /v1/invoices`` with
    ``customer`` (the tenant's own, never a parameter), ``limit`` (1..100) and ``starting_after``
    (the last id of the previous page; https://docs.stripe.com/api/pagination). Returns
    ``{"data": [...], "has_more": bool, "next_starting_after": id | None}``; a tenant without a
    Stripe customer has no invoices (no call).

    Raises:
        ValidationError: 422 on ``starting_after`` when Stripe does not know that invoice in this
        customer's list (another tenant's id included: nothing of it is shown).
        StripeUnavailable: Stripe could not be reached.
    """
    account = get_account(session, tenant.id)
    if account is None or not account.stripe_customer_id or account.customer_deleted_at is not None:
        return {"data": [], "has_more": False, "next_starting_after": None}
    customer_id = account.stripe_customer_id
    params: dict[str, Any] = {"customer": customer_id, "limit": limit}
    if starting_after:
        params["starting_after"] = starting_after
    try:
        page = billing.client.v1.invoices.list(params=params)  # type: ignore[arg-type]
    except stripe.InvalidRequestError:
        raise ValidationError({"starting_after": ["No such invoice in this tenant's list."]}) from None
    except stripe.StripeError as exc:
        log.warning("stripe list invoices failed: %s", exc.__class__.__name__)
        raise StripeUnavailable("Stripe could not list the invoices; try again shortly.") from None
    invoices = [plain(i) for i in page.data]
    mine = [i for i in invoices if _customer_id(i.get("customer")) == customer_id]  # never another's
    return {
        "data": [invoice_view(i) for i in mine],
        "has_more": bool(page.has_more),
        "next_starting_after": invoices[-1]["id"] if page.has_more and invoices else None,
    }


def _customer_id(value: Any) -> str | None:
    return value if isinstance(value, str) or value is None else value.get("id")


__all__ = [
    "STRIPE_API_VERSION",
    "AppError",
    "Billing",
    "BillingNotConfigured",
    "StripeUnavailable",
    "apply_subscription",
    "check_seat_available",
    "current_billing",
    "find_promotion_code",
    "list_invoices",
    "members_changed",
    "start_checkout",
    "sync_checkout",
    "sync_tenant",
]
