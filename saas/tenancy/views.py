"""Tenancy endpoints: signup, me, tenant profile, members and invitations."""

from __future__ import annotations

import marshmallow as ma
from flask import current_app
from flask.views import MethodView

from saas import audit, db
from saas.api import Blueprint
from saas.auth import service as auth_service
from saas.auth.context import authenticated, current_principal, require
from saas.auth.stepup import check_step_up
from saas.auth.views import TokenResponseSchema
from saas.identity.passwords import password_problems
from saas.rbac import ROLES
from saas.tenancy import members as members_service
from saas.tenancy.provisioning import provision_tenant, validate_signup
from saas.tenancy.slugs import normalize_slug, slug_problems

blp = Blueprint("tenancy", __name__, url_prefix="/api/v1", description="Tenants, members, invitations")


def _valid_slug(value: str) -> None:
    if problems := slug_problems(normalize_slug(value)):
        raise ma.ValidationError(problems)


def _valid_password(value: str) -> None:
    if problems := password_problems(value):
        raise ma.ValidationError(problems)


class TenantInSchema(ma.Schema):
    """Checked field by field so one 422 lists every problem (slug rules: ``saas.tenancy.slugs``)."""

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
    owner = ma.fields.Nested(OwnerInSchema, required=True)


class TenantSettingsSchema(ma.Schema):
    """Known tenant settings; unknown keys are refused."""

    require_mfa = ma.fields.Boolean()
    password_min_length = ma.fields.Integer(validate=ma.validate.Range(min=8, max=256))
    session_idle_minutes = ma.fields.Integer(validate=ma.validate.Range(min=5, max=60 * 24 * 90))


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
    user_id = ma.fields.String()
    email = ma.fields.String()
    name = ma.fields.String()
    role = ma.fields.String()
    status = ma.fields.String()
    created_at = ma.fields.DateTime()


class InviteSchema(ma.Schema):
    email = ma.fields.Email(required=True, validate=ma.validate.Length(max=320))
    role = ma.fields.String(required=True, validate=ma.validate.OneOf(list(ROLES)))


class InvitationResponseSchema(MemberSchema):
    invitation_token = ma.fields.String(
        metadata={"description": "shown once; also sent by mail through the outbox"}
    )


class RoleSchema(ma.Schema):
    role = ma.fields.String(required=True, validate=ma.validate.OneOf(list(ROLES)))


class AcceptSchema(ma.Schema):
    token = ma.fields.String(required=True, validate=ma.validate.Length(min=10, max=200))
    password = ma.fields.String(validate=ma.validate.Length(max=1024), load_only=True)
    name = ma.fields.String(validate=ma.validate.Length(max=200))


class AcceptResponseSchema(ma.Schema):
    tenant = ma.fields.Nested(TenantSchema)
    user = ma.fields.Nested(UserSchema)
    token = ma.fields.Nested(TokenResponseSchema)


def _member_dict(m) -> dict:
    return {
        "user_id": str(m.user_id),
        "email": m.user.email,
        "name": m.user.name,
        "role": m.role,
        "status": m.status,
        "created_at": m.created_at,
    }


@blp.route("/signup")
class Signup(MethodView):
    @blp.arguments(SignupSchema)
    @blp.response(201, SignupResponseSchema)
    @blp.alt_response(409, description="Slug or email taken")
    @blp.doc(security=[])
    def post(self, body):
        """Create a tenant with its own schema and its owner; returns tokens for the owner."""
        slug, name, email, password, owner_name = validate_signup(body["tenant"], body["owner"])
        session = db.session()
        passwords = current_app.extensions["saas.passwords"]
        done = provision_tenant(
            session,
            passwords,
            slug=slug,
            name=name,
            owner_email=email,
            owner_password=password,
            owner_name=owner_name,
        )
        tokens = auth_service.issue_tokens(
            session, user=done.owner, membership=done.membership, tenant=done.tenant
        )
        return {"tenant": done.tenant.to_public(), "user": done.owner.to_public(), "token": tokens.to_dict()}


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
        tenant = current_principal().tenant
        changes = {}
        merged = {**(tenant.settings or {}), **body.get("settings", {})}
        settings_change = "settings" in body and merged != (tenant.settings or {})
        if settings_change:
            check_step_up()  # before any change: require_mfa and the like are security policy
        if "name" in body and body["name"].strip() != tenant.name:
            changes["name"] = {"from": tenant.name, "to": body["name"].strip()}
            tenant.name = body["name"].strip()
        if settings_change:
            _check_settings(body["settings"])
            changes["settings"] = body["settings"]
            mfa_on = merged.get("require_mfa") and not (tenant.settings or {}).get("require_mfa")
            tenant.settings = merged
            if mfa_on:
                # sessions signed in without a second factor end now, access tokens included
                revoked = auth_service.revoke_sessions_without_mfa(db.session(), tenant.id)
                audit.record(
                    db.session(), "auth.sessions_revoked", target_type="tenant", target_id=tenant.id,
                    data={"reason": "require_mfa", "revoked": revoked},
                )  # fmt: skip
        if changes:
            audit.record(
                db.session(), "tenant.updated", target_type="tenant", target_id=tenant.id, data=changes
            )
            db.session().flush()
        return tenant.to_public()


