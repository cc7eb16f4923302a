"""The audit writer (design invariant 7): every change a person makes is recorded in the
tenant's own ``audit_events`` table: who (actor), what (action, target, data), when, from where
(IP, user agent, request id).

Every action is a member of :class:`AuditAction`, the one registry of what the log can say: a
tenant's admins filter and alert on these names (``GET /api/v1/audit-events?action=``,
``saas audit --action``), so each is declared once and :func:`record` refuses any other.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from flask import g, has_request_context, request
from sqlalchemy import DateTime, Index, String, insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from saas.db import JSONType, TenantBase, schema_name_for, translate_map, utcnow


class AuditAction(StrEnum):
    """What an audit event says happened (``audit_events.action``, at most 64 characters):
    ``<subject>.<past participle>``. A member compares equal to its string."""

    # sign-in and sessions (saas.auth)
    AUTH_LOGIN = "auth.login"
    AUTH_LOGIN_FAILED = "auth.login_failed"
    AUTH_LOGIN_THROTTLED = "auth.login_throttled"
    AUTH_LOGOUT = "auth.logout"
    AUTH_CODE_REUSED = "auth.code_reused"  # RFC 9700 section 4.4: the grant's tokens revoked
    AUTH_REFRESH_TOKEN_REUSED = "auth.refresh_token_reused"  # noqa: S105 - RFC 9700 section 4.14.2
    AUTH_SESSION_REVOKED = "auth.session_revoked"
    AUTH_SESSIONS_REVOKED = "auth.sessions_revoked"
    AUTH_TOKEN_REVOKED = "auth.token_revoked"  # noqa: S105 - RFC 7009
    AUTH_NEW_DEVICE = "auth.new_device"  # the first sign-in from a device (the owner is mailed)
    AUTH_BACKCHANNEL_LOGOUT_FAILED = "auth.backchannel_logout_failed"  # the outbox gave up
    USER_LOCKED = "user.locked"
    USER_UNLOCKED = "user.unlocked"
    # the identity lifecycle (saas.auth.recovery, emails, webauthn, self_service)
    PASSWORD_RESET_REQUESTED = "password.reset_requested"  # noqa: S105 - an action name
    PASSWORD_RESET = "password.reset"  # noqa: S105 - an action name
    PASSWORD_CHANGED = "password.changed"  # noqa: S105 - an action name
    EMAIL_VERIFICATION_SENT = "email.verification_sent"
    EMAIL_VERIFIED = "email.verified"
    EMAIL_CHANGE_REQUESTED = "email.change_requested"
    EMAIL_CHANGED = "email.changed"
    WEBAUTHN_REGISTERED = "webauthn.registered"
    WEBAUTHN_DELETED = "webauthn.deleted"
    WEBAUTHN_CLONE_DETECTED = "webauthn.clone_detected"  # WebAuthn Level 2 section 6.1.1
    USER_EXPORTED = "user.exported"
    USER_DELETED = "user.deleted"
    # multi-factor authentication
    MFA_ENROLLED = "mfa.enrolled"
    MFA_DISABLED = "mfa.disabled"
    MFA_FAILED = "mfa.failed"
    MFA_LOCKED = "mfa.locked"
    MFA_RECOVERY_CODE_USED = "mfa.recovery_code_used"
    MFA_RECOVERY_CODES_REGENERATED = "mfa.recovery_codes_regenerated"
    MFA_RESET = "mfa.reset"
    # OAuth clients and consent
    CLIENT_CREATED = "client.created"
    CLIENT_UPDATED = "client.updated"
    CLIENT_DELETED = "client.deleted"
    CLIENT_SECRET_ROTATED = "client.secret_rotated"  # noqa: S105 - an action name
    OAUTH_CONSENT_GRANTED = "oauth.consent_granted"
    OAUTH_CONSENT_DENIED = "oauth.consent_denied"
    KEY_ROTATED = "key.rotated"
    # tenants and members
    TENANT_CREATED = "tenant.created"
    TENANT_CREATED_BY_OPERATOR = "tenant.created_by_operator"
    TENANT_UPDATED = "tenant.updated"
    TENANT_SUSPENDED = "tenant.suspended"
    TENANT_RESUMED = "tenant.resumed"
    TENANT_DELETION_SCHEDULED = "tenant.deletion_scheduled"
    TENANT_SLUG_RENAMED = "tenant.slug_renamed"
    TENANT_IMPORTED = "tenant.imported"
    MEMBER_INVITED = "member.invited"
    MEMBER_INVITATION_REVOKED = "member.invitation_revoked"
    MEMBER_JOINED = "member.joined"
    MEMBER_ROLE_CHANGED = "member.role_changed"
    MEMBER_REMOVED = "member.removed"
    MEMBER_LEFT = "member.left"
    MEMBER_PROVISIONED = "member.provisioned"  # a directory (SSO just in time, SCIM) added them
    MEMBER_DEACTIVATED = "member.deactivated"  # a directory suspended them: sessions ended, seat freed
    LIMITS_RESET = "limits.reset"
    # verified domains (saas.tenancy.domains)
    DOMAIN_CLAIMED = "domain.claimed"
    DOMAIN_VERIFIED = "domain.verified"
    DOMAIN_DELETED = "domain.deleted"
    # custom roles (saas.tenancy.roles)
    ROLE_CREATED = "role.created"
    ROLE_UPDATED = "role.updated"
    ROLE_DELETED = "role.deleted"  # with the replacement and how many members moved to it
    # per-tenant SSO (saas.auth.sso)
    SSO_CONNECTION_CREATED = "sso.connection_created"
    SSO_CONNECTION_UPDATED = "sso.connection_updated"
    SSO_CONNECTION_DELETED = "sso.connection_deleted"
    SSO_LOGIN = "sso.login"  # a sign-in through the tenant's IdP (actor: the user)
    SSO_LOGIN_FAILED = "sso.login_failed"  # the IdP's answer was refused (reason in data)
    # SCIM 2.0 provisioning (saas.scim): tokens, settings, the directory's users and groups
    SCIM_TOKEN_CREATED = "scim.token_created"  # noqa: S105 - an action name
    SCIM_TOKEN_REVOKED = "scim.token_revoked"  # noqa: S105 - an action name
    SCIM_SETTINGS_UPDATED = "scim.settings_updated"
    SCIM_USER_CREATED = "scim.user_created"
    SCIM_USER_UPDATED = "scim.user_updated"
    SCIM_GROUP_CREATED = "scim.group_created"
    SCIM_GROUP_UPDATED = "scim.group_updated"
    SCIM_GROUP_DELETED = "scim.group_deleted"
    # API keys (saas.auth.api_keys)
    API_KEY_CREATED = "api_key.created"
    API_KEY_REVOKED = "api_key.revoked"
    # social login (saas.auth.social)
    SOCIAL_LINKED = "social.linked"  # an identity of a provider linked, after the account proved itself
    SOCIAL_UNLINKED = "social.unlinked"  # the owner removed a linked identity (step-up)
    SOCIAL_LINK_SENT = "social.link_sent"  # a mailed link to prove the account, for linking
    # impersonation for support (saas.auth.impersonation): the token issued, each request made with it
    IMPERSONATION_STARTED = "impersonation.started"
    IMPERSONATION_USED = "impersonation.used"
    # billing (saas.billing; Stripe events where the name says so)
    BILLING_CHECKOUT_STARTED = "billing.checkout_started"
    BILLING_PORTAL_OPENED = "billing.portal_opened"
    BILLING_CUSTOMER_CREATED = "billing.customer_created"
    BILLING_CUSTOMER_UPDATED = "billing.customer_updated"
    BILLING_CUSTOMER_DELETED = "billing.customer_deleted"
    BILLING_SUBSCRIPTION_CHANGED = "billing.subscription_changed"
    BILLING_TRIAL_WILL_END = "billing.trial_will_end"
    BILLING_INVOICE_PAID = "billing.invoice_paid"
    BILLING_PAYMENT_FAILED = "billing.payment_failed"
    BILLING_PAYMENT_ACTION_REQUIRED = "billing.payment_action_required"
    BILLING_SEATS_CHANGED = "billing.seats_changed"
    BILLING_SEATS_SYNCED = "billing.seats_synced"
    BILLING_PLAN_OVERRIDDEN = "billing.plan_overridden"
    # outgoing webhooks (saas.webhooks)
    WEBHOOK_ENDPOINT_CREATED = "webhook.endpoint_created"
    WEBHOOK_ENDPOINT_UPDATED = "webhook.endpoint_updated"
    WEBHOOK_ENDPOINT_DELETED = "webhook.endpoint_deleted"
    WEBHOOK_SECRET_ROTATED = "webhook.secret_rotated"  # noqa: S105 - an action name
    WEBHOOK_ENDPOINT_DISABLED = "webhook.endpoint_disabled"  # by the worker: 410, or days of failure
    WEBHOOK_MESSAGE_REPLAYED = "webhook.message_replayed"
    WEBHOOK_TEST_SENT = "webhook.test_sent"
    # the product (tenants/)
    CONTACT_CREATED = "contact.created"
    CONTACT_UPDATED = "contact.updated"
    CONTACT_DELETED = "contact.deleted"


class AuditEvent(TenantBase):
    """One audited action inside a tenant (table in each tenant schema)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_occurred_at", "occurred_at"),
        Index("ix_audit_events_actor_id", "actor_id"),
        Index("ix_audit_events_action", "action"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor_type: Mapped[str] = mapped_column(String(16))  # user | client | operator | system
    actor_id: Mapped[str | None] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str | None] = mapped_column(String(64))
    target_id: Mapped[str | None] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    request_id: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    def to_public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "occurred_at": self.occurred_at,
            "actor": {"type": self.actor_type, "id": self.actor_id},
            "action": self.action,
            "target": {"type": self.target_type, "id": self.target_id},
            "ip": self.ip,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "data": self.data or {},
        }


