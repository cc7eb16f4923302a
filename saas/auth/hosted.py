"""The hosted pages of the authorization endpoint: login, MFA, MFA enrolment, tenant picker, consent.

Server-rendered HTML (Jinja autoescaping). State between pages lives in Flask's signed session
cookie (``HttpOnly``, ``SameSite=Lax``, ``Secure`` behind https, path ``/oauth``): the pending
authorization request, the id of the browser's sign-in (a server-side row,
:mod:`saas.auth.browser_sessions`, holding user, ``auth_time`` and ``amr``; logout, revocation,
an account lock or a password change end it) and a CSRF token that every POST must echo
(compared in constant time). Every page is sent with
``Content-Security-Policy: frame-ancestors 'none'`` (and ``X-Frame-Options: DENY``) against
clickjacking (RFC 9700 section 4.16), and ``Cache-Control: no-store``.

The flow: ``GET /oauth/authorize`` validates the request
(:mod:`saas.auth.oauth.authorization`), then ``_continue`` sends the browser to the first missing
step and finally back to the client with a code.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Flask,
    g,
    redirect,
    render_template,
    request,
    send_from_directory,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import select

from saas import audit, db
from saas.actions import ActionContext
from saas.audit import AuditAction
from saas.auth import browser_sessions, devices, mfa, service
from saas.auth import webauthn as passkeys
from saas.auth.errors import AuthorizeRedirectError, ErrorPage
from saas.auth.models import OAuthClient
from saas.auth.oauth import authorization as provider
from saas.auth.pages import error_page, security_headers
from saas.auth.social import links as social_links  # social login
from saas.auth.social import providers as social_providers
from saas.auth.sso import connections as sso_connections
from saas.auth.sso import login as sso_login
from saas.auth.sso.policy import SsoRequired, check_sso_not_required
from saas.auth.tokens import satisfies_mfa
from saas.cache.guard import RedisUnavailable
from saas.db import utcnow
from saas.errors import AppError, Unauthorized
from saas.identity.models import Membership, Tenant, User
from saas.memo import MISSING, Memo
from saas.security import random_token, same_string
from saas.services import services

bp = Blueprint("hosted", __name__, template_folder="templates")
_STATIC = Path(__file__).with_name("static")

#: a browser login is reused for new authorization requests for at most this long
LOGIN_SESSION_SECONDS = int(browser_sessions.MAX_AGE.total_seconds())


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the signing serializer built once per set of keys.

    Flask builds a new ``URLSafeTimedSerializer`` for every request (to open the session) and
    again to save it; every API request paid for it although only the hosted pages use the
    session. The serializer holds no per-request state, so one per key set serves them all
    (``SECRET_KEY`` and ``SECRET_KEY_FALLBACKS`` are the cache key: a rotation builds a new one).
    """

    def __init__(self) -> None:
        self._serializers: Memo[tuple, URLSafeTimedSerializer | None] = Memo(
            "auth.session_serializers", maxsize=8
        )

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        fallbacks = app.config.get("SECRET_KEY_FALLBACKS") or ()
        key = (app.secret_key, *fallbacks)
        serializer = self._serializers.get(key, MISSING)  # a kept serializer may be None
        if serializer is MISSING:
            serializer = self._serializers.put(key, super().get_signing_serializer(app))
        return serializer


def init_app(app: Flask) -> None:
    """Cookie settings for the hosted pages' session and the blueprint."""
    issuer = services(app).settings.issuer
    # Flask's defaults exist already (setdefault would be a no-op): set them outright
    app.config.update(
        SESSION_COOKIE_NAME="saas_auth",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=issuer.startswith("https://"),
        SESSION_COOKIE_PATH="/oauth",
    )
    app.session_interface = SessionInterface()
    app.register_blueprint(bp)


bp.after_request(security_headers)


# --- helpers -------------------------------------------------------------------------------------


def _csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = random_token()
        session["csrf"] = token
    return token


