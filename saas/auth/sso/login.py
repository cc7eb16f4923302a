"""Starting and completing an SSO sign-in: the part both protocols share.

:func:`start_login` opens a :class:`~saas.auth.sso.protocol.LoginTransaction` and hands the
browser to the connection's protocol (``begin``). The protocol's callback route verifies the IdP's
answer and calls :func:`complete_login` with the transaction and the :class:`SsoIdentity`; that
one function decides who signs in:

1. The connection must still exist and be enabled, its tenant active.
2. A returning user is found by ``ExternalIdentity(provider="sso:<connection id>", subject)``.
3. Otherwise the address decides, and only on the connection's domains that are still verified
   domains of its tenant: there the IdP is authoritative for the address (the tenant proved it
   controls the domain), so an existing account with that address is linked and the address
   counts as verified. An address outside them is refused (``sso.login_failed``,
   ``email_outside_verified_domains``): it never links to an existing account, and no account is
   created for it either, since a later owner of that address would find an account the IdP can
   enter.
4. Just-in-time membership through the directory (:mod:`saas.auth.sso.directory`, i.e.
   :func:`saas.tenancy.members.provision_member`: seats, billing, audit) with the connection's
   ``default_role``; a member a directory suspended stays out.
5. ``role_mapping`` on every sign-in (:func:`mapped_role`): when the mapping is not empty, the
   IdP decides the role: the most powerful role among the user's matching groups, else
   ``default_role`` (through ``set_directory_role``: the tenant's last owner is never demoted).
6. Audit ``sso.login`` (actor: the user) in the tenant, and hand the browser to the hosted pages.

The hand-off: the hosted pages' session cookie has path ``/oauth`` (``saas.auth.hosted``), so the
callback at ``/sso/...`` cannot read or set it. :func:`complete_login` stores a single-use
ticket in Redis (``TICKET_TTL`` seconds) and redirects to ``/oauth/sso/complete?ticket=...``,
which signs the browser in (a browser session with ``amr`` including ``sso``; its refresh
families are ordinary ones, so revocation, back-channel logout and audit apply) and continues
the pending authorization. The ticket is bound to the browser that started the sign-in (a random
value in its ``saas_sso`` cookie, kept in the transaction), so a ticket, or an IdP response,
carried to another browser signs nobody in there (login CSRF).

Failures end on a hosted error page (HTML, never a 500) and, when the tenant is known, an
``sso.login_failed`` event committed although the answer fails (:func:`login_failed`).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from flask import Response, has_request_context, redirect, request, url_for
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from saas import db
from saas.actions import ActionContext
from saas.audit import SYSTEM, Actor, AuditAction
from saas.auth import pages
from saas.auth.sso.connections import email_domain, live_domains
from saas.auth.sso.directory import directory
from saas.auth.sso.protocol import (
    TRANSACTION_TTL,
    LoginTransaction,
    SsoIdentity,
    new_transaction,
    protocol_for,
    save_transaction,
)
from saas.cache.guard import RedisUnavailable
from saas.db import EarlyCommit, commit_early, utcnow
from saas.errors import AppError, Conflict
from saas.identity.models import ExternalIdentity, SsoConnection, Tenant, User
from saas.security import random_token, same_string
from saas.services import services

log = logging.getLogger(__name__)

#: seconds between the callback and the hosted pages' hand-off
TICKET_TTL = 60
#: the cookie binding a browser to the SSO sign-ins it started (read by ``/oauth/sso/complete``)
BINDING_COOKIE = "saas_sso"
def record_login_failure(
    tenant_id: uuid.UUID, connection_id: uuid.UUID | None, reason: str, data: dict[str, Any] | None = None
) -> None:
    """Record ``sso.login_failed`` (``reason``, the connection, ``data``) in the tenant's log:
    whatever the request wrote is rolled back first, and the event is committed at once
    (:class:`saas.db.EarlyCommit` ``SSO_LOGIN_FAILED``) although the answer is an error page.
    Every refusal of an IdP's answer goes through here (OIDC and SAML)."""
    log.info("sso login failed: %s (connection %s)", reason, connection_id)
    sess = db.session()
    sess.rollback()
    ActionContext.from_request(sess).as_actor(SYSTEM).record(
        AuditAction.SSO_LOGIN_FAILED,
        tenant_id=tenant_id,
        target_type="sso_connection",
        target_id=connection_id,
        data={"reason": reason, **(data or {})},
    )
    commit_early(sess, EarlyCommit.SSO_LOGIN_FAILED)


def login_failed(
    tenant_id: uuid.UUID | None,
    connection_id: uuid.UUID | None,
    reason: str,
    detail: str,
    *,
    status: int = 400,
    data: dict[str, Any] | None = None,
) -> Response:
    """End an SSO sign-in on an error page, recorded by :func:`record_login_failure` when the
    tenant is known."""
    if tenant_id is not None:
        record_login_failure(tenant_id, connection_id, reason, data)
    return pages.error_page("Single sign-on failed", detail, status)


