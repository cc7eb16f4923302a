"""Caching: a tenant-namespaced Redis cache, fresh signing keys, and the HTTP caching headers
of the API (the cached principal snapshot built on it is :mod:`saas.auth.principals`).

``init_app(app)`` (called by ``create_app``) registers:

* ``services(app).redis_guard``: the Redis client behind the circuit breakers shared with
  the limiter (one per node on a Redis Cluster: :mod:`saas.cache.guard`);
  ``services(app).counters``: its counters;
* ``services(app).cache``: the :class:`~saas.cache.core.TenantCache` (absent when
  ``CACHE_ENABLED=false``);
* ``services(app).key_watcher``: signing keys reloaded on rotation;
* response headers: ``ETag`` on ``GET`` of a single JSON resource (with ``If-None-Match`` ->
  304) and ``Cache-Control: private, no-store`` on every authenticated JSON response that does
  not set its own.

Public API: :func:`invalidate_tenant`, :class:`TenantCache`, :func:`publish_rotation`. See docs/limits.md.
"""

from __future__ import annotations

import hashlib

from flask import Flask, Response, request

from saas.cache.core import MISS, TenantCache, invalidate_tenant
from saas.cache.guard import CircuitBreaker, Counters, RedisGuard, RedisUnavailable
from saas.cache.signing_keys import KeyWatcher, announce_rotation, publish_rotation
from saas.http import has_header, set_default_header
from saas.services import services

__all__ = [
    "MISS",
    "CircuitBreaker",
    "Counters",
    "KeyWatcher",
    "RedisGuard",
    "RedisUnavailable",
    "TenantCache",
    "announce_rotation",
    "init_app",
    "invalidate_tenant",
    "publish_rotation",
]


def init_app(app: Flask) -> None:
    """The cache's hooks: the key watcher first of the request's hooks, ETag / Cache-Control last
    (the guard, the cache and the watcher themselves are built by :func:`saas.bootstrap.build_services`)."""
    svc = services(app)
    # first of the request's hooks: a rotation is seen before the token is verified
    app.before_request_funcs.setdefault(None, []).insert(0, svc.key_watcher.maybe_check)
    app.after_request(_http_caching)


def _http_caching(response: Response) -> Response:
    """``ETag`` on single JSON resources, ``no-store`` on authenticated JSON."""
    if response.mimetype != "application/json":
        return response
    authenticated = "HTTP_AUTHORIZATION" in request.environ
    if authenticated or request.path.startswith("/api/"):
        set_default_header(response.headers, "Cache-Control", "private, no-store")
    if (
        request.method in ("GET", "HEAD")
        and response.status_code == 200
        and request.path.startswith("/api/")
        and not response.is_streamed
    ):
        if not has_header(response.headers, "ETag"):
            body = response.get_data()
            if body[:1] != b"{":  # a collection or anything else: no validator
                return response
            response.set_etag(hashlib.sha256(body).hexdigest()[:32], weak=True)
        response.make_conditional(request)
    return response
