"""``saas doctor``: one line per dependency, each with a verdict ``ok``, ``warn``, ``fail`` or
``skip`` (not configured). Every check has a short timeout and never raises."""

from __future__ import annotations

import os
import smtplib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from saas.settings import Settings, SettingsError

if TYPE_CHECKING:
    from saas.services import Services


@dataclass
class Verdict:
    name: str
    status: str  # ok | warn | fail | skip
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def _timed(fn: Callable[[], str]) -> tuple[str, float]:
    start = time.perf_counter()
    detail = fn()
    return detail, (time.perf_counter() - start) * 1000


def check_config(environ: dict[str, str] | None = None) -> tuple[Verdict, Settings | None]:
    try:
        settings = Settings.from_env(environ)
    except SettingsError as exc:
        return Verdict("config", "fail", str(exc)), None
    notes = []
    if settings.env == "production":
        if not settings.redis_url:
            notes.append("REDIS_URL unset (in-process stand-in: one process only)")
        if settings.issuer.startswith("http://"):
            notes.append("SAAS_ISSUER is not https")
        if settings.signing_key_path is None:
            notes.append("SAAS_SIGNING_KEY_PATH unset (keys generated locally)")
    status = "warn" if notes else "ok"
    return Verdict("config", status, "; ".join(notes) or f"env={settings.env}"), settings


def check_database(engine) -> Verdict:
    from sqlalchemy import text

    try:
        with engine.connect() as conn:
            version, ms = _timed(lambda: conn.scalar(text("SHOW server_version")))
        return Verdict("database", "ok", f"PostgreSQL {version} ({ms:.1f} ms)")
    except Exception as exc:
        return Verdict(
            "database", "fail", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )


def check_redis(client, configured: bool) -> Verdict:
    try:
        _, ms = _timed(lambda: str(client.ping()))
    except Exception as exc:
        return Verdict("redis", "fail", f"{type(exc).__name__}: {exc}")
    if not configured:
        return Verdict("redis", "warn", "in-process stand-in (set REDIS_URL)")
    return Verdict("redis", "ok", f"PONG ({ms:.1f} ms)")


def check_stripe(environ: dict[str, str] | None = None, timeout: float = 3.0) -> Verdict:
    """Reachability of the Stripe API (``STRIPE_API_BASE``, default https://api.stripe.com) when
    a key (``STRIPE_SECRET_KEY`` or ``STRIPE_API_KEY``) is configured. Any HTTP answer counts as
    reachable; the key itself is never sent here."""
    env = os.environ if environ is None else environ
    if not (env.get("STRIPE_SECRET_KEY") or env.get("STRIPE_API_KEY")):
        return Verdict("stripe", "skip", "not configured")
    base = env.get("STRIPE_API_BASE") or "https://api.stripe.com"
    import urllib.error
    import urllib.request

    try:
        req = urllib.request.Request(base.rstrip("/") + "/v1/", method="GET")  # noqa: S310 - configured URL
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                code = resp.status
        except urllib.error.HTTPError as exc:
            code = exc.code
        return Verdict("stripe", "ok", f"{base} answered HTTP {code}")
    except Exception as exc:
        return Verdict("stripe", "fail", f"{base}: {type(exc).__name__}: {exc}")


def check_smtp(url: str | None, timeout: float = 3.0) -> Verdict:
    if not url:
        return Verdict("smtp", "skip", "SMTP_URL unset (mail is printed)")
    parts = urlsplit(url)
    try:
        cls = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
        with cls(parts.hostname or "localhost", parts.port or (465 if parts.scheme == "smtps" else 25),
                 timeout=timeout) as smtp:  # fmt: skip
            code, _ = smtp.noop()
        return Verdict("smtp", "ok" if code == 250 else "warn", f"{parts.hostname}:{parts.port} NOOP {code}")
    except (OSError, smtplib.SMTPException) as exc:
        return Verdict("smtp", "fail", f"{parts.hostname}:{parts.port}: {type(exc).__name__}: {exc}")


def check_migrations(engine) -> Verdict:
    try:
        from saas.migrate import current_shared_revision, shared_head_revision
        from saas.ops.migrations import tenants_behind, track_head

        shared, head = current_shared_revision(engine), shared_head_revision()
        tenant_head = track_head()
        total, behind = tenants_behind(engine, tenant_head)
    except Exception as exc:
        return Verdict("migrations", "fail", f"{type(exc).__name__}: {exc}")
    if shared != head:
        return Verdict("migrations", "fail", f"shared at {shared}, head {head} (run `saas db upgrade`)")
    if behind:
        return Verdict(
            "migrations",
            "fail",
            f"{len(behind)} of {total} tenants behind {tenant_head} (`saas tenants migrate`)",
        )
    return Verdict("migrations", "ok", f"shared at {head}; {total} tenants at {tenant_head}")


def check_keys(keys, max_age_days: int = 90) -> Verdict:
    try:
        active = keys.active
        count = len(keys.keys)
    except Exception as exc:
        return Verdict("signing keys", "fail", f"{type(exc).__name__}: {exc}")
    detail = f"{count} key(s), active kid {active.kid}"
    created = getattr(active, "created", None)  # seconds since the epoch (saas.auth.keys._created)
    if created is not None:
        age = timedelta(seconds=max(0.0, time.time() - created))
        detail += f", {age.days} days old"
        if age > timedelta(days=max_age_days):
            return Verdict("signing keys", "warn", detail + f" (rotate: older than {max_age_days} days)")
    return Verdict("signing keys", "ok", detail)


def check_outbox(engine) -> Verdict:
    from sqlalchemy import func, select

    from saas.db import utcnow
    from saas.outbox import OutboxMessage as M

    try:
        with engine.connect() as conn:
            failed = conn.scalar(select(func.count()).where(M.failed_at.is_not(None)))
            oldest = conn.scalar(
                select(func.min(M.available_at)).where(M.sent_at.is_(None), M.failed_at.is_(None))
            )
    except Exception as exc:
        return Verdict("outbox", "fail", f"{type(exc).__name__}: {exc}")
    lag = (utcnow() - oldest).total_seconds() if oldest else 0.0
    detail = f"{failed} dead letters; oldest pending {lag:.0f} s"
    if failed or lag > 300:
        return Verdict("outbox", "warn", detail + " (`saas jobs list --failed`; is `saas worker` running?)")
    return Verdict("outbox", "ok", detail)


def run_all(
    services_factory: Callable[[Settings], Services], environ: dict[str, str] | None = None
) -> list[Verdict]:
    """Every check. ``services_factory(settings)`` builds the services (database, Redis, keys:
    :func:`saas.bootstrap.build_services`); its failure is the verdict ``app``, the part that
    would stop the service from starting."""
    config, settings = check_config(environ)
    verdicts = [config]
    if settings is None:
        return verdicts
    try:
        svc = services_factory(settings)
    except Exception as exc:
        verdicts.append(Verdict("app", "fail", f"{type(exc).__name__}: {exc}"))
        return verdicts
    engine = svc.database.engine
    verdicts.append(check_database(engine))
    verdicts.append(check_redis(svc.redis, bool(settings.redis_url)))
    verdicts.append(check_stripe(environ))
    verdicts.append(check_smtp(settings.smtp_url))
    if verdicts[1].status == "ok":
        verdicts.append(check_migrations(engine))
        verdicts.append(check_outbox(engine))
    verdicts.append(check_keys(svc.keys))
    return verdicts
