"""Tenancy endpoints: signup, me, tenant profile, members and invitations."""

from __future__ import annotations

import flask
import marshmallow as ma
from flask.views import MethodView

from saas import db, outbox
from saas.actions import ActionContext
from saas.api import Blueprint
from saas.audit import Actor
from saas.auth import emails
from saas.auth import service as auth_service
from saas.auth.context import (
    authenticated,
    current_principal,
    not_impersonated,
    require,
    require_verified_email,
)
from saas.auth.schemas import TokenResponseSchema
from saas.auth.stepup import check_step_up, require_step_up, step_up_for
from saas.errors import ErrorCode, Forbidden, ValidationError
from saas.identity.models import User
from saas.identity.passwords import password_problems
from saas.identity.slugs import normalize_slug, slug_problems
from saas.rbac import ROLES
from saas.services import services
from saas.tenancy import members as members_service
from saas.tenancy import roles as roles_service
from saas.tenancy import self_service
from saas.tenancy import tenants as tenants_service
from saas.tenancy.provisioning import AccountExists, provision_tenant, validate_signup, validate_tenant

blp = Blueprint("tenancy", __name__, url_prefix="/api/v1", description="Tenants, members, invitations")


def _valid_slug(value: str) -> None:
    if problems := slug_problems(normalize_slug(value)):
        raise ma.ValidationError(problems)


def _valid_password(value: str) -> None:
    if problems := password_problems(value):
        raise ma.ValidationError(problems)


class TenantInSchema(ma.Schema):
    """Checked field by field so one 422 lists every problem (slug rules: ``saas.identity.slugs``)."""

    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))
    slug = ma.fields.String(required=True, validate=[ma.validate.Length(max=200), _valid_slug])


class OwnerInSchema(ma.Schema):
    email = ma.fields.Email(required=True, validate=ma.validate.Length(max=320))
    password = ma.fields.String(
        required=True, validate=[ma.validate.Length(max=1024), _valid_password], load_only=True
    )
    name = ma.fields.String(load_default="", validate=ma.validate.Length(max=200))


class SignupSchema(ma.Schema):
    tenant = ma.fields.Nested(TenantInSchema, required=True)
    owner = ma.fields.Nested(
        OwnerInSchema,
        metadata={"description": "required, except signed in (the tenant is then the caller's)"},
    )

    @ma.validates_schema(skip_on_field_errors=False)
    def _owner_unless_signed_in(self, data, **kwargs):
        if "owner" not in data and flask.g.get("principal") is None:
            raise ma.ValidationError({"owner": ["Missing data for required field."]})


class TenantSettingsSchema(ma.Schema):
    """Known tenant settings; unknown keys are refused."""

    require_mfa = ma.fields.Boolean()
    password_min_length = ma.fields.Integer(validate=ma.validate.Range(min=8, max=256))
    session_idle_minutes = ma.fields.Integer(validate=ma.validate.Range(min=5, max=60 * 24 * 90))
    #: members must have proved their email to sign in at all (docs/auth.md, "Emails")
    require_verified_email = ma.fields.Boolean()
    #: operators may sign in as members for support (``saas users impersonate``; default true)
    allow_impersonation = ma.fields.Boolean()
    # per-tenant SSO (docs/auth.md, "Per-tenant SSO"): password and passkey sign-in refused to
    # the users of the verified domains, except the break-glass owners (user ids or addresses)
    require_sso = ma.fields.Boolean()
    sso_break_glass = ma.fields.List(
        ma.fields.String(validate=ma.validate.Length(min=1, max=320)), validate=ma.validate.Length(max=20)
    )


class TenantSchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    slug = ma.fields.String(dump_only=True)
    name = ma.fields.String()
    status = ma.fields.String(dump_only=True)
    plan = ma.fields.String(dump_only=True)
    settings = ma.fields.Nested(TenantSettingsSchema)
    created_at = ma.fields.DateTime(dump_only=True)


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ma.ValidationError("Must not be blank.")


class TenantPatchSchema(ma.Schema):
    name = ma.fields.String(validate=[ma.validate.Length(min=1, max=200), _not_blank])
    settings = ma.fields.Nested(TenantSettingsSchema)


