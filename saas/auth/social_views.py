"""The hosted routes of social login, under ``/oauth/social/`` (docs/auth.md, "Social login").

They live on the hosted pages' path, so they read and write the hosted session directly (no
hand-off ticket as SSO's callback at ``/sso/...`` needs) and end through the hosted pages' own
steps (:func:`saas.auth.hosted.finish_first_factor`: a social sign-in is one factor, so an
account with MFA gets the MFA page; then the tenant picker, consent, the code).

- ``POST /oauth/social/<name>/start`` (the login page's button, with its CSRF token): the
  authorization request (:func:`saas.auth.social.protocol.begin`), its ``state`` kept in the
  hosted session too.
- ``GET /oauth/social/<name>/callback``: the redirect URI to register at the provider. The
  ``state`` must be this browser's and its transaction live (single use); the answer is verified
  (:func:`saas.auth.social.protocol.finish`), then the linking rule of
  :mod:`saas.auth.social.links` decides. A ``require_sso`` account (or, for a new account, a
  domain of a ``require_sso`` tenant) is refused: social login never steps around SSO.
- ``POST /oauth/social/link/email``: mail the pending account its linking link.
- ``GET``/``POST /oauth/social/link/confirm?token=...``: the mailed link's landing (a button:
  mail scanners that fetch links change nothing), in the browser that asked for it.

Every refusal is a hosted error page (HTML, never a 500).
"""

from __future__ import annotations

from flask import Blueprint, redirect, request, session
from sqlalchemy import func, select

from saas import db
from saas.actions import ActionContext
from saas.auth import hosted, pages
from saas.auth.errors import ErrorPage
from saas.auth.social import links, protocol, providers
from saas.auth.social.providers import SocialProvider
from saas.auth.sso.oidc import TokenRefused
from saas.auth.sso.policy import SsoRequired, check_sso_not_required, sso_connection_required
from saas.cache.guard import RedisUnavailable
from saas.db import utcnow
from saas.errors import AppError
from saas.identity.models import User
from saas.security import same_string

bp = Blueprint("social", __name__)
bp.after_request(pages.security_headers)
bp.register_error_handler(ErrorPage, hosted._error_page)

#: the hosted session's keys: the started sign-in's ``state``, the identity waiting for its account
STATE_KEY = "social_state"
PENDING_KEY = "social_link"


def _provider(name: str) -> SocialProvider:
    found = providers.get(name)
    if found is None:
        raise ErrorPage("Unknown sign-in provider", "This sign-in provider is not configured.", 404)
    return found


@bp.post("/oauth/social/<name>/start")
def start(name: str):
    """Send the browser to the provider (a sign-in must be in progress: the pending authorization)."""
    hosted._pending_request()
    hosted._check_csrf()
    provider = _provider(name)
    try:
        url, state = protocol.begin(provider)
    except (AppError, RedisUnavailable):
        return hosted._render(
            "login.html",
            502,
            title="Sign in",
            client_name=hosted._pending_request()[1].name,
            error=f"{provider.label} cannot be reached right now. Try again later.",
        )
    session[STATE_KEY] = state
    return redirect(url)


def _refused(provider: SocialProvider, detail: str, status: int = 400):
    return ErrorPage(f"Sign-in with {provider.label} failed", detail, status)


@bp.get("/oauth/social/<name>/callback")
def callback(name: str):
    """The provider's answer (RFC 6749 section 4.1.2; OIDC Core section 3.1.2.5)."""
    provider = _provider(name)
    state = request.args.get("state", "")
    expected = session.pop(STATE_KEY, None)
    try:
        transaction = protocol.take_transaction(state) if expected else None
    except RedisUnavailable:
        raise _refused(provider, "Sign-in is unavailable right now. Try again shortly.", 503) from None
    if (
        transaction is None
        or not same_string(str(expected), state)
        or transaction.get("provider") != provider.name
    ):
        raise ErrorPage(
            "Sign-in expired",
            "This sign-in has expired, was already used, or was started in another browser. "
            "Go back to the application and sign in again.",
        )
    hosted._pending_request()
    if "error" in request.args:
        error = request.args.get("error", "")[:100]
        raise _refused(provider, f"{provider.label} answered: {error}.")
    if "iss" in request.args and provider.accept_issuer() is None and request.args["iss"] != provider.issuer:
        raise _refused(provider, "The answer came from another issuer.")  # RFC 9207 section 2.4
    code = request.args.get("code", "")
    if not code or len(code) > 2048:
        raise _refused(provider, f"{provider.label} sent no authorization code.")
    try:
        identity = protocol.finish(provider, transaction, code)
    except TokenRefused as err:
        raise _refused(provider, err.detail) from None
    except AppError as err:
        raise _refused(provider, err.detail or err.title, 502) from None
    return _decide(provider, identity)


