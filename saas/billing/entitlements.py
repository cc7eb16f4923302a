"""Plans and entitlements.

The catalogue is the operator's TOML file named by ``PLANS_FILE``, else ``plans.toml`` beside
this file (reviewed like code; docs/billing.md, "A custom catalogue"); an invalid catalogue
raises :class:`CatalogueError` (one line) at start-up, and so does a paid plan without its
Stripe price id when billing is on (:func:`validate_prices`). :func:`entitlements_for` answers
what a tenant may use now, from its plan, its subscription status (grace period, read-only) and
an operator's override. Limits are integers; ``None`` means unlimited. Features are the plans'
``features`` (flags, or values such as ``audit_log_days``) that an override may replace;
code asks :func:`has` (or gates a view with :func:`require_feature`), and nothing else.

The tenant's billing state is cached in Redis under ``{t:<tenant_id>}:billing:state`` (the
tenant in the key by construction, invariant 8) and invalidated whenever billing state changes
(:func:`invalidate`), right away and again after the transaction commits.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import tomllib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

from flask import current_app, has_app_context, has_request_context
from sqlalchemy import event
from sqlalchemy.orm import Session, object_session

from saas.errors import ErrorCode, PaymentRequired
from saas.memo import memoize
from saas.services import EXTENSION, services
from saas.settings import SettingsError

log = logging.getLogger("saas.billing")

CATALOGUE_PATH = Path(__file__).with_name("plans.toml")
LIMIT_KEYS = ("seats", "requests_per_minute", "monthly_api_calls")
PLAN_KEYS = frozenset(
    {"name", "price_env", "per_seat", "features", "trial_days", "payment_method_collection", *LIMIT_KEYS}
)
#: Checkout's ``payment_method_collection`` (https://docs.stripe.com/api/checkout/sessions/create)
PAYMENT_METHOD_COLLECTION = ("always", "if_required")
#: Stripe's ceiling of ``subscription_data.trial_period_days``
MAX_TRIAL_DAYS = 730
FEATURE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


F = TypeVar("F", bound=Callable[..., Any])


class CatalogueError(SettingsError):
    """The plan catalogue is invalid; the message names the plan and key (start-up stops)."""


class EntitlementRequired(PaymentRequired):
    """402: the tenant's plan lacks a feature; ``plan`` names the cheapest plan that has it."""

    code, title = ErrorCode.ENTITLEMENT_REQUIRED, "Entitlement required"


@dataclass(frozen=True)
class Plan:
    id: str
    name: str
    seats: int | None
    requests_per_minute: int
    monthly_api_calls: int | None
    features: Mapping[str, Any] = field(default_factory=dict)
    per_seat: bool = False
    price_env: Mapping[str, str] = field(default_factory=dict)
    #: days of free trial a first subscription gets at Checkout (0: none)
    trial_days: int = 0
    #: the plan's own ``payment_method_collection`` for its trial (None: ``BILLING_TRIAL_PAYMENT_METHOD``)
    payment_method_collection: str | None = None


@dataclass(frozen=True)
class Entitlements:
    """What a tenant may use now. ``read_only``: writes answer 402 ``payment_required``."""

    plan: str
    seats: int | None
    #: None: unlimited (operator override -1); 0: no API requests at all (override 0)
    requests_per_minute: int | None
    monthly_api_calls: int | None
    features: Mapping[str, Any]
    read_only: bool = False
    #: the window ``monthly_api_calls`` counts in, ``(start, end)`` unix seconds: the live
    #: subscription's current period; None: UTC calendar months (:mod:`saas.billing.periods`)
    quota_period: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "seats": self.seats,
            "requests_per_minute": self.requests_per_minute,
            "monthly_api_calls": self.monthly_api_calls,
            "features": dict(self.features),
            "read_only": self.read_only,
            "quota_period": list(self.quota_period) if self.quota_period else None,
        }


