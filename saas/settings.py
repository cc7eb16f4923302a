"""Typed settings, read once from the environment inside ``create_app`` (12-factor).

Every value has an explicit converter; a missing or malformed value raises
:class:`SettingsError` whose message is one line naming the variable, and start-up stops.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(RuntimeError):
    """A configuration variable is missing or malformed. ``str(err)`` is one line naming it."""


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected one of true/false/1/0/yes/no/on/off")


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("expected a positive integer")
    return value


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        if not raw.startswith(tuple(f"{s}://" for s in schemes)) and not raw.startswith(
            tuple(f"{s}:" for s in schemes)
        ):
            raise ValueError(f"expected a URL with scheme {' or '.join(schemes)}")
        return raw

    return convert


def _redis_url(raw: str) -> str:
    """One server, a cluster or a Sentinel service (:func:`saas.redis_client.check_url`)."""
    from saas.redis_client import check_url

    return check_url(raw)


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0 < value <= 1:
        raise ValueError("expected a number in (0, 1]")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("expected a number >= 0")
    return value


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("expected a number > 0")
    return value


def _nameserver(part: str) -> tuple[str, int]:
    """``host`` or ``host:port`` (``[v6]:port``) -> (IP address, port); port 53 by default."""
    host, port = part, "53"
    if part.startswith("["):
        host, sep, rest = part[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{part}: expected [IPv6]:port")
        port = rest[1:] or "53"
    elif part.count(":") == 1:
        host, port = part.split(":")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"{part}: the host must be an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{part}: expected a port 1..65535")
    return address, int(port)


def _nameservers(raw: str) -> tuple[tuple[str, int], ...]:
    parts = _csv(raw)
    if not parts:
        raise ValueError("expected comma-separated host or host:port")
    return tuple(_nameserver(p) for p in parts)


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("expected an integer >= 0")
    return value


def _readable_file(raw: str) -> str:
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ValueError(f"no such file {raw!r}")
    return str(path.resolve())


def _stripe_key(raw: str) -> str:
    if not raw.startswith(("sk_", "rk_")):
        raise ValueError("expected a Stripe secret or restricted key (sk_... or rk_...)")
    return raw


def _webhook_secrets(raw: str) -> tuple[str, ...]:
    secrets = _csv(raw)
    if not secrets or any(not s.startswith("whsec_") for s in secrets):
        raise ValueError("expected comma-separated webhook signing secrets (whsec_...)")
    return secrets


# social login (saas.auth.social; docs/auth.md, "Social login")
_SOCIAL_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_SOCIAL_KEYS = {"client_id", "client_secret", "issuer", "label", "scopes"}
#: the providers whose endpoints are known: no ``issuer`` needed (any other name needs one)
SOCIAL_WELL_KNOWN = ("google", "github", "microsoft")


def _social_providers(raw: str) -> dict[str, dict[str, str]]:
    """``SOCIAL_PROVIDERS``: a JSON object, name -> ``{"client_id", "client_secret"[, "issuer",
    "label", "scopes"]}`` (a secret may hold any character). ``google``, ``github`` and
    ``microsoft`` know their endpoints; any other name is an OpenID Connect issuer and needs
    ``issuer`` (an ``http(s)`` URL, checked again before use). Error messages never quote a value."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise ValueError(
            'expected a JSON object {"<name>": {"client_id": ..., "client_secret": ...}}'
        ) from None
    if not isinstance(data, dict):
        raise ValueError('expected a JSON object {"<name>": {"client_id": ..., "client_secret": ...}}')
    providers: dict[str, dict[str, str]] = {}
    for name, config in data.items():
        if not isinstance(name, str) or not _SOCIAL_NAME.match(name):
            raise ValueError("provider names are 1-32 of a-z, 0-9 and -, starting with a letter or digit")
        if not isinstance(config, dict):
            raise ValueError(f"{name}: expected an object with client_id and client_secret")
        unknown = sorted(set(config) - _SOCIAL_KEYS)
        if unknown:
            raise ValueError(f"{name}: unknown keys {', '.join(map(str, unknown))[:200]}")
        if any(not isinstance(v, str) or not v.strip() or len(v) > 2048 for v in config.values()):
            raise ValueError(f"{name}: every value is a non-empty string of at most 2048 characters")
        for key in ("client_id", "client_secret"):
            if key not in config:
                raise ValueError(f"{name}: {key} is required")
        if name not in SOCIAL_WELL_KNOWN:
            issuer = config.get("issuer", "")
            if not issuer.startswith(("https://", "http://")):
                raise ValueError(
                    f"{name}: issuer (an https URL) is required for a provider other than "
                    f"{', '.join(SOCIAL_WELL_KNOWN)}"
                )
        elif "issuer" in config and name != "microsoft":
            raise ValueError(f"{name}: its issuer is fixed (only microsoft takes one: a tenant's issuer)")
        providers[name] = {k: v.strip() for k, v in config.items()}
    return providers


