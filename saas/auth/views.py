"""The first-party login endpoints: password login, its MFA step, logout (``/api/v1/auth``).

The OAuth endpoints (token, revocation, introspection, userinfo, discovery) are
:mod:`saas.auth.oauth.routes`; the hosted sign-in pages :mod:`saas.auth.hosted`.
"""

from __future__ import annotations

from flask.views import MethodView

from saas import db
from saas.actions import ActionContext
from saas.api import Blueprint
from saas.audit import AuditAction
from saas.auth import service, sessions
from saas.auth.context import authenticated, current_principal
from saas.auth.schemas import LoginSchema, MfaLoginSchema, TokenResponseSchema

blp = Blueprint("auth", __name__, url_prefix="/api/v1/auth", description="Log in and get tokens")


@blp.route("/login")
class Login(MethodView):
    @blp.arguments(LoginSchema)
    @blp.response(200, TokenResponseSchema)
    @blp.alt_response(401, description="Wrong email or password (the same answer either way)")
    @blp.doc(security=[])
    def post(self, body):
        """Log in with email and password; returns an access and a refresh token."""
        tokens = service.login(db.session(), body["email"], body["password"], body.get("tenant"))
        return tokens.to_dict()


@blp.route("/mfa")
class MfaLogin(MethodView):
    @blp.arguments(MfaLoginSchema)
    @blp.response(200, TokenResponseSchema)
    @blp.alt_response(401, description="Wrong, replayed or expired code, or invalid mfa_token")
    @blp.alt_response(403, description="mfa_locked: 5 wrong codes; Retry-After")
    @blp.doc(security=[])
    def post(self, body):
        """Second login step after ``mfa_required``: tokens with ``amr: ["pwd", "otp"]``."""
        return service.login_with_mfa(db.session(), body["mfa_token"], body["code"]).to_dict()


@blp.route("/logout")
class Logout(MethodView):
    @authenticated
    @blp.response(204)
    def post(self):
        """End the current session: revoke the refresh-token family of the bearer token's ``sid``."""
        principal = current_principal()
        sid = principal.claims.get("sid")
        if not sid:
            return
        session = db.session()
        family = sessions.owned_family(session, sid, principal.user_id, principal.tenant_id)
        if family is not None and sessions.revoke_family(session, family, "logout"):
            ActionContext.from_request(session).record(
                AuditAction.AUTH_LOGOUT, target_type="session", target_id=family
            )
