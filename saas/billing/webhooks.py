"""Stripe webhooks: verified, stored once, applied exactly once and in an order-proof way.

* **Authentic**: ``Stripe-Signature`` is checked on the raw body with each configured secret
  (``STRIPE_WEBHOOK_SECRET`` holds several during a rotation) by
  ``stripe.WebhookSignature.verify_header`` with a 300 s tolerance; a timestamp more than
  :data:`FUTURE_TOLERANCE_SECONDS` ahead of our clock is refused too (the library accepts it).
  https://docs.stripe.com/webhooks#verify-events
* **Exactly once**: the event is inserted under its unique id (``INSERT ... ON CONFLICT DO
  NOTHING``) and its row locked (``SELECT ... FOR UPDATE``) in the same transaction as its
  effect. A concurrent duplicate waits on the unique index or the lock and then finds the event
  processed: a 200 no-op.
* **Order-proof**: handlers never trust the (possibly stale) object in the payload: they
  re-fetch the subscription from Stripe and apply its current state; and an event older than
  the newest one applied to that subscription (``billing_accounts.last_event_created``) is
  skipped without a call.
* **No partial effect**: the effect runs in a savepoint; on error it is rolled back, the event
  is marked ``failed`` with the error, and the answer is 500 so Stripe retries
  (https://docs.stripe.com/webhooks#retries). ``saas billing replay`` re-runs one by hand.
* **Side effects once per event id**: an audit row or mail an event causes (invoice audits,
  the trial-end mail, customer audits) carries the event id and is written only while the
  event is not yet ``processed``: ``saas billing replay`` of a processed event re-applies state
  but never writes them twice (a failed attempt's effects were rolled back, so its replay does).
* ``customer.updated|deleted`` are guarded like subscriptions: an event older than the newest
  customer event applied (``billing_accounts.customer_event_created``) is skipped; on a tie
  (same second) the customer is re-fetched from Stripe.
* ``customer.tax_id.created|updated|deleted`` re-fetch the customer's tax ids from Stripe (so
  their order does not matter); ``customer.updated`` keeps the email and address.
* ``invoice.payment_failed`` queues the dunning mail (:mod:`saas.billing.dunning`) once per
  event, from Stripe's live invoice, while that invoice is still ``open``.
* Unknown types are stored as ``ignored`` and answered 200.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from saas import audit, outbox
from saas.audit import AuditAction
from saas.billing import dunning
from saas.billing import entitlements as ent
from saas.billing.models import BillingAccount, WebhookEvent
from saas.billing.service import (
    STRIPE_ACTOR,
    SUBSCRIPTION_EXPAND,
    Billing,
    account_for_customer,
    apply_subscription,
    ensure_account,
    get_account,
    plain,
)
from saas.db import Database, utcnow
from saas.errors import AppError, BadRequest, ErrorCode
from saas.identity.models import Tenant

log = logging.getLogger("saas.billing.webhooks")

TOLERANCE_SECONDS = 300
FUTURE_TOLERANCE_SECONDS = 300

HANDLED_TYPES = (
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.payment_action_required",
    "customer.updated",
    "customer.deleted",
    "customer.tax_id.created",
    "customer.tax_id.updated",
    "customer.tax_id.deleted",
)


class InvalidSignature(BadRequest):
    code, title = ErrorCode.INVALID_SIGNATURE, "Invalid webhook signature"


class WebhookProcessingFailed(AppError):
    status, code, title = 500, ErrorCode.WEBHOOK_PROCESSING_FAILED, "Webhook processing failed"


def verify(billing: Billing, payload: bytes, header: str | None, now: float | None = None) -> dict[str, Any]:
    """Verify ``Stripe-Signature`` over the raw ``payload``; return the event as plain JSON.

    Raises:
        InvalidSignature: missing or malformed header, no secret matches, timestamp older than
        300 s or more than 300 s in the future, a body that is not UTF-8, or one that is not a
        Stripe event.
    """
    now = time.time() if now is None else now
    if not header:
        raise InvalidSignature("The Stripe-Signature header is missing.")
    if not header.isascii():  # the library's compare_digest raises TypeError on non-ASCII (a 500)
        raise InvalidSignature("The Stripe-Signature header is malformed.")
    try:
        timestamp = int(next(p.split("=", 1)[1] for p in header.split(",") if p.strip().startswith("t=")))
    except (StopIteration, ValueError, IndexError):
        raise InvalidSignature("The Stripe-Signature header is malformed.") from None
    if timestamp > now + FUTURE_TOLERANCE_SECONDS:
        raise InvalidSignature("The signature's timestamp is in the future.")
    if timestamp < now - TOLERANCE_SECONDS:
        raise InvalidSignature("The signature's timestamp is too old.")
    try:
        # Stripe sends UTF-8 JSON; the library decodes the body itself and would raise
        # UnicodeDecodeError (a 500) on anything else
        payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSignature("The body is not UTF-8.") from None
    for secret in billing.settings.stripe_webhook_secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, TOLERANCE_SECONDS)
            break
        except stripe.SignatureVerificationError:
            continue
    else:
        raise InvalidSignature("No signature matches a configured webhook secret.")
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        raise InvalidSignature("The body is not JSON.") from None
    if (
        not isinstance(data, dict)
        or data.get("object") != "event"
        or not str(data.get("id", "")).startswith("evt_")
        or not isinstance(data.get("type"), str)
        or not isinstance(data.get("created"), int)
        or not isinstance((data.get("data") or {}).get("object"), dict)
    ):
        raise InvalidSignature("The body is not a Stripe event.")
    return data


@dataclass
class Outcome:
    """What became of one delivery: ``status`` processed | ignored | duplicate | failed."""

    event_id: str
    status: str
    detail: str | None = None


def receive(database: Database, billing: Billing, event: Mapping[str, Any]) -> Outcome:
    """Store and apply a verified event exactly once, in one transaction.

    Raises:
        WebhookProcessingFailed: the effect failed; it was rolled back and the event is stored
        as ``failed`` (committed), so a retry or ``saas billing replay`` can apply it.
    """
    from saas.observability import metrics

    try:
        outcome = _run(database, billing, event["id"], event, replay=False)
    except WebhookProcessingFailed:
        metrics.webhook_event(str(event.get("type")), "failed")
        raise
    metrics.webhook_event(str(event.get("type")), outcome.status)
    return outcome


def replay(database: Database, billing: Billing, event_id: str) -> Outcome:
    """Apply a stored event again (operator repair). Handlers re-fetch live state from Stripe,
    so replaying an old event never regresses newer state.

    Raises:
        KeyError: no such stored event. WebhookProcessingFailed: as :func:`receive`.
    """
    return _run(database, billing, event_id, None, replay=True)


def _run(
    database: Database, billing: Billing, event_id: str, event: Mapping[str, Any] | None, *, replay: bool
) -> Outcome:
    failure: str | None = None
    with database.transaction() as session:
        if event is not None:
            session.execute(
                insert(WebhookEvent.__table__)
                .values(
                    id=event["id"],
                    type=event["type"],
                    created=datetime.fromtimestamp(event["created"], UTC),
                    livemode=bool(event.get("livemode")),
                    payload=dict(event),
                    status="received",
                    attempts=0,
                    received_at=utcnow(),
                )
                .on_conflict_do_nothing(index_elements=["id"])
            )
        row = session.scalars(
            select(WebhookEvent).where(WebhookEvent.id == event_id).with_for_update()
        ).first()
        if row is None:
            raise KeyError(event_id)
        if row.status in ("processed", "ignored") and not replay:
            return Outcome(event_id, "duplicate")
        effects_done = row.status == "processed"  # committed with it; a failure rolled them back
        row.attempts += 1
        try:
            with session.begin_nested():
                status, tenant_id, detail = process(
                    session, billing, row.payload, replay=replay, effects_done=effects_done
                )
        except Exception as exc:
            log.exception("stripe event %s (%s) failed", row.id, row.type)
            failure = f"{exc.__class__.__name__}: {exc}"[:2000]
            row.status = "failed"
            row.error = failure
        else:
            row.status = status
            row.error = detail
            row.tenant_id = tenant_id
            row.processed_at = utcnow()
        outcome = Outcome(event_id, row.status, row.error)
    if failure is not None:
        raise WebhookProcessingFailed("The event could not be applied; it will be retried.")
    return outcome


# --- handlers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """How an event is being applied: ``replay`` by an operator; ``effects_done``: an earlier
    run already committed its one-time side effects (audit rows, mails), so skip them."""

    replay: bool = False
    effects_done: bool = False


Handler = Callable[[Session, Billing, Mapping[str, Any], Delivery], tuple[str, uuid.UUID | None, str | None]]


def process(
    session: Session,
    billing: Billing,
    event: Mapping[str, Any],
    *,
    replay: bool = False,
    effects_done: bool = False,
) -> tuple[str, uuid.UUID | None, str | None]:
    """Apply one event; returns (status, tenant id, note). Raises on any failure.

    ``effects_done``: the event was processed before; its one-time side effects are skipped.
    """
    handler = HANDLERS.get(event["type"])
    if handler is None:
        return "ignored", None, "unhandled event type"
    live_key = (billing.settings.stripe_secret_key or "").startswith(("sk_live_", "rk_live_"))
    if bool(event.get("livemode")) != live_key:
        return "ignored", None, "livemode does not match the API key's mode"
    return handler(session, billing, event, Delivery(replay, effects_done))


def _tenant_account(
    session: Session, customer: Any, metadata: Mapping[str, Any] | None = None, reference: Any = None
) -> BillingAccount | None:
    """The (locked) account of the event's customer; else of the tenant named by our own
    ``client_reference_id`` / ``metadata.tenant_id`` (set at checkout; the event is signed)."""
    customer_id = customer if isinstance(customer, str) else (customer or {}).get("id")
    if customer_id:
        account = account_for_customer(session, customer_id, lock=True)
        if account is not None:
            return account
    raw = reference or (metadata or {}).get("tenant_id")
    try:
        tenant_id = uuid.UUID(str(raw)) if raw else None
    except ValueError:
        tenant_id = None
    if tenant_id is None or session.get(Tenant, tenant_id) is None:
        return None
    account = ensure_account(session, tenant_id)
    if account.stripe_customer_id and customer_id and account.stripe_customer_id != customer_id:
        return None  # a customer we did not create for this tenant
    if customer_id and not account.stripe_customer_id:
        account.stripe_customer_id = customer_id
    return account


def _stale(account: BillingAccount, sub_id: str, created: int) -> bool:
    return (
        account.stripe_subscription_id == sub_id
        and account.last_event_created is not None
        and created < account.last_event_created
    )


def _apply_live_subscription(
    session: Session,
    billing: Billing,
    account: BillingAccount,
    sub_id: str,
    event: Mapping[str, Any],
    replay: bool,
) -> tuple[str, uuid.UUID | None, str | None]:
    created = int(event["created"])
    if not replay and _stale(account, sub_id, created):
        return "processed", account.tenant_id, "stale: a newer event was already applied"
    subscription = plain(
        billing.client.v1.subscriptions.retrieve(sub_id, params={"expand": SUBSCRIPTION_EXPAND})
    )
    apply_subscription(session, billing, account, subscription, source=event["type"], event_id=event["id"])
    if account.stripe_subscription_id == sub_id:
        account.last_event_created = max(account.last_event_created or 0, created)
        account.last_event_id = event["id"]
    session.flush()
    return "processed", account.tenant_id, None


def _on_subscription(session: Session, billing: Billing, event: Mapping[str, Any], d: Delivery):
    sub = event["data"]["object"]
    account = _tenant_account(session, sub.get("customer"), sub.get("metadata"))
    if account is None:
        return "ignored", None, "no tenant for this customer"
    result = _apply_live_subscription(session, billing, account, sub["id"], event, d.replay)
    if event["type"] == "customer.subscription.trial_will_end" and not d.effects_done:
        tenant = session.get(Tenant, account.tenant_id)
        assert tenant is not None
        audit.record(
            session,
            AuditAction.BILLING_TRIAL_WILL_END,
            target_type="subscription",
            target_id=sub["id"],
            data={"trial_end": sub.get("trial_end"), "event": event["id"]},
            actor=STRIPE_ACTOR,
            tenant_id=tenant.id,
        )
        # event_id: the mail handler's idempotency key (one mail per event, even if re-queued)
        mail = {"tenant": tenant.slug, "trial_end": sub.get("trial_end"), "event_id": event["id"]}
        outbox.enqueue(session, "mail.trial_will_end", mail, tenant_id=tenant.id)
    return result


def _on_checkout_completed(session: Session, billing: Billing, event: Mapping[str, Any], d: Delivery):
    checkout = event["data"]["object"]
    if checkout.get("mode") != "subscription" or not checkout.get("subscription"):
        return "ignored", None, "not a subscription checkout"
    account = _tenant_account(session, checkout.get("customer"), checkout.get("metadata"),
                              checkout.get("client_reference_id"))  # fmt: skip
    if account is None:
        return "ignored", None, "no tenant for this checkout"
    sub_id = (
        checkout["subscription"]
        if isinstance(checkout["subscription"], str)
        else checkout["subscription"]["id"]
    )
    return _apply_live_subscription(session, billing, account, sub_id, event, d.replay)


def _invoice_subscription(invoice: Mapping[str, Any]) -> str | None:
    # API >= 2025-03-31: invoice.parent.subscription_details.subscription; before: invoice.subscription
    details = ((invoice.get("parent") or {}).get("subscription_details")) or {}
    sub = details.get("subscription") or invoice.get("subscription")
    return sub if isinstance(sub, str) or sub is None else sub.get("id")


def _on_invoice(session: Session, billing: Billing, event: Mapping[str, Any], d: Delivery):
    invoice = event["data"]["object"]
    account = _tenant_account(session, invoice.get("customer"))
    if account is None:
        return "ignored", None, "no tenant for this customer"
    tenant = session.get(Tenant, account.tenant_id)
    assert tenant is not None
    action = {
        "invoice.paid": AuditAction.BILLING_INVOICE_PAID,
        "invoice.payment_failed": AuditAction.BILLING_PAYMENT_FAILED,
        "invoice.payment_action_required": AuditAction.BILLING_PAYMENT_ACTION_REQUIRED,
    }[event["type"]]
    if event["type"] == "invoice.payment_failed" and not d.effects_done:
        _dun(session, billing, tenant, invoice, event["id"])
    if not d.effects_done:
        audit.record(
            session,
            action,
            target_type="invoice",
            target_id=invoice.get("id"),
            data={
                **{
                    k: invoice.get(k)
                    for k in ("amount_due", "amount_paid", "currency", "attempt_count", "hosted_invoice_url")
                },
                "event": event["id"],
            },
            actor=STRIPE_ACTOR,
            tenant_id=tenant.id,
        )
    sub_id = _invoice_subscription(invoice)
    if sub_id:
        return _apply_live_subscription(session, billing, account, sub_id, event, d.replay)
    return "processed", account.tenant_id, None


def _dun(
    session: Session, billing: Billing, tenant: Tenant, invoice: Mapping[str, Any], event_id: str
) -> None:
    """Queue the payment-failed mail, from Stripe's live invoice (order-proof: an invoice paid
    or voided since this event was sent gets no mail; one Stripe no longer has gets none either)."""
    invoice_id = invoice.get("id")
    if not isinstance(invoice_id, str) or not invoice_id.startswith("in_"):
        return
    try:
        live = plain(billing.client.v1.invoices.retrieve(invoice_id))
    except stripe.InvalidRequestError:
        log.warning("invoice %s of a payment_failed event is unknown to Stripe; no mail", invoice_id)
        return
    if live.get("status") == "open":
        dunning.queue_payment_failed(session, tenant, live, event_id)


def _address(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    keys = ("line1", "line2", "postal_code", "city", "state", "country")
    address = {k: value.get(k) for k in keys if isinstance(value.get(k), str)}
    return address or None


def _tax_ids(listing: Any) -> list[dict[str, Any]]:
    """A customer's tax ids as kept in ``billing_accounts.customer_tax_ids``, oldest first."""
    rows = []
    for tax_id in sorted((plain(t) for t in listing), key=lambda t: (t.get("created") or 0, t.get("id"))):
        verification = tax_id.get("verification") or {}
        rows.append(
            {
                "id": tax_id.get("id"),
                "type": tax_id.get("type"),
                "value": tax_id.get("value"),
                "country": tax_id.get("country"),
                "verification": verification.get("status") if isinstance(verification, Mapping) else None,
            }
        )
    return rows