def valid_limit(value: Any) -> bool:
    """A limit as stored or overridden: an integer >= -1 (-1: unlimited); a boolean is not one
    (``True`` is an ``int`` in Python, so ``seats=true`` must be refused explicitly)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= -1


def _limit(plan_id: str, key: str, raw: Any, required: bool = True) -> int | None:
    if raw is None and not required:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < -1:
        raise CatalogueError(f"plans.{plan_id}.{key}: expected an integer >= -1, got {raw!r}")
    return None if raw == -1 else raw


def parse_catalogue(data: Mapping[str, Any]) -> tuple[str, dict[str, Plan]]:
    """Validate a parsed catalogue; returns (default plan id, plans by id)."""
    raw_plans = data.get("plans")
    if not isinstance(raw_plans, Mapping) or not raw_plans:
        raise CatalogueError("plans: at least one plan is required")
    plans: dict[str, Plan] = {}
    for plan_id, raw in raw_plans.items():
        if not isinstance(raw, Mapping):
            raise CatalogueError(f"plans.{plan_id}: expected a table")
        unknown = set(raw) - PLAN_KEYS
        if unknown:
            raise CatalogueError(f"plans.{plan_id}: unknown keys {sorted(unknown)}")
        features = raw.get("features") or {}
        if not isinstance(features, Mapping) or any(
            not isinstance(v, bool | int | str) for v in features.values()
        ):
            raise CatalogueError(
                f"plans.{plan_id}.features: expected a table of booleans, integers or strings"
            )
        price_env = raw.get("price_env") or {}
        if not isinstance(price_env, Mapping) or any(
            k not in ("month", "year") or not str(v).startswith("STRIPE_PRICE_") for k, v in price_env.items()
        ):
            raise CatalogueError(f'plans.{plan_id}.price_env: expected {{month|year = "STRIPE_PRICE_..."}}')
        for name in features:
            if not FEATURE_NAME.fullmatch(name) or name in LIMIT_KEYS:
                raise CatalogueError(
                    f"plans.{plan_id}.features.{name}: a feature is named [a-z][a-z0-9_]* and is not a limit"
                )
        rpm = _limit(plan_id, "requests_per_minute", raw.get("requests_per_minute"))
        if rpm is None:
            raise CatalogueError(f"plans.{plan_id}.requests_per_minute: must be a positive limit")
        trial_days = raw.get("trial_days", 0)
        if not valid_limit(trial_days) or not 0 <= trial_days <= MAX_TRIAL_DAYS:
            raise CatalogueError(
                f"plans.{plan_id}.trial_days: expected an integer 0..{MAX_TRIAL_DAYS}, got {trial_days!r}"
            )
        if trial_days and not price_env:
            raise CatalogueError(f"plans.{plan_id}.trial_days: only a paid plan (price_env) has a trial")
        collection = raw.get("payment_method_collection")
        if collection is not None and collection not in PAYMENT_METHOD_COLLECTION:
            raise CatalogueError(
                f"plans.{plan_id}.payment_method_collection: expected one of "
                f"{list(PAYMENT_METHOD_COLLECTION)}, got {collection!r}"
            )
        per_seat = raw.get("per_seat", False)
        if not isinstance(per_seat, bool):
            raise CatalogueError(f"plans.{plan_id}.per_seat: expected a boolean, got {per_seat!r}")
        plans[plan_id] = Plan(
            id=plan_id,
            name=str(raw.get("name", plan_id)),
            seats=_limit(plan_id, "seats", raw.get("seats")),
            requests_per_minute=rpm,
            monthly_api_calls=_limit(plan_id, "monthly_api_calls", raw.get("monthly_api_calls")),
            features=dict(features),
            per_seat=per_seat,
            price_env=dict(price_env),
            trial_days=trial_days,
            payment_method_collection=collection,
        )
    _feature_kinds(plans)  # one kind per feature across the plans
    default = data.get("default_plan")
    if default not in plans:
        raise CatalogueError(f"default_plan: {default!r} is not a plan of the catalogue")
    return default, plans


def _kind(value: Any) -> type:
    return bool if isinstance(value, bool) else int if isinstance(value, int) else str


def _feature_kinds(plans: Mapping[str, Plan]) -> dict[str, type]:
    """Every feature of the catalogue -> its kind (``bool``, ``int`` or ``str``), in catalogue
    order. Raises CatalogueError when two plans give one feature values of different kinds."""
    kinds: dict[str, type] = {}
    for p in plans.values():
        for name, value in p.features.items():
            kind = kinds.setdefault(name, _kind(value))
            if kind is not _kind(value):
                raise CatalogueError(
                    f"plans.{p.id}.features.{name}: expected a {kind.__name__} like the plans before it, "
                    f"got {value!r}"
                )
    return kinds


#: the catalogue of code running outside an app context (a CLI command, a job): the last one
#: :func:`use_catalogue` loaded (``build_services`` calls it at start-up)
_process_catalogue: Path = CATALOGUE_PATH


def catalogue_path(plans_file: str | Path | None) -> Path:
    """The catalogue file of a ``PLANS_FILE`` value (None: the packaged ``plans.toml``)."""
    return Path(plans_file) if plans_file else CATALOGUE_PATH


@memoize("billing.catalogue", maxsize=4)
def load_catalogue(path: str | Path) -> tuple[str, dict[str, Plan]]:
    """Read and validate the catalogue at ``path`` (memoised per path: read once per process).

    Raises:
        CatalogueError: one line; for an operator's file it starts with ``PLANS_FILE <path>:``.
    """
    path = Path(path)
    where = "" if path == CATALOGUE_PATH else f"PLANS_FILE {path}: "
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CatalogueError(f"{where or str(path) + ': '}{exc}") from None
    try:
        return parse_catalogue(data)
    except CatalogueError as exc:
        raise CatalogueError(f"{where}{exc}") from None


def use_catalogue(plans_file: str | Path | None) -> tuple[str, dict[str, Plan]]:
    """Validate the catalogue of ``PLANS_FILE`` and make it the one code outside an app context
    reads (start-up: :func:`saas.bootstrap.build_services`). Raises CatalogueError."""
    global _process_catalogue
    path = catalogue_path(plans_file)
    parsed = load_catalogue(path)
    _process_catalogue = path
    return parsed


def catalogue(path: Path | None = None) -> tuple[str, dict[str, Plan]]:
    """The catalogue in force: (default plan id, plans by id in catalogue order, cheapest first).

    ``path`` given: that file. Else, in an app context, the app's ``PLANS_FILE`` (each app its
    own); outside one, the process's (:func:`use_catalogue`)."""
    if path is not None:
        return load_catalogue(path)
    app_services = current_app.extensions.get(EXTENSION) if has_app_context() else None
    if app_services is None:
        return load_catalogue(_process_catalogue)
    # the hot path (several calls a request): the memo is keyed by the setting's own string
    return load_catalogue(app_services.settings.plans_file or CATALOGUE_PATH)


