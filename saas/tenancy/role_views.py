"""``/api/v1/roles`` and ``/api/v1/permissions``: the tenant's roles, built-in and custom
(service: :mod:`saas.tenancy.roles`; docs/auth.md, "Custom roles").

- Reading (``GET``) needs ``members:read``, on any plan: the built-in roles always exist, and a
  tenant that lost ``custom_roles`` still sees the custom roles its members hold.
- Creating and changing need ``roles:manage``, a verified email and the plan feature
  ``custom_roles`` (402 ``entitlement_required``); changing a role's permissions also needs a
  step-up (RFC 9470): it changes what its holders may do.
- Deleting needs ``roles:manage``, a verified email and a step-up, not the plan feature, so a
  tenant that downgraded can still retire its custom roles.
"""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from saas import db
from saas.actions import ActionContext
from saas.api import Blueprint
from saas.auth.context import current_principal, require, require_verified_email
from saas.auth.stepup import check_step_up, require_step_up
from saas.billing.entitlements import require_feature_admin
from saas.tenancy import roles

blp = Blueprint("roles", __name__, url_prefix="/api/v1", description="Roles and permissions")


class PermissionSchema(ma.Schema):
    name = ma.fields.String(metadata={"example": "contacts:read"})
    description = ma.fields.String()


class RoleViewSchema(ma.Schema):
    id = ma.fields.UUID(metadata={"description": "A built-in role's id is the same in every tenant"})
    name = ma.fields.String(metadata={"example": "support-agent"})
    description = ma.fields.String()
    permissions = ma.fields.List(ma.fields.String())
    builtin = ma.fields.Boolean(metadata={"description": "true: read-only"})
    members = ma.fields.Integer(
        metadata={"description": "Members holding it (invited included, suspended not)"}
    )
    created_at = ma.fields.DateTime(allow_none=True)
    updated_at = ma.fields.DateTime(allow_none=True)


class RoleInSchema(ma.Schema):
    name = ma.fields.String(
        required=True,
        metadata={"description": "2 to 32 lowercase letters, digits and inner hyphens; not a built-in name"},
    )
    permissions = ma.fields.List(
        ma.fields.String(), required=True, metadata={"description": "Names from GET /api/v1/permissions"}
    )
    description = ma.fields.String(load_default="")


class RolePatchSchema(ma.Schema):
    name = ma.fields.String()
    permissions = ma.fields.List(ma.fields.String(), metadata={"description": "The whole new set"})
    description = ma.fields.String()


class DeleteArgsSchema(ma.Schema):
    replacement = ma.fields.String(
        metadata={"description": "The role the deleted role's members move to (built-in or custom)"}
    )


class DeletedSchema(ma.Schema):
    id = ma.fields.UUID()
    name = ma.fields.String()
    replacement = ma.fields.String(allow_none=True)
    members_moved = ma.fields.Integer()


@blp.route("/permissions")
class Permissions(MethodView):
    @require("members:read")
    @blp.response(200, PermissionSchema(many=True))
    def get(self):
        """The permission registry: what a custom role can be made of."""
        return roles.registry()


@blp.route("/roles")
class Roles(MethodView):
    @require("members:read")
    @blp.response(200, RoleViewSchema(many=True))
    def get(self):
        """The built-in roles (``builtin: true``, read-only) and the tenant's custom roles, each
        with its permissions."""
        return [r.to_public() for r in roles.list_roles(db.session(), current_principal().tenant_id)]

    @require_feature_admin("roles:manage", roles.FEATURE)
    @blp.arguments(RoleInSchema)
    @blp.response(201, RoleViewSchema)
    @blp.alt_response(403, description="permission_not_held: a permission the caller lacks")
    @blp.alt_response(409, description="role_name_taken")
    def post(self, body):
        """Create a custom role: a name and permissions, each of which the caller must hold."""
        ctx = ActionContext.from_request()
        role = roles.create_role(ctx, body["name"], body["permissions"], body.get("description", ""))
        return roles.view_role(ctx.session, role.tenant_id, role.id).to_public()


@blp.route("/roles/<uuid:role_id>")
class RoleItem(MethodView):
    @require("members:read")
    @blp.response(200, RoleViewSchema)
    @blp.alt_response(404, description="No such role in this tenant")
    def get(self, role_id):
        """One role, built-in or custom (another tenant's is a 404)."""
        return roles.view_role(db.session(), current_principal().tenant_id, role_id).to_public()

    @require_feature_admin("roles:manage", roles.FEATURE)
    @blp.arguments(RolePatchSchema)
    @blp.response(200, RoleViewSchema)
    @blp.alt_response(403, description="role_read_only (a built-in role), permission_not_held")
    @blp.alt_response(404, description="No such role in this tenant")
    @blp.alt_response(409, description="role_name_taken")
    def patch(self, body, role_id):
        """Change a custom role's name, description or permissions (the whole new set; a change
        of permissions needs step-up and reaches every holder's tokens at once). A new name is
        carried to the role's members."""
        ctx = ActionContext.from_request()
        role = roles.get_role(ctx.session, current_principal().tenant_id, role_id, lock=True)
        if "permissions" in body and sorted(set(body["permissions"])) != sorted(role.permissions or ()):
            check_step_up()
        roles.update_role(ctx, role, body)
        return roles.view_role(ctx.session, role.tenant_id, role.id).to_public()

    @require("roles:manage")
    @require_verified_email
    @require_step_up()
    @blp.arguments(DeleteArgsSchema, location="query")
    @blp.response(200, DeletedSchema)
    @blp.alt_response(
        403, description="role_read_only (a built-in role), permission_not_held, role_not_assignable"
    )
    @blp.alt_response(404, description="No such role in this tenant")
    @blp.alt_response(409, description="role_in_use: members hold it and no replacement was named")
    def delete(self, args, role_id):
        """Delete a custom role (needs step-up). Members holding it move to ``?replacement=``
        (which the caller must be able to grant) in the same transaction; without one, a role in
        use is 409 ``role_in_use``."""
        ctx = ActionContext.from_request()
        role = roles.get_role(ctx.session, current_principal().tenant_id, role_id)
        replacement = args.get("replacement")
        moved = roles.delete_role(ctx, role, replacement)
        return {
            "id": role.id,
            "name": role.name,
            "replacement": replacement if moved else None,
            "members_moved": moved,
        }
