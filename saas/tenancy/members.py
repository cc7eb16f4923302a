"""Membership services: list, invite, accept, change role, remove. Each change takes an
:class:`~saas.actions.ActionContext` (the unit of work, the acting principal, the request's
metadata) and plain values, raises domain errors and writes an audit event."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from saas import outbox
from saas.actions import ActionContext
from saas.audit import Actor, AuditAction
from saas.auth.accounts import set_password
from saas.auth.context import Principal
from saas.auth.service import find_user_by_email, revoke_user_sessions
from saas.auth.stepup import step_up_for
from saas.billing import service as billing_service
from saas.db import tenant_row, tenant_rows, utcnow
from saas.errors import Conflict, ErrorCode, Forbidden, NotFound, Unauthorized, ValidationError
from saas.identity.models import Invitation, Membership, Tenant, User
from saas.identity.passwords import Passwords
from saas.rbac import ROLE_ORDER, ROLES
from saas.security import token_hash
from saas.tenancy import roles as roles_service
from saas.webhooks import events as webhook_events


def get_membership(session: Session, tenant_id: uuid.UUID, user_id: uuid.UUID) -> Membership:
    """The membership of ``user_id`` in ``tenant_id``; another tenant's member is a 404.

    Raises:
        NotFound: no such member in this tenant.
    """
    return tenant_row(session, Membership, tenant_id, user_id, key=Membership.user_id, noun="member")


def list_members(session: Session, tenant_id: uuid.UUID) -> list[Membership]:
    return tenant_rows(session, Membership, tenant_id, Membership.created_at)


def _owner_count(session: Session, tenant_id: uuid.UUID) -> int:
    """Active owners of the tenant, counted under a lock on the tenant row so two concurrent
    demotions or removals cannot both pass the last-owner check."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    return (
        session.scalar(
            select(func.count()).where(
                Membership.tenant_id == tenant_id, Membership.role == "owner", Membership.status == "active"
            )
        )
        or 0
    )


def _is_last_owner(session: Session, membership: Membership) -> bool:
    """Whether ``membership`` is the tenant's only active owner (an invited owner never is)."""
    if membership.role != "owner" or membership.status != "active":
        return False
    return _owner_count(session, membership.tenant_id) <= 1


def _principal(ctx: ActionContext) -> Principal:
    """The API caller the action's permission checks read (a membership change always has one:
    the request's principal, or the stand-in of an operator's import)."""
    if ctx.principal is None or ctx.principal.tenant is None:
        raise TypeError("a membership change needs a tenant principal in its ActionContext")
    return ctx.principal


def _check_role(session: Session, actor: Principal, role: str, *, check_plan: bool = True) -> None:
    """The role exists (built-in or the tenant's custom one) and the actor may grant it
    (:func:`saas.tenancy.roles.check_assignable`: no escalation)."""
    roles_service.check_assignable(session, actor, role, check_plan=check_plan)


def _may_act_on(session: Session, actor: Principal, role: str) -> bool:
    """Whether the actor may change, remove or withdraw a member holding ``role``."""
    return roles_service.may_grant(session, actor, role)


@dataclass
class InvitationResult:
    """What the inviter learns: the invitation and the address as invited, nothing of the
    account behind it (``saas.tenancy.views.InvitationResponseSchema``). The token is not here:
    it goes only to the invitee's mailbox."""

    invitation: Invitation
    membership: Membership
    email: str


def invitee_email(email: str) -> str:
    """The address of a pending invitation as shown to the inviting tenant: the invited address,
    lower-cased, so an existing account's own spelling of its address is never shown."""
    return email.strip().lower()


