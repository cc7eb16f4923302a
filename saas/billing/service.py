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
import logging
import time
import uuid
from collections.abc import Callable, Mapping
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


def start_checkout(
    ctx: ActionContext, billing: Billing, tenant: Tenant, email: str | None, plan_id: str, interval: str
) -> str:
    """A Stripe Checkout Session (mode ``subscription``) for ``plan_id``; returns its URL.

    ``client_reference_id`` is the tenant id; the idempotency key covers tenant, price, quantity
    and the hour, so a double click returns the same session.

    Raises:
        ValidationError: unknown plan or interval. Conflict ``subscription_exists``: the tenant
        already has a live subscription (change it in the portal). StripeUnavailable.
    """
    session = ctx.session
    price = billing.price_for(plan_id, interval)
    account = ensure_customer(ctx, billing, tenant, email)
    if account.stripe_subscription_id and account.status in (ent.PAID_STATUSES | ent.GRACE_STATUSES):
        raise Conflict(
            "This tenant already has a subscription; change it in the billing portal.",
            code=ErrorCode.SUBSCRIPTION_EXISTS,
        )
    quantity = max(seats_used(session, tenant.id), 1) if ent.plan(plan_id).per_seat else 1
    base = _return_url(billing)
    key_material = f"{tenant.id}:{price}:{quantity}:{int(time.time() // 3600)}"
    params: dict[str, Any] = {
        "mode": "subscription",
        "customer": account.stripe_customer_id,
        "client_reference_id": str(tenant.id),
        "line_items": [{"price": price, "quantity": quantity}],
        "success_url": base + "/return?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": base + "/cancel",
        "metadata": {"tenant_id": str(tenant.id), "plan": plan_id},
        "subscription_data": {"metadata": {"tenant_id": str(tenant.id), "plan": plan_id}},
    }
    checkout = _stripe_call(
        "start checkout",
        lambda: billing.client.v1.checkout.sessions.create(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": "checkout-" + hashlib.sha256(key_material.encode()).hexdigest()[:32]},
        ),
    )
    ctx.record(
        AuditAction.BILLING_CHECKOUT_STARTED,
        target_type="checkout_session",
        target_id=checkout.id,
        data={"plan": plan_id, "interval": interval, "quantity": quantity},
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
    period_end = item.get("current_period_end") or sub.get("current_period_end")
    before = _snapshot(account)
    now = utcnow()
    account.stripe_subscription_id = sub_id
    account.subscription_item_id = item.get("id")
    account.price_id = (item.get("price") or {}).get("id")
    account.plan = plan_id
    account.interval = interval
    account.status = status
    account.quantity = item.get("quantity")
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
    if not account.stripe_customer_id and isinstance(sub.get("customer"), str):
        account.stripe_customer_id = sub["customer"]
    account.synced_at = now
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


def describe(session: Session, tenant: Tenant, api_calls: int | None, period: str) -> dict[str, Any]:
    """The ``GET /api/v1/billing`` document (also ``saas billing show``)."""
    account = get_account(session, tenant.id)
    entitlements = ent.entitlements_for(tenant)
    return {
        "plan": entitlements.plan,
        "status": account.status if account and account.stripe_subscription_id else None,
        "current_period_end": account.current_period_end if account else None,
        "cancel_at_period_end": bool(account and account.cancel_at_period_end),
        "grace_until": account.grace_until if account else None,
        "read_only": entitlements.read_only,
        "seats": {"used": seats_used(session, tenant.id), "allowed": entitlements.seats},
        "api_calls": {"period": period, "used": api_calls, "allowed": entitlements.monthly_api_calls},
        "entitlements": entitlements.to_dict(),
    }


__all__ = [
    "STRIPE_API_VERSION",
    "AppError",
    "Billing",
    "BillingNotConfigured",
    "StripeUnavailable",
    "apply_subscription",
    "check_seat_available",
    "current_billing",
    "members_changed",
    "start_checkout",
    "sync_checkout",
    "sync_tenant",
]
