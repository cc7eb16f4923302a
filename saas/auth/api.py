"""JSON API of the auth service: OAuth clients, MFA (TOTP), sessions.

* ``/api/v1/clients`` — tenant admins (``clients:manage``) manage their tenant's OAuth clients;
  secrets are shown once (create, rotate); rotating and deleting need step-up (RFC 9470).
* ``/api/v1/me/mfa/...`` — TOTP enrolment, confirmation, recovery codes, disabling. Enrolment
  also works with an ``mfa_token`` of purpose ``enroll`` (tenant ``require_mfa``), which yields
  tokens once confirmed.
* ``/api/v1/me/sessions`` — the caller's sessions (refresh-token families) in this tenant;
  ``/api/v1/members/{user_id}/sessions`` — an admin revokes all of a member's sessions.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import g
from flask.views import MethodView
from sqlalchemy import select

from saas import audit, db, outbox
from saas.actions import ActionContext
from saas.api import Blueprint
from saas.audit import AuditAction
from saas.auth import browser_sessions, mfa, service, sessions
from saas.auth import clients as clients_service
from saas.auth.context import (
    authenticated,
    check_not_impersonated,
    check_verified_email,
    current_principal,
    require,
    require_verified_email,
)
from saas.auth.models import OAuthClient
from saas.auth.schemas import (
    ClientPatchSchema,
    ClientSchema,
    ClientWithSecretSchema,
    ConfirmInSchema,
    ConfirmOutSchema,
    DisableSchema,
    EnrollInSchema,
    EnrollOutSchema,
    RecoveryCodesSchema,
    RevokedSchema,
    SecretSchema,
    SessionSchema,
)
from saas.auth.stepup import check_step_up, require_step_up
from saas.errors import ErrorCode, Forbidden, NotFound, Unauthorized, ValidationError
from saas.identity.models import Membership, Tenant, User, custom_role_permissions
from saas.rbac import ROLES, can_grant
from saas.services import services

blp = Blueprint("auth_api", __name__, url_prefix="/api/v1", description="OAuth clients, MFA and sessions")


# --- clients -------------------------------------------------------------------------------------


@blp.route("/clients")
class Clients(MethodView):
    @require("clients:manage")
    @blp.response(200, ClientSchema(many=True))
    def get(self):
        """The tenant's OAuth clients the caller may manage (those whose role it could assign;
        the others are refused one by one too, see ``GET /clients/{client_id}``)."""
        principal = current_principal()
        rows = db.session().scalars(
            select(OAuthClient)
            .where(OAuthClient.tenant_id == principal.tenant_id)
            .order_by(OAuthClient.created_at)
        )
        return [
            clients_service.to_public(c)
            for c in rows
            if can_grant(principal.role, principal.permissions, c.role, None)
        ]

    @require("clients:manage")
    @require_verified_email
    @require_step_up()
    @blp.arguments(ClientSchema)
    @blp.response(201, ClientWithSecretSchema)
    def post(self, body):
        """Register a client (needs step-up: a client with a role or redirect URIs is a lasting
        door into the tenant). A confidential client's ``client_secret`` is in this answer only."""
        principal = current_principal()
        _check_client_role(body)
        client, secret = clients_service.create_client(
            ActionContext.from_request(), principal.tenant_id, body, principal.user_id
        )
        out = clients_service.to_public(client)
        if secret:
            out["client_secret"] = secret
        return out


def _check_client_role(body: dict) -> None:
    """A member may give a service client only a role it could give a person (no escalation)."""
    role = body.get("role")
    principal = current_principal()
    if role is not None and not can_grant(principal.role, principal.permissions, role, None):
        raise Forbidden(
            f"You cannot give a client the role {role!r}.",
            code=ErrorCode.ROLE_NOT_ASSIGNABLE,
            title="Role not assignable",
        )


def _own_client(client_id: str) -> OAuthClient:
    """The tenant's client, if the caller could have given it its role.

    A client acts with its ``role`` (``client_credentials``); whoever reads, changes, rotates
    or deletes it could act with that role, so each of these needs a role at or above it, as
    giving the role would (:func:`saas.rbac.can_grant`).

    Raises:
        NotFound: no such client in the tenant.
        Forbidden: ``role_not_assignable``, the client's role is above the caller's.
    """
    principal = current_principal()
    client = clients_service.get_client(db.session(), principal.tenant_id, client_id)
    if not can_grant(principal.role, principal.permissions, client.role, None):
        raise Forbidden(
            f"This client acts with the role {client.role!r}, above yours.",
            code=ErrorCode.ROLE_NOT_ASSIGNABLE,
            title="Role not assignable",
        )
    return client