def invite(
    ctx: ActionContext, email: str, role: str, ttl_seconds: int, *, check_plan: bool = True
) -> InvitationResult:
    """Invite ``email`` with ``role``: creates a user without a password if the address has none
    (a placeholder the invitee or a signup claims), a pending membership, an invitation (only
    the SHA-256 of its token is stored) and an outbox message ``mail.invitation`` carrying the
    token to the invitee's mailbox, the only place it goes.

    The result and the audit event are the same whether or not the address has an account: the
    inviting tenant learns nothing of another tenant's user (no user id, no name).

    ``check_plan=False`` (only ``saas tenants import``, restoring the tenant's own members) gives
    a custom role on a plan without ``custom_roles``, as a downgraded tenant keeps them.

    Raises:
        ValidationError: unknown role. Forbidden: role above the actor's.
        Conflict: ``already_member`` (a member or pending invitee of this tenant).
        PaymentRequired: ``seats_exceeded``; ``entitlement_required`` (a custom role, the plan
            lacks ``custom_roles``, ``check_plan``).
    """
    session, actor = ctx.session, _principal(ctx)
    _check_role(session, actor, role, check_plan=check_plan)
    tenant = actor.tenant
    assert tenant is not None
    billing_service.check_seat_available(session, tenant)
    user = find_user_by_email(session, email)
    try:
        if user is None:
            user = User(email=email.strip(), name="")
            session.add(user)
            session.flush()
        elif session.scalars(
            select(Membership).where(Membership.tenant_id == tenant.id, Membership.user_id == user.id)
        ).first():
            raise Conflict("That person is already a member or invited.", code=ErrorCode.ALREADY_MEMBER)
        membership = Membership(
            user_id=user.id, tenant_id=tenant.id, role=role, status="invited", invited_by=actor.user_id
        )
        session.add(membership)
        session.flush()
    except IntegrityError:
        # a concurrent invitation (or signup) of the same email won between the check and the
        # insert; the request's unit of work is rolled back
        raise Conflict(
            "That person was just invited or signed up; try again.", code=ErrorCode.ALREADY_MEMBER
        ) from None
    token = secrets.token_urlsafe(32)
    invitation = Invitation(
        membership_id=membership.id,
        token_hash=token_hash(token),
        created_by=actor.user_id,
        expires_at=utcnow() + timedelta(seconds=ttl_seconds),
    )
    session.add(invitation)
    session.flush()
    outbox.enqueue(
        session,
        "mail.invitation",
        {"to": user.email, "tenant": tenant.slug, "tenant_name": tenant.name, "role": role, "token": token},
        tenant_id=tenant.id,
    )
    shown = invitee_email(email)
    ctx.record(
        AuditAction.MEMBER_INVITED,
        tenant_id=tenant.id,
        target_type="invitation",
        target_id=invitation.id,
        data={"role": role, "email": shown},
    )
    webhook_events.emit(
        session, tenant.id, "member.invited", {"invitation_id": invitation.id, "email": shown, "role": role}
    )
    session.flush()
    return InvitationResult(invitation, membership, shown)


def pending_invitations(session: Session, tenant_id: uuid.UUID) -> dict[uuid.UUID, Invitation]:
    """The open invitations of ``tenant_id``, by membership id."""
    rows = session.scalars(
        select(Invitation)
        .join(Membership, Membership.id == Invitation.membership_id)
        .where(Membership.tenant_id == tenant_id, Invitation.accepted_at.is_(None))
    )
    return {inv.membership_id: inv for inv in rows}


def revoke_invitation(ctx: ActionContext, invitation_id: uuid.UUID) -> None:
    """Withdraw a pending invitation of the actor's tenant: its membership and token go.

    Raises:
        NotFound: no open invitation with that id in this tenant.
        Forbidden: ``role_not_assignable``, the invited role is above the actor's.
    """
    session, actor = ctx.session, _principal(ctx)
    assert actor.tenant is not None
    membership = session.scalars(
        select(Membership)
        .join(Invitation, Invitation.membership_id == Membership.id)
        .where(
            Invitation.id == invitation_id,
            Invitation.accepted_at.is_(None),
            Membership.tenant_id == actor.tenant.id,
            Membership.status == "invited",
        )
    ).first()
    if membership is None:
        raise NotFound("No such invitation in this tenant.")
    if not _may_act_on(session, actor, membership.role):
        raise Forbidden(
            "You cannot withdraw an invitation above your role.", code=ErrorCode.ROLE_NOT_ASSIGNABLE
        )
    session.delete(membership)
    ctx.record(
        AuditAction.MEMBER_INVITATION_REVOKED,
        tenant_id=actor.tenant.id,
        target_type="invitation",
        target_id=invitation_id,
    )
    session.flush()