def _sso_refusal(provider: SocialProvider):
    return _refused(
        provider,
        "Your organisation requires single sign-on: sign in through its identity provider "
        "(enter your email on the sign-in page and continue without a password).",
        403,
    )


def _decide(provider: SocialProvider, identity: protocol.SocialIdentity):
    """The linking rule (:mod:`saas.auth.social.links`)."""
    sess = db.session()
    ctx = ActionContext.from_request(sess)
    subject = identity.subject[:512]
    email = (identity.email or "").strip()
    if "@" not in email:
        email = ""  # not an address: as if none was sent
    if not subject or "\x00" in subject or len(email) > 320 or "\x00" in email:
        raise _refused(provider, f"{provider.label}'s answer is not usable.")
    link = links.find_identity(sess, provider, subject)
    if link is not None:  # 1. a returning identity
        user = sess.get(User, link.user_id)
        if user is None or user.status != "active":
            raise _refused(provider, "This account is locked.", 403)
        try:
            check_sso_not_required(sess, user)
        except SsoRequired:
            raise _sso_refusal(provider) from None
        link.last_login_at = utcnow()
        link.email = email or link.email
        return hosted.finish_first_factor(user, ["social"])
    if not email:
        raise _refused(provider, f"{provider.label} did not share a verified email address with us.")
    existing = sess.scalars(select(User).where(func.lower(User.email) == email.lower())).first()
    if existing is not None:  # 2. never linked on the address alone: the account proves itself
        if existing.status != "active":
            raise _refused(provider, "This account is locked.", 403)
        try:
            check_sso_not_required(sess, existing)
        except SsoRequired:
            raise _sso_refusal(provider) from None
        pending = links.pending_link(existing, provider, identity)
        session[PENDING_KEY] = pending
        return hosted._render(
            "login.html",
            title="Link your account",
            client_name=hosted._pending_request()[1].name,
            email=existing.email,
            step="password",
            social_link=pending,
        )
    if not identity.email_verified:  # 3. a new account, for a verified address only
        raise _refused(
            provider,
            f"{provider.label} does not say that {email} is verified, so no account can be made "
            "for it. Sign up with a password instead, or verify the address there first.",
            403,
        )
    if sso_connection_required(sess, User(email=email)) is not None:
        raise _sso_refusal(provider)
    try:
        user = links.create_account(ctx, provider, identity)
    except AppError:
        raise _refused(provider, "Another sign-in of yours just finished: sign in again.", 409) from None
    return hosted.finish_first_factor(user, ["social"])


@bp.post("/oauth/social/link/email")
def link_email():
    """Mail the account the browser's pending identity waits for a linking link."""
    hosted._check_csrf()
    pending = links.live(session.get(PENDING_KEY))
    if pending is None:
        raise ErrorPage("Nothing to link", "This linking has expired. Sign in with the provider again.")
    digest = links.send_link_mail(ActionContext.from_request(db.session()), pending)
    if digest is not None:
        session[PENDING_KEY] = {**pending, "token": digest}
    return hosted._render(
        "error.html",
        title="Check your mail",
        detail=f"We mailed a link to the account's address. Open it in this browser within "
        f"{links.LINK_MAIL_TTL // 60} minutes to link your {pending.get('label')} sign-in.",
    )


@bp.route("/oauth/social/link/confirm", methods=["GET", "POST"])
def link_confirm():
    """The mailed link's landing: a button (GET), then the link (POST) and, when an
    authorization is in progress in this browser, the sign-in through the hosted steps."""
    if request.method == "GET":
        return hosted._render(
            "account_confirm.html",
            title="Link your sign-in",
            prompt="Link the sign-in you just used to this account?",
            action="/oauth/social/link/confirm",
            token=request.args.get("token", "")[:512],
            button="Link it",
        )
    sess = db.session()
    pending = session.get(PENDING_KEY)
    try:
        user = links.confirm_mailed_link(ActionContext.from_request(sess), request.form.get("token"), pending)
    except AppError as err:
        raise ErrorPage(err.title, err.detail or err.title, err.status) from None
    session.pop(PENDING_KEY, None)
    if not session.get("areq"):
        return hosted._render(
            "error.html", title="Linked", detail="The sign-in is linked: use it to sign in from now on."
        )
    return hosted.finish_first_factor(user, ["social"])
