"""The passkey endpoints (W3C WebAuthn Level 2; :mod:`saas.auth.webauthn`).

* ``/api/v1/me/webauthn/...`` — a signed-in user registers (options, then verify), lists and
  deletes passkeys; registering and deleting need step-up (RFC 9470), as TOTP does.
* ``/api/v1/auth/webauthn/...`` — passwordless login: options (``allowCredentials`` empty for
  discoverable credentials, or the account's when an ``email`` is given), then verify, which
  answers like ``POST /api/v1/auth/login``.
* ``/api/v1/auth/mfa/webauthn/...`` — a passkey as the second factor of a login's ``mfa_token``.
"""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from saas import db
from saas.actions import ActionContext
from saas.api import Blueprint
from saas.auth import service
from saas.auth import webauthn as passkeys
from saas.auth.context import authenticated, check_verified_email, current_principal
from saas.auth.schemas import TokenResponseSchema
from saas.auth.stepup import check_step_up
from saas.errors import Unauthorized
from saas.identity.models import User

blp = Blueprint("webauthn", __name__, url_prefix="/api/v1", description="Passkeys (WebAuthn)")


class _OptionsOutSchema(ma.Schema):
    ceremony_id = ma.fields.String(
        metadata={"description": "send it back with the credential; single use, 5 minutes"}
    )
    publicKey = ma.fields.Dict(
        metadata={
            "description": "PublicKeyCredentialCreationOptionsJSON / RequestOptionsJSON "
            "(WebAuthn Level 2 sections 5.4, 5.5; binary members base64url)"
        }
    )


_CREDENTIAL = ma.fields.Dict(
    required=True,
    metadata={
        "description": "the PublicKeyCredential as JSON (RegistrationResponseJSON or "
        "AuthenticationResponseJSON: id, rawId, type, response.*, base64url)"
    },
)
_CEREMONY = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))


class RegistrationVerifySchema(ma.Schema):
    ceremony_id = _CEREMONY
    credential = _CREDENTIAL
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=100))


class CredentialSchema(ma.Schema):
    id = ma.fields.UUID()
    name = ma.fields.String()
    created_at = ma.fields.DateTime()
    last_used_at = ma.fields.DateTime(allow_none=True)
    aaguid = ma.fields.String(metadata={"description": "the authenticator model (section 6.5.1)"})
    transports = ma.fields.List(ma.fields.String())
    discoverable = ma.fields.Boolean(metadata={"description": "a resident key (credProps.rk)"})
    backup_eligible = ma.fields.Boolean(metadata={"description": "BE flag: a synced passkey"})
    backed_up = ma.fields.Boolean(metadata={"description": "BS flag"})
    disabled = ma.fields.Boolean(metadata={"description": "its counter went backwards (a clone?)"})


class LoginOptionsInSchema(ma.Schema):
    email = ma.fields.Email(validate=ma.validate.Length(max=320))


class LoginVerifySchema(ma.Schema):
    ceremony_id = _CEREMONY
    credential = _CREDENTIAL
    tenant = ma.fields.String(validate=ma.validate.Length(max=63), metadata={"description": "tenant slug"})


class MfaOptionsInSchema(ma.Schema):
    mfa_token = ma.fields.String(required=True, validate=ma.validate.Length(max=200))


class MfaVerifySchema(ma.Schema):
    mfa_token = ma.fields.String(required=True, validate=ma.validate.Length(max=200))
    ceremony_id = _CEREMONY
    credential = _CREDENTIAL


def _me() -> User:
    principal = current_principal()
    if principal.user_id is None:
        raise Unauthorized("Passkeys belong to people, not service accounts.", error=None)
    return db.session().get(User, principal.user_id)


# --- a signed-in user's passkeys -----------------------------------------------------------------


@blp.route("/me/webauthn/registration/options")
class RegistrationOptions(MethodView):
    @authenticated
    @blp.response(200, _OptionsOutSchema)
    @blp.alt_response(401, description="insufficient_user_authentication: step-up needed")
    @blp.alt_response(403, description="email_unverified")
    @blp.alt_response(503, description="mfa_unavailable: the challenge store is down")
    def post(self):
        """Start registering a passkey (needs step-up): creation options with a fresh challenge,
        ``residentKey`` and ``userVerification`` preferred, the caller's passkeys excluded."""
        user = _me()
        check_step_up()
        check_verified_email()  # a passkey of a pre-registered account would outlive the reset
        return passkeys.registration_options(db.session(), user)