def plan(plan_id: str | None) -> Plan:
    """A plan by id; unknown or None gives the default plan."""
    default, plans = catalogue()
    return plans.get(plan_id or default) or plans[default]


#: Stripe subscription statuses (https://docs.stripe.com/api/subscriptions/object#subscription_object-status)
PAID_STATUSES = frozenset({"trialing", "active"})
GRACE_STATUSES = frozenset({"past_due"})
FREE_STATUSES = frozenset({"canceled", "unpaid", "incomplete_expired", "incomplete", "paused"})
INTERVALS = ("month", "year")
CACHE_TTL_SECONDS = 300


def validate_prices(prices: Mapping[str, str], enabled: bool) -> dict[str, tuple[str, str]]:
    """Check the catalogue's Stripe price ids against the environment; map price id -> (plan, interval).

    Args:
        prices: environment variable name -> price id (``Settings.stripe_prices``).
        enabled: billing is on (a Stripe key is set): then each paid plan's monthly price is required.

    Raises:
        CatalogueError: a required price is missing, or one price id serves two plans or intervals.
    """
    _, plans = catalogue()
    table: dict[str, tuple[str, str]] = {}
    for p in plans.values():
        for interval, env_name in p.price_env.items():
            if interval not in INTERVALS:
                raise CatalogueError(f"plans.{p.id}.price_env: unknown interval {interval!r}")
            price = prices.get(env_name)
            if not price:
                if enabled and interval == "month":
                    raise CatalogueError(
                        f"{env_name}: required for plan {p.id!r} when STRIPE_SECRET_KEY is set"
                    )
                continue
            if price in table:
                raise CatalogueError(f"{env_name}: price {price} is already used by plan {table[price][0]!r}")
            table[price] = (p.id, interval)
    return table


def plans_allowing(seats: int) -> list[Plan]:
    """Plans whose seat entitlement allows ``seats`` members, in catalogue order (cheapest first)."""
    _, plans = catalogue()
    return [p for p in plans.values() if p.seats is None or p.seats >= seats]