def _check_csrf() -> None:
    expected = session.get("csrf")
    sent = request.form.get("csrf_token", "")
    if not expected or not same_string(expected, sent):
        raise ErrorPage("Session expired", "The form expired or was not sent from this site. Start again.")


@bp.errorhandler(ErrorPage)
def _error_page(err: ErrorPage):
    return error_page(err.title, err.detail, err.status)


def _render(template: str, status: int = 200, **context: Any):
    context.setdefault("error", None)
    if template == "login.html":  # a passkey signs in without a password (saas.auth.webauthn)
        context.setdefault("passkey_purpose", "login")
        context.setdefault("passkey_label", "Sign in with a passkey")
        # social login (saas.auth.social): a button per provider of SOCIAL_PROVIDERS
        context.setdefault("social_buttons", [(p.name, p.label) for p in social_providers.configured()])
        context.setdefault("social_link", social_links.live(session.get("social_link")))
    return render_template(f"auth/{template}", csrf_token=_csrf_token(), **context), status


def _pending_request() -> tuple[provider.AuthorizationRequest, OAuthClient]:
    data = session.get("areq")
    if not data:
        raise ErrorPage("No sign-in in progress", "Go back to the application and start signing in again.")
    req = provider.AuthorizationRequest.from_dict(data)
    client = db.session().scalars(select(OAuthClient).where(OAuthClient.client_id == req.client_id)).first()
    if client is None:
        session.pop("areq", None)
        raise ErrorPage("Unknown application", "The application asking you to sign in is not registered.")
    return req, client


def _login_state() -> dict[str, Any] | None:
    """The browser's sign-in, read from its server-side row (None when the cookie names none,
    or the row was ended or has expired: then the cookie forgets it)."""
    state = session.get("login")
    if not state:
        return None
    row = browser_sessions.find_live(db.session(), state.get("bsid"), state.get("uid"))
    if row is None:
        session.pop("login", None)
        return None
    g.browser_session = row
    return {
        "uid": str(row.user_id),
        "auth_time": int(row.auth_time.timestamp()),
        "amr": list(row.amr or []),
        "fresh": bool(state.get("fresh")),
    }


def _sign_in(user_id: uuid.UUID, auth_time: int, amr: list[str]) -> None:
    """Start the browser's sign-in (a new row; the one it replaces ends). A social identity
    waiting in this browser for this account to prove itself is linked now
    (:func:`saas.auth.social.links.link_pending`: the account just signed in by ``amr``)."""
    _end_sign_in("replaced")
    row = browser_sessions.start(db.session(), user_id, datetime.fromtimestamp(auth_time, UTC), amr)
    session["login"] = {"bsid": str(row.id), "uid": str(user_id), "fresh": True}
    devices.note_sign_in(db.session(), user_id, browser=True)  # the new-device notice
    pending = session.pop("social_link", None)
    if pending:
        via = "sso" if "sso" in amr else "passkey" if {"hwk", "swk"} & set(amr) else "password"
        via = "social" if "social" in amr else via
        social_links.link_pending(ActionContext.from_request(db.session()), user_id, pending, via)


def _end_sign_in(reason: str) -> uuid.UUID | None:
    """End the browser's current sign-in, if any; returns its user."""
    state = session.pop("login", None)
    if not state:
        return None
    row = browser_sessions.find_live(db.session(), state.get("bsid"), state.get("uid"))
    if row is None:
        return None
    browser_sessions.end(db.session(), row, reason)
    return row.user_id


def _redirect_error(req: provider.AuthorizationRequest, error: str, description: str):
    session.pop("areq", None)
    return redirect(
        provider.error_redirect(AuthorizeRedirectError(req.redirect_uri, error, description, req.state))
    )


def _interaction_required(req: provider.AuthorizationRequest, description: str):
    """``prompt=none`` and a page would be needed: OIDC Core section 3.1.2.6."""
    return _redirect_error(req, "interaction_required", description)