class UserSchema(ma.Schema):
    id = ma.fields.String()
    email = ma.fields.String()
    email_verified = ma.fields.Boolean(
        metadata={"description": "true only once the mailbox was proved (a mailed link was used)"}
    )
    name = ma.fields.String()
    created_at = ma.fields.DateTime()


class SignupResponseSchema(ma.Schema):
    tenant = ma.fields.Nested(TenantSchema)
    user = ma.fields.Nested(UserSchema)
    token = ma.fields.Nested(TokenResponseSchema)


class MeSchema(ma.Schema):
    user = ma.fields.Nested(UserSchema)
    tenant = ma.fields.Nested(TenantSchema)
    role = ma.fields.String()
    permissions = ma.fields.List(ma.fields.String())


class MemberSchema(ma.Schema):
    """A member, or a pending invitee: ``user_id`` and ``name`` stay null until they joined (an
    invitee's account may belong to other tenants), and ``invitation_id`` names the invitation
    to withdraw (``DELETE /api/v1/invitations/{invitation_id}``)."""

    user_id = ma.fields.String(allow_none=True)
    email = ma.fields.String()
    name = ma.fields.String(allow_none=True)
    role = ma.fields.String()
    status = ma.fields.String()
    created_at = ma.fields.DateTime()
    invitation_id = ma.fields.String(allow_none=True)


def _known_role(value: str) -> None:
    """A built-in role or one of the caller's tenant's custom roles (read after the permission
    check: ``require`` runs before the body is parsed). Outside a request only the built-in
    roles (``saas tenants import`` checks a member's role against the file's custom roles)."""
    if value in ROLES:
        return
    if not flask.has_request_context() or flask.g.get("principal") is None:
        raise ma.ValidationError(f"Must be one of: {', '.join(ROLES)}.")
    names = roles_service.role_names(db.session(), current_principal().tenant_id)
    if value not in names:
        raise ma.ValidationError(f"Must be one of: {', '.join(names)}.")


class InviteSchema(ma.Schema):
    email = ma.fields.Email(required=True, validate=ma.validate.Length(max=320))
    role = ma.fields.String(
        required=True,
        validate=_known_role,
        metadata={"description": f"A built-in role ({', '.join(ROLES)}) or one of the tenant's custom roles"},
    )


class InvitationResponseSchema(ma.Schema):
    """ "The invitation was sent": the same shape whether or not the address has an account. The
    token goes only to the invitee's mailbox (outbox topic ``mail.invitation``)."""

    invitation_id = ma.fields.String()
    email = ma.fields.String(metadata={"description": "the invited address, lower-cased"})
    role = ma.fields.String()
    status = ma.fields.String(metadata={"description": "always 'invited'"})
    created_at = ma.fields.DateTime()
    expires_at = ma.fields.DateTime()


class RoleSchema(ma.Schema):
    role = ma.fields.String(
        required=True,
        validate=_known_role,
        metadata={"description": f"A built-in role ({', '.join(ROLES)}) or one of the tenant's custom roles"},
    )


class AcceptSchema(ma.Schema):
    token = ma.fields.String(required=True, validate=ma.validate.Length(min=10, max=200))
    password = ma.fields.String(validate=ma.validate.Length(max=1024), load_only=True)
    name = ma.fields.String(validate=ma.validate.Length(max=200))


class AcceptResponseSchema(ma.Schema):
    tenant = ma.fields.Nested(TenantSchema)
    user = ma.fields.Nested(UserSchema)
    token = ma.fields.Nested(TokenResponseSchema)


def _member_dict(m, invitation=None) -> dict:
    if m.status == "invited":
        # another tenant's account may stand behind the address: nothing of it is shown
        return {
            "user_id": None,
            "email": members_service.invitee_email(m.user.email),
            "name": None,
            "role": m.role,
            "status": m.status,
            "created_at": m.created_at,
            "invitation_id": str(invitation.id) if invitation is not None else None,
        }
    return {
        "user_id": str(m.user_id),
        "email": m.user.email,
        "name": m.user.name,
        "role": m.role,
        "status": m.status,
        "created_at": m.created_at,
    }


