"""The platform's services: one typed, frozen object instead of string-keyed extensions.

:func:`saas.bootstrap.build_services` makes every framework-free service the platform has,
from :class:`~saas.settings.Settings`, in dependency order. ``create_app`` builds it once and
keeps it as ``app.extensions["saas"]``; a request reaches it with :func:`services`. Code that
needs a service but no HTTP layer (a CLI command, a job) can call ``build_services`` without an
app. This module imports no service (only their types, for the checker), so every layer may
read it; the composition root that imports them all is :mod:`saas.bootstrap`.

The design follows warehouse's services registered by interface
(``warehouse/subscriptions/interfaces.py`` beside ``services.py``): code asks for a typed
attribute, never for a string key, so a type checker sees a missing or misspelt service and
every field's type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

if TYPE_CHECKING:
    from redis import Redis

    from saas.auth.keys import KeyStore
    from saas.auth.revocation import RevocationStore
    from saas.auth.tokens import TokenService
    from saas.billing.entitlements import Entitlements
    from saas.billing.service import Billing
    from saas.cache.core import TenantCache
    from saas.cache.guard import Counters, RedisGuard
    from saas.cache.signing_keys import KeyWatcher
    from saas.db import Database
    from saas.identity.passwords import Passwords
    from saas.limits import Limiter
    from saas.settings import Settings

__all__ = ["EXTENSION", "Services", "services"]

#: the one extension key: ``app.extensions[EXTENSION]`` is the app's :class:`Services`
EXTENSION = "saas"


@dataclass(frozen=True, slots=True)
class Services:
    """Every framework-free service of one deployment (immutable once built).

    Attributes:
        settings: the configuration it was built from.
        database: engines, sessions and the tenant schema map (:class:`saas.db.Database`).
        redis: the raw Redis client (a ``redis.Redis``, or a ``redis.cluster.RedisCluster`` on a
            cluster: :mod:`saas.redis_client`); use ``redis_guard`` for calls that must respect
            the breaker.
        counters: the Redis guard's, limiter's and cache's counters (exported by ``/metrics``).
        redis_guard: Redis behind the circuit breakers (one per node on a Redis Cluster:
            :mod:`saas.cache.guard`).
        cache: the tenant-namespaced cache, or None when ``CACHE_ENABLED`` is off.
        keys: the signing key store (PEM files, JWKS, rotation).
        key_watcher: reloads ``keys`` when another process rotates them.
        tokens: RFC 9068 access tokens signed with ``keys``.
        passwords: the Argon2id hasher.
        revocations: revoked sessions and clients on Redis (:mod:`saas.auth.revocation`).
        limiter: rate limits and quotas (:mod:`saas.limits`).
        billing: the Stripe-backed billing handle, or None when billing is off.
        entitlements: ``tenant -> Entitlements`` (plan, grace, overrides; cached in Redis), the
            function the principal snapshot calls, so authentication depends on the interface
            and not on the billing package (:func:`saas.billing.entitlements.entitlements_for`).
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
    entitlements: Callable[[Any], Entitlements]


def services(app: Flask | None = None) -> Services:
    """The services of ``app``, or of the current app when ``app`` is None.

    Raises:
        RuntimeError: ``app`` is None outside an application context (Flask's own error).
        KeyError: ``app`` was not made by ``create_app``.
    """
    return (app if app is not None else current_app).extensions[EXTENSION]