def _on_tax_id(session: Session, billing: Billing, event: Mapping[str, Any], d: Delivery):
    """``customer.tax_id.created|updated|deleted``: the customer's tax ids as Stripe has them
    now (re-fetched, ``GET /v1/customers/{id}/tax_ids``: order-proof), audited when changed."""
    tax_id = event["data"]["object"]
    # ``customer`` (older versions) or ``owner.customer`` (https://docs.stripe.com/api/tax_ids/object)
    customer_id = tax_id.get("customer") or ((tax_id.get("owner") or {}).get("customer"))
    customer_id = customer_id if isinstance(customer_id, str) else (customer_id or {}).get("id")
    account = account_for_customer(session, customer_id, lock=True) if customer_id else None
    if account is None:
        return "ignored", None, "no tenant for this customer"
    if account.customer_deleted_at is not None:
        return "processed", account.tenant_id, "customer deleted"
    listing = billing.client.v1.customers.tax_ids.list(customer_id, params={"limit": 100})
    before = list(account.customer_tax_ids or [])
    after = _tax_ids(listing.data)
    if before == after:
        return "processed", account.tenant_id, "no change"
    account.customer_tax_ids = after
    if not d.effects_done:
        audit.record(
            session,
            AuditAction.BILLING_CUSTOMER_TAX_IDS_CHANGED,
            target_type="stripe_customer",
            target_id=customer_id,
            data={
                "from": [f"{t['type']}:{t['value']}" for t in before],
                "to": [f"{t['type']}:{t['value']}" for t in after],
                "event": event["id"],
            },
            actor=STRIPE_ACTOR,
            tenant_id=account.tenant_id,
        )
    ent.invalidate(session, account.tenant_id)
    return "processed", account.tenant_id, None