# --- start ---------------------------------------------------------------------------------------


def start_login(connection: SsoConnection, next_url: str, login_hint: str | None = None) -> Response:
    """Send the browser to ``connection``'s IdP: a new transaction bound to this browser, the
    protocol's ``begin`` (which may add its data, a nonce or a request id, to
    ``transaction.data``; the key ``binding`` is this module's), then the transaction saved for
    ``TRANSACTION_TTL`` seconds. Callable from any route (the hosted login page, a protocol's own
    SP-initiated link): the binding is its own cookie (``BINDING_COOKIE``, path ``/oauth``,
    ``HttpOnly``, ``SameSite=Lax``), never the hosted session, which only ``/oauth`` routes may
    write.

    Args:
        next_url: a path of this service to go to once signed in when no authorization is
            pending in the hosted session.
        login_hint: the address the user typed (passed to the IdP when the protocol can).

    Raises:
        KeyError: the connection's protocol is not loaded.
        saas.cache.guard.RedisUnavailable: the transaction cannot be stored.
    """
    transaction = new_transaction(connection, next_url, login_hint)
    binding = request.cookies.get(BINDING_COOKIE, "") if has_request_context() else ""
    if not (16 <= len(binding) <= 64):
        binding = random_token(16)
    transaction.data["binding"] = binding
    response = protocol_for(connection.type).begin(connection, transaction)
    save_transaction(transaction)
    response.set_cookie(
        BINDING_COOKIE,
        binding,
        max_age=TRANSACTION_TTL + TICKET_TTL,
        path="/oauth",
        secure=services().settings.issuer.startswith("https://"),
        httponly=True,
        samesite="Lax",
    )
    return response


# --- complete ------------------------------------------------------------------------------------


def mapped_role(connection: SsoConnection, identity: SsoIdentity) -> str | None:
    """The role ``role_mapping`` gives ``identity``: of the entries matching one of its groups
    (a key ``"group"``) or attribute values (a key ``"attribute=value"``), the most powerful role
    (the directory's ``most_powerful_role``: the most permissions, then the built-in order); with no
    match, ``default_role``; None when the mapping is empty (roles are then managed in the API)."""
    mapping = connection.role_mapping or {}
    if not mapping:
        return None
    groups = set(identity.groups)
    matched = []
    for key, role in mapping.items():
        attribute, eq, value = key.partition("=")
        if key in groups or (eq and value in (identity.attributes.get(attribute) or ())):
            matched.append(role)
    if not matched:
        return connection.default_role
    return directory().most_powerful_role(db.session(), connection.tenant_id, matched)


def _find_user(sess, email: str) -> User | None:
    return sess.scalars(select(User).where(func.lower(User.email) == email.strip().lower())).first()


@dataclass(frozen=True)
class Ticket:
    """What ``/oauth/sso/complete`` signs in (see the module's doc)."""

    user_id: uuid.UUID
    tenant_id: uuid.UUID
    auth_time: int
    amr: list[str]
    next_url: str


def _ticket_key(ticket: str) -> str:
    return "sso:ticket:" + ticket


