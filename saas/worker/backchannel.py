"""Delivers ``oidc.backchannel_logout`` (OpenID Connect Back-Channel Logout 1.0 section 2.5).

Payload: ``client_id``, ``sub`` (the user id), ``sid`` (the session the client's ID tokens
named). Each attempt signs a fresh logout token (:func:`saas.auth.backchannel.logout_token`,
``exp`` two minutes after the attempt) and POSTs it to the client's current
``backchannel_logout_uri``; a 2xx answer is success, anything else raises so the outbox retries
with its backoff. Every attempt is a :class:`saas.auth.models.BackchannelLogoutAttempt` row (a
failed one is kept through :attr:`saas.worker.WorkerContext.on_failure`); the last failed attempt
(``OUTBOX_MAX_ATTEMPTS``, or a refused destination) audits ``auth.backchannel_logout_failed``
in the client's tenant. A client deleted, or whose URI was removed, since the session ended
needs nothing: the message is done without an attempt.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from saas import audit
from saas.audit import AuditAction
from saas.auth import backchannel
from saas.auth.keys import KeyStore
from saas.auth.models import BackchannelLogoutAttempt, OAuthClient
from saas.auth.tokens import LEEWAY_SECONDS
from saas.settings import Settings
from saas.worker import Job, PermanentError, WorkerContext, handler

_key_stores: dict[Path, KeyStore] = {}


def _keys(ctx: WorkerContext) -> KeyStore:
    """The signing keys: the app's when the worker has one, else the store the settings name
    (the same directory the app signs with)."""
    app = ctx.services.get("app")
    if app is not None:
        from saas.services import services

        return services(app).keys
    if "keys" in ctx.services:
        return ctx.services["keys"]
    settings: Settings = ctx.settings
    path = settings.signing_key_path or settings.var_dir / "keys"
    if path not in _key_stores:
        _key_stores[path] = KeyStore(
            path,
            settings.signing_alg,
            generate=settings.signing_key_path is None,
            max_token_age=settings.access_token_ttl_seconds + LEEWAY_SECONDS,
        )
    return _key_stores[path]


@handler(backchannel.TOPIC)
def send_logout_token(job: Job, ctx: WorkerContext) -> None:
    """One delivery attempt (see the module docstring).

    Raises:
        PermanentError: the payload lacks ``client_id``, or the destination is refused.
        backchannel.DeliveryError: the client did not answer 2xx (retried).
    """
    p = job.payload
    client_id = p.get("client_id")
    if not client_id:
        raise PermanentError("payload lacks client_id")
    session = ctx.session
    client = session.scalars(select(OAuthClient).where(OAuthClient.client_id == client_id)).first()
    if client is None or not client.backchannel_logout_uri:
        return
    sub, sid = p.get("sub"), p.get("sid")

    def attempt_row(status: int | None, error: str | None) -> BackchannelLogoutAttempt:
        return BackchannelLogoutAttempt(
            outbox_id=job.id,
            client_id=client_id,
            sid=sid,
            sub=sub,
            attempt=job.attempts,
            status_code=status,
            error=error,
        )

    token = backchannel.logout_token(_keys(ctx), ctx.settings.issuer, client_id, sub, sid)
    allow_private = ctx.settings.env in ("development", "test")
    try:
        status = backchannel.deliver(client.backchannel_logout_uri, token, allow_private=allow_private)
    except backchannel.DeliveryError as exc:
        final = exc.permanent or job.attempts >= ctx.settings.outbox_max_attempts
        tenant_id, status_code, error = client.tenant_id, exc.status, str(exc)

        def keep(s: Session) -> None:
            s.add(attempt_row(status_code, error[:2000]))
            if final and tenant_id is not None:
                audit.record(
                    s,
                    AuditAction.AUTH_BACKCHANNEL_LOGOUT_FAILED,
                    target_type="oauth_client",
                    target_id=client_id,
                    actor=audit.SYSTEM,
                    data={"sub": sub, "sid": sid, "attempts": job.attempts, "error": error[:200]},
                    tenant_id=tenant_id,
                )

        ctx.on_failure.append(keep)
        if exc.permanent:
            raise PermanentError(error) from None
        raise
    session.add(attempt_row(status, None))
