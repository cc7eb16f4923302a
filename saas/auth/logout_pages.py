"""The hosted ``end_session_endpoint``: OpenID Connect RP-Initiated Logout 1.0.

``GET /oauth/end-session`` (or ``POST`` with the same form parameters, section 2) takes

* ``id_token_hint``: an ID token this server issued (:meth:`saas.auth.tokens.TokenService.
  verify_id_token_hint`: our signature, ``iss`` ours; an expired one is accepted, section 4).
  Its ``aud`` names the client, its ``sub`` the user and its ``sid`` the browser sign-in;
* ``client_id``: needed with ``post_logout_redirect_uri`` when there is no hint; it must be one
  of the hint's audiences when both are sent;
* ``post_logout_redirect_uri``: where to send the browser afterwards; it must be one of the
  client's registered ``post_logout_redirect_uris``, compared exactly (section 3.1). An unknown
  one is an error page, never a redirect (an open redirector otherwise);
* ``state``: passed back on that redirect (section 2);
* ``ui_locales``, ``logout_hint``: accepted and ignored.

The sign-in of this browser ends at once when the hint names it (its ``sub``, and its ``sid``
when present). Otherwise, when someone is signed in, a confirmation page asks first (section 2:
"the OP SHOULD ask the End-User whether to log out"); its form is a POST with the CSRF token of
the hosted pages, and the request's checked parameters wait in the signed session cookie, not in
the form. Ending the sign-in ends the applications' sessions born from it and sends each of
their clients a back-channel logout token (:func:`saas.auth.browser_sessions.end`). A POST from
the client (a cross-site form, which ``SameSite=Lax`` strips of the cookie) is answered with a
303 to the same parameters as a GET, a top-level navigation that carries it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, g, redirect, request, session, url_for

from saas import db
from saas.auth import hosted, pages
from saas.auth.clients import find_client
from saas.auth.errors import ErrorPage
from saas.auth.oauth.authorization import with_query
from saas.services import services

bp = Blueprint("logout_pages", __name__)
bp.after_request(pages.security_headers)
bp.register_error_handler(ErrorPage, hosted._error_page)

PARAMS = {"id_token_hint": 8192, "client_id": 64, "post_logout_redirect_uri": 2048, "state": 1024}


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def _bad(detail: str) -> ErrorPage:
    return ErrorPage("Sign-out request not valid", detail)


def _checked(params: dict[str, str]) -> dict[str, Any]:
    """The request's parameters, checked (section 2 and 3.1): the client, the redirect URI and
    the hint's claims.

    Raises:
        ErrorPage: a parameter too long, a hint we did not issue, a client that is unknown or
            not the hint's audience, a redirect URI without a client or not registered.
    """
    for name, limit in PARAMS.items():
        if len(params.get(name) or "") > limit:
            raise _bad(f"The parameter {name} is too long.")
    hint = None
    if params.get("id_token_hint"):
        hint = services().tokens.verify_id_token_hint(params["id_token_hint"])
        if hint is None:
            raise _bad("The id_token_hint was not issued by this server.")
    client_id = params.get("client_id") or None
    if hint is not None:
        audiences = hint["aud"] if isinstance(hint["aud"], list) else [hint["aud"]]
        if client_id is None and len(audiences) == 1:
            client_id = str(audiences[0])
        elif client_id is not None and client_id not in audiences:
            raise _bad("The client_id is not the audience of the id_token_hint.")
    client = find_client(db.session(), client_id) if client_id else None
    if client_id and client is None:
        raise _bad("The application is not registered.")
    uri = params.get("post_logout_redirect_uri") or None
    if uri is not None:
        if client is None:
            raise _bad("A post_logout_redirect_uri needs a client_id or an id_token_hint.")
        if uri not in (client.post_logout_redirect_uris or []):
            raise _bad("The post_logout_redirect_uri is not registered for this application.")
    return {
        "hint": hint,
        "client_id": client.client_id if client else None,
        "client_name": client.name if client else None,
        "redirect": uri,
        "state": params.get("state") or None,
    }


def _hint_names_this_sign_in(hint: dict[str, Any] | None, login: dict[str, Any]) -> bool:
    if hint is None or hint.get("sub") != login["uid"]:
        return False
    sid = hint.get("sid")
    return sid is None or sid == str(g.browser_session.id)


def _finish(pending: dict[str, Any]):
    """After the sign-out (or when nobody was signed in): back to the client, or a page."""
    session.clear()
    if pending.get("redirect"):
        return redirect(with_query(pending["redirect"], {"state": pending.get("state")}), 302)
    return hosted._render("error.html", title="Signed out", detail="You are signed out.")


def _sign_out(client_id: str | None) -> None:
    """End this browser's sign-in (its applications' sessions too), audited as ``auth.logout``
    in the user's tenants."""
    hosted.sign_out({"via": "end_session", "client_id": client_id})


@bp.route("/oauth/end-session", methods=["GET", "POST"])
def end_session():
    """The end-session endpoint (OpenID Connect RP-Initiated Logout 1.0 section 2)."""
    if request.method == "POST" and "decision" in request.form:
        return _confirmed()
    if request.method == "POST":
        params = {k: v for k, v in request.form.items() if k in PARAMS}
        return redirect(with_query(url_for("logout_pages.end_session"), params), 303)
    checked = _checked(request.args.to_dict())
    pending = {k: checked[k] for k in ("client_id", "redirect", "state")}
    login = hosted._login_state()
    if login is None:
        return _finish(pending)  # nobody is signed in here: nothing to ask
    if _hint_names_this_sign_in(checked["hint"], login):
        _sign_out(pending["client_id"])
        return _finish(pending)
    session["end_session"] = pending
    return hosted._render("end_session.html", title="Sign out?", client_name=checked["client_name"])


def _confirmed():
    """The confirmation form: ``decision`` ``logout`` signs out, anything else keeps the
    sign-in (and sends the browser nowhere)."""
    hosted._check_csrf()
    pending = session.pop("end_session", None)
    if not pending:
        raise ErrorPage("No sign-out in progress", "Go back to the application and sign out again.")
    if request.form.get("decision") != "logout":
        return hosted._render("error.html", title="Still signed in", detail="You are still signed in.")
    if hosted._login_state() is not None:
        _sign_out(pending.get("client_id"))
    return _finish(pending)
