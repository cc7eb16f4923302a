"""``/api/v1/api-keys``: personal API keys (service: :mod:`saas.auth.api_keys`; docs/auth.md,
"API keys").

Any member lists and revokes their own keys; ``members:manage`` lists (``?all=true``) and
revokes every key of the tenant. Creating a key needs a verified email and a step-up (RFC 9470),
so never an impersonation session nor an API key (both refused by
:func:`saas.auth.context.check_not_impersonated`, which the step-up calls first); revoking needs
no step-up but is refused to both as well.
"""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from saas import db
from saas.actions import ActionContext
from saas.api import Blueprint
from saas.auth import api_keys
from saas.auth.context import (
    authenticated,
    current_principal,
    not_impersonated,
    require_verified_email,
)
from saas.auth.stepup import require_step_up
from saas.errors import ErrorCode, Forbidden

blp = Blueprint("api_keys", __name__, url_prefix="/api/v1", description="API keys")

MANAGE = "members:manage"


class ApiKeyInSchema(ma.Schema):
    name = ma.fields.String(
        required=True, metadata={"description": "At most 100 characters", "example": "CI"}
    )
    permissions = ma.fields.List(
        ma.fields.String(),
        required=True,
        metadata={
            "description": "Permissions of the registry, all held by you",
            "example": ["contacts:read"],
        },
    )
    expires_at = ma.fields.AwareDateTime(
        required=True,
        metadata={"description": "RFC 3339 with a time zone; in the future, within API_KEY_MAX_DAYS (365)"},
    )


class ApiKeySchema(ma.Schema):
    id = ma.fields.UUID()
    name = ma.fields.String()
    prefix = ma.fields.String(
        metadata={"description": "The key's first 15 characters", "example": "saas_pat_Ab12Cd"}
    )
    permissions = ma.fields.List(ma.fields.String())
    created_by = ma.fields.UUID()
    created_at = ma.fields.DateTime()
    expires_at = ma.fields.DateTime(allow_none=True)
    last_used_at = ma.fields.DateTime(
        allow_none=True, metadata={"description": "Written at most once a minute"}
    )
    revoked_at = ma.fields.DateTime(allow_none=True)
    status = ma.fields.String(metadata={"enum": ["active", "expired", "revoked"]})


class CreatedApiKeySchema(ApiKeySchema):
    key = ma.fields.String(
        metadata={"description": "The key: shown once, never again", "example": "saas_pat_..."}
    )


class ListArgs(ma.Schema):
    all = ma.fields.Boolean(
        load_default=False, metadata={"description": "Every key of the tenant (needs members:manage)"}
    )


def _scope_user(everyone: bool):
    """The user whose keys the caller may see (None: all, for ``members:manage``)."""
    principal = current_principal()
    if everyone:
        if MANAGE not in principal.permissions:
            raise Forbidden(
                f"Listing every key needs the '{MANAGE}' permission.",
                code=ErrorCode.PERMISSION_DENIED,
                title="Permission denied",
                extra={"permission": MANAGE},
            )
        return None
    return principal.user_id


@blp.route("/api-keys")
class ApiKeys(MethodView):
    @authenticated
    @blp.arguments(ListArgs, location="query")
    @blp.response(200, ApiKeySchema(many=True))
    @blp.alt_response(403, description="permission_denied: ?all=true without members:manage")
    def get(self, args):
        """Your API keys in this tenant, newest first (revoked and expired ones included); with
        ``?all=true`` and ``members:manage``, everyone's. Never the keys themselves."""
        principal = current_principal()
        rows = api_keys.list_keys(db.session(), principal.tenant_id, _scope_user(args["all"]))
        return [api_keys.to_public(r) for r in rows]

    @authenticated
    @require_verified_email
    @require_step_up()
    @blp.arguments(ApiKeyInSchema)
    @blp.response(201, CreatedApiKeySchema)
    @blp.alt_response(
        403,
        description="permission_denied (beyond your permissions), api_key_forbidden, impersonation_forbidden",
    )
    @blp.alt_response(422, description="unknown permissions, expires_at past or beyond API_KEY_MAX_DAYS")
    def post(self, body):
        """Create an API key (needs step-up and a verified email): ``key`` is shown once. Use it
        as ``Authorization: Bearer saas_pat_...``; it holds the permissions asked for, and never
        more than yours at the time of each request."""
        created = api_keys.create(
            ActionContext.from_request(),
            name=body["name"],
            permissions=body["permissions"],
            expires_at=body["expires_at"],
        )
        return {**api_keys.to_public(created.row), "key": created.key}


@blp.route("/api-keys/<uuid:key_id>")
class ApiKeyItem(MethodView):
    @authenticated
    @not_impersonated
    @blp.response(204)
    @blp.alt_response(
        404, description="No such key (another tenant's, or someone else's without members:manage)"
    )
    def delete(self, key_id):
        """Revoke a key, yours or (with ``members:manage``) anyone's in the tenant: refused on
        every worker from the next request on. Revoking a revoked key is a 204 too."""
        principal = current_principal()
        user = None if MANAGE in principal.permissions else principal.user_id
        row = api_keys.get_key(db.session(), principal.tenant_id, key_id, user)
        api_keys.revoke(ActionContext.from_request(), row)