def _set_pending(user_id: uuid.UUID, auth_time: int, amr: list[str]) -> None:
    """Remember a password login that still needs its second factor, for ``mfa_token_ttl``."""
    session["pending"] = {
        "uid": str(user_id),
        "auth_time": auth_time,
        "amr": amr,
        "at": int(time.time()),
        # this sign-in attempt's id: the MFA lockout is keyed on it and the IP, as the API's
        # mfa_token (so wrong codes of another browser never lock this one's attempt)
        "attempt": random_token(16),
    }


def _pending_login() -> dict[str, Any] | None:
    """The password login awaiting its second factor, or None when absent or older than
    ``MFA_TOKEN_TTL`` (the API's ``mfa_token`` lives as long)."""
    pending = session.get("pending")
    if not pending:
        return None
    ttl = services().settings.mfa_token_ttl_seconds
    at = pending.get("at")
    if not isinstance(at, int) or not 0 <= time.time() - at <= ttl:
        session.pop("pending", None)
        return None
    return pending


def _memberships(user_id: uuid.UUID) -> list[tuple[Membership, Tenant]]:
    rows = db.session().execute(
        select(Membership, Tenant)
        .join(Tenant, Tenant.id == Membership.tenant_id)
        .where(Membership.user_id == user_id, Membership.status == "active", Tenant.status == "active")
        .order_by(Tenant.slug)
    )
    return [(m, t) for m, t in rows]


def _continue():
    """Send the browser to the first missing step, or back to the client with a code."""
    req, client = _pending_request()
    login = _login_state()
    if login is None:
        if req.prompt == "none":
            return _redirect_error(req, "login_required", "The user is not signed in.")
        return redirect(url_for("hosted.login"))
    sess = db.session()
    user = sess.get(User, uuid.UUID(login["uid"]))
    if user is None or user.status != "active":
        session.pop("login", None)
        if req.prompt == "none":
            return _redirect_error(req, "login_required", "The user is not signed in.")
        return redirect(url_for("hosted.login"))
    memberships = _memberships(user.id)
    if client.tenant_id is not None:
        memberships = [(m, t) for m, t in memberships if t.id == client.tenant_id]
    if not memberships:
        return _redirect_error(
            req, "access_denied", "The user is not a member of the application's organisation."
        )
    chosen = [(m, t) for m, t in memberships if req.tenant_id and str(t.id) == req.tenant_id]
    if not chosen:
        if len(memberships) > 1:
            if req.prompt == "none":
                return _interaction_required(req, "The user must choose an organisation.")
            return redirect(url_for("hosted.tenant"))
        chosen = memberships
    _membership, tenant = chosen[0]
    row = g.browser_session
    if browser_sessions.is_idle(row, (tenant.settings or {}).get("session_idle_minutes")):
        browser_sessions.end(sess, row, "idle")
        session.pop("login", None)
        if req.prompt == "none":
            return _redirect_error(req, "login_required", "The sign-in was idle too long.")
        return redirect(url_for("hosted.login"))
    if (tenant.settings or {}).get("require_verified_email") and not user.email_verified:
        return _redirect_error(req, "access_denied", "The organisation requires a verified email address.")
    amr = list(login.get("amr") or ["pwd"])
    if (tenant.settings or {}).get("require_mfa") and not satisfies_mfa(amr):
        if req.prompt == "none":
            return _interaction_required(req, "The organisation requires a second factor.")
        first_passkey = bool({"hwk", "swk"} & set(amr))
        if mfa.has_mfa(sess, user.id) or (not first_passkey and passkeys.has_passkey(sess, user.id)):
            _set_pending(user.id, login["auth_time"], amr)
            return redirect(url_for("hosted.mfa"))
        return redirect(url_for("hosted.enroll"))
    if req.prompt == "consent" or provider.needs_consent(sess, client, user.id, tenant.id, req.scope):
        if req.prompt == "none":
            return _redirect_error(req, "consent_required", "The user has not consented to this application.")
        if session.get("consented") != req.id:
            return redirect(url_for("hosted.consent"))
    code = provider.issue_code(
        sess,
        req,
        user=user,
        tenant=tenant,
        auth_time=datetime.fromtimestamp(login["auth_time"], UTC),
        amr=amr,
        browser_session_id=row.id,
    )
    row.last_seen_at = utcnow()
    if login.get("fresh"):
        # the first code after a password (and MFA) login: that is the login to audit
        audit.record(
            sess,
            AuditAction.AUTH_LOGIN,
            target_type="user",
            target_id=user.id,
            actor=audit.Actor("user", str(user.id)),
            data={"amr": amr, "client_id": client.client_id, "via": "hosted"},
            tenant_id=tenant.id,
        )
        session["login"] = {**session["login"], "fresh": False}
    session.pop("areq", None)
    session.pop("consented", None)
    return redirect(provider.success_redirect(req, code))