def has_account(session: Session, user: User) -> bool:
    """Whether ``user`` is an account (it has a password, or belongs to a tenant), rather than
    the placeholder an invitation creates for an address nobody has signed up with."""
    if user.password_hash is not None:
        return True
    return (
        session.scalar(
            select(Membership.id).where(Membership.user_id == user.id, Membership.status == "active").limit(1)
        )
        is not None
    )


def accept_invitation(
    ctx: ActionContext,
    passwords: Passwords,
    token: str,
    password: str | None,
    name: str | None,
    signed_in_user_id: uuid.UUID | None = None,
) -> tuple[Membership, User, Tenant]:
    """Accept an invitation by its token (which only ever went to the invitee's mailbox).

    - An address without an account: the mailed token proves the mailbox, so accepting sets the
      account's password (``password``, the tenant's policy) and optional ``name``. Nobody may be
      signed in as another account meanwhile.
    - An existing account: the invitee must be signed in, ``signed_in_user_id`` being the user
      of the request's own bearer token (of any tenant). There is no password path, so the
      endpoint verifies no password: one sent along is refused like none at all, the same way
      whether or not it is right.

    The membership joins the inviting tenant, whose audit log records ``member.joined``.

    Raises:
        NotFound: ``invalid_invitation``, an unknown, used or expired token.
        Unauthorized: ``sign_in_required``, an existing account accepting without its token.
        Forbidden: ``wrong_account``, signed in as someone other than the invitee.
        ValidationError: password missing or too weak for a new account.
    """
    session = ctx.session
    invitation = session.scalars(
        select(Invitation).where(Invitation.token_hash == token_hash(token)).with_for_update()
    ).first()
    if invitation is None or invitation.accepted_at is not None or invitation.expires_at <= utcnow():
        raise NotFound("This invitation is invalid or has expired.", code=ErrorCode.INVALID_INVITATION)
    membership = invitation.membership
    # locked: a concurrent signup claiming the same placeholder waits (saas.tenancy.provisioning)
    user = session.get(User, membership.user_id, with_for_update=True)
    tenant = session.get(Tenant, membership.tenant_id)
    assert user is not None and tenant is not None
    if has_account(session, user):
        if signed_in_user_id is None:
            raise Unauthorized(
                "This invitation is for an existing account: sign in, then accept it with your "
                "own access token (Authorization: Bearer). Passwords are not accepted here.",
                code=ErrorCode.SIGN_IN_REQUIRED,
                title="Sign-in required",
                error=None,
            )
        if signed_in_user_id != user.id:
            raise Forbidden("This invitation is for another account.", code=ErrorCode.WRONG_ACCOUNT)
    else:
        if signed_in_user_id is not None:
            raise Forbidden("This invitation is for another account.", code=ErrorCode.WRONG_ACCOUNT)
        if not password:
            raise ValidationError({"password": ["A password is required to create your account."]})
        # the strictest password_min_length of this tenant and the user's others
        set_password(session, user, password, joining=[tenant], passwords=passwords)
    if name:
        user.name = name.strip()
    invitation.accepted_at = utcnow()
    # the token went only to this address: using it proves the mailbox (docs/auth.md, "Emails")
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()
    membership.status = "active"
    billing_service.members_changed(session, tenant.id)
    ctx.as_actor(Actor("user", str(user.id))).record(
        AuditAction.MEMBER_JOINED, tenant_id=tenant.id, target_type="user", target_id=user.id
    )
    webhook_events.emit(session, tenant.id, "member.joined", {"user_id": user.id, "role": membership.role})
    session.flush()
    return membership, user, tenant


