"""The audit writer (design invariant 7): every change a person makes is recorded in the
tenant's own ``audit_events`` table: who (actor), what (action, target, data), when, from where
(IP, user agent, request id).

Every action is a member of :class:`AuditAction`, the one registry of what the log can say: a
tenant's admins filter and alert on these names (``GET /api/v1/audit-events?action=``,
``saas audit --action``), so each is declared once and :func:`record` refuses any other.

**Tamper evidence** (docs/audit.md): each tenant's events form a hash chain. An event's
``seq`` is its place in the chain (1, 2, ...), ``prev_hash`` the ``hash`` of the event before
it and ``hash`` the SHA-256 of its canonical form (:func:`event_hash`), which covers
``prev_hash``: editing, removing or reordering any event breaks every link after it. The
tenant's one ``audit_chain`` row holds the chain's head (last ``seq`` and ``hash``) and its
anchor (the last event pruned by retention, :mod:`saas.ops.audit_retention`), and appending
locks that row (``INSERT ... ON CONFLICT DO UPDATE``), so two transactions appending to one
tenant's chain at once are serialised and never fork it. :func:`verify_chain` checks it all.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from flask import g, has_request_context, request
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Index,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    cast,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
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
    # the audit log itself (saas.ops.audit_retention): events older than the plan's audit_log_days
    AUDIT_PRUNED = "audit.pruned"
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
    BILLING_CUSTOMER_TAX_IDS_CHANGED = "billing.customer_tax_ids_changed"
    BILLING_GRACE_ENDED = "billing.grace_ended"
    BILLING_USAGE_REPORTED = "billing.usage_reported"
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
        # the list's time filters and the export's keyset pages (occurred_at, seq)
        Index("ix_audit_events_occurred_at_seq", "occurred_at", "seq"),
        Index("ix_audit_events_actor_id", "actor_id"),
        Index("ix_audit_events_action", "action"),
        UniqueConstraint("seq"),  # the chain's order: verify and prune walk it
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
    #: the hash chain (docs/audit.md): place, the previous event's hash, this event's hash
    seq: Mapped[int] = mapped_column(BigInteger)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    #: 32 hex digits salting the digest of (ip, user_agent, data); NULL once those were redacted
    nonce: Mapped[str | None] = mapped_column(String(32))
    #: that digest, kept only once redacted (:func:`redact`): the chain still covers the event
    detail_digest: Mapped[str | None] = mapped_column(String(64))

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


class AuditChain(TenantBase):
    """The head and the anchor of the tenant's hash chain: one row (``id`` 1), locked by every
    append (:func:`append`) and by each prune batch.

    ``head_seq``/``head_hash``: the last event appended (0 and :data:`GENESIS` before any).
    ``anchor_seq``/``anchor_hash``: the last event pruned (0 and :data:`GENESIS` before any
    prune): the first event kept links to it, so pruning leaves the chain verifiable."""

    __tablename__ = "audit_chain"
    # not in tenant exports: an import chains the events it brings anew (saas.ops.export)
    __table_args__ = (CheckConstraint("id = 1", name="single_row"), {"info": {"export": False}})

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    head_seq: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    anchor_seq: Mapped[int] = mapped_column(BigInteger)
    anchor_hash: Mapped[str] = mapped_column(String(64))
    pruned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


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


def statements_per_record() -> int:
    """How many SQL statements one :func:`record` sends when no listener has work: the chain
    head's upsert, the insert with the head's move, and one read per listener (audit
    streaming's subscription lookup). Sign-in failures for unknown emails send as many no-op
    statements, so the answer's timing does not tell whether the account exists."""
    return 2 + len(_listeners)


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

    The event joins the tenant's hash chain (:func:`append`): the tenant's ``audit_chain`` row
    stays locked until the transaction ends, so the tenant's other audited writes wait for it.

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
    append(session, [values], options)
    for listener in _listeners:
        listener(session, tenant_id, schema, values)


# --- the hash chain ----------------------------------------------------------------------------

#: ``prev_hash`` of a chain's first event, and the anchor of a chain never pruned
GENESIS = "0" * 64
#: the first member of every hashed form: a later format gets another name
CHAIN_FORMAT = "saas.audit.v1"
#: the columns the chain adds to an event (an import re-chains, never takes them from a file)
CHAIN_COLUMNS = ("seq", "prev_hash", "hash", "nonce", "detail_digest")


def _canonical(items: list[Any]) -> bytes:
    """A JSON array, compact, UTF-8 (the values are strings, integers and NULLs only)."""
    return json.dumps(items, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds (PostgreSQL's ``timestamptz`` precision)."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def detail_digest(nonce: str, ip: str | None, user_agent: str | None, data_text: str) -> str:
    """SHA-256 (hex) of ``[nonce, ip, user_agent, data]``: the part of an event that
    :func:`redact` may erase. ``data_text`` is PostgreSQL's text form of the ``jsonb`` value
    (``data::text``, deterministic for a stored value); the random ``nonce`` makes the digest
    kept after a redaction impossible to test guesses of the erased values against."""
    return hashlib.sha256(_canonical([nonce, ip, user_agent, data_text])).hexdigest()


def event_hash(
    *,
    seq: int,
    prev_hash: str,
    id: uuid.UUID | str,
    occurred_at: datetime,
    actor_type: str,
    actor_id: str | None,
    action: str,
    target_type: str | None,
    target_id: str | None,
    request_id: str | None,
    detail: str,
) -> str:
    """SHA-256 (hex, 64 characters) of an event's canonical form: the JSON array
    ``[CHAIN_FORMAT, seq, prev_hash, id, occurred_at (RFC 3339, UTC, microseconds), actor_type,
    actor_id, action, target_type, target_id, request_id, detail]``, where ``detail`` is
    :func:`detail_digest` of the rest (FIPS 180-4 SHA-256)."""
    return hashlib.sha256(
        _canonical(
            [CHAIN_FORMAT, seq, prev_hash, str(id), _timestamp(occurred_at), actor_type, actor_id,
             str(action), target_type, target_id, request_id, detail]
        )
    ).hexdigest()  # fmt: skip


def _head_statement(n: int, datas: list[Any]) -> Any:
    """The statement of :func:`_lock_head` (a SELECT over a data-modifying CTE: never a plain
    read, so the request's lazy transaction begins before it, ``saas.db._plain_read``)."""
    chain = AuditChain.__table__
    upsert = pg_insert(chain).values(id=1, head_seq=n, head_hash=GENESIS, anchor_seq=0, anchor_hash=GENESIS)
    upsert = upsert.on_conflict_do_update(
        index_elements=[chain.c.id], set_={"head_seq": chain.c.head_seq + n}
    ).returning(chain.c.head_seq, chain.c.head_hash)
    head = upsert.cte("head")
    elements = (
        func.jsonb_array_elements(cast(bindparam("datas", json.dumps(datas), type_=Text), JSONB))
        .table_valued("value", with_ordinality="ord")
        .render_derived(name="e")
    )
    texts = select(func.array_agg(aggregate_order_by(cast(elements.c.value, Text), elements.c.ord)))
    return select(head.c.head_seq, head.c.head_hash, texts.scalar_subquery())


def _lock_head(
    session: Session, n: int, datas: list[Any], options: dict[str, Any]
) -> tuple[int, str, list[str]]:
    """Take ``n`` places in the chain: one statement that creates or locks the chain row and
    moves ``head_seq`` by ``n`` (the lock is held until the transaction ends), and returns the
    old head (the first new event's ``seq`` - 1 and ``prev_hash``) with the server's text form of
    each ``data`` (``jsonb`` parsed exactly as the insert will store it)."""
    row = session.execute(_head_statement(n, datas), execution_options=options).one()
    return row[0] - n, row[1], list(row[2] or [])


def append(session: Session, rows: list[dict[str, Any]], options: dict[str, Any] | None = None) -> None:
    """Append events (complete ``audit_events`` values but the chain's, in order) to the chain of
    the tenant the session or ``options`` (``schema_translate_map``) names. The first statement
    locks the tenant's chain row until the transaction ends (:func:`_lock_head`); then one
    statement inserts an event and moves ``head_hash`` (a batch: one executemany INSERT, then
    the head's move). ``rows`` values: ``id``, ``occurred_at`` (aware), ``actor_type``,
    ``actor_id``, ``action``, ``target_type``, ``target_id``, ``ip``, ``user_agent``,
    ``request_id``, ``data`` (a JSON object)."""
    if not rows:
        return
    options = options or {}
    seq, prev, texts = _lock_head(session, len(rows), [r["data"] for r in rows], options)
    chained = []
    for values, data_text in zip(rows, texts, strict=True):
        seq += 1
        nonce = secrets.token_hex(16)
        detail = detail_digest(nonce, values["ip"], values["user_agent"], data_text)
        digest = event_hash(seq=seq, prev_hash=prev, detail=detail, **{k: values[k] for k in _HASHED})
        chained.append({**values, "seq": seq, "prev_hash": prev, "hash": digest, "nonce": nonce,
                        "detail_digest": None})  # fmt: skip
        prev = digest
    chain = AuditChain.__table__
    table = AuditEvent.__table__
    move_head = update(chain).where(chain.c.id == 1).values(head_hash=prev)
    if len(chained) == 1:  # record(): the insert and the head's move in one statement
        inserted = insert(table).values(chained[0]).returning(table.c.id).cte("appended")
        session.execute(move_head.add_cte(inserted), execution_options=options)
    else:  # a batch (an import): executemany, sent as multi-row INSERTs by SQLAlchemy (insertmanyvalues)
        session.execute(insert(table), chained, execution_options=options)
        session.execute(move_head, execution_options=options)


#: the columns an event's hash names directly (the others through its detail digest)
_HASHED = ("id", "occurred_at", "actor_type", "actor_id", "action", "target_type", "target_id", "request_id")


def redact(
    session: Session, where: Any, values: dict[str, Any], options: dict[str, Any] | None = None
) -> int:
    """Erase personal data from the events matching ``where`` (a condition on the
    ``audit_events`` table) by setting ``values`` (``ip``, ``user_agent``, ``data``: the detail
    part, nothing the hash names directly) without breaking the chain: each row keeps the
    digest of its detail as it was (:func:`detail_digest`) and loses its nonce, so the chain
    still verifies while the erased values cannot be recovered from it (GDPR Art. 17).
    A redacted event's ``ip``, ``user_agent`` and ``data`` are no longer covered by the chain;
    everything else is. Returns the number of rows changed.

    Raises:
        ValueError: ``values`` names a column the hash covers directly.
    """
    if not set(values) <= {"ip", "user_agent", "data"}:
        raise ValueError(f"only ip, user_agent and data can be redacted, not {sorted(values)}")
    options = options or {}
    table = AuditEvent.__table__
    rows = session.execute(
        select(table.c.id, table.c.nonce, table.c.ip, table.c.user_agent, cast(table.c.data, Text))
        .where(where).with_for_update(),
        execution_options=options,
    ).all()  # fmt: skip
    for row_id, nonce, ip, user_agent, data_text in rows:
        changes: dict[str, Any] = dict(values)
        if nonce is not None:  # first redaction: keep the digest of the values as they were
            changes |= {"nonce": None, "detail_digest": detail_digest(nonce, ip, user_agent, data_text)}
        session.execute(
            update(table).where(table.c.id == row_id).values(**changes), execution_options=options
        )
    return len(rows)


@dataclass
class ChainReport:
    """What :func:`verify_chain` found. ``ok`` when every event kept links to the one before it
    (the first to the anchor) and the last one is the chain's head; else ``broken_seq``,
    ``broken_id`` and ``reason`` name the first broken link."""

    checked: int = 0
    redacted: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    anchor_seq: int = 0
    anchor_hash: str = GENESIS
    broken_seq: int | None = None
    broken_id: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **{k: v for k, v in self.__dict__.items()}}


def _chain_rows(session: Session, after: int, batch_size: int, options: dict[str, Any]) -> Iterator[Any]:
    """The events after ``seq`` ``after`` in chain order, read ``batch_size`` at a time (keyset
    pages on the ``seq`` index: memory stays bounded whatever the log's size)."""
    table = AuditEvent.__table__
    columns = [table.c[name] for name in ("seq", "prev_hash", "hash", "nonce", "detail_digest", "ip",
                                          "user_agent", *_HASHED)]  # fmt: skip
    while True:
        batch = session.execute(
            select(*columns, cast(table.c.data, Text).label("data_text"))
            .where(table.c.seq > after).order_by(table.c.seq).limit(batch_size),
            execution_options=options,
        ).all()  # fmt: skip
        yield from batch
        if len(batch) < batch_size:
            return
        after = batch[-1].seq


def verify_chain(
    session: Session, *, batch_size: int = 1000, options: dict[str, Any] | None = None
) -> ChainReport:
    """Check the hash chain of the tenant the session (or ``options``) names, from its anchor
    to its head, and name the first broken link. Run it in one snapshot (REPEATABLE READ) so
    appends made meanwhile do not count.

    A link is broken when an event's ``seq`` is not the next one (an event was removed), its
    ``prev_hash`` is not the hash of the event before it (or the anchor), its recomputed hash
    differs (it was edited), or a redacted event lost its digest; the chain also breaks when
    the last event is not the chain row's head (events removed at the end) or events exist
    without a chain row."""
    options = options or {}
    chain = session.execute(select(AuditChain.__table__), execution_options=options).mappings().first()
    report = ChainReport()
    if chain is not None:
        report.head_seq, report.head_hash = chain["head_seq"], chain["head_hash"]
        report.anchor_seq, report.anchor_hash = chain["anchor_seq"], chain["anchor_hash"]
    expected_seq, expected_prev = report.anchor_seq + 1, report.anchor_hash

    def broken(seq: int | None, event_id: Any, reason: str) -> ChainReport:
        report.broken_seq, report.broken_id, report.reason = seq, str(event_id) if event_id else None, reason
        return report

    for row in _chain_rows(session, report.anchor_seq, batch_size, options):
        if chain is None:
            return broken(row.seq, row.id, "events without a chain head (the audit_chain row is gone)")
        if row.seq != expected_seq:
            return broken(
                row.seq, row.id, f"event {expected_seq} is missing (the next one kept is {row.seq})"
            )
        if row.prev_hash != expected_prev:
            return broken(row.seq, row.id, "prev_hash is not the hash of the event before it")
        if row.nonce is not None:
            detail = detail_digest(row.nonce, row.ip, row.user_agent, row.data_text)
        elif row.detail_digest is not None:
            detail = row.detail_digest
            report.redacted += 1
        else:
            return broken(row.seq, row.id, "neither a nonce nor a redacted digest")
        digest = event_hash(seq=row.seq, prev_hash=row.prev_hash, detail=detail,
                            **{k: getattr(row, k) for k in _HASHED})  # fmt: skip
        if digest != row.hash:
            return broken(row.seq, row.id, "the event's content does not match its hash (edited)")
        report.checked += 1
        expected_seq, expected_prev = row.seq + 1, row.hash
    last = expected_seq - 1
    if chain is not None and last != report.head_seq:
        return broken(
            last + 1, None, f"the chain's head is event {report.head_seq} but the last event kept is {last}"
        )
    if chain is not None and expected_prev != report.head_hash:
        return broken(last, None, "the chain row's head hash is not the last event's hash")
    return report


def chained_history(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` of another chain (an import) without their chain columns, for :func:`append`."""
    return [{k: v for k, v in r.items() if k not in CHAIN_COLUMNS} for r in rows]