@dataclass(frozen=True)
class Actor:
    """Who acts: ``type`` is user | client | operator | system; ``id`` a user id, client id or
    operator name."""

    type: str
    id: str | None


#: nobody in particular: a job, a webhook, or attempts nobody has proved are the account's own
SYSTEM = Actor("system", None)


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """Where an action came from: the client's address (after the trusted proxies), its
    ``User-Agent`` (at most 512 characters) and the request id (``X-Request-ID``)."""

    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None

    @classmethod
    def current(cls) -> RequestMeta | None:
        """The current request's metadata, or None outside a request."""
        if not has_request_context():
            return None
        return cls(request.remote_addr, (request.user_agent.string or "")[:512] or None, g.get("request_id"))


_NO_REQUEST = RequestMeta()


def current_actor() -> Actor:
    """The actor of the current request (the authenticated principal), or ``system``."""
    principal = g.get("principal") if has_request_context() else None
    if principal is not None:
        if principal.user_id is not None:
            return Actor("user", str(principal.user_id))
        return Actor("client", principal.client_id)
    return SYSTEM


#: called with ``(session, tenant_id, schema, event)`` after each event is written in the same
#: transaction (``event``: the inserted values; ``tenant_id`` or ``schema`` None when the session
#: is bound to the tenant's schema); audit streaming (:mod:`saas.webhooks.events`) adds one with
#: :func:`add_listener`. A listener's error fails the change, as a failed insert would.
Listener = Callable[[Session, "uuid.UUID | None", "str | None", dict[str, Any]], None]
_listeners: list[Listener] = []