def change_role(ctx: ActionContext, user_id: uuid.UUID, role: str) -> Membership:
    """Change a member's role. Demoting an owner needs step-up (RFC 9470: a person's recent
    login, with MFA when enabled), which a service account's token never has.

    Raises:
        NotFound, ValidationError, Forbidden (role above the actor's, or the target's role is),
        InsufficientUserAuthentication (401, demoting an owner without step-up),
        Conflict ``last_owner`` (the last owner cannot be demoted).
    """
    session, actor = ctx.session, _principal(ctx)
    assert actor.tenant is not None
    membership = get_membership(session, actor.tenant.id, user_id)
    _check_role(session, actor, role)
    if not _may_act_on(session, actor, membership.role):
        raise Forbidden(
            "You cannot change the role of a member above you.", code=ErrorCode.ROLE_NOT_ASSIGNABLE
        )
    step_up_for("member.demote_owner", from_role=membership.role, to_role=role)
    if _is_last_owner(session, membership) and role != "owner":
        raise Conflict("The last owner cannot be demoted.", code=ErrorCode.LAST_OWNER)
    old = membership.role
    membership.role = role
    ctx.record(
        AuditAction.MEMBER_ROLE_CHANGED,
        tenant_id=actor.tenant.id,
        target_type="user",
        target_id=user_id,
        data={"from": old, "to": role},
    )
    webhook_events.emit(
        session, actor.tenant.id, "member.role_changed", {"user_id": user_id, "from": old, "to": role}
    )
    session.flush()
    return membership


def remove_member(ctx: ActionContext, user_id: uuid.UUID) -> None:
    """Remove a member (or let a member leave); revokes their sessions in this tenant.

    Raises:
        NotFound; Forbidden (not yours to remove); Conflict ``last_owner``.
    """
    session, actor = ctx.session, _principal(ctx)
    assert actor.tenant is not None
    membership = get_membership(session, actor.tenant.id, user_id)
    leaving = actor.user_id == user_id
    if not leaving:
        if "members:manage" not in actor.permissions:
            raise Forbidden(
                "This action needs the 'members:manage' permission.", code=ErrorCode.PERMISSION_DENIED
            )
        if not _may_act_on(session, actor, membership.role):
            raise Forbidden("You cannot remove a member above you.", code=ErrorCode.ROLE_NOT_ASSIGNABLE)
    if _is_last_owner(session, membership):
        raise Conflict("The last owner cannot leave or be removed.", code=ErrorCode.LAST_OWNER)
    session.delete(membership)
    billing_service.members_changed(session, actor.tenant.id)
    revoke_user_sessions(session, user_id, actor.tenant.id, "member_removed")
    ctx.record(
        AuditAction.MEMBER_LEFT if leaving else AuditAction.MEMBER_REMOVED,
        tenant_id=actor.tenant.id,
        target_type="user",
        target_id=user_id,
    )
    webhook_events.emit(session, actor.tenant.id, "member.removed", {"user_id": user_id, "left": leaving})
    session.flush()


# --- directory provisioning: SSO just-in-time membership and SCIM ------------------------------


@dataclass
class Provisioned:
    """What :func:`provision_member` did: the member, and whether the user or the seat is new."""

    user: User
    membership: Membership
    created_user: bool
    took_seat: bool


