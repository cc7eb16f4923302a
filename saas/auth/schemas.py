"""The auth package's request and response schemas (marshmallow), in one place for every view.

The login and MFA endpoints (:mod:`saas.auth.views`), the OAuth endpoints
(:mod:`saas.auth.oauth.routes`), the auth API (:mod:`saas.auth.api`) and other packages' views
(signup, invitations answer tokens) document their bodies with these; ``saas tenants export``
writes OAuth clients with :class:`ClientSchema`.
"""

from __future__ import annotations

import marshmallow as ma

from saas.auth.clients import CLIENT_TYPES

# --- login and tokens -----------------------------------------------------------------------


class LoginSchema(ma.Schema):
    email = ma.fields.Email(required=True, validate=ma.validate.Length(max=320))
    password = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=1024))
    tenant = ma.fields.String(validate=ma.validate.Length(max=63), metadata={"description": "tenant slug"})


class TokenResponseSchema(ma.Schema):
    """RFC 6749 section 5.1."""

    access_token = ma.fields.String()
    token_type = ma.fields.String(metadata={"example": "Bearer"})
    expires_in = ma.fields.Integer(metadata={"description": "seconds"})
    refresh_token = ma.fields.String()
    scope = ma.fields.String()


class MfaLoginSchema(ma.Schema):
    mfa_token = ma.fields.String(required=True, validate=ma.validate.Length(max=200))
    code = ma.fields.String(
        required=True,
        validate=ma.validate.Length(min=6, max=16),
        metadata={"description": "a 6-digit TOTP code or a recovery code"},
    )


# --- the OAuth endpoints and discovery ------------------------------------------------------


class _OpenSchema(ma.Schema):
    """A JSON object documented by the members it always has; other members may follow."""

    class Meta:
        unknown = ma.INCLUDE


class IntrospectionSchema(_OpenSchema):
    """RFC 7662 section 2.2: ``active``, and the token's claims when it is active."""

    active = ma.fields.Boolean(required=True)


class ServerMetadataSchema(_OpenSchema):
    """RFC 8414 section 2 / OIDC Discovery 1.0 section 3."""

    issuer = ma.fields.String(required=True)
    token_endpoint = ma.fields.String()
    jwks_uri = ma.fields.String()


class JwkSetSchema(ma.Schema):
    """RFC 7517 section 5."""

    keys = ma.fields.List(ma.fields.Dict(), required=True)


# --- clients, MFA, sessions -----------------------------------------------------------------


class ClientSchema(ma.Schema):
    client_id = ma.fields.String(dump_only=True)
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))
    client_type = ma.fields.String(load_default="confidential", validate=ma.validate.OneOf(CLIENT_TYPES))
    redirect_uris = ma.fields.List(
        ma.fields.String(validate=ma.validate.Length(max=2048)), validate=ma.validate.Length(max=20)
    )
    grant_types = ma.fields.List(ma.fields.String(), validate=ma.validate.Length(max=3))
    scope = ma.fields.String(validate=ma.validate.Length(max=1024))
    role = ma.fields.String(metadata={"description": "role of client_credentials tokens"})
    first_party = ma.fields.Boolean(metadata={"description": "skip the consent page"})
    resource_server = ma.fields.Boolean(
        metadata={"description": "may introspect the tenant's tokens (RFC 7662); confidential only"}
    )
    post_logout_redirect_uris = ma.fields.List(
        ma.fields.String(validate=ma.validate.Length(max=2048)),
        validate=ma.validate.Length(max=20),
        metadata={"description": "OIDC RP-Initiated Logout 1.0 section 3.1; matched exactly"},
    )
    backchannel_logout_uri = ma.fields.String(
        allow_none=True,
        validate=ma.validate.Length(max=2048),
        metadata={"description": "OIDC Back-Channel Logout 1.0 section 2.2; https; empty removes it"},
    )
    backchannel_logout_session_required = ma.fields.Boolean(
        metadata={"description": "logout tokens carry sid (they always do here)"}
    )
    token_endpoint_auth_method = ma.fields.String(dump_only=True)
    secret_rotated_at = ma.fields.DateTime(dump_only=True)
    created_at = ma.fields.DateTime(dump_only=True)
    updated_at = ma.fields.DateTime(dump_only=True)


class ClientPatchSchema(ma.Schema):
    name = ma.fields.String(validate=ma.validate.Length(min=1, max=200))
    redirect_uris = ma.fields.List(
        ma.fields.String(validate=ma.validate.Length(max=2048)), validate=ma.validate.Length(max=20)
    )
    grant_types = ma.fields.List(ma.fields.String(), validate=ma.validate.Length(max=3))
    scope = ma.fields.String(validate=ma.validate.Length(max=1024))
    role = ma.fields.String()
    first_party = ma.fields.Boolean()
    resource_server = ma.fields.Boolean()
    post_logout_redirect_uris = ma.fields.List(
        ma.fields.String(validate=ma.validate.Length(max=2048)), validate=ma.validate.Length(max=20)
    )
    backchannel_logout_uri = ma.fields.String(validate=ma.validate.Length(max=2048))
    backchannel_logout_session_required = ma.fields.Boolean()


class ClientWithSecretSchema(ClientSchema):
    client_secret = ma.fields.String(dump_only=True, metadata={"description": "shown once"})


class SecretSchema(ma.Schema):
    client_id = ma.fields.String()
    client_secret = ma.fields.String(metadata={"description": "shown once; the old one stops working"})


class EnrollInSchema(ma.Schema):
    mfa_token = ma.fields.String(
        validate=ma.validate.Length(max=200), metadata={"description": "instead of a bearer token"}
    )


class EnrollOutSchema(ma.Schema):
    secret = ma.fields.String(metadata={"description": "base32 TOTP secret"})
    otpauth_uri = ma.fields.String()
    qr_code = ma.fields.String(metadata={"description": "SVG data URI"})


class ConfirmInSchema(ma.Schema):
    code = ma.fields.String(required=True, validate=ma.validate.Length(min=6, max=6))
    mfa_token = ma.fields.String(validate=ma.validate.Length(max=200))


class ConfirmOutSchema(ma.Schema):
    recovery_codes = ma.fields.List(ma.fields.String(), metadata={"description": "10 codes, shown once"})
    token = ma.fields.Nested(
        TokenResponseSchema, metadata={"description": "only when enrolling with an mfa_token"}
    )


class DisableSchema(ma.Schema):
    password = ma.fields.String(required=True, load_only=True, validate=ma.validate.Length(max=1024))
    code = ma.fields.String(required=True, validate=ma.validate.Length(min=6, max=16))


class RecoveryCodesSchema(ma.Schema):
    recovery_codes = ma.fields.List(ma.fields.String())


class SessionSchema(ma.Schema):
    id = ma.fields.String(metadata={"description": "the refresh-token family id"})
    client_id = ma.fields.String()
    created_at = ma.fields.DateTime()
    last_used_at = ma.fields.DateTime()
    expires_at = ma.fields.DateTime(metadata={"description": "absolute end of the session"})
    ip = ma.fields.String(allow_none=True)
    user_agent = ma.fields.String(allow_none=True)
    current = ma.fields.Boolean()


class RevokedSchema(ma.Schema):
    revoked = ma.fields.Integer()