@blp.route("/clients/<client_id>")
class ClientItem(MethodView):
    @require("clients:manage")
    @blp.response(200, ClientSchema)
    def get(self, client_id):
        """One client of the tenant (another tenant's is a 404)."""
        return clients_service.to_public(_own_client(client_id))

    @require("clients:manage")
    @require_step_up()
    @blp.arguments(ClientPatchSchema)
    @blp.response(200, ClientSchema)
    def patch(self, body, client_id):
        """Change a client's name, redirect URIs, grants, scope, role, consent or resource-server
        setting (needs step-up)."""
        client = _own_client(client_id)
        _check_client_role(body)
        return clients_service.to_public(
            clients_service.update_client(ActionContext.from_request(), client, body)
        )

    @require("clients:manage")
    @require_step_up()
    @blp.response(204)
    def delete(self, client_id):
        """Delete a client and revoke its refresh tokens (needs step-up)."""
        clients_service.delete_client(ActionContext.from_request(), _own_client(client_id))


@blp.route("/clients/<client_id>/secret")
class ClientSecret(MethodView):
    @require("clients:manage")
    @require_step_up()
    @blp.response(200, SecretSchema)
    def post(self, client_id):
        """Rotate the secret (needs step-up); the new one is in this answer only."""
        client = _own_client(client_id)
        secret = clients_service.rotate_secret(ActionContext.from_request(), client)
        return {"client_id": client.client_id, "client_secret": secret}


# --- MFA -----------------------------------------------------------------------------------------


def _mfa_subject(token: str | None, purposes: tuple[str, ...] = ("enroll",), *, step_up: bool = False):
    """(user, tenant, ticket) for an mfa_token caller, or (user, tenant, None) for a bearer caller.
    ``step_up``: a bearer caller needs a recent login (RFC 9470; whoever binds a factor to the
    account owns its second factor from then on)."""
    sess = db.session()
    if g.get("principal") is not None:
        principal = current_principal()
        if principal.user_id is None:
            raise Unauthorized("MFA belongs to people, not service accounts.", error=None)
        check_not_impersonated()  # an operator never binds a factor, even where no step-up is asked
        if step_up:
            check_step_up()
        # a factor bound before the mailbox is proven would outlive its owner's reset (a
        # pre-registered account: docs/auth.md, "Email verification and change")
        check_verified_email()
        user = sess.get(User, principal.user_id)
        return user, principal.tenant, None
    ticket = mfa.read_mfa_token(token, purposes)
    row = sess.execute(
        select(User, Tenant)
        .join(Membership, Membership.user_id == User.id)
        .join(Tenant, Tenant.id == Membership.tenant_id)
        .where(User.id == ticket.user_id, Tenant.id == ticket.tenant_id, Membership.status == "active")
    ).first()
    if row is None or row[0].status != "active":
        raise Unauthorized(
            "The mfa_token is invalid or has expired.", code=ErrorCode.INVALID_MFA_TOKEN, error=None
        )
    return row[0], row[1], ticket


@blp.route("/me/mfa/totp")
class Totp(MethodView):
    @blp.arguments(EnrollInSchema, required=False)
    @blp.response(201, EnrollOutSchema)
    @blp.doc(security=[{"bearerAuth": []}, {}])
    def post(self, body):
        """Start TOTP enrolment: a new secret, its ``otpauth://`` URI and a QR code (SVG data URI).
        Authenticate with a bearer token, or with ``mfa_token`` from ``mfa_enrollment_required``."""
        user, _tenant, ticket = _mfa_subject((body or {}).get("mfa_token"))
        if ticket is None and not mfa.has_mfa(db.session(), user.id):
            check_step_up()  # a bearer caller binds a factor only after a recent login
        return mfa.begin_enrollment(db.session(), user).to_dict()

    @authenticated
    @blp.arguments(DisableSchema)
    @blp.response(204)
    def delete(self, body):
        """Disable TOTP: needs the password and a current code (or a recovery code), and step-up."""
        check_step_up()
        principal = current_principal()
        sess = db.session()
        user = sess.get(User, principal.user_id)
        passwords = services().passwords
        if not passwords.verify(user.password_hash, body["password"]):
            raise Unauthorized("The password is incorrect.", code=ErrorCode.INVALID_CREDENTIALS, error=None)
        mfa.verify(sess, user, body["code"], principal.tenant.schema_name)
        requiring = _tenants_requiring_mfa(user.id)
        if requiring:
            raise ValidationError(
                {"code": ["An organisation you belong to requires MFA; it cannot be disabled."]},
                detail="Required by: " + ", ".join(requiring),
            )
        mfa.disable(sess, user, None, audit.Actor("user", str(user.id)))


def _tenants_requiring_mfa(user_id: uuid.UUID) -> list[str]:
    """Slugs of the tenants where the user is an active member and ``require_mfa`` is on:
    disabling MFA must respect every one of them, not just the token's tenant."""
    rows = db.session().scalars(
        select(Tenant)
        .join(Membership, Membership.tenant_id == Tenant.id)
        .where(Membership.user_id == user_id, Membership.status == "active")
        .order_by(Tenant.slug)
    )
    return [t.slug for t in rows if (t.settings or {}).get("require_mfa")]


