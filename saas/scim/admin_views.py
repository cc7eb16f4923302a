"""``/api/v1/scim``: a tenant admin's SCIM setup (service: :mod:`saas.scim.tokens`,
:mod:`saas.scim.service`): bearer tokens for the directory, and how groups map to roles.

Every endpoint needs ``sso:manage``, a verified email and the plan feature ``sso`` (402
``entitlement_required`` otherwise); creating and revoking a token and changing the settings also
need a step-up (RFC 9470): they decide who the directory can let in, and with which role.
"""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from saas import db
from saas.actions import ActionContext
from saas.api import Blueprint
from saas.auth.context import current_principal
from saas.auth.stepup import require_step_up
from saas.billing.entitlements import require_feature_admin
from saas.scim import service, tokens

blp = Blueprint("scim_admin", __name__, url_prefix="/api/v1/scim", description="SCIM 2.0 provisioning setup")


class ScimTokenInSchema(ma.Schema):
    name = ma.fields.String(
        required=True, validate=ma.validate.Length(1, 100), metadata={"example": "Entra ID provisioning"}
    )


class ScimTokenSchema(ma.Schema):
    id = ma.fields.UUID()
    name = ma.fields.String()
    created_by = ma.fields.UUID(allow_none=True)
    created_at = ma.fields.DateTime()
    last_used_at = ma.fields.DateTime(allow_none=True)
    revoked_at = ma.fields.DateTime(allow_none=True)


class NewScimTokenSchema(ScimTokenSchema):
    token = ma.fields.String(
        metadata={
            "description": "The bearer token (saas_scim_...), shown this once; only its SHA-256 is kept"
        }
    )
    scim_base_url = ma.fields.String(metadata={"description": "The SCIM endpoint to give the directory"})


class ScimSettingsSchema(ma.Schema):
    group_roles = ma.fields.Dict(
        keys=ma.fields.String(validate=ma.validate.Length(1, 320)),
        values=ma.fields.String(),
        load_default=dict,
        metadata={"description": "A SCIM group's displayName to a role", "example": {"Engineering": "admin"}},
    )
    default_role = ma.fields.String(
        load_default="member", metadata={"description": "The role of a member in no mapped group"}
    )


@blp.route("/tokens")
class Tokens(MethodView):
    @require_feature_admin("sso:manage", "sso")
    @blp.response(200, ScimTokenSchema(many=True))
    def get(self):
        """The tenant's SCIM tokens, revoked ones included, never their secrets."""
        return [tokens.to_public(t) for t in tokens.list_tokens(db.session(), current_principal().tenant_id)]

    @require_feature_admin("sso:manage", "sso")
    @require_step_up()
    @blp.arguments(ScimTokenInSchema)
    @blp.response(201, NewScimTokenSchema)
    def post(self, body):
        """Create a SCIM bearer token for a directory (needs step-up); its secret is in this answer only."""
        from flask import request

        issued = tokens.create_token(
            ActionContext.from_request(), current_principal().tenant_id, body["name"]
        )
        return {
            **tokens.to_public(issued.row),
            "token": issued.token,
            "scim_base_url": request.host_url.rstrip("/") + "/scim/v2",
        }


@blp.route("/tokens/<uuid:token_id>")
class TokenItem(MethodView):
    @require_feature_admin("sso:manage", "sso")
    @require_step_up()
    @blp.response(204)
    @blp.alt_response(404, description="No such token in this tenant")
    def delete(self, token_id):
        """Revoke a token (needs step-up): its next SCIM request is a 401."""
        tokens.revoke_token(ActionContext.from_request(), current_principal().tenant_id, token_id)


@blp.route("/settings")
class Settings(MethodView):
    @require_feature_admin("sso:manage", "sso")
    @blp.response(200, ScimSettingsSchema)
    def get(self):
        """How SCIM groups map to roles, and the default role."""
        return service.settings_to_public(service.get_settings(db.session(), current_principal().tenant_id))

    @require_feature_admin("sso:manage", "sso")
    @require_step_up()
    @blp.arguments(ScimSettingsSchema)
    @blp.response(200, ScimSettingsSchema)
    @blp.alt_response(403, description="role_not_assignable: a role above the caller's")
    def put(self, body):
        """Replace the settings (needs step-up); every provisioned member's role is derived again."""
        row = service.put_settings(
            ActionContext.from_request(),
            current_principal().tenant_id,
            group_roles=body["group_roles"],
            default_role=body["default_role"],
        )
        return service.settings_to_public(row)