def complete_login(transaction: LoginTransaction, identity: SsoIdentity) -> Response:
    """Sign in who the IdP says ``identity`` is, for ``transaction``'s connection (the steps in
    the module's doc). Called by each protocol's callback once it verified the IdP's answer.

    Returns the redirect to ``/oauth/sso/complete`` (the hosted pages' hand-off), or an error
    page: the connection disabled or gone, the tenant suspended, the address outside the verified
    domains, the account locked, the membership suspended by a directory, no seat left.
    """
    sess = db.session()
    connection = sess.get(SsoConnection, transaction.connection_id)
    tenant_id = transaction.tenant_id
    if connection is None or connection.tenant_id != tenant_id or not connection.enabled:
        return login_failed(
            tenant_id if connection is not None else None,
            transaction.connection_id,
            "connection_disabled",
            "This organisation's single sign-on is switched off. Ask its administrator.",
            status=403,
        )
    tenant = sess.get(Tenant, tenant_id)
    if tenant is None or tenant.status != "active" or tenant.deleted_at is not None:
        return login_failed(
            tenant_id, connection.id, "tenant_suspended", "This organisation is suspended.", status=403
        )
    provider = f"sso:{connection.id}"
    subject = (identity.subject or "")[:512]
    email = (identity.email or "").strip()
    if not subject:
        return login_failed(tenant_id, connection.id, "no_subject", "The identity provider named nobody.")
    if len(email) > 320 or "\x00" in email or "\x00" in subject:
        return login_failed(
            tenant_id, connection.id, "bad_email", "The identity provider's address is not usable."
        )
    domains = live_domains(sess, connection)
    link = sess.scalars(
        select(ExternalIdentity).where(
            ExternalIdentity.provider == provider, ExternalIdentity.subject == subject
        )
    ).first()
    if link is not None:
        user = sess.get(User, link.user_id)
    else:
        if not email or email_domain(email) not in domains:
            return login_failed(
                tenant_id,
                connection.id,
                "email_outside_verified_domains",
                "The identity provider's address for you is not on one of this organisation's "
                "verified domains, so it cannot sign you in here.",
                status=403,
                data={"email_domain": email_domain(email)},
            )
        user = _find_user(sess, email)
    if user is not None and user.status != "active":
        return login_failed(
            tenant_id,
            connection.id,
            "account_locked",
            "This account is locked.",
            status=403,
            data={"user_id": str(user.id)},
        )
    address = user.email if user is not None else email
    source = provider
    ctx = ActionContext.from_request(sess).as_actor(SYSTEM if user is None else Actor("user", str(user.id)))
    try:
        provisioned = directory().provision_member(
            ctx,
            tenant,
            email=address,
            name=(identity.name or "")[:200].replace("\x00", "") or None,
            role=connection.default_role,
            source=source,
            email_verified=email_domain(address) in domains,
        )
    except AppError as err:
        return login_failed(
            tenant_id,
            connection.id,
            str(err.code),
            err.detail or err.title,
            status=403,
            data={"user_id": str(user.id)} if user is not None else None,
        )
    user = provisioned.user
    ctx = ctx.as_actor(Actor("user", str(user.id)))
    now = utcnow()
    if link is None:
        link = ExternalIdentity(
            user_id=user.id, provider=provider, subject=subject, connection_id=connection.id, email=email
        )
        sess.add(link)
    link.email = email or link.email
    link.last_login_at = now
    user.last_login_at = now
    try:
        sess.flush()
    except IntegrityError:  # the same IdP user's first sign-in, twice at once: one links
        return login_failed(
            tenant_id,
            connection.id,
            "concurrent_sign_in",
            "Another sign-in of yours just finished: sign in again.",
        )
    role = mapped_role(connection, identity)
    role_changed = False
    if role is not None:
        try:
            role_changed = directory().set_directory_role(ctx, provisioned.membership, role, source=source)
        except Conflict:  # the last owner keeps the role
            log.info("sso role_mapping left the last owner of %s as owner", tenant_id)
        except AppError as err:  # a mapped role deleted since (custom roles)
            log.warning("sso role_mapping role %r refused: %s", role, err.detail)
    amr = list(dict.fromkeys([*[a[:32] for a in identity.amr if isinstance(a, str)][:8], "sso"]))
    sess.flush()
    ctx.record(
        AuditAction.SSO_LOGIN,
        tenant_id=tenant_id,
        target_type="user",
        target_id=user.id,
        data={
            "connection_id": str(connection.id),
            "type": connection.type,
            "new_account": provisioned.created_user,
            "new_member": provisioned.took_seat,
            "role": provisioned.membership.role,
            "role_changed": role_changed,
            "amr": amr,
        },
    )
    ticket = random_token(32)
    payload = {
        "uid": str(user.id),
        "tid": str(tenant_id),
        "auth_time": int(now.timestamp()),
        "amr": amr,
        "next_url": transaction.next_url,
        "binding": transaction.data.get("binding"),
    }
    try:
        key = _ticket_key(ticket)
        services().redis_guard.call("sso", lambda r: r.set(key, json.dumps(payload), ex=TICKET_TTL), key=key)
    except RedisUnavailable:
        return login_failed(
            tenant_id,
            connection.id,
            "redis_unavailable",
            "Sign-in is unavailable right now. Try again shortly.",
            status=503,
        )
    return redirect(url_for("hosted.sso_complete", ticket=ticket))


def take_ticket(ticket: str | None, binding: str | None) -> Ticket | None:
    """The ticket's sign-in, removed in the same command (single use), when ``binding`` (the
    browser's ``BINDING_COOKIE``) is the one the sign-in started with; None otherwise."""
    if not ticket or len(ticket) > 128:
        return None
    key = _ticket_key(ticket)
    raw = services().redis_guard.call("sso", lambda r: r.getdel(key), key=key)
    if raw is None:
        return None
    data = json.loads(raw)
    expected = data.get("binding")
    if not expected or not binding or not same_string(expected, binding):
        return None
    next_url = data.get("next_url") or "/oauth/login"
    if not next_url.startswith("/") or next_url.startswith("//"):
        next_url = "/oauth/login"
    return Ticket(
        uuid.UUID(data["uid"]), uuid.UUID(data["tid"]), int(data["auth_time"]), list(data["amr"]), next_url
    )