def _code_ttl(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 60:
        raise ValueError("expected 1..60 seconds (RFC 9700: authorization codes live at most 60 s)")
    return value


def _argon2_memory(raw: str) -> int:
    value = int(raw)
    if value < 8 * 1024:
        raise ValueError("expected at least 8192 KiB")
    return value


@dataclass(frozen=True)
class Settings:
    """All configuration of one process. Units are in the names (``_seconds``, ``_kib``)."""

    env: str = "production"
    database_url: str | None = None
    #: PostgreSQL itself, bypassing a pooler: migrations (``saas db upgrade``, ``saas tenants
    #: migrate``, ``saas dev``) use it when set (docs/scaling.md)
    database_url_direct: str | None = None
    redis_url: str | None = None
    #: read a ``redis://`` ``REDIS_URL`` as a Redis Cluster seed (``redis+cluster://`` says so
    #: itself); docs/scaling.md "Redis"
    redis_cluster: bool = False
    issuer: str = "http://localhost:8000"
    audience: str = "saas-api"
    secret_key: str | None = None
    var_dir: Path = Path("var")
    #: durable directory for ``saas tenants delete --now`` exports (a volume, not the pod's /tmp)
    export_dir: Path | None = None
    signing_key_path: Path | None = None
    signing_alg: str = "RS256"
    access_token_ttl_seconds: int = 600
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    refresh_token_absolute_ttl_seconds: int = 90 * 24 * 3600
    refresh_reuse_grace_seconds: int = 5
    invitation_ttl_seconds: int = 7 * 24 * 3600
    authorization_code_ttl_seconds: int = 60
    mfa_token_ttl_seconds: int = 300
    mfa_lockout_seconds: int = 900
    step_up_max_age_seconds: int = 600
    # the identity lifecycle (saas.auth.recovery, saas.auth.emails, saas.auth.webauthn; docs/auth.md)
    #: a password-reset link's lifetime (``PASSWORD_RESET_TTL``, default 30 minutes)
    password_reset_ttl_seconds: int = 30 * 60
    #: an email-verification or email-change link's lifetime (``EMAIL_VERIFICATION_TTL``, 48 h)
    email_verification_ttl_seconds: int = 48 * 3600
    #: the WebAuthn relying party id (``WEBAUTHN_RP_ID``); None: the host of ``SAAS_ISSUER``
    webauthn_rp_id: str | None = None
    #: the origins a WebAuthn ceremony may come from (``WEBAUTHN_ORIGINS``, comma-separated);
    #: empty: the origin of ``SAAS_ISSUER``
    webauthn_origins: tuple[str, ...] = ()
    #: the DNS resolvers that verify domains (``DNS_NAMESERVERS``, comma-separated ``host`` or
    #: ``host:port``, each host an IP address, IPv6 in brackets with a port: ``[::1]:53``);
    #: empty: the system resolver (``/etc/resolv.conf``). Kept as ``(address, port)`` pairs.
    dns_nameservers: tuple[tuple[str, int], ...] = ()
    #: how long one domain verification may wait on DNS, in seconds (``DNS_TIMEOUT``, default 5)
    dns_timeout_seconds: float = 5.0
    # per-tenant SSO (saas.auth.sso)
    #: fetch IdP URLs (a SAML ``metadata_url``) over http and from non-public addresses
    #: (``SSO_ALLOW_PRIVATE_URLS``; development and tests only: SSRF otherwise)
    sso_allow_private_urls: bool = False
    # outgoing webhooks (saas.webhooks; docs/webhooks.md)
    #: accept ``http://`` endpoint URLs (``WEBHOOKS_ALLOW_HTTP``; development only)
    webhooks_allow_http: bool = False
    #: accept endpoints resolving to loopback, private, link-local or metadata addresses
    #: (``WEBHOOKS_ALLOW_PRIVATE``; development and tests only: SSRF otherwise)
    webhooks_allow_private: bool = False
    #: one attempt's connect and read timeout, in seconds (``WEBHOOKS_TIMEOUT``, default 10)
    webhooks_timeout_seconds: float = 10.0
    #: the default and highest per-endpoint rate, messages per second (``WEBHOOKS_RATE_LIMIT``)
    webhooks_rate_limit: int = 50
    #: days of failed attempts without a success before an endpoint is disabled
    #: (``WEBHOOKS_DISABLE_AFTER_DAYS``, default 5)
    webhooks_disable_after_days: int = 5
    #: days attempts and messages are kept (``WEBHOOKS_RETENTION_DAYS``, default 30)
    webhooks_retention_days: int = 30
    #: the longest lifetime an API key may be given, in days (``API_KEY_MAX_DAYS``, default 365)
    api_key_max_days: int = 365
    argon2_memory_kib: int = 19 * 1024
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1
    db_pool_size: int = 10
    db_max_overflow: int = 10
    db_pool_pre_ping: bool = True
    #: psycopg's automatic prepared statements; off, safe behind any PgBouncer; on, start-up
    #: refuses a connection it cannot prove direct or tracked (saas.db.verify_prepared_statements)
    db_prepared_statements: bool = False
    redis_timeout_seconds: float = 0.25
    log_level: str = "INFO"
    # operations (saas.ops, saas.worker, saas.observability)
    smtp_url: str | None = None
    mail_from: str = "no-reply@localhost"
    outbox_max_attempts: int = 8
    #: the job engine's broker (``CELERY_BROKER_URL``: ``redis://``, ``rediss://``, ``amqp://``
    #: (RabbitMQ), ``memory://``); None: ``REDIS_URL``, or ``memory://`` without it (one
    #: process: ``saas dev``, ``saas worker`` alone). See docs/operations.md, "Jobs".
    celery_broker_url: str | None = None
    #: the queue the relay publishes to and workers consume (``CELERY_QUEUE``)
    celery_queue: str = "saas"
    #: task threads of one ``saas worker`` (``WORKER_CONCURRENCY``)
    worker_concurrency: int = 4
    #: how long a relayed outbox row waits for its task before it is published again
    #: (``OUTBOX_RELAY_LEASE``, seconds): longer than a message's queueing plus running time
    outbox_relay_lease_seconds: int = 300
    log_format: str = "json"
    #: bearer token a Prometheus scraper sends to ``GET /metrics`` (None: the endpoint is off, 404)
    metrics_token: str | None = None
    #: OTLP/HTTP base URL of a collector (``OTEL_EXPORTER_OTLP_ENDPOINT``, traces are sent to
    #: ``<it>/v1/traces``); None: tracing is off and no OpenTelemetry module is imported
    #: (saas.observability.tracing, docs/observability.md)
    otel_endpoint: str | None = None
    #: the ``service.name`` resource attribute of every span (``OTEL_SERVICE_NAME``)
    otel_service_name: str = "saas-backend"
    #: Sentry's DSN (``SENTRY_DSN``); None: Sentry is off and ``sentry_sdk`` is not imported
    sentry_dsn: str | None = None
    #: Sentry's ``environment`` tag (``SENTRY_ENVIRONMENT``); None: ``SAAS_ENV``
    sentry_environment: str | None = None
    # rate limits, quotas and cache (saas.limits, saas.cache; docs/limits.md)
    ratelimit_enabled: bool = True
    ratelimit_policies: tuple[str, ...] = ()
    ratelimit_principal_share: float = 0.5
    ratelimit_fail_closed: tuple[str, ...] = ("login", "mfa", "token", "signup", "mail")
    #: reverse proxies in front of the app that append to X-Forwarded-For/-Proto (0: none; the
    #: client address is the socket peer). See docs/limits.md "Client IP behind a proxy".
    trusted_proxy_hops: int = 0
    redis_breaker_threshold: int = 2
    redis_breaker_cooldown_seconds: float = 2.0
    cache_enabled: bool = True
    cache_ttl_seconds: int = 300
    cache_local_ttl_seconds: float = 0.5
    # billing (saas.billing): off while stripe_secret_key is None
    stripe_secret_key: str | None = None
    stripe_webhook_secrets: tuple[str, ...] = ()
    stripe_prices: Mapping[str, str] = field(default_factory=dict)  # env name -> Stripe price id
    stripe_api_base: str = "https://api.stripe.com"
    stripe_meter_event_name: str = "api_calls"
    billing_grace_days: int = 7
    #: seconds between two usage reports to Stripe by each ``saas worker`` (0: the worker never
    #: reports; ``saas billing report-usage`` still does). docs/billing.md "Usage"
    usage_report_interval_seconds: int = 900
    billing_return_url: str | None = None
    #: the plan catalogue (TOML); None: the packaged ``saas/billing/plans.toml`` (docs/billing.md)
    plans_file: str | None = None
    #: Checkout's ``payment_method_collection`` for a plan with ``trial_days`` that does not set
    #: its own: ``always`` (a card up front) or ``if_required`` (a trial without a card)
    billing_trial_payment_method: str = "always"
    #: Checkout shows its promotion-code field (``allow_promotion_codes``)
    billing_allow_promotion_codes: bool = False
    #: Stripe Tax at Checkout (``automatic_tax[enabled]``)
    billing_automatic_tax: bool = False
    #: Checkout collects the buyer's tax ids (``tax_id_collection[enabled]``)
    billing_tax_id_collection: bool = False
    # social login (saas.auth.social; docs/auth.md, "Social login")
    #: ``SOCIAL_PROVIDERS`` (JSON): name -> {client_id, client_secret[, issuer, label, scopes]}
    social_providers: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # one spelling of the issuer everywhere (discovery, the iss claim, RFC 9207 iss): no
        # trailing slash, whichever way the value arrived (env, constructor, with_overrides)
        if self.issuer != self.issuer.rstrip("/"):
            object.__setattr__(self, "issuer", self.issuer.rstrip("/"))

    @property
    def billing_enabled(self) -> bool:
        """Billing runs only with a Stripe secret key; without it every tenant is on the default plan."""
        return bool(self.stripe_secret_key)

    @property
    def is_testing(self) -> bool:
        return self.env == "test"

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (tests, CLI flags)."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the process environment (or ``environ``) once.

        Raises:
            SettingsError: a variable is malformed; the message names it.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}

        def maybe(name: str, attr: str, convert: Callable[[str], Any] = str) -> None:
            raw = env.get(name)
            if raw is None or raw == "":
                return
            try:
                values[attr] = convert(raw)
            except (ValueError, TypeError) as exc:
                raise SettingsError(f"{name}: {exc} (got {_redact(name, raw)!r})") from None

        maybe("SAAS_ENV", "env", _choice("development", "production", "test"))
        maybe("DATABASE_URL", "database_url", _url(("postgresql", "postgresql+psycopg", "postgres")))
        direct = _url(("postgresql", "postgresql+psycopg", "postgres"))
        maybe("DATABASE_URL_DIRECT", "database_url_direct", direct)
        maybe("REDIS_URL", "redis_url", _redis_url)
        maybe("REDIS_CLUSTER", "redis_cluster", _bool)
        maybe("SAAS_ISSUER", "issuer", _url(("http", "https")))
        maybe("SAAS_AUDIENCE", "audience")
        maybe("SECRET_KEY", "secret_key")
        maybe("SAAS_VAR_DIR", "var_dir", Path)
        maybe("SAAS_EXPORT_DIR", "export_dir", Path)
        maybe("SAAS_SIGNING_KEY_PATH", "signing_key_path", Path)
        maybe("SAAS_SIGNING_ALG", "signing_alg", _choice("RS256", "ES256"))
        maybe("ACCESS_TOKEN_TTL", "access_token_ttl_seconds", _positive_int)
        maybe("REFRESH_TOKEN_TTL", "refresh_token_ttl_seconds", _positive_int)
        maybe("REFRESH_TOKEN_ABSOLUTE_TTL", "refresh_token_absolute_ttl_seconds", _positive_int)
        maybe("INVITATION_TTL", "invitation_ttl_seconds", _positive_int)
        maybe("AUTHORIZATION_CODE_TTL", "authorization_code_ttl_seconds", _code_ttl)
        maybe("MFA_TOKEN_TTL", "mfa_token_ttl_seconds", _positive_int)
        maybe("MFA_LOCKOUT", "mfa_lockout_seconds", _positive_int)
        maybe("STEP_UP_MAX_AGE", "step_up_max_age_seconds", _positive_int)
        maybe("PASSWORD_RESET_TTL", "password_reset_ttl_seconds", _positive_int)
        maybe("EMAIL_VERIFICATION_TTL", "email_verification_ttl_seconds", _positive_int)
        maybe("WEBAUTHN_RP_ID", "webauthn_rp_id")
        maybe("WEBAUTHN_ORIGINS", "webauthn_origins", _csv)
        maybe("DNS_NAMESERVERS", "dns_nameservers", _nameservers)
        maybe("DNS_TIMEOUT", "dns_timeout_seconds", _positive_float)
        maybe("SSO_ALLOW_PRIVATE_URLS", "sso_allow_private_urls", _bool)
        maybe("API_KEY_MAX_DAYS", "api_key_max_days", _positive_int)
        maybe("WEBHOOKS_ALLOW_HTTP", "webhooks_allow_http", _bool)
        maybe("WEBHOOKS_ALLOW_PRIVATE", "webhooks_allow_private", _bool)
        maybe("WEBHOOKS_TIMEOUT", "webhooks_timeout_seconds", _positive_float)
        maybe("WEBHOOKS_RATE_LIMIT", "webhooks_rate_limit", _positive_int)
        maybe("WEBHOOKS_DISABLE_AFTER_DAYS", "webhooks_disable_after_days", _positive_int)
        maybe("WEBHOOKS_RETENTION_DAYS", "webhooks_retention_days", _positive_int)
        maybe("ARGON2_MEMORY_KIB", "argon2_memory_kib", _argon2_memory)
        maybe("ARGON2_TIME_COST", "argon2_time_cost", _positive_int)
        maybe("ARGON2_PARALLELISM", "argon2_parallelism", _positive_int)
        maybe("DB_POOL_SIZE", "db_pool_size", _positive_int)
        maybe("DB_MAX_OVERFLOW", "db_max_overflow", int)
        maybe("DB_POOL_PRE_PING", "db_pool_pre_ping", _bool)
        maybe("DB_PREPARED_STATEMENTS", "db_prepared_statements", _bool)
        maybe("REDIS_TIMEOUT", "redis_timeout_seconds", float)
        maybe("LOG_LEVEL", "log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR"))
        maybe("SMTP_URL", "smtp_url", _url(("smtp", "smtps")))
        maybe("MAIL_FROM", "mail_from")
        maybe("OUTBOX_MAX_ATTEMPTS", "outbox_max_attempts", _positive_int)
        broker = _url(("redis", "rediss", "amqp", "amqps", "pyamqp", "memory"))
        maybe("CELERY_BROKER_URL", "celery_broker_url", broker)
        maybe("CELERY_QUEUE", "celery_queue")
        maybe("WORKER_CONCURRENCY", "worker_concurrency", _positive_int)
        maybe("OUTBOX_RELAY_LEASE", "outbox_relay_lease_seconds", _positive_int)
        maybe("LOG_FORMAT", "log_format", _choice("json", "console"))
        maybe("METRICS_TOKEN", "metrics_token")
        maybe("OTEL_EXPORTER_OTLP_ENDPOINT", "otel_endpoint", _url(("http", "https")))
        maybe("OTEL_SERVICE_NAME", "otel_service_name")
        maybe("SENTRY_DSN", "sentry_dsn", _url(("http", "https")))
        maybe("SENTRY_ENVIRONMENT", "sentry_environment")
        maybe("RATELIMIT_ENABLED", "ratelimit_enabled", _bool)
        maybe("RATELIMIT_POLICIES", "ratelimit_policies", _csv)
        maybe("RATELIMIT_PRINCIPAL_SHARE", "ratelimit_principal_share", _fraction)
        maybe("RATELIMIT_FAIL_CLOSED", "ratelimit_fail_closed", _csv)
        maybe("TRUSTED_PROXY_HOPS", "trusted_proxy_hops", _non_negative_int)
        maybe("REDIS_BREAKER_THRESHOLD", "redis_breaker_threshold", _positive_int)
        maybe("REDIS_BREAKER_COOLDOWN", "redis_breaker_cooldown_seconds", _non_negative_float)
        maybe("CACHE_ENABLED", "cache_enabled", _bool)
        maybe("CACHE_TTL", "cache_ttl_seconds", _positive_int)
        maybe("CACHE_LOCAL_TTL", "cache_local_ttl_seconds", _non_negative_float)
        maybe("STRIPE_SECRET_KEY", "stripe_secret_key", _stripe_key)
        maybe("STRIPE_WEBHOOK_SECRET", "stripe_webhook_secrets", _webhook_secrets)
        maybe("STRIPE_API_BASE", "stripe_api_base", _url(("http", "https")))
        maybe("STRIPE_METER_EVENT_NAME", "stripe_meter_event_name")
        maybe("BILLING_GRACE_DAYS", "billing_grace_days", _non_negative_int)
        maybe("USAGE_REPORT_INTERVAL", "usage_report_interval_seconds", _non_negative_int)
        maybe("BILLING_RETURN_URL", "billing_return_url", _url(("http", "https")))
        maybe("PLANS_FILE", "plans_file", _readable_file)
        trial_payment = _choice("always", "if_required")
        maybe("BILLING_TRIAL_PAYMENT_METHOD", "billing_trial_payment_method", trial_payment)
        maybe("BILLING_ALLOW_PROMOTION_CODES", "billing_allow_promotion_codes", _bool)
        maybe("BILLING_AUTOMATIC_TAX", "billing_automatic_tax", _bool)
        maybe("BILLING_TAX_ID_COLLECTION", "billing_tax_id_collection", _bool)
        maybe("SOCIAL_PROVIDERS", "social_providers", _social_providers)  # social login
        prices = {k: v.strip() for k, v in env.items() if k.startswith("STRIPE_PRICE_") and v.strip()}
        for name, price in prices.items():
            if not price.startswith(("price_", "plan_")):
                raise SettingsError(f"{name}: expected a Stripe price id (price_...) (got {price!r})")
        if prices:
            values["stripe_prices"] = prices
        settings = cls(**values)
        for attr in ("database_url", "database_url_direct"):
            url = getattr(settings, attr)
            if url and url.startswith("postgres://"):
                settings = replace(settings, **{attr: "postgresql://" + url[11:]})
        if settings.env == "production" and not settings.secret_key and settings.database_url:
            raise SettingsError("SECRET_KEY: required when SAAS_ENV=production and DATABASE_URL is set")
        return settings


def _choice(*options: str) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        for option in options:
            if raw.lower() == option.lower():
                return option
        raise ValueError(f"expected one of {', '.join(options)}")

    return convert


_SECRET_WORDS = ("SECRET", "KEY", "PASSWORD", "TOKEN")


def _redact(name: str, raw: str) -> str:
    """What may be shown of a rejected value: nothing of a secret, no credentials of a URL."""
    if any(word in name for word in _SECRET_WORDS) or name == "SOCIAL_PROVIDERS":  # holds secrets
        return "***"
    return re.sub(r"//[^/@\s]*@", "//***@", raw)


SETTING_NAMES = tuple(f.name for f in fields(Settings))
