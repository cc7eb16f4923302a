"""The platform: ``create_app`` builds one Flask application serving every tenant.

It reads as the list of the platform's parts, each with its own ``init_app``. It starts no
server and runs no migration: ``saas dev`` and ``saas db upgrade`` do that.
"""

from __future__ import annotations

import re
import secrets
import uuid
from inspect import CO_COROUTINE, iscoroutinefunction
from types import FunctionType
from typing import Any

from flask import Flask, Response, g, request

from saas.http import request_header, set_default_header
from saas.settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError", "create_app"]

#: RFC 6797 on every response that came over https: two years (hstspreload.org's minimum; a
#: shorter max-age is a window for SSL stripping between visits) and the host's own subdomains
#: (which only this host's operator creates). No ``preload``: that commits the whole registrable
#: domain and is the operator's decision, not the application's.
HSTS = "max-age=63072000; includeSubDomains"

#: an incoming X-Request-ID is kept when it fits here (64: the audit log's request_id column)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def create_app(settings: Settings | None = None, *, database=None, redis=None) -> Flask:
    """Build the application.

    Args:
        settings: configuration; read from the environment when omitted.
        database: a :class:`saas.db.Database` (tests pass one bound to a rolled-back connection);
            made from ``settings.database_url`` when omitted.
        redis: a Redis client; made from ``settings.redis_url`` when omitted.

    Raises:
        SettingsError: configuration missing or malformed (one line naming the variable).
    """
    from saas import api, audit_api, billing, cache, db, errors, health, limits
    from saas.auth import (
        account_api,
        account_pages,
        api_key_views,
        hosted,
        logout_pages,
        principals,
        revocation,
        webauthn_views,
    )
    from saas.auth import api as auth_api
    from saas.auth import views as auth_views
    from saas.auth.context import authenticate_request, reject_bad_credentials
    from saas.auth.oauth import routes as oauth_routes
    from saas.auth.oauth import server as oauth_server
    from saas.auth.sso import saml as sso_saml
    from saas.bootstrap import build_services
    from saas.product import product
    from saas.scim import admin_views as scim_admin_views
    from saas.scim import views as scim_views
    from saas.services import EXTENSION
    from saas.tenancy import (
        domain_views,
        role_views,  # custom roles
        sso_views,  # per-tenant SSO: the connections API (loads the protocols)
    )
    from saas.tenancy import views as tenancy_views
    from saas.webhooks import views as webhook_views

    settings = settings or Settings.from_env()
    from saas import observability

    observability.configure_logging(settings.log_level, settings.log_format)

    app = App("saas")
    app.config["SECRET_KEY"] = settings.secret_key or secrets.token_hex(32)
    app.config["MAX_CONTENT_LENGTH"] = api.MAX_BODY_BYTES
    app.config["JSON_SORT_KEYS"] = False
    app.url_map.strict_slashes = False
    if settings.trusted_proxy_hops > 0:
        # the client's address and scheme from the last N X-Forwarded-For/-Proto entries (the
        # ones our proxies appended), never from what the client sent: rate-limit keys, audit
        # IPs and the request log see the real client (docs/limits.md)
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]
    # OpenTelemetry (only with OTEL_EXPORTER_OTLP_ENDPOINT) and Sentry (only with SENTRY_DSN):
    # before every other hook, so the request's server span is current for all its spans
    observability.init_tracing(app, settings)
    observability.init_sentry(app, settings)

    services = build_services(settings, database=database, redis=redis)
    app.extensions[EXTENSION] = services
    db.init_app(app)

    _init_request_id(app)
    observability.init_app(app)
    app.before_request(authenticate_request)
    cache.init_app(app)  # Redis guard, tenant cache, key watcher, ETag / Cache-Control
    principals.init_app(app)  # cached principals invalidated by watched ORM changes
    revocation.init_app(app)  # revoked sessions and clients, checked with the principal
    limits.init_app(app)  # rate limits and quotas: one Lua call per request
    app.before_request(reject_bad_credentials)  # a forged token's 401, after the IP limit counted it
    smorest = api.init_app(app)
    errors.init_app(app)  # after flask-smorest, so the problem handlers win
    app.register_blueprint(health.blp)
    hosted.init_app(app)  # the hosted sign-in pages (HTML)
    account_pages.init_app(app)  # the hosted pages of the mailed links (reset, verify, email)
    logout_pages.init_app(app)  # the hosted end-session page (OIDC RP-Initiated Logout)
    sso_saml.init_app(app)  # SAML 2.0 SP: metadata, SP-initiated login, ACS (saas.auth.sso.saml)
    oauth_server.init_app(app)  # Authlib's AuthorizationServer behind /oauth/token, revoke, introspect
    from saas.auth.sso import oidc as sso_oidc

    app.register_blueprint(sso_oidc.bp)  # per-tenant SSO: the OIDC callback (HTML)
    # social login: the hosted routes under /oauth/social/ (HTML) and /api/v1/me/identities
    from saas.auth import social_views
    from saas.auth.social import api as social_api

    app.register_blueprint(social_views.bp)
    for blueprint in (
        auth_views.blp,
        oauth_routes.oauth,
        oauth_routes.wellknown,
        auth_api.blp,
        account_api.blp,
        webauthn_views.blp,
        tenancy_views.blp,
        domain_views.blp,
        role_views.blp,  # custom roles
        sso_views.blp,
        audit_api.blp,
        scim_admin_views.blp,  # SCIM 2.0 setup: tokens, group roles
        api_key_views.blp,  # API keys (saas.auth.api_keys)
        social_api.blp,  # social login: linked identities
        webhook_views.blp,  # outgoing webhooks (saas.webhooks)
    ):
        smorest.register_blueprint(blueprint)
    app.register_blueprint(scim_views.blp)  # /scim/v2: SCIM 2.0 (its own media type and errors)
    billing.init_app(app, smorest)
    for blueprint in product().blueprints:  # the product's own routes (saas.product)
        smorest.register_blueprint(blueprint)
    return app