class SignupPendingSchema(ma.Schema):
    detail = ma.fields.String()


#: the answer to a signup whose email has an account: it says no more than "check your mail"
SIGNUP_PENDING = {"detail": "Check the owner's mailbox to continue."}


@blp.route("/signup")
class Signup(MethodView):
    @blp.arguments(SignupSchema)
    @blp.response(201, SignupResponseSchema)
    @blp.alt_response(202, schema=SignupPendingSchema, description="The email has an account: mailed")
    @blp.alt_response(409, description="Slug taken")
    @blp.doc(security=[])
    def post(self, body):
        """Create a tenant with its own schema and its owner; returns tokens for the owner, and
        mails the owner a link that verifies the address (``/account/verify?token=...``).

        When the email already has an account, nothing is created and the answer is 202 with
        ``SIGNUP_PENDING`` (never ``email_taken``): the account's mailbox gets a notice
        (outbox ``mail.account_exists``) saying how to create a tenant from that account.

        Signed in (``Authorization: Bearer``, any tenant), the body has no ``owner``: the tenant
        is created for the caller's own account, and the answer has no tokens (log in to the new
        tenant next)."""
        session = db.session()
        passwords = services().passwords
        if flask.g.get("principal") is not None:
            return self._for_signed_in_user(session, passwords, body)
        slug, name, email, password, owner_name = validate_signup(body["tenant"], body["owner"])
        try:
            done = provision_tenant(
                session,
                passwords,
                slug=slug,
                name=name,
                owner_email=email,
                owner_password=password,
                owner_name=owner_name,
            )
        except AccountExists as exists:
            outbox.enqueue(
                session, "mail.account_exists", {"to": exists.email, "tenant": slug, "tenant_name": name}
            )
            session.flush()
            pending = flask.jsonify(SIGNUP_PENDING)
            pending.status_code = 202
            return pending
        # the owner proves the mailbox with the mailed link (docs/auth.md, "Email verification")
        emails.send_verification(
            ActionContext.from_request(session).as_actor(Actor("user", str(done.owner.id))),
            done.owner,
            done.tenant.id,
        )
        tokens = auth_service.issue_tokens(
            session, user=done.owner, membership=done.membership, tenant=done.tenant
        )
        return {"tenant": done.tenant.to_public(), "user": done.owner.to_public(), "token": tokens.to_dict()}

    @staticmethod
    def _for_signed_in_user(session, passwords, body) -> dict:
        if "owner" in body:
            raise ValidationError({"owner": ["Signed in, the tenant is yours: send no owner."]})
        user = session.get(User, _signed_in_user_id())
        assert user is not None
        slug, name = validate_tenant(body["tenant"])
        done = provision_tenant(
            session, passwords, slug=slug, name=name, owner_email=user.email, owner_password=None, owner=user
        )
        return {"tenant": done.tenant.to_public(), "user": done.owner.to_public()}


class DeleteAccountSchema(ma.Schema):
    password = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=1024), load_only=True)


class ExportSchema(ma.Schema):
    """The personal-data export (``saas.tenancy.self_service.export_personal_data``)."""

    format = ma.fields.String(metadata={"description": "saas.personal-data.v1"})
    exported_at = ma.fields.DateTime()
    user = ma.fields.Dict()
    memberships = ma.fields.List(ma.fields.Dict())
    sessions = ma.fields.Dict(metadata={"description": "api: refresh-token families; browser: sign-ins"})
    passkeys = ma.fields.List(ma.fields.Dict())
    mfa = ma.fields.Dict()
    consents = ma.fields.List(ma.fields.Dict())
    known_devices = ma.fields.List(ma.fields.Dict())
    audit_events = ma.fields.List(ma.fields.Dict())


def _person():
    """The user id of the request's token; a service account's token is refused (403)."""
    principal = current_principal()
    if principal.user_id is None:
        raise Forbidden("This is a person's own account action, not a service account's.")
    return principal.user_id


