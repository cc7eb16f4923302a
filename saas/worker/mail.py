"""Mail: invitation and security messages over SMTP (``SMTP_URL``), printed in development.

``SMTP_URL``: ``smtp://[user:password@]host[:port][?starttls=1]`` or ``smtps://...`` (TLS from
the start). Without it, in ``development`` and ``test`` the message is printed to stdout; in
production the job fails (and stays visible in ``saas jobs list --failed``) rather than drop or
print a token.

Each message carries ``Message-ID: <outbox-<id>@<issuer host>>``: a retried delivery repeats the
same id, so mail systems can drop the duplicate (idempotency).
"""

from __future__ import annotations

import smtplib
import sys
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from saas.settings import Settings
from saas.worker import Job, PermanentError, WorkerContext, handler


class Mailer(Protocol):
    def send(self, message: EmailMessage) -> None: ...


class SmtpMailer:
    """Sends over SMTP; a new connection per message (the worker sends few)."""

    def __init__(self, url: str, timeout: float = 10.0):
        parts = urlsplit(url)
        self.ssl = parts.scheme == "smtps"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (465 if self.ssl else 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.starttls = parse_qs(parts.query).get("starttls", ["0"])[0] in ("1", "true", "yes")
        self.timeout = timeout

    def send(self, message: EmailMessage) -> None:
        cls = smtplib.SMTP_SSL if self.ssl else smtplib.SMTP
        with cls(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(message)


class ConsoleMailer:
    """Development: prints the message (with its link) to stdout."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def send(self, message: EmailMessage) -> None:
        print(
            f"--- mail (SMTP_URL not set) ---\n{message.as_string()}\n--- end mail ---",
            file=self.stream,
            flush=True,
        )


class RefusingMailer:
    """Production without ``SMTP_URL``: fail the job rather than print or drop it."""

    def send(self, message: EmailMessage) -> None:
        raise RuntimeError("SMTP_URL is not configured")


def mailer_for(settings: Settings) -> Mailer:
    if settings.smtp_url:
        return SmtpMailer(settings.smtp_url)
    if settings.env in ("development", "test"):
        return ConsoleMailer()
    return RefusingMailer()


def _message(job: Job, ctx: WorkerContext, to: str, subject: str, body: str) -> EmailMessage:
    host = urlsplit(ctx.settings.issuer).hostname or "localhost"
    msg = EmailMessage()
    msg["From"] = ctx.settings.mail_from
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = f"<{job.idempotency_key}@{host}>"
    msg["Auto-Submitted"] = "auto-generated"
    # plain ASCII lines (a link longer than 78 characters included) go as 7bit, so the link
    # stays one line a person can copy from the console of `saas dev` (quoted-printable would
    # fold it and write its "=" as "=3D"); RFC 5322 section 2.1.1 allows lines up to 998
    if body.isascii() and max(map(len, body.splitlines() or [""])) <= 998:
        msg.set_content(body, cte="7bit")
    else:
        msg.set_content(body)
    return msg


def _mailer(ctx: WorkerContext) -> Mailer:
    mailer = ctx.services.get("mailer")
    if mailer is None:
        mailer = ctx.services["mailer"] = mailer_for(ctx.settings)
    return mailer


def _require(job: Job, *keys: str) -> None:
    missing = [k for k in keys if not job.payload.get(k)]
    if missing:
        raise PermanentError(f"payload lacks {', '.join(missing)}")


@handler("mail.invitation")
def send_invitation(job: Job, ctx: WorkerContext) -> None:
    """Payload (``saas.tenancy.members.invite``): ``to``, ``tenant``, ``tenant_name``, ``role``,
    ``token``. The token is in this mail and nowhere else once the row is blanked: the API never
    returns it, the database keeps only its SHA-256."""
    _require(job, "to", "token", "tenant")
    p = job.payload
    base = ctx.settings.issuer.rstrip("/")
    tenant_name = p.get("tenant_name") or p["tenant"]
    body = (
        f"You have been invited to join {tenant_name} as {p.get('role', 'member')}.\n\n"
        f"Invitation token: {p['token']}\n\n"
        f'To accept, POST it to {base}/api/v1/invitations/accept as {{"token": "..."}}:\n'
        "- new to the service: add a password (and your name) to create your account;\n"
        "- already have an account: send no password, but sign in first and send your own\n"
        "  access token (Authorization: Bearer ...), whichever tenant it is for.\n\n"
        "If you did not expect this invitation, ignore this message.\n"
    )
    _mailer(ctx).send(_message(job, ctx, p["to"], f"Invitation to {tenant_name}", body))


@handler("mail.account_exists")
def send_account_exists(job: Job, ctx: WorkerContext) -> None:
    """Payload (``saas.tenancy.views.Signup``): ``to``, ``tenant`` (the slug asked for),
    ``tenant_name``. Sent instead of telling a signup that the email has an account."""
    _require(job, "to", "tenant")
    p = job.payload
    base = ctx.settings.issuer.rstrip("/")
    body = (
        f'Someone, perhaps you, tried to sign up a new tenant "{p.get("tenant_name") or p["tenant"]}" '
        f"({p['tenant']}) with this address at {base}.\n\n"
        "This address already has an account, so nothing was created. To create a tenant for\n"
        f"your account, sign in, then POST {base}/api/v1/signup with only the tenant\n"
        '({"tenant": {"name": ..., "slug": ...}}) and your access token (Authorization: Bearer ...).\n\n'
        "If this was not you, ignore this message: your account was not changed.\n"
    )
    _mailer(ctx).send(_message(job, ctx, p["to"], "Your sign-up", body))


#: the single-use links the account flows mail (``mail.account_link``): kind -> (hosted page
#: path, subject, text before the link, text after it). The token is in the link only.
ACCOUNT_LINKS: dict[str, tuple[str, str, str, str]] = {
    "password_reset": (
        "/account/reset",
        "Reset your password",
        "Someone, perhaps you, asked to reset the password of your account.\n"
        "To choose a new password, open this link within {ttl}:",
        "The link works once. If you did not ask for it, ignore this message: your password\nstays as it is.",
    ),
    "email_verification": (
        "/account/verify",
        "Verify your email address",
        "To confirm that this address is yours, open this link within {ttl}:",
        "If you did not create an account, ignore this message.",
    ),
    "email_change": (
        "/account/email",
        "Confirm your new email address",
        "Someone, perhaps you, asked to move an account to this address.\n"
        "To confirm the change, open this link within {ttl}:",
        "If you did not ask for it, ignore this message: nothing changes until the link is used.",
    ),
    "social_link": (  # social login (saas.auth.social.links)
        "/oauth/social/link/confirm",
        "Link a sign-in to your account",
        "Someone, perhaps you, signed in with another provider using this address and asked to\n"
        "link it to your account. To link it, open this link within {ttl}, in the same browser:",
        "If you did not ask for it, ignore this message: nothing is linked until the link is used.",
    ),
}


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour" + ("s" if hours != 1 else "")
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute" + ("s" if minutes != 1 else "")


@handler("mail.account_link")
def send_account_link(job: Job, ctx: WorkerContext) -> None:
    """Payload: ``to``, ``kind`` (a key of :data:`ACCOUNT_LINKS`), ``token`` (the single-use
    token in clear: it is in this mail and nowhere else, the database keeps its SHA-256), and
    ``ttl_seconds``. The link is ``<SAAS_ISSUER><path>?token=<token>``.

    Raises:
        PermanentError: the payload lacks a key or names an unknown kind.
    """
    _require(job, "to", "kind", "token")
    p = job.payload
    if p["kind"] not in ACCOUNT_LINKS:
        raise PermanentError(f"unknown account link {p['kind']!r}")
    path, subject, before, after = ACCOUNT_LINKS[p["kind"]]
    base = ctx.settings.issuer.rstrip("/")
    ttl = _duration(int(p.get("ttl_seconds") or 3600))
    body = f"{before.format(ttl=ttl)}\n\n{base}{path}?token={p['token']}\n\n{after}\n"
    _mailer(ctx).send(_message(job, ctx, p["to"], subject, body))


SECURITY_EVENTS = {
    "account_locked": "Your account was locked by an administrator.",
    "account_unlocked": "Your account was unlocked.",
    "password_changed": "Your password was changed.",
    "password_reset": "Your password was reset with a link mailed to you; all your sessions were ended.",
    "email_changed": "The email address of your account was changed. This address no longer signs in.",
    "email_change_requested": "Someone asked to move your account to another email address.",
    "sessions_ended": "An administrator ended all your sessions.",
    "account_deleted": "Your account and its personal data were deleted.",
    "refresh_token_reuse": "A sign-in token of yours was used twice; all your sessions were ended.",
    "mfa_reset": "Your two-factor authentication was reset by an administrator.",
    "new_sign_in": "There was a new sign-in to your account.",
}


@handler("mail.security")
def send_security(job: Job, ctx: WorkerContext) -> None:
    """Payload: ``to``, ``event`` (a key of :data:`SECURITY_EVENTS`), optional ``details`` (text
    without secrets)."""
    _require(job, "to", "event")
    event = job.payload["event"]
    if event not in SECURITY_EVENTS:
        raise PermanentError(f"unknown security event {event!r}")
    body = SECURITY_EVENTS[event] + "\n"
    if job.payload.get("details"):
        body += f"\n{job.payload['details']}\n"
    body += "\nIf this was not you, contact your administrator.\n"
    _mailer(ctx).send(_message(job, ctx, job.payload["to"], "Security notice", body))


@handler("mail.webhook_endpoint_disabled")
def send_webhook_endpoint_disabled(job: Job, ctx: WorkerContext) -> None:
    """Payload (:func:`saas.webhooks.delivery.disable`): ``to`` (an owner or admin),
    ``tenant_name``, ``endpoint_id``, ``url``, ``reason`` (``gone``: it answered 410; ``failing``:
    every attempt failed for days), ``detail``."""
    _require(job, "to", "endpoint_id", "url")
    p = job.payload
    base = ctx.settings.issuer.rstrip("/")
    body = (
        f"The webhook endpoint {p['url']} of {p.get('tenant_name') or 'your tenant'} was disabled:\n"
        f"{p.get('detail') or p.get('reason') or ''}\n\n"
        "No more messages go to it. Its attempts are listed at\n"
        f"{base}/api/v1/webhooks/endpoints/{p['endpoint_id']}/attempts\n"
        'Once the receiver works again, enable it (PATCH the endpoint with {"enabled": true}) and\n'
        "replay the messages it missed (POST /api/v1/webhooks/messages/<id>/replay).\n"
    )
    _mailer(ctx).send(_message(job, ctx, p["to"], "A webhook endpoint was disabled", body))


@handler("mail.trial_will_end")
def send_trial_will_end(job: Job, ctx: WorkerContext) -> None:
    """Payload (``saas.billing.webhooks``, Stripe's ``customer.subscription.trial_will_end``,
    sent three days before the trial ends): ``tenant`` (slug), ``trial_end`` (Unix seconds, UTC),
    ``event_id`` (the Stripe event: the ``Message-ID``, so one mail per event even when the
    message is queued again).

    One mail to the tenant's billing contact (the Stripe customer's email) and its owners (the
    members who can change the plan, ``billing:manage``) with the date the trial ends. A tenant
    deleted since, or left with nobody to tell, gets no mail (nothing to retry).

    Raises:
        PermanentError: the payload lacks a key or ``trial_end`` is not a timestamp.
    """
    import datetime

    _require(job, "tenant", "trial_end", "event_id")
    p = job.payload
    try:
        trial_end = datetime.datetime.fromtimestamp(int(p["trial_end"]), datetime.UTC)
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise PermanentError(f"trial_end is not a Unix timestamp: {p['trial_end']!r}") from exc
    found = _billing_recipients(ctx, p["tenant"])
    if found is None:
        return
    tenant, recipients = found
    base = ctx.settings.issuer.rstrip("/")
    billing_url = ctx.settings.billing_return_url or f"{base}/billing"
    when = trial_end.strftime("%A %d %B %Y, %H:%M UTC")
    body = (
        f"The free trial of {tenant.name} ends on {when}.\n\n"
        "To keep your plan after that, add a payment method before then:\n"
        f"{billing_url}\n"
    )
    subject = f"Your {tenant.name} trial ends on {trial_end:%d %B %Y}"
    _send_billing(job, ctx, recipients, subject, body, f"trial-will-end-{p['event_id']}")


def _billing_recipients(ctx: WorkerContext, slug: str) -> tuple[Any, list[str]] | None:
    """(tenant, addresses) of a billing mail: the Stripe customer's email (the billing contact)
    and the active owners (who hold ``billing:manage``), each once; None for a tenant deleted
    since, or one left with nobody to tell (nothing to retry)."""
    from sqlalchemy import select

    from saas.billing.models import BillingAccount
    from saas.identity.models import Membership, Tenant, User

    session = ctx.session
    tenant = session.scalars(select(Tenant).where(Tenant.slug == slug)).one_or_none()
    if tenant is None or tenant.deleted_at is not None:
        return None
    owners = session.scalars(
        select(User.email)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.tenant_id == tenant.id, Membership.role == "owner", Membership.status == "active")
    ).all()
    account = session.get(BillingAccount, tenant.id)
    contact = account.customer_email if account is not None and not account.customer_deleted_at else None
    recipients = sorted({e.lower(): e for e in [*([contact] if contact else []), *owners]}.values())
    return (tenant, recipients) if recipients else None


def _send_billing(
    job: Job, ctx: WorkerContext, recipients: list[str], subject: str, body: str, key: str
) -> None:
    """One mail to all ``recipients``, its ``Message-ID`` ``<key@issuer host>``: the same for
    every delivery of one billing fact, so a mail system drops a repeat."""
    msg = _message(job, ctx, ", ".join(recipients), subject, body)
    host = urlsplit(ctx.settings.issuer).hostname or "localhost"
    msg.replace_header("Message-ID", f"<{key}@{host}>")
    _mailer(ctx).send(msg)


def _money(amount: Any, currency: Any) -> str:
    """``1200, "usd"`` -> ``12.00 USD`` (two decimals: Stripe's zero-decimal currencies aside)."""
    code = str(currency or "").upper()
    try:
        cents = int(amount)
    except (TypeError, ValueError):
        return f"the amount due ({code})".strip()
    zero_decimal = {"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND",
                    "VUV", "XAF", "XOF", "XPF"}  # fmt: skip
    return f"{cents} {code}" if code in zero_decimal else f"{cents / 100:.2f} {code}"


def _pay_link(ctx: WorkerContext, url: Any) -> str:
    """The invoice's hosted page (Stripe's ``https://invoice.stripe.com/...``), else our billing page."""
    if isinstance(url, str) and url.startswith("https://"):
        return url
    return ctx.settings.billing_return_url or f"{ctx.settings.issuer.rstrip('/')}/billing"


@handler("mail.payment_failed")
def send_payment_failed(job: Job, ctx: WorkerContext) -> None:
    """Payload (``saas.billing.dunning.queue_payment_failed``, Stripe's ``invoice.payment_failed``):
    ``tenant`` (slug), ``invoice_id``, ``number``, ``hosted_invoice_url``, ``amount_due``
    (smallest currency unit), ``currency``, ``next_payment_attempt`` (Unix seconds or None),
    ``event_id`` (the ``Message-ID``: one mail per event).

    One mail to the billing contact and the owners with the amount and the link to pay.

    Raises:
        PermanentError: the payload lacks ``tenant``, ``invoice_id`` or ``event_id``.
    """
    import datetime

    _require(job, "tenant", "invoice_id", "event_id")
    p = job.payload
    found = _billing_recipients(ctx, p["tenant"])
    if found is None:
        return
    tenant, recipients = found
    retry = ""
    if p.get("next_payment_attempt"):
        try:
            when = datetime.datetime.fromtimestamp(int(p["next_payment_attempt"]), datetime.UTC)
            retry = f"We will try the card again on {when:%A %d %B %Y, %H:%M} UTC.\n\n"
        except (TypeError, ValueError, OverflowError, OSError):
            retry = ""
    label = p.get("number") or p["invoice_id"]
    body = (
        f"The payment of {_money(p.get('amount_due'), p.get('currency'))} for invoice {label} of "
        f"{tenant.name} failed.\n\n{retry}"
        "Pay the invoice or update the payment method here:\n"
        f"{_pay_link(ctx, p.get('hosted_invoice_url'))}\n"
    )
    subject = f"Payment failed for {tenant.name}"
    _send_billing(job, ctx, recipients, subject, body, f"payment-failed-{p['event_id']}")


@handler("mail.grace_ended")
def send_grace_ended(job: Job, ctx: WorkerContext) -> None:
    """Payload (``saas.billing.dunning.notify_grace_ended``, ``saas billing dunning``): ``tenant``
    (slug), ``subscription_id``, ``grace_until`` and ``past_due_since`` (Unix seconds),
    ``hosted_invoice_url`` (or None). The ``Message-ID`` is made of the subscription and the
    grace period's start: one mail per subscription and grace period.

    One mail to the billing contact and the owners: the tenant is read-only until it pays.

    Raises:
        PermanentError: the payload lacks a key or ``grace_until`` is not a timestamp.
    """
    import datetime

    _require(job, "tenant", "subscription_id", "grace_until", "past_due_since")
    p = job.payload
    try:
        ended = datetime.datetime.fromtimestamp(int(p["grace_until"]), datetime.UTC)
        since = int(p["past_due_since"])
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise PermanentError(f"grace_until is not a Unix timestamp: {p['grace_until']!r}") from exc
    found = _billing_recipients(ctx, p["tenant"])
    if found is None:
        return
    tenant, recipients = found
    body = (
        f"The grace period of {tenant.name} for an unpaid invoice ended on "
        f"{ended:%A %d %B %Y, %H:%M} UTC.\n\n"
        f"{tenant.name} is now read-only: its data can be read, but nothing can be changed until "
        "the invoice is paid.\n\n"
        f"Pay it here:\n{_pay_link(ctx, p.get('hosted_invoice_url'))}\n"
    )
    subject = f"{tenant.name} is read-only until the invoice is paid"
    _send_billing(job, ctx, recipients, subject, body, f"grace-ended-{p['subscription_id']}-{since}")
