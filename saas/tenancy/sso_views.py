"""``/api/v1/sso/connections``: a tenant's SSO connections (service: :mod:`saas.auth.sso.connections`).

Here and not in ``saas.auth`` because the plan gate (``require_feature``) is billing's and
provisioning (seats) is tenancy's: ``saas.auth`` imports neither (docs/architecture.md). This
module also registers :mod:`saas.tenancy.members` as the directory SSO provisions members
through (:mod:`saas.auth.sso.directory`), and loads the protocols (each registers itself).

Every endpoint needs ``sso:manage``, a verified email and the plan feature ``sso`` (402
``entitlement_required``); creating, changing and deleting also need a step-up (RFC 9470), which
an impersonation token never passes: a connection decides who can get in.
"""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from saas import db
from saas.actions import ActionContext
from saas.api import Blueprint
from saas.auth.context import current_principal
from saas.auth.sso import connections
from saas.auth.sso import oidc as _oidc  # noqa: F401 - registers the oidc protocol
from saas.auth.sso.directory import register_directory
from saas.auth.stepup import require_step_up
from saas.billing.entitlements import require_feature_admin
from saas.tenancy import members

register_directory(members)

blp = Blueprint("sso", __name__, url_prefix="/api/v1", description="Single sign-on connections")


class ConnectionInSchema(ma.Schema):
    """The common fields; each protocol's own fields pass through to its ``validate_config``."""

    class Meta:
        unknown = ma.INCLUDE  # the protocol's fields (documented as additionalProperties)

    type = ma.fields.String(metadata={"enum": ["oidc", "saml"], "description": "Set on create only"})
    name = ma.fields.String(metadata={"example": "Okta"})
    enabled = ma.fields.Boolean(metadata={"description": "Default true"})
    domains = ma.fields.List(
        ma.fields.String(),
        metadata={"description": "Verified domains of this tenant sent to this connection"},
    )
    default_role = ma.fields.String(metadata={"description": "The role of a just-in-time member (member)"})
    role_mapping = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.String(),
        metadata={"description": 'IdP group (or "attribute=value") -> role; the most powerful match wins'},
    )
    issuer = ma.fields.String(metadata={"description": "OIDC: the issuer URL (discovery is fetched)"})
    client_id = ma.fields.String(metadata={"description": "OIDC: this service's client id at the IdP"})
    client_secret = ma.fields.String(
        load_only=True, metadata={"description": "OIDC: sealed at rest, never returned"}
    )
    scopes = ma.fields.String(metadata={"description": "OIDC: default 'openid email profile'"})


class ConnectionCreateSchema(ConnectionInSchema):
    type = ma.fields.String(required=True, metadata={"enum": ["oidc", "saml"]})


class ConnectionSchema(ma.Schema):
    id = ma.fields.UUID()
    type = ma.fields.String()
    name = ma.fields.String()
    enabled = ma.fields.Boolean()
    domains = ma.fields.List(ma.fields.String())
    default_role = ma.fields.String()
    role_mapping = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())
    config = ma.fields.Dict(
        metadata={"description": "The protocol's public configuration, with what to give the IdP "
                  "(OIDC redirect_uri; SAML SP entity id, ACS URL, metadata URL)"}
    )  # fmt: skip
    has_client_secret = ma.fields.Boolean()
    created_at = ma.fields.DateTime()
    updated_at = ma.fields.DateTime()


def _own(connection_id):
    return connections.get_connection(db.session(), current_principal().tenant_id, connection_id)


@blp.route("/sso/connections")
class Connections(MethodView):
    @require_feature_admin("sso:manage", "sso")
    @blp.response(200, ConnectionSchema(many=True))
    def get(self):
        """The tenant's SSO connections (secrets never shown: ``has_client_secret``)."""
        rows = connections.list_connections(db.session(), current_principal().tenant_id)
        return [connections.to_public(c) for c in rows]

    @require_feature_admin("sso:manage", "sso")
    @require_step_up()
    @blp.arguments(ConnectionCreateSchema)
    @blp.response(201, ConnectionSchema)
    @blp.alt_response(
        422,
        description="validation_error (a field, an unverified domain, a role) / sso_metadata_invalid",
    )
    @blp.alt_response(502, description="sso_provider_unreachable: discovery or metadata could not be fetched")
    def post(self, body):
        """Create a connection (needs step-up). ``type`` ``oidc`` or ``saml``; the common fields
        and the protocol's (OIDC: ``issuer``, ``client_id``, ``client_secret``, ``scopes``; SAML:
        ``metadata_xml`` or ``metadata_url``). Discovery or metadata is fetched and checked first:
        nothing is stored when it fails."""
        row = connections.create_connection(ActionContext.from_request(), current_principal().tenant_id, body)
        return connections.to_public(row)


@blp.route("/sso/connections/<uuid:connection_id>")
class ConnectionItem(MethodView):
    @require_feature_admin("sso:manage", "sso")
    @blp.response(200, ConnectionSchema)
    @blp.alt_response(404, description="No such connection in this tenant")
    def get(self, connection_id):
        """One connection of the tenant (another tenant's is a 404)."""
        return connections.to_public(_own(connection_id))

    @require_feature_admin("sso:manage", "sso")
    @require_step_up()
    @blp.arguments(ConnectionInSchema)
    @blp.response(200, ConnectionSchema)
    @blp.alt_response(404, description="No such connection in this tenant")
    @blp.alt_response(422, description="validation_error / sso_metadata_invalid")
    @blp.alt_response(502, description="sso_provider_unreachable")
    def patch(self, body, connection_id):
        """Change a connection (needs step-up): the fields given; a new ``client_secret``
        replaces the sealed one, an absent one is kept."""
        return connections.to_public(
            connections.update_connection(ActionContext.from_request(), _own(connection_id), body)
        )

    @require_feature_admin("sso:manage", "sso")
    @require_step_up()
    @blp.response(204)
    @blp.alt_response(404, description="No such connection in this tenant")
    def delete(self, connection_id):
        """Delete a connection and the identities linked through it (needs step-up)."""
        connections.delete_connection(ActionContext.from_request(), _own(connection_id))