# --- pages ---------------------------------------------------------------------------------------


@bp.get("/oauth/authorize")
def authorize():
    """The authorization endpoint (RFC 6749 section 3.1; OIDC Core section 3.1.2)."""
    try:
        req, _client = provider.parse_authorization_request(db.session(), request.args.to_dict())
    except AuthorizeRedirectError as err:
        return redirect(provider.error_redirect(err))
    login = _login_state()
    if login is not None and (
        req.prompt == "login" or (req.max_age is not None and time.time() - login["auth_time"] > req.max_age)
    ):
        _end_sign_in("reauthentication")
    session["areq"] = req.to_dict()
    session.pop("consented", None)
    session.pop("social_link", None)  # a social identity waiting to be linked: only from its page
    return _continue()


@bp.route("/oauth/login", methods=["GET", "POST"])
def login():
    """The sign-in page. Home realm discovery (docs/auth.md, "Per-tenant SSO"): the address comes
    first; "Continue" (or a post without a password) sends an address on a verified domain with
    an enabled SSO connection to that connection's IdP (:func:`saas.auth.sso.login.start_login`)
    and shows everyone else the password step (and the passkey button). What the page does
    depends on the domain only, never on whether an account exists. A post with a password signs
    in with it, unless the tenant of the address's domain has ``require_sso`` (then the page
    says so, 403)."""
    _req, client = _pending_request()
    if request.method == "GET":
        # a social identity waiting to be linked is linked only by a sign-in from the page that
        # says so (saas.auth.social.links), never by a later, unrelated one in this browser
        session.pop("social_link", None)
        return _render("login.html", title="Sign in", client_name=client.name)
    _check_csrf()
    email = request.form.get("email", "")[:320]
    password = request.form.get("password", "")[:1024]
    sess = db.session()
    if request.form.get("step") == "email" or not password:
        connection = sso_connections.connection_for_email(sess, email)
        if connection is not None:
            return _start_sso(connection, email, client.name)
        return _render("login.html", title="Sign in", client_name=client.name, email=email, step="password")
    try:
        user = service.authenticate_password(sess, email, password)
    except Unauthorized:
        tenant_slug = None
        if client.tenant_id is not None:
            owner = sess.get(Tenant, client.tenant_id)
            tenant_slug = owner.slug if owner else None
        service.audit_failed_login(sess, email, tenant_slug, "invalid_credentials")
        return _render(
            "login.html",
            401,
            title="Sign in",
            client_name=client.name,
            email=email,
            error="The email or password is incorrect.",
        )
    try:
        check_sso_not_required(sess, user)
    except SsoRequired as err:
        return _render(
            "login.html", 403, title="Sign in", client_name=client.name, email=email, error=err.detail
        )
    return finish_first_factor(user, ["pwd"])


def finish_first_factor(user: User, amr: list[str]):
    """The sign-in after its first factor (``amr``: ``pwd``, or ``social`` from
    :mod:`saas.auth.social_views`): the MFA page when the account has MFA, else signed in and on
    to the next step."""
    now = int(time.time())
    _end_sign_in("replaced")
    if mfa.has_mfa(db.session(), user.id):
        _set_pending(user.id, now, amr)
        return redirect(url_for("hosted.mfa"))
    _sign_in(user.id, now, amr)
    user.last_login_at = utcnow()
    return _continue()


