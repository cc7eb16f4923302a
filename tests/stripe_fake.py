"""A local HTTP server speaking the parts of the Stripe API the billing code uses, so the real
``stripe`` SDK runs end to end in tests and benchmarks (fakes only at the network edge).

Objects are shaped after Stripe's published fixtures (stripe/openapi ``fixtures3.json``) for API
versions >= 2025-03-31 (billing period fields on subscription items). Requests are form-encoded
with bracketed keys, as the SDK sends them; ``Idempotency-Key`` replays the first answer; a
missing or malformed key is a 401 like Stripe's.

Test helpers act as Stripe's side: :meth:`FakeStripe.complete_checkout`,
:meth:`FakeStripe.update_subscription`, :meth:`FakeStripe.renew` (the next billing period),
:meth:`FakeStripe.metered` (what the meter bills a customer for a period),
:meth:`FakeStripe.add_promotion_code`,
:meth:`FakeStripe.add_invoice`, :meth:`FakeStripe.add_tax_id`, :meth:`FakeStripe.event` (an
event envelope) and :func:`sign` (``Stripe-Signature`` exactly as Stripe computes it).

Checkout Sessions are checked the way Stripe checks them where the billing code depends on it:
``allow_promotion_codes`` and ``discounts`` are exclusive, a discount's promotion code must be
active (and the customer's, when restricted), ``tax_id_collection`` on an existing customer
needs ``customer_update[name]=auto`` and ``automatic_tax`` needs ``customer_update[address]=auto``
(or an address on the customer), ``payment_method_collection`` is ``always`` | ``if_required``
and ``subscription_data[trial_period_days]`` is 1..730.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def decode_form(body: str) -> dict[str, Any]:
    """Decode Stripe's form encoding (``a[b][0][c]=v``) into nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+|\[\]", key)
        node = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _lists(root)


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _lists(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
    return node


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe would send for ``payload``."""
    return stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp)


class FakeStripe:
    """State and server. ``requests`` records (method, path, params, headers) of every call."""

    def __init__(self, prices: dict[str, dict[str, Any]]):
        self.prices = prices  # price id -> {"interval": ..., "unit_amount": ...}
        self.customers: dict[str, dict] = {}
        self.sessions: dict[str, dict] = {}
        self.subscriptions: dict[str, dict] = {}
        self.items: dict[str, dict] = {}
        self.invoices: dict[str, dict] = {}
        self.promotion_codes: dict[str, dict] = {}
        self.tax_ids: dict[str, dict] = {}
        self.meter_events: list[dict] = []
        self.requests: list[tuple[str, str, dict, dict]] = []
        self.idempotent: dict[str, tuple[int, dict]] = {}
        self.fail_paths: dict[str, int] = {}  # path prefix -> failures left (503)
        self.delay_seconds = 0.0  # added to GET /v1/subscriptions/... (widens race windows)
        self.meter_delay_seconds = 0.0  # added to POST /v1/billing/meter_events (likewise)
        #: Stripe's clock (unix seconds): meter event timestamps are checked against it
        self.clock = time.time
        #: how long Stripe refuses a meter event identifier it has seen ("at least 24 hours")
        self.dedupe_seconds = 24 * 3600
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    # --- server ---------------------------------------------------------------------------------

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms delayed-ACK stall)

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                url = urlsplit(self.path)
                params = decode_form(body or url.query)
                status, payload, extra = fake.dispatch(self.command, url.path, params, dict(self.headers))
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.send_header("Request-Id", _id("req"))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            for store in (self.customers, self.sessions, self.subscriptions, self.items, self.idempotent,
                          self.fail_paths, self.invoices, self.promotion_codes, self.tax_ids):  # fmt: skip
                store.clear()
            self.meter_events.clear()
            self.requests.clear()
            self.delay_seconds = self.meter_delay_seconds = 0.0
            self.clock = time.time

    def calls(self, method: str, prefix: str) -> list[dict]:
        return [p for m, path, p, _ in self.requests if m == method and path.startswith(prefix)]

    # --- routing --------------------------------------------------------------------------------

    def dispatch(self, method: str, path: str, params: dict, headers: dict) -> tuple[int, dict, dict]:
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer sk_test_"):
            return 401, _error("invalid_request_error", "Invalid API Key provided.", None), {}
        if self.delay_seconds and method == "GET" and path.startswith("/v1/subscriptions/"):
            time.sleep(self.delay_seconds)
        if self.meter_delay_seconds and path == "/v1/billing/meter_events":
            time.sleep(self.meter_delay_seconds)
        with self.lock:
            self.requests.append((method, path, params, headers))
            for prefix, left in list(self.fail_paths.items()):
                if path.startswith(prefix) and left > 0:
                    self.fail_paths[prefix] = left - 1
                    return (
                        503,
                        _error("api_error", "Simulated outage.", None),
                        {"Stripe-Should-Retry": "false"},
                    )
            key = headers.get("Idempotency-Key")
            if method == "POST" and key and key in self.idempotent:
                status, body = self.idempotent[key]
                return status, body, {"Idempotent-Replayed": "true"}
            status, body = self._route(method, path, params)
            if method == "POST" and key:
                self.idempotent[key] = (status, body)
            return status, body, {}

    def _route(self, method: str, path: str, p: dict) -> tuple[int, dict]:
        routes = [
            ("POST", r"/v1/customers", self._create_customer),
            ("GET", r"/v1/customers/(?P<id>[^/]+)", lambda p, id: self._get(self.customers, id, "customer")),
            ("GET", r"/v1/customers/(?P<id>[^/]+)/tax_ids", self._list_tax_ids),
            ("GET", r"/v1/promotion_codes", self._list_promotion_codes),
            ("GET", r"/v1/invoices", self._list_invoices),
            ("GET", r"/v1/invoices/(?P<id>[^/]+)", lambda p, id: self._get(self.invoices, id, "invoice")),
            ("POST", r"/v1/checkout/sessions", self._create_session),
            (
                "GET",
                r"/v1/checkout/sessions/(?P<id>[^/]+)",
                lambda p, id: self._get(self.sessions, id, "session"),
            ),
            ("POST", r"/v1/billing_portal/sessions", self._create_portal),
            ("GET", r"/v1/subscriptions", self._list_subscriptions),
            ("GET", r"/v1/subscriptions/(?P<id>[^/]+)", self._get_subscription),
            ("POST", r"/v1/subscriptions/(?P<id>[^/]+)", self._update_subscription),
            ("DELETE", r"/v1/subscriptions/(?P<id>[^/]+)", self._cancel_subscription),
            ("POST", r"/v1/subscription_items/(?P<id>[^/]+)", self._update_item),
            ("POST", r"/v1/billing/meter_events", self._meter_event),
        ]
        for m, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if m == method and match:
                return handler(p, **match.groupdict())
        return 404, _error("invalid_request_error", f"Unrecognized request URL ({method}: {path}).", None)

    def _get(self, store: dict, id: str, what: str) -> tuple[int, dict]:
        if id not in store:
            return 404, _error("invalid_request_error", f"No such {what}: '{id}'", "id", "resource_missing")
        return 200, store[id]

    def _create_customer(self, p: dict) -> tuple[int, dict]:
        cus = {
            "id": _id("cus"), "object": "customer", "address": None, "balance": 0,
            "created": int(time.time()), "currency": None, "default_source": None, "delinquent": False,
            "description": None,
            "email": p.get("email"), "invoice_prefix": secrets.token_hex(4).upper(),
            "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None},
            "livemode": False, "metadata": p.get("metadata") or {}, "name": p.get("name"),
            "preferred_locales": [], "shipping": None, "tax_exempt": "none", "test_clock": None,
        }  # fmt: skip
        self.customers[cus["id"]] = cus
        return 200, cus

    def _create_session(self, p: dict) -> tuple[int, dict]:
        if p.get("mode") != "subscription" or not p.get("line_items"):
            return 400, _error("invalid_request_error", "Missing required param: line_items.", "line_items")
        for item in p["line_items"]:
            if item.get("price") not in self.prices:
                return 400, _error("invalid_request_error", f"No such price: '{item.get('price')}'",
                                   "line_items[0][price]", "resource_missing")  # fmt: skip
        refused = self._check_session(p)
        if refused is not None:
            return refused
        sid = "cs_test_" + secrets.token_hex(20)
        session = {
            "id": sid, "object": "checkout.session", "mode": "subscription", "status": "open",
            "payment_status": "unpaid", "url": f"https://checkout.stripe.com/c/pay/{sid}",
            "customer": p.get("customer"), "client_reference_id": p.get("client_reference_id"),
            "subscription": None, "metadata": p.get("metadata") or {}, "success_url": p.get("success_url"),
            "cancel_url": p.get("cancel_url"), "livemode": False, "created": int(time.time()),
            "expires_at": int(time.time()) + 86400,
            "_line_items": p["line_items"], "_subscription_data": p.get("subscription_data") or {},
            "allow_promotion_codes": p.get("allow_promotion_codes") == "true" or None,
            "discounts": p.get("discounts") or [],
            "automatic_tax": {"enabled": (p.get("automatic_tax") or {}).get("enabled") == "true",
                              "liability": None, "status": None},
            "tax_id_collection": {"enabled": (p.get("tax_id_collection") or {}).get("enabled") == "true"},
            "customer_update": p.get("customer_update"),
            "payment_method_collection": p.get("payment_method_collection") or "always",
        }  # fmt: skip
        self.sessions[sid] = session
        return 200, _public(session)

    def _check_session(self, p: dict) -> tuple[int, dict] | None:
        def bad(message: str, param: str, code: str | None = None) -> tuple[int, dict]:
            return 400, _error("invalid_request_error", message, param, code)

        if p.get("allow_promotion_codes") == "true" and p.get("discounts"):
            return bad("You may only specify one of these parameters: allow_promotion_codes, discounts.",
                       "allow_promotion_codes")  # fmt: skip
        for i, discount in enumerate(p.get("discounts") or []):
            promo = self.promotion_codes.get(discount.get("promotion_code", ""))
            if promo is None or not promo["active"]:
                return bad(f"No such promotion code: '{discount.get('promotion_code')}'",
                           f"discounts[{i}][promotion_code]", "resource_missing")  # fmt: skip
            if promo["customer"] not in (None, p.get("customer")):
                return bad("This promotion code cannot be redeemed by this customer.",
                           f"discounts[{i}][promotion_code]")  # fmt: skip
        update = p.get("customer_update") or {}
        customer = self.customers.get(p.get("customer") or "")
        tax_ids_on = (p.get("tax_id_collection") or {}).get("enabled") == "true"
        if tax_ids_on and customer and update.get("name") != "auto":
            return bad("tax_id_collection requires updating business name on the customer. To enable tax id "
                       "collection for an existing customer, please set `customer_update[name]` to `auto`.",
                       "tax_id_collection[enabled]")  # fmt: skip
        if (
            (p.get("automatic_tax") or {}).get("enabled") == "true"
            and customer
            and not customer.get("address")
            and update.get("address") != "auto"
        ):
            return bad("Automatic tax calculation in Checkout requires a valid address on the Customer. Add "
                       "a valid address to the Customer or set `customer_update[address]` to 'auto'.",
                       "automatic_tax[enabled]")  # fmt: skip
        if p.get("payment_method_collection", "always") not in ("always", "if_required"):
            return bad("Invalid payment_method_collection.", "payment_method_collection")
        trial = (p.get("subscription_data") or {}).get("trial_period_days")
        if trial is not None and not (trial.isdigit() and 1 <= int(trial) <= 730):
            return bad("trial_period_days must be between 1 and 730.", "subscription_data[trial_period_days]")
        return None

    def _list_promotion_codes(self, p: dict) -> tuple[int, dict]:
        data = list(self.promotion_codes.values())
        if "code" in p:
            data = [c for c in data if c["code"].lower() == p["code"].lower()]
        if "active" in p:
            data = [c for c in data if c["active"] == (p["active"] == "true")]
        data = data[: int(p.get("limit") or 10)]
        return 200, {"object": "list", "data": data, "has_more": False, "url": "/v1/promotion_codes"}

    def _list_invoices(self, p: dict) -> tuple[int, dict]:
        mine = [i for i in self.invoices.values() if i["customer"] == p.get("customer")]
        mine.sort(key=lambda i: (i["created"], i["id"]), reverse=True)
        after = p.get("starting_after")
        if after:
            ids = [i["id"] for i in mine]
            if after not in ids:
                return 400, _error("invalid_request_error", f"No such invoice: '{after}'", "starting_after",
                                   "resource_missing")  # fmt: skip
            mine = mine[ids.index(after) + 1 :]
        limit = int(p.get("limit") or 10)
        page = {"object": "list", "data": mine[:limit], "has_more": len(mine) > limit, "url": "/v1/invoices"}
        return 200, page

    def _list_tax_ids(self, p: dict, id: str) -> tuple[int, dict]:
        if id not in self.customers:
            return self._get(self.customers, id, "customer")
        data = sorted((t for t in self.tax_ids.values() if t["customer"] == id), key=lambda t: t["created"])
        return 200, {"object": "list", "data": data, "has_more": False, "url": f"/v1/customers/{id}/tax_ids"}

    def _create_portal(self, p: dict) -> tuple[int, dict]:
        if p.get("customer") not in self.customers:
            return 400, _error("invalid_request_error", "No such customer", "customer", "resource_missing")
        bps = _id("bps")
        return 200, {
            "id": bps, "object": "billing_portal.session", "customer": p["customer"], "livemode": False,
            "return_url": p.get("return_url"), "created": int(time.time()), "configuration": _id("bpc"),
            "url": f"https://billing.stripe.com/p/session/test_{bps}",
        }  # fmt: skip

    def _list_subscriptions(self, p: dict) -> tuple[int, dict]:
        data = [s for s in self.subscriptions.values() if s["customer"] == p.get("customer")]
        if p.get("status", "all") != "all":
            data = [s for s in data if s["status"] == p["status"]]
        data.sort(key=lambda s: s["created"], reverse=True)
        if "data.latest_invoice" in (p.get("expand") or []):
            data = [self._expanded(s) for s in data]
        return 200, {"object": "list", "data": data, "has_more": False, "url": "/v1/subscriptions"}

    def _get_subscription(self, p: dict, id: str) -> tuple[int, dict]:
        status, sub = self._get(self.subscriptions, id, "sub")
        if status == 200 and "latest_invoice" in (p.get("expand") or []):
            sub = self._expanded(sub)
        return status, sub

    def _expanded(self, sub: dict) -> dict:
        """``expand[]=latest_invoice``: the invoice object in place of its id."""
        invoice = self.invoices.get(sub.get("latest_invoice") or "")
        return {**sub, "latest_invoice": invoice} if invoice else sub

    def _update_subscription(self, p: dict, id: str) -> tuple[int, dict]:
        if id not in self.subscriptions:
            return self._get(self.subscriptions, id, "subscription")
        if "cancel_at_period_end" in p:
            self.subscriptions[id]["cancel_at_period_end"] = p["cancel_at_period_end"] == "true"
        return 200, self.subscriptions[id]

    def _cancel_subscription(self, p: dict, id: str) -> tuple[int, dict]:
        if id not in self.subscriptions:
            return self._get(self.subscriptions, id, "subscription")
        sub = self.subscriptions[id]
        sub.update(status="canceled", canceled_at=int(time.time()), ended_at=int(time.time()))
        return 200, sub

    def _update_item(self, p: dict, id: str) -> tuple[int, dict]:
        if id not in self.items:
            return self._get(self.items, id, "subscription_item")
        item = self.items[id]
        if "quantity" in p:
            item["quantity"] = int(p["quantity"])
        if "price" in p:
            item["price"] = self._price(p["price"])
        return 200, item

    def _meter_event(self, p: dict) -> tuple[int, dict]:
        """``POST /v1/billing/meter_events`` as Stripe documents it: ``event_name`` and
        ``payload`` (``stripe_customer_id``, an integer ``value``) required; ``timestamp``
        within the past 35 days and at most 5 minutes ahead of Stripe's clock (:attr:`clock`);
        an ``identifier`` seen within :attr:`dedupe_seconds` is refused
        (``resource_already_exists``), after that window it is a new event, as at Stripe."""
        for field in ("event_name", "payload"):
            if field not in p:
                return 400, _error("invalid_request_error", f"Missing required param: {field}.", field)
        payload = p["payload"] if isinstance(p["payload"], dict) else {}
        if not str(payload.get("value", "")).lstrip("-").isdigit() or not payload.get("stripe_customer_id"):
            return 400, _error("invalid_request_error", "The payload needs stripe_customer_id and an "
                               "integer value.", "payload")  # fmt: skip
        now = int(self.clock())
        timestamp = int(p.get("timestamp") or now)
        if timestamp < now - 35 * 86400 or timestamp > now + 300:
            return 400, _error("invalid_request_error", "The timestamp must be within the past 35 "
                               "calendar days or up to 5 minutes in the future.", "timestamp")  # fmt: skip
        identifier = p.get("identifier") or _id("mev")
        if any(e["identifier"] == identifier and now - e["created"] < self.dedupe_seconds
               for e in self.meter_events):  # fmt: skip
            message = f"An event already exists with identifier {identifier}."
            return 400, _error("invalid_request_error", message, "identifier", "resource_already_exists")
        event = {
            "object": "billing.meter_event", "created": now, "event_name": p["event_name"],
            "identifier": identifier, "livemode": False, "payload": payload, "timestamp": timestamp,
        }  # fmt: skip
        self.meter_events.append(event)
        return 200, event

    def metered(self, customer: str, start: int, end: int, event_name: str = "api_calls") -> int:
        """What Stripe's meter (aggregation ``sum``) bills ``customer`` for ``[start, end)``
        (unix seconds): the sum of the values of its events timestamped inside it, every
        accepted event counted (like ``GET /v1/billing/meters/{id}/event_summaries``)."""
        with self.lock:
            return sum(
                int(e["payload"]["value"])
                for e in self.meter_events
                if e["event_name"] == event_name
                and e["payload"].get("stripe_customer_id") == customer
                and start <= e["timestamp"] < end
            )

    # --- Stripe's side (test helpers) -----------------------------------------------------------

    def _price(self, price_id: str) -> dict:
        info = self.prices[price_id]
        return {
            "id": price_id, "object": "price", "active": True, "billing_scheme": "per_unit",
            "currency": "usd", "livemode": False, "lookup_key": None, "metadata": info.get("metadata", {}),
            "product": "prod_" + price_id[6:], "type": "recurring",
            "recurring": {"interval": info["interval"], "interval_count": 1, "usage_type": "licensed"},
            "unit_amount": info.get("unit_amount", 1000),
        }  # fmt: skip

    def create_subscription(
        self,
        customer: str,
        price: str,
        quantity: int = 1,
        status: str = "active",
        metadata: dict | None = None,
        period: tuple[int, int] | None = None,
    ) -> dict:
        now = int(time.time())
        sub_id = _id("sub")
        end = now + (365 if self.prices[price]["interval"] == "year" else 30) * 86400
        start, end = period or (now, end)
        item = {
            "id": _id("si"), "object": "subscription_item", "created": now, "metadata": {},
            "price": self._price(price), "quantity": quantity, "subscription": sub_id,
            "current_period_start": start, "current_period_end": end, "discounts": [], "tax_rates": [],
        }  # fmt: skip
        sub = {
            "id": sub_id, "object": "subscription", "customer": customer, "status": status, "created": now,
            "cancel_at_period_end": False, "cancel_at": None, "canceled_at": None, "ended_at": None,
            "collection_method": "charge_automatically", "currency": "usd", "livemode": False,
            "metadata": metadata or {}, "start_date": now, "trial_start": None,
            "trial_end": now + 14 * 86400 if status == "trialing" else None,
            "latest_invoice": self._invoice(customer, sub_id, now)["id"],
            "billing_cycle_anchor": now,
            "items": {"object": "list", "data": [item], "has_more": False,
                      "total_count": 1, "url": f"/v1/subscription_items?subscription={sub_id}"},
        }  # fmt: skip
        self.items[item["id"]] = item
        self.subscriptions[sub_id] = sub
        return sub

    def _invoice(
        self, customer: str, sub_id: str | None, now: int, status: str = "paid", amount: int = 1200
    ) -> dict:
        invoice_id = _id("in")
        prefix = (self.customers.get(customer) or {}).get("invoice_prefix") or "FAKE"
        number = f"{prefix}-{sum(1 for i in self.invoices.values() if i['customer'] == customer) + 1:04d}"
        paid = status == "paid"
        invoice = {
            "id": invoice_id, "object": "invoice", "customer": customer, "status": status, "number": number,
            "collection_method": "charge_automatically", "created": now, "due_date": None,
            "amount_due": amount, "amount_paid": amount if paid else 0,
            "amount_remaining": 0 if paid else amount, "subtotal": amount, "total": amount,
            "attempt_count": 1,
            "currency": "usd", "livemode": False, "period_start": now - 30 * 86400, "period_end": now,
            "next_payment_attempt": None if paid else now + 3 * 86400,
            "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_test/{invoice_id}",
            "invoice_pdf": f"https://pay.stripe.com/invoice/acct_test/{invoice_id}/pdf",
            "parent": ({"type": "subscription_details", "subscription_details": {"subscription": sub_id}}
                       if sub_id else None),
            "status_transitions": {"finalized_at": now, "paid_at": now if paid else None,
                                   "marked_uncollectible_at": None, "voided_at": None},
        }  # fmt: skip
        self.invoices[invoice["id"]] = invoice
        return invoice

    def add_invoice(self, customer: str, created: int, status: str = "paid", amount: int = 1200) -> dict:
        """An invoice of ``customer`` (no subscription), created at ``created`` (Unix seconds)."""
        with self.lock:
            return json.loads(json.dumps(self._invoice(customer, None, created, status, amount)))

    def add_promotion_code(self, code: str, *, active: bool = True, customer: str | None = None) -> dict:
        """A promotion code (20 % off, forever) as ``GET /v1/promotion_codes`` lists it."""
        promo = {
            "id": _id("promo"), "object": "promotion_code", "active": active, "code": code,
            "customer": customer, "created": int(time.time()), "expires_at": None, "livemode": False,
            "max_redemptions": None, "metadata": {}, "times_redeemed": 0,
            "promotion": {"type": "coupon", "coupon": {"id": _id("co"), "object": "coupon",
                                                        "percent_off": 20.0, "duration": "forever"}},
            "restrictions": {"first_time_transaction": False, "minimum_amount": None,
                             "minimum_amount_currency": None},
        }  # fmt: skip
        with self.lock:
            self.promotion_codes[promo["id"]] = promo
        return promo

    def add_tax_id(self, customer: str, type: str, value: str, country: str | None = None) -> dict:
        """A tax id on ``customer`` (its verification ``pending``, as Stripe starts it)."""
        tax_id = {
            "id": _id("txi"), "object": "tax_id", "country": country, "created": int(time.time()),
            "customer": customer, "livemode": False, "type": type, "value": value,
            "owner": {"type": "customer", "customer": customer},
            "verification": {"status": "pending", "verified_address": None, "verified_name": None},
        }  # fmt: skip
        with self.lock:
            self.tax_ids[tax_id["id"]] = tax_id
        return tax_id

    def renewal_failed(self, sub_id: str, finalized_at: int) -> dict:
        """A renewal invoice finalized at ``finalized_at`` could not be charged: the subscription
        is ``past_due`` with that open invoice as its latest."""
        with self.lock:
            sub = self.subscriptions[sub_id]
            invoice = self._invoice(sub["customer"], sub_id, finalized_at, status="open")
            invoice["attempt_count"] = 1
            sub.update(status="past_due", latest_invoice=invoice["id"])
            return json.loads(json.dumps(invoice))

    def complete_checkout(
        self, session_id: str, status: str = "active", period: tuple[int, int] | None = None
    ) -> dict:
        """The customer paid: the session completes and a subscription exists (billed over
        ``period`` = ``(start, end)`` unix seconds when given, else 30 days from now)."""
        with self.lock:
            session = self.sessions[session_id]
            line = session["_line_items"][0]
            trial_days = session["_subscription_data"].get("trial_period_days")
            sub = self.create_subscription(
                session["customer"], line["price"], int(line.get("quantity", 1)),
                "trialing" if trial_days and status == "active" else status,
                session["_subscription_data"].get("metadata"), period,
            )  # fmt: skip
            if trial_days:
                sub["trial_start"] = sub["created"]
                sub["trial_end"] = sub["created"] + int(trial_days) * 86400
            session.update(status="complete", payment_status="paid", subscription=sub["id"])
            return _public(session)

    def renew(self, sub_id: str, start: int, end: int) -> dict:
        """The subscription moves to its next billing period ``[start, end)`` (unix seconds), as
        at Stripe's renewal on the subscription's anniversary."""
        with self.lock:
            sub = self.subscriptions[sub_id]
            item = sub["items"]["data"][0]
            item.update(current_period_start=start, current_period_end=end)
            return json.loads(json.dumps(sub))

    def update_subscription(self, sub_id: str, *, price: str | None = None, **changes: Any) -> dict:
        """Change a subscription on Stripe's side (status, cancel_at_period_end, price...)."""
        with self.lock:
            sub = self.subscriptions[sub_id]
            sub.update(changes)
            if price:
                sub["items"]["data"][0]["price"] = self._price(price)
            return json.loads(json.dumps(sub))

    def snapshot(self, obj: dict) -> dict:
        return json.loads(json.dumps(_public(obj)))

    def event(self, type: str, obj: dict, created: int | None = None, previous: dict | None = None) -> dict:
        """An event envelope as Stripe delivers it (api_version pinned like the code)."""
        from saas.billing.service import STRIPE_API_VERSION

        data: dict[str, Any] = {"object": self.snapshot(obj)}
        if previous is not None:
            data["previous_attributes"] = previous
        return {
            "id": _id("evt"), "object": "event", "api_version": STRIPE_API_VERSION,
            "created": int(time.time()) if created is None else created, "data": data, "livemode": False,
            "pending_webhooks": 1, "request": {"id": _id("req"), "idempotency_key": None}, "type": type,
        }  # fmt: skip


def _public(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _error(type_: str, message: str, param: str | None, code: str | None = None) -> dict:
    err: dict[str, Any] = {"type": type_, "message": message}
    if param:
        err["param"] = param
    if code:
        err["code"] = code
    return {"error": err}
