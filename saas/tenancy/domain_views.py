"""``/api/v1/domains``: a tenant's verified domains (service: :mod:`saas.tenancy.domains`).

Every endpoint needs ``sso:manage``, a verified email and the plan feature ``sso`` (402
``entitlement_required`` otherwise); claiming, verifying and deleting also need a step-up
(RFC 9470): a verified domain decides whose sign-ins the tenant's SSO will take.
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
from saas.services import services
from saas.tenancy import domains

blp = Blueprint("domains", __name__, url_prefix="/api/v1", description="Verified domains")


class DomainInSchema(ma.Schema):
    domain = ma.fields.String(
        required=True,
        metadata={"description": "A DNS domain (Unicode or A-labels)", "example": "example.com"},
    )


class RecordSchema(ma.Schema):
    type = ma.fields.String(metadata={"example": "TXT"})
    name = ma.fields.String(metadata={"example": "_saas-challenge.example.com"})
    value = ma.fields.String(metadata={"example": "saas-domain-verification=..."})


class DomainSchema(ma.Schema):
    id = ma.fields.UUID()
    domain = ma.fields.String(metadata={"description": "Normalised: lowercase A-labels, no trailing dot"})
    status = ma.fields.String(metadata={"enum": ["pending", "verified"]})
    verified_at = ma.fields.DateTime(allow_none=True)
    created_at = ma.fields.DateTime()
    record = ma.fields.Nested(RecordSchema, metadata={"description": "The TXT record to publish (RFC 1035)"})


def _resolver():
    settings = services().settings
    return domains.resolver_for(settings.dns_nameservers, settings.dns_timeout_seconds)


def _own(domain_id):
    return domains.get_domain(db.session(), current_principal().tenant_id, domain_id)


@blp.route("/domains")
class Domains(MethodView):
    @require_feature_admin("sso:manage", "sso")
    @blp.response(200, DomainSchema(many=True))
    def get(self):
        """The tenant's domains, pending and verified."""
        rows = domains.list_domains(db.session(), current_principal().tenant_id)
        return [domains.to_public(d) for d in rows]

    @require_feature_admin("sso:manage", "sso")
    @require_step_up()
    @blp.arguments(DomainInSchema)
    @blp.response(201, DomainSchema)
    @blp.alt_response(409, description="domain_already_claimed / domain_taken (another tenant verified it)")
    def post(self, body):
        """Claim a domain (needs step-up): the answer's ``record`` is the TXT record to publish,
        ``_saas-challenge.<domain>`` with ``saas-domain-verification=<token>``; then call
        ``POST /api/v1/domains/{id}/verify``. IP addresses, single labels, names over 253
        characters and bad labels are 422."""
        row = domains.claim_domain(
            ActionContext.from_request(), current_principal().tenant_id, body["domain"]
        )
        return domains.to_public(row)


@blp.route("/domains/<uuid:domain_id>")
class DomainItem(MethodView):
    @require_feature_admin("sso:manage", "sso")
    @blp.response(200, DomainSchema)
    @blp.alt_response(404, description="No such domain in this tenant")
    def get(self, domain_id):
        """One domain of the tenant (another tenant's is a 404)."""
        return domains.to_public(_own(domain_id))

    @require_feature_admin("sso:manage", "sso")
    @require_step_up()
    @blp.response(204)
    @blp.alt_response(404, description="No such domain in this tenant")
    def delete(self, domain_id):
        """Delete a claim, pending or verified (needs step-up)."""
        domains.delete_domain(ActionContext.from_request(), _own(domain_id))


@blp.route("/domains/<uuid:domain_id>/verify")
class DomainVerify(MethodView):
    @require_feature_admin("sso:manage", "sso")
    @require_step_up()
    @blp.response(200, DomainSchema)
    @blp.alt_response(404, description="No such domain in this tenant")
    @blp.alt_response(409, description="domain_taken: another tenant verified the domain first")
    @blp.alt_response(422, description="domain_not_verified: the TXT record is missing or has another value")
    @blp.alt_response(503, description="dns_unavailable: the resolvers timed out; nothing changed")
    def post(self, domain_id):
        """Look up the claim's TXT record (dnspython, the resolvers of ``DNS_NAMESERVERS``) and mark
        the domain verified when its value matches (needs step-up). A verified domain is answered
        as it is."""
        domain = _own(domain_id)
        return domains.to_public(domains.verify_domain(ActionContext.from_request(), domain, _resolver()))