def _check_settings(settings: dict) -> None:
    """Settings valid alone but not with this deployment.

    Raises:
        ValidationError: ``session_idle_minutes`` shorter than an access token's lifetime (a
            session is idle from its last token issuance, so a client using the API without
            pause would look idle before it needs to refresh).
    """
    from saas.errors import ValidationError

    idle = settings.get("session_idle_minutes")
    ttl = current_app.extensions["saas.settings"].access_token_ttl_seconds
    if idle is not None and idle * 60 < ttl:
        message = f"Must be at least {-(-ttl // 60)} (the access-token lifetime, minutes)."
        raise ValidationError({"settings": {"session_idle_minutes": [message]}})


@blp.route("/members")
class Members(MethodView):
    @require("members:read")
    @blp.response(200, MemberSchema(many=True))
    def get(self):
        """Members of the tenant, invited ones included."""
        p = current_principal()
        return [_member_dict(m) for m in members_service.list_members(db.session(), p.tenant.id)]

    @require("members:manage")
    @blp.arguments(InviteSchema)
    @blp.response(201, InvitationResponseSchema)
    @blp.alt_response(409, description="Already a member or invited")
    def post(self, body):
        """Invite someone by email. The invitation token is returned once and sent by mail.
        Inviting an admin or owner needs step-up (a person's recent login, with MFA when
        enabled; RFC 9470): a service account never can."""
        if body["role"] in ("owner", "admin"):
            check_step_up()
        settings = current_app.extensions["saas.settings"]
        result = members_service.invite(
            db.session(), current_principal(), body["email"], body["role"], settings.invitation_ttl_seconds
        )
        return {**_member_dict(result.membership), "invitation_token": result.token}


@blp.route("/members/<uuid:user_id>")
class Member(MethodView):
    @require("members:manage")
    @blp.arguments(RoleSchema)
    @blp.response(200, MemberSchema)
    def patch(self, body, user_id):
        """Change a member's role (the last owner cannot be demoted). Granting admin or owner needs
        step-up (a recent login, with MFA when enabled; RFC 9470)."""
        if body["role"] in ("owner", "admin"):
            check_step_up()
        m = members_service.change_role(db.session(), current_principal(), user_id, body["role"])
        return _member_dict(m)

    @authenticated
    @blp.response(204)
    def delete(self, user_id):
        """Remove a member (``members:manage``, with step-up), or leave the tenant yourself."""
        if current_principal().user_id != user_id:
            check_step_up()
        members_service.remove_member(db.session(), current_principal(), user_id)


@blp.route("/invitations/accept")
class AcceptInvitation(MethodView):
    @blp.arguments(AcceptSchema)
    @blp.response(200, AcceptResponseSchema)
    @blp.doc(security=[])
    def post(self, body):
        """Accept an invitation; sets the password of a new account; returns tokens, except when a
        second factor is needed (the user has MFA or the tenant requires it): then log in."""
        session = db.session()
        membership, user, tenant = members_service.accept_invitation(
            session,
            current_app.extensions["saas.passwords"],
            body["token"],
            body.get("password"),
            body.get("name"),
        )
        out = {"tenant": tenant.to_public(), "user": user.to_public()}
        # no tokens past a second factor: users with MFA, or in a tenant requiring it, log in next
        from saas.auth import mfa

        if mfa.has_mfa(session, user.id) or (tenant.settings or {}).get("require_mfa"):
            return out
        tokens = auth_service.issue_tokens(session, user=user, membership=membership, tenant=tenant)
        return {**out, "token": tokens.to_dict()}