def add_listener(fn: Listener) -> None:
    """Call ``fn`` after every :func:`record` (once, however often it is added)."""
    if fn not in _listeners:
        _listeners.append(fn)


def record(
    session: Session,
    action: AuditAction | str,
    *,
    target_type: str | None = None,
    target_id: Any = None,
    data: dict[str, Any] | None = None,
    actor: Actor,
    tenant_id: uuid.UUID | None = None,
    schema: str | None = None,
    meta: RequestMeta | None = None,
) -> None:
    """Write one audit event in ``session``'s transaction.

    Args:
        action: an :class:`AuditAction` (its string value is accepted and checked).
        actor: who acted (required: a service takes it from its :class:`~saas.actions.ActionContext`,
            never from the request).
        tenant_id: the tenant whose log gets the event, when the session is not bound to its
            schema (signup, operator commands, webhooks): the schema name follows from the id
            (:func:`saas.db.schema_name_for`), so no tenant row is loaded.
        schema: the tenant schema's name instead of ``tenant_id``.
        meta: where the action came from; the current request's when omitted.
        data: JSON details. Never pass secrets.

    Raises:
        ValueError: ``action`` is not an :class:`AuditAction`.
    """
    action = AuditAction(action)
    if meta is None:
        meta = RequestMeta.current() or _NO_REQUEST
    if tenant_id is not None:
        schema = schema_name_for(tenant_id)
    ip, ua, rid = meta.ip, meta.user_agent, meta.request_id
    values = {
        "id": uuid.uuid4(),
        "occurred_at": utcnow(),
        "actor_type": actor.type,
        "actor_id": actor.id,
        "action": action,
        "target_type": target_type,
        "target_id": str(target_id) if target_id is not None else None,
        "ip": ip,
        "user_agent": ua,
        "request_id": rid,
        "data": data or {},
    }
    options = {"schema_translate_map": translate_map(schema)} if schema else {}
    session.execute(insert(AuditEvent.__table__).values(**values), execution_options=options)
    for listener in _listeners:
        listener(session, tenant_id, schema, values)