@dataclass(frozen=True)
class BillingState:
    """What :func:`entitlements_for` needs beyond the plan catalogue (cached as JSON).

    ``grace_until`` is a unix timestamp (seconds) or None; ``subscription_plan``/``status`` are
    None for a tenant that never subscribed; ``period_start``/``period_end`` (unix seconds) the
    subscription's synced current period.
    """

    subscription_plan: str | None = None
    status: str | None = None
    grace_until: float | None = None
    override_plan: str | None = None
    override_limits: Mapping[str, Any] = field(default_factory=dict)
    period_start: float | None = None
    period_end: float | None = None

    @property
    def has_subscription(self) -> bool:
        return self.status is not None


def effective_plan_id(tenant_plan: str | None, state: BillingState) -> str:
    """The plan whose entitlements apply (before read-only and limit overrides)."""
    default, _ = catalogue()
    if state.override_plan:
        return plan(state.override_plan).id
    if not state.has_subscription:
        return plan(tenant_plan).id
    if state.status in PAID_STATUSES or state.status in GRACE_STATUSES:
        return plan(state.subscription_plan).id
    return default


def compute_entitlements(
    tenant_plan: str | None, state: BillingState, now: datetime | None = None
) -> Entitlements:
    """Pure mapping of plan + subscription status + override to entitlements.

    ``trialing``/``active``: the plan. ``past_due``: the plan, and ``read_only`` once the grace
    period has passed. ``canceled``/``unpaid``/``incomplete_expired`` (and ``incomplete``,
    ``paused``): the default (free) plan. An operator's plan override wins over all of these.
    ``quota_period``: the subscription's period while it is live (``trialing``, ``active``,
    ``past_due``), whatever the override; otherwise None (calendar months).
    """
    p = plan(effective_plan_id(tenant_plan, state))
    now_ts = (now or datetime.now(UTC)).timestamp()
    read_only = (
        not state.override_plan
        and state.status in GRACE_STATUSES
        and state.grace_until is not None
        and now_ts >= state.grace_until
    )
    limits = {
        "seats": p.seats,
        "requests_per_minute": p.requests_per_minute,
        "monthly_api_calls": p.monthly_api_calls,
    }
    features = dict(p.features)
    for key, value in (state.override_limits or {}).items():
        if key in LIMIT_KEYS:
            if not valid_limit(value):
                log.warning("ignoring invalid override %s=%r", key, value)
                continue
            limits[key] = None if value == -1 else value  # -1: unlimited; 0 is a real limit
        else:
            features[key] = value
    live = state.status in PAID_STATUSES or state.status in GRACE_STATUSES
    window = None
    if state.period_start and state.period_end:
        window = (int(state.period_start), int(state.period_end))
    return Entitlements(
        p.id,
        limits["seats"],
        limits["requests_per_minute"],
        limits["monthly_api_calls"],
        features,
        read_only=bool(read_only),
        quota_period=window if live and window and window[1] > window[0] else None,
    )


def cache_key(tenant_id: uuid.UUID | str) -> str:
    """Redis key of a tenant's cached :class:`BillingState`."""
    return f"{{t:{tenant_id}}}:billing:state"


def generation_key(tenant_id: uuid.UUID | str) -> str:
    """Redis key counting invalidations of the tenant's billing state."""
    return f"{{t:{tenant_id}}}:billing:gen"


def _drop(redis: Any, tenant_ids: set[uuid.UUID] | list[uuid.UUID]) -> None:
    try:
        pipe = redis.pipeline(transaction=False)
        for tenant_id in tenant_ids:
            pipe.incr(generation_key(tenant_id))
            pipe.expire(generation_key(tenant_id), 2 * CACHE_TTL_SECONDS)
            pipe.delete(cache_key(tenant_id))
        pipe.execute()
    except Exception:
        log.warning("billing state cache unavailable", exc_info=True)


def _redis(tenant_id: uuid.UUID | None = None) -> Any:
    """The app's Redis client; None outside an app or while the Redis circuit breaker of the
    tenant's node (``saas.cache.guard``; of the one server off a cluster) is open, so no request
    waits on a dead Redis here either."""
    if not has_app_context():
        return None
    guard = services().redis_guard
    if guard is not None and guard.breaker_for(None if tenant_id is None else cache_key(tenant_id)).is_open():
        return None
    return services().redis