class App(Flask):
    """The platform's Flask application class.

    ``ensure_sync``: Flask asks ``inspect.iscoroutinefunction`` of every view and hook on every
    request (about twenty calls per request here), which unwraps methods and partials in Python
    each time. For a function or a method (every view and hook of this app) the answer is one
    flag of its code object, read here directly; anything else goes through ``inspect``. Every
    view and hook of this app is synchronous; an async one is still wrapped by Flask's
    ``async_to_sync`` as usual. (This replaced a memo keyed by the function, which grew by two
    entries per ``MethodView`` request: its methods are bound to a new instance each time.)"""

    def ensure_sync(self, func: Any) -> Any:
        target = getattr(func, "__func__", func)
        if type(target) is FunctionType and "_is_coroutine_marker" not in target.__dict__:
            is_async = target.__code__.co_flags & CO_COROUTINE  # (the marker: 3.12's markcoroutinefunction)
        else:
            is_async = iscoroutinefunction(func)
        return self.async_to_sync(func) if is_async else func


def _init_request_id(app: Flask) -> None:
    @app.before_request
    def _assign() -> None:
        incoming = request_header("X-Request-ID")
        g.request_id = incoming if _REQUEST_ID_RE.fullmatch(incoming) else uuid.uuid4().hex

    @app.after_request
    def _headers(response: Response) -> Response:
        rid = g.get("request_id")
        if rid:
            response.headers["X-Request-ID"] = rid
        headers = response.headers
        if request.path.startswith("/api/"):
            set_default_header(headers, "Cache-Control", "private, no-store")
        set_default_header(headers, "X-Content-Type-Options", "nosniff")
        if request.scheme == "https":  # from the socket, or X-Forwarded-Proto of a trusted proxy only
            set_default_header(headers, "Strict-Transport-Security", HSTS)
        return response
