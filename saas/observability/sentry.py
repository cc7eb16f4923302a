"""Sentry error reports (sentry-sdk), on only when ``SENTRY_DSN`` is set; scrubbed before sending.

``saas.observability.init_sentry`` imports this module only with a DSN, so without one
``sentry_sdk`` is never imported. With one, :func:`init_app` calls ``sentry_sdk.init`` with:

- ``send_default_pii`` False (the SDK's default, not passed: sentry-sdk 2.75 deprecates the
  option in favour of ``data_collection``, which older releases lack; a test checks the client's
  ``should_send_default_pii()``): no cookies, no user IP, no user from the framework;
  ``include_local_variables=False`` (a frame's locals can hold a password), no Sentry tracing
  (traces are OpenTelemetry's, :mod:`saas.observability.tracing`), the Flask integration naming
  transactions by URL rule (``transaction_style="url"``) and the logging integration (an
  ``ERROR`` record with an exception becomes an event: the 500 handler of ``saas.errors`` logs
  every unhandled error, so that is how a view's error reaches Sentry);
- tags ``tenant_id`` (the principal's tenant, or the tenant a hosted page resolved),
  ``request_id`` (the ``X-Request-ID`` the response carries) and, with tracing on, ``trace_id``
  (the OpenTelemetry trace of the request), read from the request in :func:`before_send`;
- :func:`before_send` (``before_send`` and ``before_breadcrumb`` of the SDK's options,
  docs.sentry.io "Filtering" / "Scrubbing Sensitive Data"): drops the request's ``Authorization``,
  ``Cookie``, ``Proxy-Authorization``, ``Set-Cookie`` and ``X-Api-Key`` headers, its cookies and its
  query string, every value whose key names a secret (password, token, secret, client_secret,
  authorization, cookie, api key, code..., :data:`saas.observability.logging.SECRET_KEY_RE`) at
  any depth (bodies, extra, contexts, breadcrumbs), JWTs and bearer credentials inside strings,
  and email addresses anywhere; of the user, only the id is kept.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, g, has_request_context

from saas.observability.logging import REDACTED, SECRET_KEY_RE, scrub_value
from saas.settings import Settings

#: request headers never sent (Sentry's own list drops most; said again here)
DROPPED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})
EMAIL_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_EMAIL_REPLACEMENT = "[email]"


def _clean(value: Any, depth: int = 0) -> Any:
    """Secrets and emails out of ``value`` (dicts by key, strings by pattern), at any depth."""
    if isinstance(value, str):
        value = scrub_value(value)
        return EMAIL_RE.sub(_EMAIL_REPLACEMENT, value) if "@" in value else value
    if depth > 20:
        return value
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and SECRET_KEY_RE.search(k) else _clean(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_clean(v, depth + 1) for v in value]
    return value


def scrub_event(event: dict[str, Any]) -> dict[str, Any]:
    """The event as it may leave the process (the module docstring's list)."""
    request = event.get("request")
    if isinstance(request, dict):
        headers = request.get("headers")
        if isinstance(headers, dict):
            request["headers"] = {k: v for k, v in headers.items() if k.lower() not in DROPPED_HEADERS}
        request.pop("cookies", None)
        request.pop("query_string", None)
        url = request.get("url")
        if isinstance(url, str):
            request["url"] = url.split("?", 1)[0]
    user = event.get("user")
    if isinstance(user, dict):
        event["user"] = {"id": user["id"]} if "id" in user else {}
    # the tags carry only ids; every other part is cleaned (message, exception values, extra,
    # contexts, breadcrumbs, the request's body and remaining headers)
    return {key: (value if key == "tags" else _clean(value)) for key, value in event.items()}


def _request_tags() -> dict[str, str]:
    if not has_request_context():
        return {}
    tags: dict[str, str] = {}
    principal = g.get("principal")
    tenant_id = getattr(principal, "tenant_id", None) or g.get("log_tenant_id")
    if tenant_id:
        tags["tenant_id"] = str(tenant_id)
    request_id = g.get("request_id")
    if request_id:
        tags["request_id"] = str(request_id)
    trace_id = g.get("trace_id")  # with OpenTelemetry on: the request's trace
    if trace_id:
        tags["trace_id"] = str(trace_id)
    return tags


def before_send(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sentry's ``before_send``: the request's tags added, then :func:`scrub_event`."""
    tags = event.get("tags")
    if not isinstance(tags, dict):
        tags = {}
    event["tags"] = {**tags, **_request_tags()}
    return scrub_event(event)


def before_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    return _clean(crumb)


def init_app(app: Flask, settings: Settings, *, transport: Any = None) -> None:
    """``sentry_sdk.init`` for this process (see the module docstring). ``transport``: a
    ``sentry_sdk.transport.Transport`` subclass in place of HTTP to the DSN (tests)."""
    import sentry_sdk
    from sentry_sdk.integrations.flask import FlaskIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration

    options: dict[str, Any] = {}
    if transport is not None:
        options["transport"] = transport
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment or settings.env,
        include_local_variables=False,
        traces_sample_rate=None,  # no Sentry tracing: OpenTelemetry's
        before_send=before_send,
        before_breadcrumb=before_breadcrumb,
        max_request_body_size="medium",  # bodies up to 10 kB, scrubbed by before_send
        integrations=[FlaskIntegration(transaction_style="url"), LoggingIntegration()],
        **options,
    )
    app.extensions["saas.sentry"] = True
