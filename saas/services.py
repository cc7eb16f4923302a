"""The platform's services: one typed, frozen object instead of string-keyed extensions.

:func:`build_services` makes every framework-free service the platform has, from
:class:`~saas.settings.Settings`, in dependency order. ``create_app`` builds it once and keeps it
as ``app.extensions["saas"]``; a request reaches it with :func:`services`. Code that needs a
service but no HTTP layer (a CLI command, a job) can call :func:`build_services` without an app.

The design follows warehouse's services registered by interface
(``warehouse/subscriptions/interfaces.py`` beside ``services.py``): code asks for a typed
attribute, never for a string key, so a type checker sees a missing or misspelt service and
every field's type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

if TYPE_CHECKING:
    from redis import Redis

    from saas.auth.keys import KeyStore
    from saas.auth.revocation import RevocationStore
    from saas.auth.tokens import TokenService
    from saas.billing.service import Billing
    from saas.cache.core import TenantCache
    from saas.cache.guard import Counters, RedisGuard
    from saas.cache.signing_keys import KeyWatcher
    from saas.db import Database
    from saas.identity.passwords import Passwords
    from saas.limits import Limiter
    from saas.settings import Settings

__all__ = ["Services", "build_services", "services"]

#: the one extension key: ``app.extensions[EXTENSION]`` is the app's :class:`Services`
EXTENSION = "saas"


@dataclass(frozen=True, slots=True)
class Services:
    """Every framework-free service of one deployment (immutable once built).

    Attributes:
        settings: the configuration it was built from.
        database: engines, sessions and the tenant schema map (:class:`saas.db.Database`).
        redis: the raw Redis client; use ``redis_guard`` for calls that must respect the breaker.
        counters: the Redis guard's, limiter's and cache's counters (exported by ``/metrics``).
        redis_guard: Redis behind the shared circuit breaker (:mod:`saas.cache.guard`).
        cache: the tenant-namespaced cache, or None when ``CACHE_ENABLED`` is off.
        keys: the signing key store (PEM files, JWKS, rotation).
        key_watcher: reloads ``keys`` when another process rotates them.
        tokens: RFC 9068 access tokens signed with ``keys``.
        passwords: the Argon2id hasher.
        revocations: revoked sessions and clients on Redis (:mod:`saas.auth.revocation`).
        limiter: rate limits and quotas (:mod:`saas.limits`).
        billing: the Stripe-backed billing handle, or None when billing is off.
    """

    settings: Settings
    database: Database
    redis: Redis
    counters: Counters
    redis_guard: RedisGuard
    cache: TenantCache | None
    keys: KeyStore
    key_watcher: KeyWatcher
    tokens: TokenService
    passwords: Passwords
    revocations: RevocationStore
    limiter: Limiter
    billing: Billing | None


def build_services(settings: Settings, *, database: Database | None = None, redis: Any = None) -> Services:
    """Build the services of ``settings``.

    Args:
        settings: the configuration.
        database: a :class:`saas.db.Database` (tests pass one bound to a rolled-back connection);
            made from ``settings.database_url`` when omitted.
        redis: a Redis client; made from ``settings.redis_url`` when omitted.

    Raises:
        SettingsError: ``DATABASE_URL`` missing, or billing on without its webhook secret.
        CatalogueError: the plan catalogue is invalid, or a paid plan lacks its price id.
    """
    from saas.auth.keys import KeyStore
    from saas.auth.revocation import RevocationStore
    from saas.auth.tokens import LEEWAY_SECONDS, TokenService
    from saas.billing import entitlements
    from saas.billing.service import make_billing
    from saas.cache.core import TenantCache
    from saas.cache.guard import CircuitBreaker, Counters, RedisGuard
    from saas.cache.signing_keys import KeyWatcher
    from saas.db import Database
    from saas.identity.passwords import Passwords
    from saas.limits import Limiter
    from saas.redis_client import make_redis
    from saas.settings import SettingsError

    if database is None:
        if not settings.database_url:
            raise SettingsError("DATABASE_URL: required (or run `saas dev` for an embedded PostgreSQL)")
        database = Database.from_url(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pre_ping=settings.db_pool_pre_ping,
            prepared_statements=settings.db_prepared_statements,
        )
    if redis is None:
        redis = make_redis(settings.redis_url, settings.redis_timeout_seconds)
    counters = Counters()
    breaker = CircuitBreaker(settings.redis_breaker_threshold, settings.redis_breaker_cooldown_seconds)
    guard = RedisGuard(redis, breaker, counters)
    cache = (
        TenantCache(guard, ttl=settings.cache_ttl_seconds, local_ttl=settings.cache_local_ttl_seconds)
        if settings.cache_enabled
        else None
    )
    keys = KeyStore(
        settings.signing_key_path or settings.var_dir / "keys",
        settings.signing_alg,
        generate=settings.signing_key_path is None,
        max_token_age=settings.access_token_ttl_seconds + LEEWAY_SECONDS,
    )
    entitlements.catalogue()
    if settings.billing_enabled and not settings.stripe_webhook_secrets:
        raise SettingsError("STRIPE_WEBHOOK_SECRET: required when STRIPE_SECRET_KEY is set")
    return Services(
        settings=settings,
        database=database,
        redis=redis,
        counters=counters,
        redis_guard=guard,
        cache=cache,
        keys=keys,
        key_watcher=KeyWatcher(keys, guard, check_interval=0.5),
        tokens=TokenService(keys, settings.issuer, settings.audience, settings.access_token_ttl_seconds),
        passwords=Passwords(
            settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism
        ),
        revocations=RevocationStore(guard, settings.access_token_ttl_seconds + LEEWAY_SECONDS),
        limiter=Limiter(guard, settings),
        billing=make_billing(settings),
    )


def services(app: Flask | None = None) -> Services:
    """The services of ``app``, or of the current app when ``app`` is None.

    Raises:
        RuntimeError: ``app`` is None outside an application context (Flask's own error).
        KeyError: ``app`` was not made by ``create_app``.
    """
    return (app if app is not None else current_app).extensions[EXTENSION]