def _on_customer(session: Session, billing: Billing, event: Mapping[str, Any], d: Delivery):
    customer = event["data"]["object"]
    account = account_for_customer(session, customer["id"], lock=True)
    if account is None:
        return "ignored", None, "no tenant for this customer"
    tenant = session.get(Tenant, account.tenant_id)
    assert tenant is not None
    created = int(event["created"])
    last = account.customer_event_created
    if last is not None and created < last:
        return "processed", account.tenant_id, "stale: a newer customer event was already applied"
    account.customer_event_created = max(last or 0, created)
    if event["type"] == "customer.deleted":
        if account.customer_deleted_at is not None:
            return "processed", account.tenant_id, "no change"
        account.customer_deleted_at = utcnow()
        action, data = AuditAction.BILLING_CUSTOMER_DELETED, {}
    else:
        if last is not None and created == last:
            # same second as the newest applied: order unknown, so take Stripe's current customer
            live = plain(billing.client.v1.customers.retrieve(customer["id"]))
            if live.get("deleted"):
                return "processed", account.tenant_id, "customer deleted at Stripe"
            customer = live
        old, old_address = account.customer_email, account.customer_address
        account.customer_email = customer.get("email")
        account.customer_address = _address(customer.get("address"))
        data = {}
        if old != account.customer_email:
            data["email"] = {"from": old, "to": account.customer_email}
        if old_address != account.customer_address:
            data["address"] = {"from": old_address, "to": account.customer_address}
        if not data:
            return "processed", account.tenant_id, "no change"
        action = AuditAction.BILLING_CUSTOMER_UPDATED
    if not d.effects_done:
        audit.record(
            session,
            action,
            target_type="stripe_customer",
            target_id=customer["id"],
            data={**data, "event": event["id"]},
            actor=STRIPE_ACTOR,
            tenant_id=tenant.id,
        )
    ent.invalidate(session, tenant.id)
    return "processed", account.tenant_id, None


HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": _on_checkout_completed,
    **{t: _on_subscription for t in HANDLED_TYPES if t.startswith("customer.subscription.")},
    "invoice.paid": _on_invoice,
    "invoice.payment_failed": _on_invoice,
    "invoice.payment_action_required": _on_invoice,
    "customer.updated": _on_customer,
    "customer.deleted": _on_customer,
    "customer.tax_id.created": _on_tax_id,
    "customer.tax_id.updated": _on_tax_id,
    "customer.tax_id.deleted": _on_tax_id,
}

__all__ = ["HANDLED_TYPES", "Outcome", "get_account", "receive", "replay", "verify"]
