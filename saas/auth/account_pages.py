"""The hosted pages of the mailed links: forgot password, reset, verify an address, confirm a change.

``/account/forgot`` (linked from the login page), ``/account/reset?token=...``,
``/account/verify?token=...`` and ``/account/email?token=...``, server-rendered (Jinja
autoescaping) over the same services as the API (:mod:`saas.auth.recovery`,
:mod:`saas.auth.emails`).

* A GET never spends a token: mail scanners and link previews fetch links. The page is a form
  that POSTs the token back in its body (not the URL), so it stays out of the next request's
  URL and of every log line (the request log names the route, never the query).
* The token in the form is what authorizes; no session cookie is needed (the hosted session
  cookie's path is ``/oauth``). Cross-site form posts are refused (403) by the Fetch metadata
  ``Sec-Fetch-Site: cross-site`` and by an ``Origin`` other than ``SAAS_ISSUER``'s (OWASP CSRF
  Prevention Cheat Sheet, "Verifying Origin with standard headers"; with ``Referrer-Policy:
  no-referrer`` browsers send ``Origin: null``, accepted when Fetch metadata says same-origin
  or is absent).
* Headers as on the sign-in pages: ``Referrer-Policy: no-referrer`` (the token in the page's URL
  never leaks through ``Referer``), the same CSP, ``X-Frame-Options: DENY``, ``no-store``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Flask, render_template, request, url_for

from saas.actions import ActionContext
from saas.auth import emails, recovery
from saas.auth.account_api import FORGOT_ACCEPTED
from saas.auth.pages import security_headers
from saas.errors import AppError, ValidationError
from saas.services import services

bp = Blueprint("account_pages", __name__, template_folder="templates")

#: longest token accepted from a form (a real one is 43 characters)
_TOKEN_MAX = 512


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


bp.after_request(security_headers)


def _duration(seconds: int) -> str:
    minutes = max(1, round(seconds / 60))
    if minutes % 60 == 0:
        return f"{minutes // 60} hour" + ("s" if minutes != 60 else "")
    return f"{minutes} minute" + ("s" if minutes != 1 else "")


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _same_site_post() -> bool:
    """Whether the POST came from a page of this site (or from a client that is no browser)."""
    if request.headers.get("Sec-Fetch-Site", "") == "cross-site":
        return False
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return request.headers.get("Sec-Fetch-Site") in (None, "same-origin", "none")
    return origin.lower() == _origin_of(services().settings.issuer)


def _page(template: str, status: int = 200, **context):
    context.setdefault("error", None)
    return render_template(f"auth/{template}", **context), status


def _message(title: str, detail: str, status: int = 200, error: str | None = None):
    return _page("error.html", status, title=title, detail=detail, error=error)


def _form_token() -> str:
    token = request.form.get("token", "")
    return token[:_TOKEN_MAX]


def _refuse_cross_site():
    return _message("Not allowed", "This form must be sent from this site's own page.", 403)


@bp.route("/account/forgot", methods=["GET", "POST"])
def forgot():
    """Ask for a password-reset link (the same service and answer as the API's)."""
    ttl = _duration(services().settings.password_reset_ttl_seconds)
    if request.method == "GET":
        return _page("account_forgot.html", title="Forgot your password?", ttl=ttl)
    if not _same_site_post():
        return _refuse_cross_site()
    email = request.form.get("email", "")[:320].strip()
    if not email:
        return _page(
            "account_forgot.html", 422, title="Forgot your password?", ttl=ttl, error="Enter an email."
        )
    recovery.forgot_password(ActionContext.from_request(), email)
    return _page("account_forgot.html", title="Check your mail", ttl=ttl, sent=FORGOT_ACCEPTED["detail"])


@bp.route("/account/reset", methods=["GET", "POST"])
def reset():
    """Choose a new password with the link's token."""
    if request.method == "GET":
        token = request.args.get("token", "")[:_TOKEN_MAX]
        if not token:
            return _message("Invalid link", "This link has no token. Ask for a new one.", 400)
        return _page("account_reset.html", title="Choose a new password", token=token)
    if not _same_site_post():
        return _refuse_cross_site()
    token = _form_token()
    try:
        recovery.reset_password(ActionContext.from_request(), token, request.form.get("password", "")[:1024])
    except ValidationError as err:
        problems = err.extra.get("errors", {}).get("password", [])
        return _page("account_reset.html", 422, title="Choose a new password", token=token, problems=problems)
    except AppError as err:
        return _message("Invalid link", err.detail or err.title, err.status)
    return _message("Password changed", "Your password is changed and every session ended: sign in again.")


def _confirm_page(title: str, prompt: str, button: str, endpoint: str):
    token = request.args.get("token", "")[:_TOKEN_MAX]
    if not token:
        return _message("Invalid link", "This link has no token.", 400)
    return _page(
        "account_confirm.html",
        title=title,
        prompt=prompt,
        button=button,
        action=url_for(endpoint),
        token=token,
    )


@bp.route("/account/verify", methods=["GET", "POST"])
def verify():
    """Verify the account's address with the link's token."""
    if request.method == "GET":
        return _confirm_page(
            "Verify your email address",
            "Confirm that this address is yours.",
            "Verify my address",
            "account_pages.verify",
        )
    if not _same_site_post():
        return _refuse_cross_site()
    try:
        emails.verify_email(ActionContext.from_request(), _form_token())
    except AppError as err:
        return _message("Invalid link", err.detail or err.title, err.status)
    return _message("Address verified", "Your email address is verified.")


@bp.route("/account/email", methods=["GET", "POST"])
def email():
    """Confirm moving the account to the address the link was mailed to."""
    if request.method == "GET":
        return _confirm_page(
            "Confirm your new email address",
            "Move your account to this address? Your old address will no longer sign in.",
            "Confirm the change",
            "account_pages.email",
        )
    if not _same_site_post():
        return _refuse_cross_site()
    try:
        emails.confirm_email_change(ActionContext.from_request(), _form_token())
    except AppError as err:
        return _message("Cannot change the address", err.detail or err.title, err.status)
    return _message("Address changed", "Your account now uses this address, and it is verified.")