@blp.route("/me")
class Me(MethodView):
    @authenticated
    @blp.response(200, MeSchema)
    def get(self):
        """The caller: user, tenant, role and effective permissions."""
        p = current_principal()
        user = p.membership.user if p.membership else None
        return {
            "user": user.to_public() if user else None,
            "tenant": p.tenant.to_public() if p.tenant else None,
            "role": p.role,
            "permissions": sorted(p.permissions),
        }

    @authenticated
    @blp.arguments(DeleteAccountSchema)
    @blp.response(204)
    @blp.alt_response(401, description="insufficient_user_authentication: no fresh step-up")
    @blp.alt_response(403, description="invalid_credentials: wrong password (a failed sign-in)")
    @blp.alt_response(409, description="last_owner: the account is the last owner of a tenant")
    def delete(self, body):
        """Delete my account and its personal data in every tenant (GDPR article 17). Needs the
        password and a fresh step-up (a login within ``STEP_UP_MAX_AGE``, with the second factor
        when MFA is on; RFC 9470). Refused while the account is the last owner of a tenant.
        Every session ends, the address is mailed a notice and is free again; audit events
        keep only the account's id (docs/auth.md, "Self-service accounts")."""
        user_id = _person()
        check_step_up()
        ctx = ActionContext.from_request()
        self_service.delete_account(ctx, user_id, body["password"])


@blp.route("/me/export")
class MyExport(MethodView):
    @authenticated
    @not_impersonated
    @blp.response(200, ExportSchema, description="JSON, sent as an attachment")
    def get(self):
        """My personal data in every tenant, as one JSON document sent as an attachment
        (GDPR articles 15 and 20): profile, memberships, sessions, passkeys (public parts),
        MFA state (no secret), consents, known devices and the audit events I made. Audited
        ``user.exported``; throttled like the mailing endpoints (``mail-ip``, ``mail-account``).
        The person's own token only: an impersonation token or an API key (one tenant, a few
        permissions) is 403 (``impersonation_forbidden``, ``api_key_forbidden``)."""
        user_id = _person()
        document = self_service.export_personal_data(ActionContext.from_request(), user_id)
        response = flask.jsonify(document)
        response.headers["Content-Disposition"] = 'attachment; filename="personal-data.json"'
        return response


@blp.route("/tenant")
class TenantResource(MethodView):
    @require("tenant:read")
    @blp.response(200, TenantSchema)
    def get(self):
        """The caller's tenant."""
        return current_principal().tenant.to_public()

    @require("tenant:manage")
    @blp.arguments(TenantPatchSchema)
    @blp.response(200, TenantSchema)
    def patch(self, body):
        """Change the tenant's name or settings (settings are merged key by key). Changing the
        settings (``require_mfa``...) needs step-up (RFC 9470)."""
        return tenants_service.update_tenant(ActionContext.from_request(), body).to_public()


@blp.route("/members")
class Members(MethodView):
    @require("members:read")
    @blp.response(200, MemberSchema(many=True))
    def get(self):
        """Members of the tenant, invited ones included."""
        p = current_principal()
        session = db.session()
        pending = members_service.pending_invitations(session, p.tenant.id)
        listed = members_service.list_members(session, p.tenant.id)
        return [_member_dict(m, pending.get(m.id)) for m in listed]

    @require("members:manage")
    @require_verified_email
    @blp.arguments(InviteSchema)
    @blp.response(201, InvitationResponseSchema)
    @blp.alt_response(409, description="Already a member or invited")
    def post(self, body):
        """Invite someone by email: the invitation token is mailed to that address (outbox
        ``mail.invitation``) and never returned. The answer is the same whether or not the
        address has an account. Inviting an admin or owner needs step-up (a person's recent
        login, with MFA when enabled; RFC 9470): a service account never can."""
        step_up_for("member.invite", role=body["role"])
        settings = services().settings
        result = members_service.invite(
            ActionContext.from_request(), body["email"], body["role"], settings.invitation_ttl_seconds
        )
        return {
            "invitation_id": str(result.invitation.id),
            "email": result.email,
            "role": result.membership.role,
            "status": "invited",
            "created_at": result.invitation.created_at,
            "expires_at": result.invitation.expires_at,
        }