@blp.route("/me/webauthn/registration/verify")
class RegistrationVerify(MethodView):
    @authenticated
    @blp.arguments(RegistrationVerifySchema)
    @blp.response(201, CredentialSchema)
    @blp.alt_response(400, description="webauthn_challenge_invalid / webauthn_registration_failed")
    @blp.alt_response(401, description="insufficient_user_authentication: step-up needed")
    @blp.alt_response(403, description="email_unverified")
    @blp.alt_response(409, description="webauthn_credential_exists")
    def post(self, body):
        """Finish registering: the attestation is verified (WebAuthn Level 2 section 7.1) and the
        credential stored under ``name``; audited as ``webauthn.registered``."""
        user = _me()
        check_step_up()
        check_verified_email()  # a passkey of a pre-registered account would outlive the reset
        row = passkeys.register(
            ActionContext.from_request(), user, body["ceremony_id"], body["credential"], body["name"].strip()
        )
        return passkeys.to_public(row)


@blp.route("/me/webauthn/credentials")
class Credentials(MethodView):
    @authenticated
    @blp.response(200, CredentialSchema(many=True))
    def get(self):
        """My passkeys: name, created, last used, AAGUID, transports, BE/BS flags (no keys)."""
        user = _me()
        return [passkeys.to_public(c) for c in passkeys.user_credentials(db.session(), user.id)]


@blp.route("/me/webauthn/credentials/<credential_id>")
class CredentialItem(MethodView):
    @authenticated
    @blp.response(204)
    @blp.alt_response(401, description="insufficient_user_authentication: step-up needed")
    @blp.alt_response(404, description="No such passkey of mine")
    def delete(self, credential_id):
        """Delete one of my passkeys (needs step-up: it removes a factor); audited as
        ``webauthn.deleted``."""
        user = _me()
        check_step_up()
        passkeys.delete_credential(ActionContext.from_request(), user, credential_id)


# --- passwordless login and second factor --------------------------------------------------------


@blp.route("/auth/webauthn/options")
class LoginOptions(MethodView):
    @blp.arguments(LoginOptionsInSchema, required=False)
    @blp.response(200, _OptionsOutSchema)
    @blp.alt_response(503, description="mfa_unavailable: the challenge store is down")
    @blp.doc(security=[])
    def post(self, body):
        """Start a passwordless login: request options, ``allowCredentials`` always empty (a
        discoverable credential names its user), the same answer for any ``email``. An ``email``
        only binds the ceremony: a passkey of another account then fails."""
        email = (body or {}).get("email")
        sess = db.session()
        user = service.find_user_by_email(sess, email) if email else None
        return passkeys.authentication_options(sess, "login", user, email)


@blp.route("/auth/webauthn/verify")
class LoginVerify(MethodView):
    @blp.arguments(LoginVerifySchema)
    @blp.response(200, TokenResponseSchema)
    @blp.alt_response(400, description="webauthn_challenge_invalid: unknown, expired or used ceremony")
    @blp.alt_response(401, description="webauthn_failed: the assertion does not verify, or a clone")
    @blp.alt_response(403, description="mfa_required / mfa_enrollment_required (no user verification)")
    @blp.doc(security=[])
    def post(self, body):
        """Finish a passwordless login (WebAuthn Level 2 section 7.2): the token response of
        ``POST /api/v1/auth/login``, ``amr`` ``["hwk"|"swk", "user", "mfa"]`` with UV."""
        return service.login_with_passkey(
            db.session(), body["ceremony_id"], body["credential"], body.get("tenant")
        ).to_dict()


@blp.route("/auth/mfa/webauthn/options")
class MfaOptions(MethodView):
    @blp.arguments(MfaOptionsInSchema)
    @blp.response(200, _OptionsOutSchema)
    @blp.alt_response(401, description="invalid_mfa_token")
    @blp.doc(security=[])
    def post(self, body):
        """Request options for a passkey as the second factor of the ``mfa_token``'s login."""
        return service.passkey_mfa_options(db.session(), body["mfa_token"])


@blp.route("/auth/mfa/webauthn/verify")
class MfaVerify(MethodView):
    @blp.arguments(MfaVerifySchema)
    @blp.response(200, TokenResponseSchema)
    @blp.alt_response(400, description="webauthn_challenge_invalid")
    @blp.alt_response(401, description="invalid_mfa_token / webauthn_failed")
    @blp.doc(security=[])
    def post(self, body):
        """Second login step with a passkey: tokens with ``amr`` the first factor's, the
        passkey's and ``mfa`` (RFC 8176)."""
        return service.login_with_passkey_mfa(
            db.session(), body["mfa_token"], body["ceremony_id"], body["credential"]
        ).to_dict()
