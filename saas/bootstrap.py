"""The composition root: :func:`build_services` builds every framework-free service of a
deployment from its settings, in dependency order (``create_app`` calls it; so can a CLI command
or a job that needs services but no Flask app).

It is the one module that imports every service's implementation; everything else reads the
result through :func:`saas.services.services` and depends only on the :class:`Services` type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from saas.services import Services

if TYPE_CHECKING:
    from saas.db import Database
    from saas.settings import Settings

__all__ = ["build_services"]


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
    from saas.webhooks import events as webhook_events

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
        redis = make_redis(settings.redis_url, settings.redis_timeout_seconds, settings.redis_cluster)
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
    entitlements.use_catalogue(settings.plans_file)
    webhook_events.install()  # audit streaming: each audit event to the endpoints subscribed to audit.*
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
        entitlements=entitlements.entitlements_for,
    )