@blp.route("/me/mfa/totp/confirm")
class TotpConfirm(MethodView):
    @blp.arguments(ConfirmInSchema)
    @blp.response(200, ConfirmOutSchema)
    @blp.doc(security=[{"bearerAuth": []}, {}])
    def post(self, body):
        """Activate the pending factor with a first code; returns 10 recovery codes (shown once).
        With an ``mfa_token`` (enrolment at login) the answer also carries tokens (``amr`` pwd+otp)."""
        user, tenant, ticket = _mfa_subject(body.get("mfa_token"), step_up=True)
        sess = db.session()
        codes = mfa.confirm_enrollment(sess, user, body["code"], tenant.schema_name)
        out: dict[str, Any] = {"recovery_codes": codes}
        if ticket is not None:
            mfa.consume_mfa_token(ticket)
            membership = sess.scalars(
                select(Membership).where(Membership.user_id == user.id, Membership.tenant_id == tenant.id)
            ).one()
            out["token"] = service.complete_login(
                sess, user, membership, tenant, [*ticket.amr, "otp"]
            ).to_dict()
        return out


@blp.route("/me/mfa/recovery-codes")
class RecoveryCodes(MethodView):
    @authenticated
    @require_step_up()
    @blp.response(200, RecoveryCodesSchema)
    def post(self):
        """Replace the recovery codes with 10 new ones (needs step-up); the old ones stop working."""
        principal = current_principal()
        sess = db.session()
        if not mfa.has_mfa(sess, principal.user_id):
            raise NotFound("TOTP is not enabled.", code=ErrorCode.MFA_NOT_ENABLED)
        user = sess.get(User, principal.user_id)
        codes = mfa.regenerate_recovery_codes(sess, user)
        ActionContext.from_request(sess).record(
            AuditAction.MFA_RECOVERY_CODES_REGENERATED, target_type="user", target_id=user.id
        )
        return {"recovery_codes": codes}


# --- sessions ------------------------------------------------------------------------------------


@blp.route("/me/sessions")
class MySessions(MethodView):
    @authenticated
    @blp.response(200, SessionSchema(many=True))
    def get(self):
        """My sessions in this tenant (each refresh-token family): client, created, last used, IP, UA."""
        principal = current_principal()
        if principal.user_id is None:
            return []
        return sessions.list_sessions(
            db.session(), principal.user_id, principal.tenant_id, principal.claims.get("sid")
        )


@blp.route("/me/sessions/<session_id>")
class MySession(MethodView):
    @authenticated
    @blp.response(204)
    def delete(self, session_id):
        """End one of my sessions (its refresh tokens stop working)."""
        principal = current_principal()
        sess = db.session()
        family = sessions.owned_family(sess, session_id, principal.user_id, principal.tenant_id)
        if family is None:
            raise NotFound("No such session.")
        sessions.revoke_family(sess, family, "user_revoked")
        ActionContext.from_request(sess).record(
            AuditAction.AUTH_SESSION_REVOKED, target_type="session", target_id=family
        )


@blp.route("/members/<user_id>/sessions")
class MemberSessions(MethodView):
    @require("members:manage")
    @require_step_up()
    @blp.response(200, RevokedSchema)
    def delete(self, user_id):
        """Revoke every session of a member of this tenant (admins, with step-up, RFC 9470):
        refresh tokens with their access tokens, and the member's browser sign-ins on the hosted
        pages. The member is mailed (``sessions_ended``). Returns how many refresh tokens."""
        principal = current_principal()
        try:
            uid = uuid.UUID(user_id)
        except ValueError:
            raise NotFound("No such member.") from None
        sess = db.session()
        member = sess.scalars(
            select(Membership).where(Membership.user_id == uid, Membership.tenant_id == principal.tenant_id)
        ).first()
        if member is None:
            raise NotFound("No such member.")
        if uid != principal.user_id and not _may_act_on(sess, principal, member.role):
            # as removing or demoting them: nobody ends the sessions of a member above them
            raise Forbidden(
                "You cannot end the sessions of a member above you.", code=ErrorCode.ROLE_NOT_ASSIGNABLE
            )
        count = service.revoke_user_sessions(sess, uid, principal.tenant_id, "admin_revoked")
        browsers = browser_sessions.end_for_user(sess, uid, "admin_revoked")
        ActionContext.from_request(sess).record(
            AuditAction.AUTH_SESSIONS_REVOKED,
            target_type="user",
            target_id=uid,
            data={"revoked": count, "browser_sessions": browsers},
        )
        if uid != principal.user_id and member.status == "active":  # the member hears of it
            mail = {"to": member.user.email, "event": "sessions_ended"}
            outbox.enqueue(sess, "mail.security", mail, principal.tenant_id)
        return {"revoked": count}


def _may_act_on(session, principal, role: str) -> bool:
    """Whether ``principal`` may act on a member holding ``role``: the built-in order, or for a
    custom role the no-escalation rule (:func:`saas.rbac.can_grant`; a role since deleted grants
    nothing)."""
    if role in ROLES:
        return can_grant(principal.role, principal.permissions, role, None)
    perms = custom_role_permissions(session, principal.tenant_id, role)
    return can_grant(principal.role, principal.permissions, role, perms or frozenset())