def provision_member(
    ctx: ActionContext,
    tenant: Tenant,
    *,
    email: str,
    name: str | None,
    role: str,
    source: str,
    email_verified: bool,
    reactivate: bool = False,
) -> Provisioned:
    """Make ``email`` an active member of ``tenant`` on a directory's word: an SSO connection's
    just-in-time membership (``source`` ``"sso:<connection id>"``) or a SCIM client
    (``"scim"``). The one place a directory adds people, so seats and billing follow it like an
    invitation: a new seat is checked against the plan (:func:`saas.billing.service.check_seat_available`)
    and pushed to Stripe (:func:`saas.billing.service.members_changed`).

    - No account with that address: one is created without a password (sign-in goes through
      the directory, or a reset link later).
    - ``email_verified`` (the caller decided the directory is authoritative for the address,
      e.g. it is on one of the tenant's verified domains): marks the address verified. Without
      it, an existing account (a password, or another tenant's membership) is never attached to
      this tenant: the person is invited instead, and accepts (``account_not_linkable``).
    - A pending invitation is accepted; an active member is left as is (role included: role
      changes go through :func:`set_directory_role`); a ``suspended`` one is reactivated only
      when ``reactivate`` (SCIM ``active: true``), else refused, so signing in over SSO never
      undoes a deprovisioning.

    The role is not checked against the actor's: the directory's configuration (``default_role``,
    ``role_mapping``, SCIM groups), which an admin with ``sso:manage`` set, decides it.

    Raises:
        ValidationError: unknown role. PaymentRequired: ``seats_exceeded``.
        Forbidden: ``member_suspended``, a suspended member without ``reactivate``.
        Conflict: ``account_not_linkable``, an existing account the directory does not speak for.
    """
    session = ctx.session
    check_role_exists(session, tenant.id, role)
    user = find_user_by_email(session, email)
    created_user = False
    if user is None:
        billing_service.check_seat_available(session, tenant)
        user = User(email=email.strip(), name=(name or "").strip())
        session.add(user)
        session.flush()
        created_user = True
    if email_verified and user.email_verified_at is None:
        user.email_verified_at = utcnow()
    if name and not user.name:
        user.name = name.strip()
    membership = session.scalars(
        select(Membership)
        .where(Membership.tenant_id == tenant.id, Membership.user_id == user.id)
        .with_for_update(of=Membership)
    ).first()
    took_seat = False
    if membership is None and not created_user and not email_verified and has_account(session, user):
        # the directory does not speak for this address (not on the tenant's verified domains):
        # it may not attach someone's existing account to the tenant; an invitation asks them
        raise Conflict(
            "An account with this address exists, and the address is not on one of this "
            "organisation's verified domains: invite them instead (POST /api/v1/members).",
            code=ErrorCode.ACCOUNT_NOT_LINKABLE,
            title="Existing account",
        )
    if membership is None:
        if not created_user:
            billing_service.check_seat_available(session, tenant)
        membership = Membership(user_id=user.id, tenant_id=tenant.id, role=role, status="active")
        session.add(membership)
        took_seat = True
    elif membership.status == "invited":
        membership.status = "active"  # the invitation already held the seat
        for invitation in session.scalars(
            select(Invitation).where(
                Invitation.membership_id == membership.id, Invitation.accepted_at.is_(None)
            )
        ):
            invitation.accepted_at = utcnow()
    elif membership.status == "suspended":
        if not reactivate:
            raise Forbidden(
                "Your access to this organisation was deactivated by its directory.",
                code=ErrorCode.MEMBER_SUSPENDED,
                title="Membership suspended",
            )
        billing_service.check_seat_available(session, tenant)
        membership.status = "active"
        took_seat = True
    else:
        return Provisioned(user, membership, created_user, False)
    session.flush()
    billing_service.members_changed(session, tenant.id)
    ctx.record(
        AuditAction.MEMBER_PROVISIONED,
        tenant_id=tenant.id,
        target_type="user",
        target_id=user.id,
        data={"source": source, "role": membership.role, "new_account": created_user},
    )
    session.flush()
    return Provisioned(user, membership, created_user, took_seat)


