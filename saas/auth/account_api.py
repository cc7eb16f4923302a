"""The account endpoints: password reset and change, email verification and change.

Thin views over :mod:`saas.auth.recovery` and :mod:`saas.auth.emails`; the hosted pages that
land the mailed links are :mod:`saas.auth.account_pages`. Every endpoint here has the sign-in
throttles (:data:`saas.limits.policies.AUTH_ENDPOINTS`), the ones that mail someone the mail
throttles too.
"""

from __future__ import annotations

import marshmallow as ma
from flask import jsonify
from flask.views import MethodView

from saas.actions import ActionContext
from saas.api import Blueprint
from saas.auth import emails, recovery
from saas.auth.context import authenticated, not_impersonated

blp = Blueprint(
    "account",
    __name__,
    url_prefix="/api/v1",
    description="Password reset and change, email verification and change",
)

#: the answer to a forgotten password, whether or not the address has an account
FORGOT_ACCEPTED = {"detail": "If an account uses that address, a link to reset its password is on its way."}

_TOKEN = {
    "validate": ma.validate.Length(max=512),
    "metadata": {"description": "the token of the mailed link"},
}


class ForgotSchema(ma.Schema):
    email = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=320))


class ResetSchema(ma.Schema):
    token = ma.fields.String(required=True, **_TOKEN)
    password = ma.fields.String(required=True, validate=ma.validate.Length(max=1024), load_only=True)


class ChangePasswordSchema(ma.Schema):
    current_password = ma.fields.String(required=True, validate=ma.validate.Length(max=1024), load_only=True)
    new_password = ma.fields.String(required=True, validate=ma.validate.Length(max=1024), load_only=True)


class TokenSchema(ma.Schema):
    token = ma.fields.String(required=True, **_TOKEN)


class EmailChangeSchema(ma.Schema):
    new_email = ma.fields.Email(required=True, validate=ma.validate.Length(max=320))
    password = ma.fields.String(required=True, validate=ma.validate.Length(max=1024), load_only=True)


class AcceptedSchema(ma.Schema):
    detail = ma.fields.String()


def _accepted(body: dict):
    response = jsonify(body)
    response.status_code = 202
    return response


@blp.route("/auth/password/forgot")
class ForgotPassword(MethodView):
    @blp.arguments(ForgotSchema)
    @blp.response(202, AcceptedSchema)
    @blp.alt_response(429, description="Sign-in or mail throttle (per IP, per address); Retry-After")
    @blp.doc(security=[])
    def post(self, body):
        """Mail a password-reset link (``/account/reset?token=...``, ``PASSWORD_RESET_TTL``) to the
        address when it has an account. The answer (202, ``FORGOT_ACCEPTED``) and its cost are
        the same either way, so it tells nobody whether the address has an account (OWASP
        Forgot Password Cheat Sheet)."""
        recovery.forgot_password(ActionContext.from_request(), body["email"])
        return _accepted(FORGOT_ACCEPTED)


@blp.route("/auth/password/reset")
class ResetPassword(MethodView):
    @blp.arguments(ResetSchema)
    @blp.response(204)
    @blp.alt_response(400, description="invalid_reset_token: unknown, expired, used or voided link")
    @blp.alt_response(422, description="The password fails the policy (NIST SP 800-63B, the tenants')")
    @blp.doc(security=[])
    def post(self, body):
        """Set a new password with a reset link's token. Every session of the account ends
        (refresh families, browser sign-ins), every other reset link is voided and a notice is
        mailed. Nobody is signed in: log in next (with the second factor, if enrolled)."""
        recovery.reset_password(ActionContext.from_request(), body["token"], body["password"])


@blp.route("/me/password")
class MyPassword(MethodView):
    @authenticated
    @not_impersonated
    @blp.arguments(ChangePasswordSchema)
    @blp.response(204)
    @blp.alt_response(422, description="The new password fails the policy")
    def put(self, body):
        """Change your password. A wrong ``current_password`` is 403 ``invalid_credentials`` and
        counts as a failed sign-in (audited, throttled per account). Every other session ends;
        this one stays. A notice is mailed."""
        recovery.change_password(ActionContext.from_request(), body["current_password"], body["new_password"])


@blp.route("/auth/email/verify")
class VerifyEmail(MethodView):
    @blp.arguments(TokenSchema)
    @blp.response(204)
    @blp.alt_response(400, description="invalid_verification_token: unknown, expired, used or voided link")
    @blp.doc(security=[])
    def post(self, body):
        """Verify the account's email address with the token of the mailed link
        (``/account/verify?token=...``)."""
        emails.verify_email(ActionContext.from_request(), body["token"])


@blp.route("/me/email/verification")
class MyEmailVerification(MethodView):
    @authenticated
    @blp.response(202, AcceptedSchema)
    @blp.alt_response(409, description="email_already_verified")
    @blp.alt_response(429, description="Mail throttle; Retry-After")
    def post(self):
        """Mail a new verification link to your address (the previous link stops working)."""
        emails.resend_verification(ActionContext.from_request())
        return _accepted({"detail": "A verification link is on its way to your address."})


@blp.route("/me/email")
class MyEmail(MethodView):
    @authenticated
    @not_impersonated
    @blp.arguments(EmailChangeSchema)
    @blp.response(202, AcceptedSchema)
    @blp.alt_response(409, description="email_taken: another account has that address")
    @blp.alt_response(429, description="Mail throttle; Retry-After")
    def post(self, body):
        """Ask to move your account to ``new_email`` (needs your password): a confirmation link
        (``/account/email?token=...``) goes to the new address, a notice without any link to the
        current one. Nothing changes until the link is used."""
        emails.request_email_change(ActionContext.from_request(), body["new_email"], body["password"])
        return _accepted({"detail": "Confirm the change with the link sent to the new address."})


@blp.route("/auth/email/change")
class ConfirmEmailChange(MethodView):
    @blp.arguments(TokenSchema)
    @blp.response(204)
    @blp.alt_response(400, description="invalid_verification_token: unknown, expired, used or voided link")
    @blp.alt_response(409, description="email_taken: another account took the address meanwhile")
    @blp.doc(security=[])
    def post(self, body):
        """Confirm an email change with the token of the link mailed to the new address: the
        account moves to it (verified), and the old address gets a notice."""
        emails.confirm_email_change(ActionContext.from_request(), body["token"])
