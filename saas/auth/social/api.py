"""``/api/v1/me/identities``: the caller's linked identities (social and SSO), and unlinking a
social one (docs/auth.md, "Social login"; :mod:`saas.auth.social.links`)."""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from saas import db
from saas.actions import ActionContext
from saas.api import Blueprint
from saas.auth.context import authenticated, current_principal
from saas.auth.social import links
from saas.auth.stepup import check_step_up
from saas.errors import Unauthorized
from saas.identity.models import User

blp = Blueprint(
    "identities", __name__, url_prefix="/api/v1", description="Linked identities (social login, SSO)"
)


class IdentitySchema(ma.Schema):
    id = ma.fields.UUID()
    provider = ma.fields.String(metadata={"description": "social:<name> or sso:<connection id>"})
    kind = ma.fields.String(metadata={"description": "social or sso"})
    label = ma.fields.String()
    email = ma.fields.String(allow_none=True, metadata={"description": "the address the provider asserted"})
    created_at = ma.fields.DateTime()
    last_login_at = ma.fields.DateTime(allow_none=True)
    removable = ma.fields.Boolean(metadata={"description": "social identities only; SSO ones are read-only"})


def _me() -> User:
    principal = current_principal()
    if principal.user_id is None:
        raise Unauthorized("Linked identities belong to people, not service accounts.", error=None)
    return db.session().get(User, principal.user_id)


@blp.route("/me/identities")
class Identities(MethodView):
    @authenticated
    @blp.response(200, IdentitySchema(many=True))
    def get(self):
        """My linked identities, oldest first: social ones (``social:<name>``) and SSO ones
        (``sso:<connection id>``, read-only), with the address each asserted and the last sign-in."""
        return links.identities(db.session(), _me().id)


@blp.route("/me/identities/<identity_id>")
class IdentityItem(MethodView):
    @authenticated
    @blp.response(204)
    @blp.alt_response(401, description="insufficient_user_authentication: step-up needed")
    @blp.alt_response(404, description="No such identity of mine")
    @blp.alt_response(409, description="identity_unlink_refused: an SSO identity, or the only way in")
    def delete(self, identity_id):
        """Unlink one of my social identities (needs step-up: it changes who can get in);
        refused for an SSO identity and for the account's only way in (no password, no passkey,
        no other identity). Audited ``social.unlinked``."""
        user = _me()
        check_step_up()
        links.unlink(ActionContext.from_request(), user, identity_id)