def set_directory_role(ctx: ActionContext, membership: Membership, role: str, *, source: str) -> bool:
    """Set ``membership``'s role on a directory's word (SSO ``role_mapping`` at sign-in, a SCIM
    group). Returns whether it changed. Refuses to demote the tenant's last owner.

    Raises:
        ValidationError: unknown role. Conflict: ``last_owner``.
    """
    session = ctx.session
    check_role_exists(session, membership.tenant_id, role)
    if membership.role == role:
        return False
    if _is_last_owner(session, membership):
        raise Conflict("The last owner cannot be demoted.", code=ErrorCode.LAST_OWNER)
    old, membership.role = membership.role, role
    ctx.record(
        AuditAction.MEMBER_ROLE_CHANGED,
        tenant_id=membership.tenant_id,
        target_type="user",
        target_id=membership.user_id,
        data={"from": old, "to": role, "source": source},
    )
    webhook_events.emit(
        session,
        membership.tenant_id,
        "member.role_changed",
        {"user_id": membership.user_id, "from": old, "to": role},
    )
    session.flush()
    return True


def deactivate_member(
    ctx: ActionContext, tenant_id: uuid.UUID, user_id: uuid.UUID, *, source: str, delete: bool = False
) -> Membership | None:
    """Deprovision a member on a directory's word (SCIM ``active: false`` or ``DELETE``): the
    membership is ``suspended`` (or deleted when ``delete``), which frees the seat and pushes the
    count to Stripe, and every session of the user in this tenant ends at once: their refresh
    families are revoked (with the access tokens issued from them) and, since the membership is
    no longer active, the cached principal refuses their tokens on the next request.

    Returns the membership (None when deleted). Idempotent: an already suspended member stays so.

    Raises:
        NotFound: no such member. Conflict: ``last_owner`` (the last active owner).
    """
    session = ctx.session
    membership = get_membership(session, tenant_id, user_id)
    if _is_last_owner(session, membership):
        raise Conflict("The last owner cannot be deactivated.", code=ErrorCode.LAST_OWNER)
    was_seated = membership.status in ("active", "invited")
    if delete:
        session.delete(membership)
    elif membership.status != "suspended":
        membership.status = "suspended"
    else:
        return membership
    session.flush()
    if was_seated:
        billing_service.members_changed(session, tenant_id)
    revoke_user_sessions(session, user_id, tenant_id, "member_deprovisioned")
    ctx.record(
        AuditAction.MEMBER_REMOVED if delete else AuditAction.MEMBER_DEACTIVATED,
        tenant_id=tenant_id,
        target_type="user",
        target_id=user_id,
        data={"source": source},
    )
    if delete:
        webhook_events.emit(session, tenant_id, "member.removed", {"user_id": user_id, "left": False})
    session.flush()
    return None if delete else membership


def check_role_exists(session: Session, tenant_id: uuid.UUID, role: str) -> None:
    """Refuse a role name the tenant does not have: a built-in role, or one of its custom roles
    while its plan has ``custom_roles`` (:func:`saas.tenancy.roles.check_role_exists`).

    Raises:
        ValidationError: ``{"role": [...]}``. PaymentRequired: ``entitlement_required``.
    """
    roles_service.check_role_exists(session, tenant_id, role)


def most_powerful_role(session: Session, tenant_id: uuid.UUID, roles: Iterable[str]) -> str:
    """Of ``roles`` (names the tenant has), the one granting the most: the largest set of
    permissions, then the built-in order (owner, admin, member, viewer; a custom role after the
    built-in ones), then the name. The one rule SSO ``role_mapping`` and SCIM groups use when a
    person matches several.

    Raises:
        ValueError: ``roles`` is empty.
    """

    def rank(role: str) -> tuple[int, int, str]:
        custom = roles_service.role_permissions(session, tenant_id, role)
        granted = ROLES[role] if custom is None else custom
        order = ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER)
        return (-len(granted), order, role)

    return min(set(roles), key=rank)