def _start_sso(connection, email: str, client_name: str):
    """Hand the browser to ``connection``'s IdP; an IdP or Redis that cannot be reached leaves
    the user on the page with a message (502), never a 500."""
    try:
        return sso_login.start_login(connection, url_for("hosted.login"), login_hint=email)
    except (AppError, RedisUnavailable, KeyError):
        return _render(
            "login.html",
            502,
            title="Sign in",
            client_name=client_name,
            email=email,
            error="Your organisation's identity provider cannot be reached right now. Try again later.",
        )


@bp.get("/oauth/sso/complete")
def sso_complete():
    """The end of an SSO sign-in (:mod:`saas.auth.sso.login`): the single-use ticket the
    protocol's callback left, bound to this browser, signs it in (``amr`` with ``sso``) and the
    pending authorization continues, for the connection's tenant when the request named none."""
    try:
        ticket = sso_login.take_ticket(
            request.args.get("ticket"), request.cookies.get(sso_login.BINDING_COOKIE)
        )
    except RedisUnavailable:
        raise ErrorPage(
            "Sign-in unavailable", "Sign-in is unavailable right now. Try again shortly.", 503
        ) from None
    if ticket is None:
        raise ErrorPage(
            "Sign-in expired",
            "This single sign-on answer has expired, was already used, or was started in another "
            "browser. Go back to the application and sign in again.",
        )
    sess = db.session()
    user = sess.get(User, ticket.user_id)
    if user is None or user.status != "active":
        raise ErrorPage("Account locked", "This account cannot sign in.", 403)
    _sign_in(user.id, ticket.auth_time, ticket.amr)
    user.last_login_at = utcnow()
    data = session.get("areq")
    if not data:
        return redirect(ticket.next_url)
    req = provider.AuthorizationRequest.from_dict(data)
    if not req.tenant_id:
        req.tenant_id = str(ticket.tenant_id)
        session["areq"] = req.to_dict()
    return _continue()


@bp.route("/oauth/mfa", methods=["GET", "POST"], endpoint="mfa")
def mfa_page():
    req, _client = _pending_request()
    pending = _pending_login()
    if not pending:
        return redirect(url_for("hosted.login"))
    sess = db.session()
    if request.method == "GET":
        return _render("mfa.html", title="Two-step verification", **_mfa_passkey(pending))
    _check_csrf()
    user = sess.get(User, uuid.UUID(pending["uid"]))
    if user is None or user.status != "active":
        session.pop("pending", None)
        return redirect(url_for("hosted.login"))
    schema = _audit_schema(user.id, req)
    try:
        mfa.verify(sess, user, request.form.get("code", "")[:64], schema, mfa_token=pending.get("attempt"))
    except AppError as err:
        return _render(
            "mfa.html", err.status, title="Two-step verification", error=err.detail, **_mfa_passkey(pending)
        )
    session.pop("pending", None)
    _sign_in(user.id, int(time.time()), [*pending["amr"], "otp"])
    user.last_login_at = utcnow()
    return _continue()


def _audit_schema(user_id: uuid.UUID, req: provider.AuthorizationRequest) -> str | None:
    """The tenant log where hosted-page MFA events go: the chosen tenant, else the first one."""
    rows = _memberships(user_id)
    for _m, t in rows:
        if req.tenant_id and str(t.id) == req.tenant_id:
            return t.schema_name
    return rows[0][1].schema_name if rows else None


@bp.route("/oauth/mfa/enroll", methods=["GET", "POST"])
def enroll():
    req, _client = _pending_request()
    login = _login_state()
    if login is None:
        return redirect(url_for("hosted.login"))
    sess = db.session()
    user = sess.get(User, uuid.UUID(login["uid"]))
    if user is None:
        return redirect(url_for("hosted.login"))
    if request.method == "GET":
        enrollment = mfa.begin_enrollment(sess, user)
        return _render(
            "enroll.html",
            title="Set up two-step verification",
            secret=enrollment.secret,
            qr_code=enrollment.qr_svg_data_uri,
        )
    _check_csrf()
    try:
        codes = mfa.confirm_enrollment(
            sess, user, request.form.get("code", "")[:64], _audit_schema(user.id, req)
        )
    except AppError as err:
        return _render(
            "error.html",
            err.status,
            title="Set up two-step verification",
            detail="Start again to get a new key.",
            error=err.detail,
        )
    row = g.browser_session  # the sign-in now has its second factor
    row.amr = [*login["amr"], "otp"]
    row.auth_time = utcnow()
    row.expires_at = row.auth_time + browser_sessions.MAX_AGE
    return _render("enroll.html", title="Two-step verification is on", recovery_codes=codes)