@blp.route("/members/<uuid:user_id>")
class Member(MethodView):
    @require("members:manage")
    @blp.arguments(RoleSchema)
    @blp.response(200, MemberSchema)
    def patch(self, body, user_id):
        """Change a member's role (the last owner cannot be demoted). Granting admin or owner needs
        step-up (a recent login, with MFA when enabled; RFC 9470)."""
        step_up_for("member.change_role", role=body["role"])
        m = members_service.change_role(ActionContext.from_request(), user_id, body["role"])
        return _member_dict(m)

    @authenticated
    @blp.response(204)
    def delete(self, user_id):
        """Remove a member (``members:manage``, with step-up), or leave the tenant yourself."""
        step_up_for("member.remove", user_id=user_id)
        members_service.remove_member(ActionContext.from_request(), user_id)


@blp.route("/members/<uuid:user_id>/mfa")
class MemberMfa(MethodView):
    @require("members:manage")
    @require_step_up()
    @blp.response(204)
    @blp.alt_response(404, description="No such member in this tenant")
    @blp.alt_response(409, description="member_of_other_tenants: the account is another tenant's too")
    def delete(self, user_id):
        """Reset a member's second factor (a lost device): TOTP and recovery codes go, every
        session of the member ends, and the member is mailed. Passkeys stay. Needs step-up;
        nobody resets a member above their role, and a member who belongs to other tenants too
        is refused (their factor protects those tenants as well)."""
        self_service.reset_member_mfa(ActionContext.from_request(), user_id)


@blp.route("/invitations/<uuid:invitation_id>")
class InvitationResource(MethodView):
    @require("members:manage")
    @blp.response(204)
    def delete(self, invitation_id):
        """Withdraw a pending invitation of this tenant (its token stops working)."""
        members_service.revoke_invitation(ActionContext.from_request(), invitation_id)


def _signed_in_user_id():
    """The user of the request's own bearer token (any tenant), None without one.

    Raises:
        Unauthorized, Forbidden: as :func:`current_principal` (membership gone, account locked,
        tenant suspended); ``wrong_account`` for a service account's token.
    """
    if flask.g.get("principal") is None:
        return None
    principal = current_principal()
    if principal.user_id is None:
        raise Forbidden("A service account cannot accept an invitation.", code=ErrorCode.WRONG_ACCOUNT)
    return principal.user_id


@blp.route("/invitations/accept")
class AcceptInvitation(MethodView):
    @blp.arguments(AcceptSchema)
    @blp.response(200, AcceptResponseSchema)
    @blp.alt_response(401, description="sign_in_required: the invitee has an account; accept signed in")
    @blp.doc(security=[{"bearerAuth": []}, {}])
    def post(self, body):
        """Accept an invitation with the token from its mail.

        For an address without an account, this sets its password (and name) and returns tokens
        for the inviting tenant, except when a second factor is needed (the tenant requires it):
        then log in. An existing account accepts signed in, with its own access token of any
        tenant (``Authorization: Bearer``), and no password: the answer has no tokens (log in
        to the inviting tenant next). A password for an existing account is refused with 401
        ``sign_in_required`` and never checked."""
        session = db.session()
        signed_in = _signed_in_user_id()
        membership, user, tenant = members_service.accept_invitation(
            ActionContext.from_request(session),
            services().passwords,
            body["token"],
            body.get("password"),
            body.get("name"),
            signed_in_user_id=signed_in,
        )
        out = {"tenant": tenant.to_public(), "user": user.to_public()}
        # no tokens past a second factor (users with MFA, or in a tenant requiring it, log in
        # next), nor for a signed-in account: its sign-in was to another tenant, not this one
        from saas.auth import mfa

        if (
            signed_in is not None
            or mfa.has_mfa(session, user.id)
            or (tenant.settings or {}).get("require_mfa")
        ):
            return out
        tokens = auth_service.issue_tokens(session, user=user, membership=membership, tenant=tenant)
        return {**out, "token": tokens.to_dict()}