def load_state(session: Session, tenant_id: uuid.UUID) -> BillingState:
    """Read the tenant's billing state from the database (no cache)."""
    from saas.billing.models import BillingAccount, BillingOverride

    account = session.get(BillingAccount, tenant_id)
    override = session.get(BillingOverride, tenant_id)
    subscribed = account is not None and account.stripe_subscription_id is not None
    return BillingState(
        subscription_plan=account.plan if account else None,
        status=account.status if account and account.stripe_subscription_id else None,
        grace_until=account.grace_until.timestamp() if account and account.grace_until else None,
        override_plan=override.plan if override else None,
        override_limits=dict(override.limits or {}) if override else {},
        period_start=account.current_period_start.timestamp()
        if subscribed and account.current_period_start else None,
        period_end=account.current_period_end.timestamp()
        if subscribed and account.current_period_end else None,
    )  # fmt: skip


def billing_state(tenant: Any) -> BillingState | None:
    """The tenant's cached billing state; loaded from the database on a miss. None when neither
    the cache nor a session is reachable (then only ``tenant.plan`` counts).

    One Redis round trip on a hit (``MGET`` of the state and its generation). On a miss the
    state read from the database is cached only if the generation is unchanged, so a reader
    that loaded the state of before a concurrent change cannot cache it after that change's
    invalidation.
    """
    tenant_id = getattr(tenant, "id", None)
    if tenant_id is None:
        return None
    redis = _redis(tenant_id)
    generation = b"0"
    if redis is not None:
        try:
            raw, gen = redis.mget(cache_key(tenant_id), generation_key(tenant_id))
            if raw:
                return BillingState(**json.loads(raw))
            generation = gen or b"0"
        except Exception:  # fail open to the database on Redis errors
            log.warning("billing state cache unavailable", exc_info=True)
            redis = None
    session = _session_for(tenant)
    if session is None:
        return None
    state = load_state(session, tenant_id)
    if redis is not None and tenant_id not in session.info.get(_DIRTY_KEY, set()):
        _cache_if_generation(redis, tenant_id, state, generation)
    return state


def _cache_if_generation(redis: Any, tenant_id: uuid.UUID, state: BillingState, generation: bytes) -> None:
    """``SET`` the state unless the generation moved (``WATCH``/``MULTI``: an invalidation in
    between aborts the write). Both keys share the ``{t:<id>}`` hash tag (one cluster slot)."""
    import redis as redis_lib

    try:
        with redis.pipeline(transaction=True) as pipe:
            pipe.watch(generation_key(tenant_id))
            if (pipe.get(generation_key(tenant_id)) or b"0") != generation:
                return
            pipe.multi()
            pipe.set(cache_key(tenant_id), json.dumps(asdict(state)), ex=CACHE_TTL_SECONDS)
            pipe.execute()
    except redis_lib.WatchError:
        return
    except Exception:
        log.warning("billing state cache unavailable", exc_info=True)


def _session_for(tenant: Any) -> Session | None:
    try:
        session = object_session(tenant)
    except Exception:
        session = None
    if session is None and has_request_context():
        from saas import db

        session = db.session()
    return session


def entitlements_for(tenant: Any) -> Entitlements:
    """Entitlements of ``tenant`` (anything with ``id`` and ``plan``, normally a ``Tenant`` row)
    now: plan, subscription status with its grace period, and operator overrides.

    Fast path: one Redis round trip; the database is read on a cache miss only. Raises nothing for an
    unknown plan (the default plan applies).
    """
    state = billing_state(tenant)
    if state is None:
        p = plan(getattr(tenant, "plan", None))
        return Entitlements(p.id, p.seats, p.requests_per_minute, p.monthly_api_calls, p.features)
    return compute_entitlements(getattr(tenant, "plan", None), state)


_DIRTY_KEY = "billing_dirty_tenants"


def invalidate(session: Session | None, tenant_id: uuid.UUID, *, redis: Any = None) -> None:
    """Drop the tenant's cached billing state now and again once ``session`` commits (so no
    reader re-caches the state of before the change).

    ``redis``: the client holding the cache; the current app's when omitted (a CLI command,
    which has no app, passes its services' own)."""
    from saas.cache import invalidate_tenant

    invalidate_tenant([tenant_id])  # the principal snapshot caches entitlements too
    redis = redis if redis is not None else _redis(tenant_id)
    if session is not None:
        session.info.setdefault(_DIRTY_KEY, set()).add(tenant_id)
        session.info["billing_redis"] = redis
    if redis is not None:
        _drop(redis, [tenant_id])


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    dirty = session.info.pop(_DIRTY_KEY, None)
    redis = session.info.pop("billing_redis", None)
    if dirty:
        from saas.cache import invalidate_tenant

        invalidate_tenant(dirty)
    if dirty and redis is not None:
        _drop(redis, dirty)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    dirty = session.info.pop(_DIRTY_KEY, None)
    redis = session.info.pop("billing_redis", None)
    if dirty and redis is not None:
        _drop(redis, dirty)


