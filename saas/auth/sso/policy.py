"""``require_sso``: a tenant's users sign in through its identity provider only.

Which tenant applies: the one that verified the domain of the user's address (a domain belongs
to at most one tenant, :mod:`saas.tenancy.domains`), whichever tenant the sign-in is for. A
password or a passkey proves the account, and the account of ``ann@corp.example`` is the domain
owner's to govern: a member of ``corp.example``'s tenant who also belongs to another tenant cannot
step around the rule by signing in "for" the other one. The rule applies when that tenant has
``settings.require_sso`` and an enabled connection for the domain (home realm discovery has
somewhere to send the user); otherwise there is no SSO to go to and passwords keep working.

Break-glass owners: ``settings.sso_break_glass`` lists user ids or addresses; a listed user who
is an active owner of the tenant at the time of the sign-in keeps password and passkey sign-in
(for when the IdP is down or misconfigured). Being listed without being an owner gives nothing.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from saas.auth import browser_sessions
from saas.auth.models import BrowserSession, RefreshToken
from saas.auth.sessions import revoke_tokens
from saas.auth.sso.connections import connection_for_email, live_domains
from saas.errors import ErrorCode, Forbidden
from saas.identity.models import Membership, SsoConnection, Tenant, User


class SsoRequired(Forbidden):
    """403 ``sso_required``: the user's organisation signs its users in through its IdP."""

    code, title = ErrorCode.SSO_REQUIRED, "Single sign-on required"


def is_break_glass(session: Session, tenant: Tenant, user: User) -> bool:
    """Whether ``user`` is one of ``tenant``'s break-glass owners (listed by id or address, and
    an active owner now)."""
    listed = {str(e).strip().lower() for e in (tenant.settings or {}).get("sso_break_glass") or []}
    if str(user.id) not in listed and user.email.strip().lower() not in listed:
        return False
    role = session.scalar(
        select(Membership.role).where(
            Membership.tenant_id == tenant.id, Membership.user_id == user.id, Membership.status == "active"
        )
    )
    return role == "owner"


def sso_connection_required(session: Session, user: User) -> SsoConnection | None:
    """The connection ``user`` must sign in through (their address's domain belongs to a tenant
    with ``require_sso`` and an enabled connection for it, and they are not a break-glass owner),
    else None."""
    connection = connection_for_email(session, user.email)
    if connection is None:
        return None
    tenant = session.get(Tenant, connection.tenant_id)
    if tenant is None or not (tenant.settings or {}).get("require_sso"):
        return None
    if is_break_glass(session, tenant, user):
        return None
    return connection


def check_sso_not_required(session: Session, user: User) -> None:
    """Refuse a password or passkey sign-in that ``require_sso`` forbids.

    Raises:
        SsoRequired: 403 ``sso_required``.
    """
    if sso_connection_required(session, user) is not None:
        raise SsoRequired(
            "Your organisation requires single sign-on: sign in through its identity provider "
            "(enter your email on the sign-in page and continue without a password)."
        )


def end_sessions_without_sso(session: Session, tenant: Tenant, reason: str = "sso_required") -> int:
    """End the sessions that ``require_sso``, just turned on, would not have let start: of every
    user whose address is on one of the tenant's enabled connections' (live) domains, except
    its break-glass owners, each refresh-token family and hosted sign-in whose ``amr`` has no
    ``sso`` (a password or a passkey), in every tenant (the domain's tenant governs the account:
    see the module's doc), with their access tokens. Sessions from SSO go on. Returns how many
    refresh tokens were revoked.
    """
    domains: set[str] = set()
    for connection in session.scalars(
        select(SsoConnection).where(SsoConnection.tenant_id == tenant.id, SsoConnection.enabled.is_(True))
    ):
        domains |= live_domains(session, connection)
    if not domains:
        return 0
    users = [
        user
        for user in session.scalars(
            select(User).where(func.lower(func.split_part(User.email, "@", 2)).in_(sorted(domains)))
        )
        if not is_break_glass(session, tenant, user)
    ]
    if not users:
        return 0
    ids = [user.id for user in users]
    families = {
        family
        for family, amr in session.execute(
            select(RefreshToken.family_id, RefreshToken.amr).where(
                RefreshToken.user_id.in_(ids), RefreshToken.revoked_at.is_(None)
            )
        )
        if "sso" not in (amr or ())
    }
    revoked = revoke_tokens(session, RefreshToken.family_id.in_(families), reason=reason) if families else 0
    for row in session.scalars(
        select(BrowserSession).where(BrowserSession.user_id.in_(ids), BrowserSession.ended_at.is_(None))
    ):
        if "sso" not in (row.amr or ()):
            browser_sessions.end(session, row, reason)
    session.flush()
    return revoked
