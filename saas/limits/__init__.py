"""Tenant-scoped rate limits and monthly quotas on Redis.

``init_app(app)`` installs a ``before_request`` hook that checks every policy that applies to the
request (see :mod:`saas.limits.policies`) and the tenant's monthly quota in ONE atomic Lua call
(:mod:`saas.limits.gcra`), and an ``after_request`` hook that adds the ``RateLimit-Policy`` /
``RateLimit`` / ``X-RateLimit-*`` headers (:mod:`saas.limits.headers`).

Over a limit: 429 problem ``rate_limited`` with ``Retry-After`` and the policy hit
(``policy``, ``limit``, ``window``). Over the quota: 429 problem ``quota_exceeded`` with
``reset`` (ISO 8601, UTC) and ``Retry-After`` until the next period. When ``login-account``
starts refusing, the account's lockout is audited (``auth.login_throttled`` in each of its
tenants), once per window of that policy.

Sign-in endpoints get their throttles by endpoint, whatever ``Authorization`` header they
carry; a token whose tenant no longer exists is limited like an anonymous request.

Usage metering: every admitted authenticated request (unlimited plans included) increments
``{t:<tenant uuid>}:usage:<label>`` (see :func:`usage_key`) of the tenant's usage period, which
the monthly quota counts in too: a live subscription's own billing period (label
``YYYYMMDDTHHMMSSZ``, its start), else the UTC calendar month (``YYYY-MM``); see
:mod:`saas.billing.periods`. The period comes from the cached entitlements' ``quota_period``, so
picking it costs no Redis call (the quota's counter rides the one Lua call); the counter lives
until 62 days after its period ends. ``Limiter.period_for`` (``(tenant_id, now, entitlements)
-> Period``) may be replaced (tests).

Redis failure policy (``RATELIMIT_FAIL_CLOSED``, default ``login,mfa,token,signup``): requests
whose policies are all in other groups are served (fail open: the error is logged and
``limits_fail_open_total`` counted); a request with a policy of a fail-closed group gets a 503
problem ``rate_limit_unavailable`` (``limits_fail_closed_total``). The circuit breaker of
:mod:`saas.cache.guard` keeps requests from waiting on a dead Redis.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask, Response, g, request

from saas.auth import revocation
from saas.billing import periods
from saas.billing.periods import Period, usage_period
from saas.cache.guard import RedisGuard, RedisUnavailable
from saas.cache.namespace import TenantKeys
from saas.errors import AppError, ErrorCode, ServiceUnavailable, TooManyRequests
from saas.http import client_ip
from saas.limits import gcra, headers, policies
from saas.limits.gcra import Check, Decision, Quota
from saas.memo import Memo
from saas.services import services
from saas.settings import SettingsError

log = logging.getLogger("saas.limits")

QUOTA_RETENTION = timedelta(days=62)


def calendar_month(tenant_id: uuid.UUID, now: datetime) -> Period:
    """The calendar month (UTC) containing ``now`` (the free plan's usage period)."""
    return periods.calendar_month(now)


def default_period(
    tenant_id: uuid.UUID, now: datetime, entitlements: Mapping[str, Any] | None = None
) -> Period:
    """The tenant's usage period at ``now`` from its entitlements' ``quota_period`` (a live
    subscription's period), else the UTC calendar month (:func:`saas.billing.periods.usage_period`)."""
    return usage_period((entitlements or {}).get("quota_period"), now)


def usage_key(tenant_id: uuid.UUID, period_label: str) -> str:
    """The metering counter of a tenant's period: ``{t:<tenant uuid>}:usage:<label>`` (an
    integer string; absent means 0)."""
    return TenantKeys(tenant_id).usage(period_label)


PeriodFunction = Callable[[uuid.UUID, datetime, Mapping[str, Any] | None], Period]


class QuotaExceeded(AppError):
    status, code, title = 429, ErrorCode.QUOTA_EXCEEDED, "Monthly quota exceeded"


class Limiter:
    """Checks a request's policies. Attributes may be replaced (tests, billing):

    * ``clock``: ``() -> datetime`` (UTC) used to pick the billing period;
    * ``period_for``: ``(tenant_id, now, entitlements) -> Period`` (default:
      :func:`default_period`).
    """

    def __init__(self, guard: RedisGuard, settings: Any) -> None:
        self.guard = guard
        try:
            self.rates = policies.parse_policies(settings.ratelimit_policies)
        except ValueError as exc:
            raise SettingsError(f"RATELIMIT_POLICIES: {exc}") from None
        self.share = settings.ratelimit_principal_share
        self.fail_closed = frozenset(settings.ratelimit_fail_closed)
        self.secret = (settings.secret_key or "").encode() or uuid.uuid4().bytes
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        #: (tenant, user, client, rpm, monthly calls, API key, quota period) -> (plan, its
        #: period's start and end)
        self._plans: Memo[tuple[Any, ...], tuple[gcra.Plan, datetime, datetime]] = Memo(
            "limits.plans", 10_000
        )
        self.period_for = default_period

    @property
    def period_for(self) -> PeriodFunction:
        return self._period_for

    @period_for.setter
    def period_for(self, value: PeriodFunction) -> None:
        """Replacing the period function drops every kept plan (their periods came from it)."""
        self._period_for = value
        self._plans.clear()

    def quota_for(
        self, tenant_id: uuid.UUID, entitlements: dict[str, Any], now: datetime | None = None
    ) -> Quota | None:
        return self._quota(
            tenant_id, entitlements, self.period_for(tenant_id, now or self.clock(), entitlements)
        )

    def _quota(self, tenant_id: uuid.UUID, entitlements: dict[str, Any], period: Period) -> Quota:
        limit = entitlements.get("monthly_api_calls")
        return Quota(
            policy="monthly",
            key=usage_key(tenant_id, period.label),
            limit=None if limit is None else int(limit),
            period_label=period.label,
            period_seconds=int((period.end - period.start).total_seconds()),
            reset_at=period.end.timestamp(),
            expire_at=int((period.end + QUOTA_RETENTION).timestamp()),
        )

    def checks_for_request(self) -> tuple[list[Check], Quota | None]:
        """The checks and quota of the current request (empty when nothing applies)."""
        plan = self.plan_for_request()
        return list(plan.checks), plan.quota

    def plan_for_request(self) -> gcra.Plan:
        """The current request's :class:`~saas.limits.gcra.Plan`.

        Selection, in order: a sign-in endpoint (:data:`~saas.limits.policies.AUTH_ENDPOINTS`)
        gets its sign-in throttles, whatever credentials the request carries; a request with
        a principal whose tenant exists gets the tenant's plan; anything else (no token, a
        forged one, or one whose tenant is gone) gets ``ip``.

        An authenticated request's plan depends only on the principal, two entitlements and
        the billing period, so it is kept (bounded, per process) and rebuilt when one of those
        changes or the clock leaves its period."""
        return self._select_plan()[0]

    def _select_plan(self) -> tuple[gcra.Plan, bool]:
        """:meth:`plan_for_request`'s plan, and whether it is the principal's tenant plan (whose
        keys share the tenant's Redis Cluster slot with its revocation markers)."""
        method, path = request.method, request.path
        principal = g.get("principal")
        groups = policies.AUTH_ENDPOINTS.get((method, path))
        if groups is None and request.url_rule is not None and "<" in request.url_rule.rule:
            groups = policies.AUTH_ENDPOINTS.get((method, request.url_rule.rule))  # /sso/saml/<id>/acs
        if groups is not None:
            return self._signin_plan(groups, principal), False
        if principal is not None:
            plan = self._principal_plan(principal)
            if plan is not None:
                return plan, True
        ip_plan = gcra.Plan.of(policies.ip_checks(client_ip(request.remote_addr), self.rates), None)
        return ip_plan, False

    def _signin_plan(self, groups: tuple[str, ...], principal: Any) -> gcra.Plan:
        body = form = None
        if request.is_json:
            body = request.get_json(silent=True)
        elif request.mimetype == "application/x-www-form-urlencoded":
            form = request.form
        user = str(principal.user_id) if principal is not None and principal.user_id is not None else None
        ip = client_ip(request.remote_addr)
        checks = policies.signin_checks(
            groups, ip, self.rates, self.secret, body, form, request.authorization, user
        )
        return gcra.Plan.of(checks, None)

    def _principal_plan(self, principal: Any) -> gcra.Plan | None:
        """The kept plan of a principal; None when its tenant no longer exists (the request is
        then limited like an anonymous one, and the view answers 401)."""
        from saas.auth.principals import snapshot_for

        snap = snapshot_for(principal.tenant_id, principal.user_id, principal.client_id)
        if snap.tenant is None:
            return None
        ent = snap.entitlements
        key = (
            principal.tenant_id,
            principal.user_id,
            principal.client_id,
            ent.get("requests_per_minute", policies.DEFAULT_TENANT_RPM),
            ent.get("monthly_api_calls"),
            getattr(principal, "api_key_id", None),  # an API key is its own principal (its own bucket)
            tuple(ent.get("quota_period") or ()),  # a new subscription period: a new counter
        )
        now = self.clock()
        kept = self._plans.get(key)
        if kept is not None and kept[1] <= now < kept[2]:
            return kept[0]
        period = self.period_for(principal.tenant_id, now, ent)
        checks = policies.tenant_checks(
            principal.tenant_id, ent, principal.user_id, principal.client_id, self.share, key[5]
        )
        plan = gcra.Plan.of(checks, self._quota(principal.tenant_id, ent, period))
        self._plans.put(key, (plan, period.start, period.end))
        return plan

    def hit(self, checks: list[Check], quota: Quota | None, cost: int = 1, peek: bool = False) -> Decision:
        """Run the script through the breaker.

        Raises:
            RedisUnavailable: Redis failed or the breaker is open.
        """
        return self.run(gcra.Plan.of(checks, quota), cost, peek)

    def run(
        self, plan: gcra.Plan, cost: int = 1, peek: bool = False, marks: tuple[str, ...] = ()
    ) -> Decision:
        """Check (and unless ``peek``, consume) ``plan`` with the revocation ``marks`` (keys in
        the plan's slot), through the breaker of the node serving its keys.

        On one server (or a Sentinel-managed primary) it is one Lua call, whatever the keys.
        On a Redis Cluster a plan whose keys are in one slot (every tenant plan) is one call
        too; a plan across slots (a sign-in's IP and account keys) is checked part by part
        (:meth:`~saas.limits.gcra.Plan.split`), each part one call that checks and consumes:
        when a part refuses (or its node fails), the parts before it give back what they
        consumed (:meth:`~saas.limits.gcra.Plan.give_back`) and the parts after it are only
        peeked, for their headers, so a refused request consumes nothing in the end. A request
        admitted by an earlier part meanwhile may be refused for the moment its bucket was
        lower, and a give-back that fails leaves one request counted.

        Raises:
            RedisUnavailable: Redis failed or the breaker of a part's node is open.
        """
        guard = self.guard
        parts = plan.split() if guard.clustered else (plan,)
        if len(parts) == 1:
            key = plan.keys[0] if plan.keys else None
            return guard.call("limits", lambda r: plan.run(r, cost, peek, marks), key=key)
        if marks and guard.call("limits", lambda r: r.exists(*marks), key=marks[0]):
            return Decision(False, "revoked", (), None, plan.quota, 0, 0.0, True)
        decisions: list[Decision] = []
        consumed: list[gcra.Plan] = []
        try:
            for part in parts:
                refused = bool(decisions) and not decisions[-1].allowed
                decision = guard.call(
                    "limits", lambda r, p=part, q=peek or refused: p.run(r, cost, q), key=part.keys[0]
                )
                decisions.append(decision)
                if decision.allowed and not peek and not refused:
                    consumed.append(part)
        except RedisUnavailable:
            self._give_back(consumed, cost)
            raise
        merged = plan.merge(decisions)
        if not merged.allowed:
            self._give_back(consumed, cost)
        return merged

    def _give_back(self, parts: list[gcra.Plan], cost: int) -> None:
        """What ``parts`` consumed for a request refused by another part (best effort: a
        failure leaves that request counted, and is logged)."""
        for part in parts:
            try:
                self.guard.call("limits", lambda r, p=part: p.give_back(r, cost), key=part.keys[0])
            except RedisUnavailable:
                policy = part.checks[0].policy
                log.warning("a refused sign-in stays counted in %s (redis unavailable)", policy)

    def enforce(self) -> None:
        """``before_request``: admit, or raise 429 / 503 problems."""
        if request.path in policies.EXEMPT_PATHS or request.method == "OPTIONS":
            return
        plan, tenant_plan = self._select_plan()
        if not plan.keys:
            return
        counters = self.guard.counters
        principal = g.get("principal")
        # the caller's session and client revocation markers ride the same call when they are in
        # its slot (the tenant's plan); otherwise current_principal checks them itself
        marks = revocation.keys_for(principal) if tenant_plan else ()
        try:
            decision = self.run(plan, 1, False, marks)
        except RedisUnavailable:
            if marks:
                revocation.note(revocation.UNKNOWN)
            closed = sorted({c.group for c in plan.checks} & self.fail_closed)
            if closed:
                counters.inc("limits_fail_closed_total")
                raise ServiceUnavailable(
                    "Sign-in throttling is temporarily unavailable; try again shortly.",
                    code=ErrorCode.RATE_LIMIT_UNAVAILABLE,
                    title="Rate limiting unavailable",
                    headers={"Retry-After": str(max(1, round(self.guard.breaker.cooldown)))},
                ) from None
            counters.inc("limits_fail_open_total")
            log.debug("rate limits skipped (redis unavailable): %s %s", request.method, request.path)
            return
        if marks:
            if decision.revoked:
                revocation.note(revocation.REVOKED)
                raise revocation.refuse(g.get("principal"))  # before the view, and nothing was consumed
            revocation.note(revocation.CLEAR)
        g.rate_limit_decision = decision
        if decision.allowed:
            return
        if decision.reason == "quota_exceeded" and decision.quota is not None:
            counters.inc("quota_exceeded_total")
            q = decision.quota
            _observe_rejection(q.policy)
            reset = datetime.fromtimestamp(q.reset_at, UTC)
            raise QuotaExceeded(
                f"The tenant's quota of {q.limit} API calls for period {q.period_label} is used up.",
                extra={
                    "policy": q.policy,
                    "limit": q.limit,
                    "period": q.period_label,
                    "reset": reset.isoformat().replace("+00:00", "Z"),
                },
                headers={"Retry-After": str(max(1, int(q.reset_at - decision.now) + 1))},
            )
        self._audit_lockouts(decision)
        hit = decision.hit
        if hit is None:  # the script names the policy of every refusal; never a 500 if not
            log.error("rate-limit refusal without a policy: %s", decision.reason)
            raise TooManyRequests("Too many requests.", headers={"Retry-After": "1"})
        counters.inc(f'rate_limited_total{{policy="{hit.check.policy}"}}')
        counters.inc("rate_limited_total")
        _observe_rejection(hit.check.policy)
        raise TooManyRequests(
            f"Too many requests for policy '{hit.check.policy}' "
            f"({hit.check.limit} per {hit.check.period} s); retry in {hit.retry_seconds} s.",
            extra={
                "policy": hit.check.policy,
                "limit": hit.check.limit,
                "window": hit.check.period,
                "retry_after": max(1, hit.retry_seconds),
            },
            headers={"Retry-After": str(max(1, hit.retry_seconds))},
        )

    def _audit_lockouts(self, decision: Decision) -> None:
        """When the per-account login throttle refuses, audit ``auth.login_throttled`` in the
        account's tenants (:func:`saas.auth.service.audit_login_throttled`) once per lockout
        window: the first refusal sets :func:`~saas.limits.policies.lockout_marker` of the
        account's key (``SET NX``, expiring after the policy's window) and only that request
        writes the event. Neither a Redis nor a database failure changes the 429."""
        for state in decision.states:
            if state.check.policy == policies.LOCKOUT_POLICY and state.retry_seconds > 0:
                self._audit_lockout(state)

    def _audit_lockout(self, state: gcra.PolicyState) -> None:
        from saas import db
        from saas.auth import service

        check = state.check
        marker = policies.lockout_marker(check.key)
        try:
            window = check.period
            first = self.guard.call("limits", lambda r: r.set(marker, b"1", nx=True, ex=window), key=marker)
            if not first:
                return  # this window's lockout is audited already
        except RedisUnavailable:
            return
        body = request.get_json(silent=True) if request.is_json else request.form
        email = body.get("email") if isinstance(body, Mapping) else None
        email = email if isinstance(email, str) and email.strip() else None
        principal = g.get("principal")
        user_id = principal.user_id if principal is not None and email is None else None
        data = {
            "policy": check.policy,
            "limit": check.limit,
            "window": check.period,
            "retry_after": max(1, state.retry_seconds),
        }
        try:
            service.audit_login_throttled(db.session(), email, user_id, data)
        except Exception:
            log.exception("auth.login_throttled could not be audited")
            db.session().rollback()


def _observe_rejection(policy: str) -> None:
    """``saas.observability.metrics.rate_limit_rejected(policy)``; a metrics failure (or a
    build without the module) never changes the response."""
    try:
        from saas.observability import metrics

        hook = getattr(metrics, "rate_limit_rejected", None)
        if hook is not None:
            hook(policy)
    except Exception:
        log.warning("rate-limit rejection metric failed", exc_info=True)


def _add_headers(response: Response) -> Response:
    decision: Decision | None = g.get("rate_limit_decision")
    if decision is not None:
        headers.apply(response.headers, decision)
    return response


def init_app(app: Flask) -> None:
    """Register the limiter's hooks (the :class:`Limiter` is ``services().limiter``)."""
    svc = services(app)
    settings, guard, limiter = svc.settings, svc.redis_guard, svc.limiter
    if not settings.ratelimit_enabled:
        return
    if type(guard.client).__module__.startswith("fakeredis"):
        try:
            import lupa  # noqa: F401
        except ImportError:
            log.warning("rate limits disabled: the in-process Redis stand-in cannot run Lua (set REDIS_URL)")
            return
    app.before_request(limiter.enforce)
    app.after_request(_add_headers)


def limiter() -> Limiter:
    return services().limiter