def plans_with_feature(feature: str) -> list[Plan]:
    """Plans whose catalogue entry grants ``feature`` (a truthy value), cheapest first
    (catalogue order)."""
    _, plans = catalogue()
    return [p for p in plans.values() if p.features.get(feature)]


def feature_kinds() -> dict[str, type]:
    """Every feature the catalogue in force declares -> its kind (``bool``, ``int``, ``str``)."""
    return _feature_kinds(catalogue()[1])


def has(tenant: Any, feature: str) -> bool:
    """Whether ``tenant``'s entitlements now (plan, subscription status, operator override:
    :func:`entitlements_for`) grant ``feature``: a truthy value of ``features``. A feature no
    plan declares is never granted (unless an override names it). The one question every
    feature gate asks (:func:`check_feature`, :func:`require_feature`)."""
    return bool(entitlements_for(tenant).features.get(feature))


def describe_features(entitlements: Entitlements) -> list[dict[str, Any]]:
    """The catalogue's features (and any an override adds) as ``GET /api/v1/billing`` lists
    them: ``{"name", "enabled", "value", "cheapest_plan"}`` each, in catalogue order;
    ``value`` is the entitlement (``false`` for a flag the plan lacks), ``cheapest_plan`` the
    first plan that grants it (None: no plan does)."""
    kinds = feature_kinds()
    names = [*kinds, *(k for k in entitlements.features if k not in kinds)]
    rows = []
    for name in names:
        value = entitlements.features.get(name, False if kinds.get(name, bool) is bool else None)
        offering = plans_with_feature(name)
        rows.append(
            {
                "name": name,
                "enabled": bool(value),
                "value": value,
                "cheapest_plan": offering[0].id if offering else None,
            }
        )
    return rows


def check_feature(tenant: Any, feature: str) -> None:
    """Raise :class:`EntitlementRequired` unless :func:`has` ``(tenant, feature)``.

    Raises:
        EntitlementRequired: 402 ``entitlement_required`` with members ``feature`` and ``plan``
        (the cheapest plan of the catalogue that grants it, None when none does).
    """
    if has(tenant, feature):
        return
    offering = plans_with_feature(feature)
    cheapest = offering[0] if offering else None
    detail = f"The tenant's plan does not include {feature!r}."
    if cheapest is not None:
        detail += f" The {cheapest.name} plan has it (POST /api/v1/billing/checkout)."
    raise EntitlementRequired(detail, extra={"feature": feature, "plan": cheapest.id if cheapest else None})


def require_feature(feature: str) -> Callable[[F], F]:
    """Decorator (under ``require(...)``): the caller's tenant's plan must grant ``feature``
    (``plans.toml`` ``features``), else 402 ``entitlement_required`` with members ``feature``
    and ``plan`` (the cheapest plan that has it, in catalogue order). Recorded on the view as
    ``_required_feature`` and documented as a 402 response in the OpenAPI document."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from saas.auth.context import current_principal

            check_feature(current_principal().tenant, feature)
            return view(*args, **kwargs)

        wrapper._required_feature = feature  # type: ignore[attr-defined]
        doc = copy.deepcopy(getattr(wrapper, "_apidoc", {}))
        doc.setdefault("response", {}).setdefault("responses", {}).setdefault(402, []).append(
            "PAYMENT_REQUIRED"
        )
        doc.setdefault("manual_doc", {})["x-required-feature"] = feature
        wrapper._apidoc = doc  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


def require_feature_admin(permission: str, feature: str) -> Callable[[F], F]:
    """Decorator: the gate of a plan feature's management endpoint (SSO, SCIM, domains, custom
    roles), outermost first: ``require(permission)`` (401, 403 ``permission_denied``),
    ``require_verified_email`` (403 ``email_not_verified``), :func:`require_feature` (402
    ``entitlement_required``). The same three decorators stacked by hand, so each records and
    documents what it does; ``@require_step_up()`` goes below it where the action needs one."""
    from saas.auth.context import require, require_verified_email

    def decorator(view: F) -> F:
        return require(permission)(require_verified_email(require_feature(feature)(view)))

    return decorator