@bp.post("/oauth/mfa/enroll/done")
def enroll_done():
    _check_csrf()
    return _continue()


@bp.route("/oauth/tenant", methods=["GET", "POST"])
def tenant():
    req, client = _pending_request()
    login = _login_state()
    if login is None:
        return redirect(url_for("hosted.login"))
    memberships = _memberships(uuid.UUID(login["uid"]))
    if request.method == "GET":
        return _render(
            "tenant.html",
            title="Choose an organisation",
            client_name=client.name,
            tenants=[t for _m, t in memberships],
        )
    _check_csrf()
    slug = request.form.get("tenant", "")
    match = [t for _m, t in memberships if t.slug == slug]
    if not match:
        raise ErrorPage("Choose an organisation", "You are not a member of that organisation.", 403)
    req.tenant_id = str(match[0].id)
    session["areq"] = req.to_dict()
    return _continue()


@bp.route("/oauth/consent", methods=["GET", "POST"])
def consent():
    req, client = _pending_request()
    login = _login_state()
    if login is None:
        return redirect(url_for("hosted.login"))
    sess = db.session()
    memberships = _memberships(uuid.UUID(login["uid"]))
    if client.tenant_id is not None:
        memberships = [(m, t) for m, t in memberships if t.id == client.tenant_id]
    chosen = [t for _m, t in memberships if req.tenant_id and str(t.id) == req.tenant_id] or [
        t for _m, t in memberships
    ]
    if not chosen:
        return _redirect_error(
            req, "access_denied", "The user is not a member of the application's organisation."
        )
    tenant_row = chosen[0]
    if request.method == "GET":
        return _render(
            "consent.html",
            title="Allow access?",
            client_name=client.name,
            tenant_name=tenant_row.name,
            scopes=req.scope.split(),
        )
    _check_csrf()
    if request.form.get("decision") != "allow":
        audit.record(
            sess,
            AuditAction.OAUTH_CONSENT_DENIED,
            target_type="oauth_client",
            target_id=client.client_id,
            actor=audit.Actor("user", login["uid"]),
            tenant_id=tenant_row.id,
        )
        return _redirect_error(req, "access_denied", "The user denied the request.")
    provider.grant_consent(sess, client, uuid.UUID(login["uid"]), tenant_row, req.scope)
    session["consented"] = req.id
    return _continue()


def sign_out(data: dict[str, Any]) -> uuid.UUID | None:
    """End this browser's sign-in (``logout``: its applications' sessions too, see
    :func:`saas.auth.browser_sessions.end`) and audit ``auth.logout`` with ``data`` in each of
    the user's tenants; returns the user, None when nobody was signed in."""
    user_id = _end_sign_in("logout")
    if user_id is not None:
        for _m, tenant_row in _memberships(user_id):
            audit.record(
                db.session(),
                AuditAction.AUTH_LOGOUT,
                target_type="user",
                target_id=user_id,
                actor=audit.Actor("user", str(user_id)),
                data=data,
                tenant_id=tenant_row.id,
            )
    return user_id


@bp.post("/oauth/logout")
def logout():
    """End the browser's sign-in on the hosted pages: its server-side row ends, so the cookie
    signs nobody in any more, and so do the refresh families issued from it, each of their
    clients with a back-channel logout URI being notified (:func:`browser_sessions.end`).
    Audited as ``auth.logout`` in the user's tenants."""
    _check_csrf()
    sign_out({"via": "hosted"})
    session.clear()
    return _render("error.html", title="Signed out", detail="You are signed out.")


# --- passkeys on the hosted pages (saas.auth.webauthn) ----------------------------------------


@bp.get("/oauth/static/passkey.js")
def passkey_script():
    """The hosted pages' passkey script (a file: the pages' CSP allows ``script-src 'self'``)."""
    return send_from_directory(_STATIC, "passkey.js", mimetype="text/javascript", max_age=300)


def _mfa_passkey(pending: dict[str, Any]) -> dict[str, Any]:
    """The MFA page's "Use a passkey" button, when the user has one and it was not already
    the first factor."""
    if {"hwk", "swk"} & set(pending.get("amr") or []):
        return {}
    if not passkeys.has_passkey(db.session(), uuid.UUID(pending["uid"])):
        return {}
    return {"passkey_purpose": "mfa", "passkey_label": "Use a passkey"}


def _check_csrf_header() -> dict[str, Any]:
    """The JSON body of a passkey call, after its ``X-CSRF-Token`` header matched the session's
    token (constant time)."""
    expected = session.get("csrf")
    sent = request.headers.get("X-CSRF-Token", "")
    if not expected or not same_string(expected, sent):
        raise passkeys.WebAuthnChallengeInvalid("The page expired: reload it.")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or body.get("purpose") not in ("login", "mfa"):
        raise passkeys.WebAuthnChallengeInvalid('Send {"purpose": "login" or "mfa"}.')
    return body


@bp.post("/oauth/webauthn/options")
def webauthn_options():
    """Request options for the login page's passkey (discoverable: no ``allowCredentials``)
    or the MFA page's (the pending user's passkeys). The ceremony is bound to this browser's
    session cookie as well as to its purpose (and user)."""
    _pending_request()
    body = _check_csrf_header()
    sess = db.session()
    user = None
    if body["purpose"] == "mfa":
        pending = _pending_login()
        if not pending or not _mfa_passkey(pending):
            raise passkeys.WebAuthnChallengeInvalid("No sign-in is waiting for a passkey.")
        user = sess.get(User, uuid.UUID(pending["uid"]))
    options = passkeys.authentication_options(sess, body["purpose"], user)
    session["webauthn_ceremony"] = options["ceremony_id"]
    return options


@bp.post("/oauth/webauthn/verify")
def webauthn_verify():
    """Check the assertion (WebAuthn Level 2 section 7.2) and sign the browser in: a
    user-verified passkey is MFA by itself; without UV, a TOTP user still gets the MFA page.
    Answers ``{"redirect": url}`` (the next step, or the client with its code)."""
    _pending_request()
    body = _check_csrf_header()
    sess = db.session()
    ceremony_id = session.pop("webauthn_ceremony", None)
    now = int(time.time())
    if body["purpose"] == "mfa":
        pending = _pending_login()
        if not pending or not _mfa_passkey(pending):
            raise passkeys.WebAuthnChallengeInvalid("No sign-in is waiting for a passkey.")
        uid = uuid.UUID(pending["uid"])
        ceremony = passkeys.take_ceremony(ceremony_id, "mfa", uid)
        assertion = passkeys.verify_assertion(sess, ceremony, body.get("credential"))
        service.check_account(assertion.user)
        session.pop("pending", None)
        amr = list(dict.fromkeys([*pending["amr"], *assertion.amr, "mfa"]))
        _sign_in(uid, now, amr)
    else:
        ceremony = passkeys.take_ceremony(ceremony_id, "login")
        assertion = passkeys.verify_assertion(sess, ceremony, body.get("credential"))
        user = assertion.user
        service.check_account(user)
        check_sso_not_required(sess, user)  # 403 sso_required
        _end_sign_in("replaced")
        if not satisfies_mfa(assertion.amr) and mfa.has_mfa(sess, user.id):
            _set_pending(user.id, now, assertion.amr)
            return {"redirect": url_for("hosted.mfa")}
        _sign_in(user.id, now, assertion.amr)
    assertion.user.last_login_at = utcnow()
    response = _continue()
    return {"redirect": response.location}
