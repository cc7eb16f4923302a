"""Who is calling: authenticate the bearer token (no database), then resolve the membership.

Tenant context comes only from a verified credential (invariant 1): the access token's ``tid``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import g, request
from sqlalchemy import select

from saas import db
from saas.api import document_auth
from saas.auth import api_keys, revocation
from saas.auth.tokens import satisfies_mfa
from saas.errors import ErrorCode, Forbidden, Unauthorized
from saas.identity.models import Membership, Tenant, User
from saas.rbac import permissions_for
from saas.services import services

F = TypeVar("F", bound=Callable[..., Any])


class Principal:
    """The authenticated caller of this request.

    ``tenant`` and ``membership`` are ORM objects loaded lazily from the request's session the
    first time a view reads them: the hot path (permission checks) runs on the cached snapshot
    (``tenant_snapshot``, ``roles``, ``permissions``) and issues no SQL.

    ``act`` is the operator acting as the user (the ``sub`` of the token's RFC 8693 section 4.1
    ``act`` claim: ``saas users impersonate``), None for everyone else (a class default, so an
    ordinary token's principal pays nothing for it).

    ``api_key_id``: the API key of the request (``Authorization: Bearer saas_pat_...``); its
    permissions are those of the key intersected with its creator's current role.
    """

    act: str | None = None
    #: the API key the request authenticated with (:mod:`saas.auth.api_keys`); None otherwise.
    #: Then ``user_id`` is the key's creator and ``scope`` its permissions.
    api_key_id: uuid.UUID | None = None

    def __init__(
        self,
        user_id: uuid.UUID | None,
        tenant_id: uuid.UUID,
        client_id: str | None,
        scope: frozenset[str],
        claims: dict[str, Any],
        roles: tuple[str, ...] = (),
        permissions: frozenset[str] = frozenset(),
        tenant: Tenant | None = None,
        membership: Membership | None = None,
    ) -> None:
        self.user_id = user_id
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.scope = scope
        self.claims = claims
        self.roles = roles
        self.permissions = permissions
        self._tenant = tenant
        self._membership = membership
        self.tenant_snapshot: Any = None
        self.entitlements: dict[str, Any] = {}
        self.resolved = tenant is not None

    def __repr__(self) -> str:
        return (
            f"Principal(user_id={self.user_id!r}, tenant_id={self.tenant_id!r}, "
            f"client_id={self.client_id!r}, roles={self.roles!r})"
        )

    @property
    def role(self) -> str | None:
        return self.roles[0] if self.roles else None

    @property
    def tenant(self) -> Tenant | None:
        """The caller's tenant (ORM object of the request's session; loaded on first use)."""
        if self._tenant is None and self.resolved:
            self._tenant = db.session().get(Tenant, self.tenant_id)
        return self._tenant

    @tenant.setter
    def tenant(self, value: Tenant | None) -> None:
        self._tenant = value

    @property
    def membership(self) -> Membership | None:
        """The caller's active membership (ORM object; loaded on first use), None for clients."""
        if self._membership is None and self.resolved and self.user_id is not None:
            self._membership = (
                db.session()
                .scalars(
                    select(Membership).where(
                        Membership.user_id == self.user_id,
                        Membership.tenant_id == self.tenant_id,
                        Membership.status == "active",
                    )
                )
                .first()
            )
        return self._membership

    @membership.setter
    def membership(self, value: Membership | None) -> None:
        self._membership = value


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Use 'Authorization: Bearer <access token>'.", error="invalid_request")
    return token.strip()


def authenticate_request() -> None:
    """``before_request`` hook: verify a bearer token if present and bind the tenant schema.

    A bad token is not answered here: the error waits on ``g`` until
    :func:`reject_bad_credentials` (after the rate limiter), so forged tokens are counted
    against the caller's IP like any unauthenticated request.
    """
    if not request.path.startswith("/api/"):
        return  # health, docs and OAuth endpoints authenticate (or not) on their own
    try:
        _authenticate()
    except Unauthorized as err:
        g.principal = None
        g.auth_error = err


def reject_bad_credentials() -> None:
    """``before_request`` hook, after the limiter: answer the 401 of a bad bearer token.

    Raises:
        Unauthorized: the token was present but invalid (RFC 6750 ``invalid_token``).
    """
    err = g.pop("auth_error", None)
    if err is not None:
        raise err


def _authenticate() -> None:
    token = _bearer_token()
    if token is None:
        return
    if api_keys.looks_like_key(token):
        _authenticate_api_key(token)
        return
    claims = services().tokens.verify(token)
    try:
        tenant_id = uuid.UUID(str(claims["tid"]))
        user_id = uuid.UUID(str(claims["sub"])) if claims.get("client_id") != claims.get("sub") else None
    except ValueError:
        raise Unauthorized("The access token's subject or tenant is malformed.") from None
    principal = Principal(
        user_id=user_id,
        tenant_id=tenant_id,
        client_id=claims.get("client_id"),
        scope=frozenset(str(claims.get("scope", "")).split()),
        claims=claims,
    )
    act = claims.get("act")
    if act is not None:  # an operator acting as the user: audited, restricted (impersonation.py)
        from saas.auth import impersonation

        impersonation.bind(principal, act)
    g.principal = principal
    db.set_tenant_schema(db.schema_name_for(tenant_id))


def _authenticate_api_key(token: str) -> None:
    """An API key (``saas_pat_...``): its checksum, then one cached lookup
    (:func:`saas.auth.api_keys.authenticate`); the principal is its creator, with the key's
    permissions as its scope (:func:`current_principal` intersects them with the creator's role).

    Raises:
        Unauthorized: 401 ``invalid_token``: malformed, unknown, revoked or expired.
    """
    tenant_id, key_hash = api_keys.parsed(token)  # no lookup for garbage
    # the lookup runs in the request's session, so the schema is bound first: to the tenant the
    # key names, which a key of another tenant cannot name (the hash covers it: unknown, 401)
    db.set_tenant_schema(db.schema_name_for(tenant_id))
    key = api_keys.authenticate(tenant_id, key_hash)
    principal = Principal(
        user_id=key.created_by,
        tenant_id=tenant_id,
        client_id=None,
        scope=key.permissions,
        claims={"sub": str(key.created_by), "tid": str(tenant_id), "api_key": str(key.id)},
    )
    principal.api_key_id = key.id
    g.principal = principal


def authenticate_bearer() -> Principal:
    """Authenticate the request's bearer token where :func:`authenticate_request` does not run
    (outside ``/api/``, e.g. OIDC UserInfo), and resolve it with every check of
    :func:`current_principal`: the token's signature and claims, then the tenant (gone or
    suspended), the membership (gone) and the account (locked).

    Raises:
        Unauthorized: no token, or one that is invalid (RFC 6750 ``invalid_token``) or no longer
            backed by an active membership of an active account.
        Forbidden: the tenant is suspended (``tenant_suspended``).
    """
    if g.get("principal") is None:
        _authenticate()
    return current_principal()


def current_principal() -> Principal:
    """The caller, with its tenant status, role and permissions resolved once per request.

    Served from the cache (:func:`saas.auth.principals.snapshot_for`): on a hit no SQL runs; on a miss one
    query loads tenant and membership.

    The token's session and client must not be revoked (:func:`saas.auth.revocation.check`,
    read in the limiter's Redis call or with one ``EXISTS``), and a person's token must show a
    second factor (:func:`saas.auth.tokens.satisfies_mfa` of its ``amr``) when the tenant
    requires MFA.

    Raises:
        Unauthorized: no bearer token; the membership or the client is gone (token outlived
            it); the session was revoked (``session_revoked``); the tenant requires MFA and
            the token has no second factor (``mfa_required``); an impersonation token of a
            tenant that has since set ``allow_impersonation: false`` (``impersonation_disabled``).
        Forbidden: the tenant is suspended (``tenant_suspended``).
        ServiceUnavailable: a non-safe method while the revocation state cannot be read.
    """
    from saas.auth.principals import snapshot_for

    principal: Principal | None = g.get("principal")
    if principal is None:
        raise Unauthorized("This endpoint needs an access token.", error=None)
    if principal.resolved:
        return principal
    revocation.check(principal)
    snap = snapshot_for(principal.tenant_id, principal.user_id, principal.client_id)
    if snap.tenant is None:
        raise Unauthorized("The access token's tenant no longer exists.")
    if snap.role is None:
        if principal.user_id is not None:
            raise Unauthorized("The access token's membership no longer exists.")
        raise Unauthorized("The access token's client no longer exists.")
    principal.roles = (snap.role,)  # from the database, never from the token
    amr = principal.claims.get("amr") or ()
    if principal.act is not None and not snap.tenant.allow_impersonation:
        raise Unauthorized(
            "This organisation no longer allows impersonation.", code=ErrorCode.IMPERSONATION_DISABLED
        )
    if (
        principal.user_id is not None
        and snap.tenant.require_mfa
        and not satisfies_mfa(amr)
        and principal.act is None  # the operator is not the user: the tenant decides by allow_impersonation
        and principal.api_key_id is None  # created under a step-up, so with MFA where the tenant requires it
    ):
        raise Unauthorized(
            "This organisation requires a second factor: sign in again with MFA.",
            code=ErrorCode.MFA_REQUIRED,
            error="insufficient_user_authentication",
        )
    if snap.tenant.status != "active":
        raise Forbidden(
            "This tenant is suspended.", code=ErrorCode.TENANT_SUSPENDED, title="Tenant suspended"
        )
    principal.tenant_snapshot = snap.tenant
    principal.entitlements = snap.entitlements
    # a custom role's permissions come with the snapshot (saas.tenancy.roles); built-in: the table
    granted = snap.role_permissions if snap.role_permissions is not None else permissions_for(principal.roles)
    if "api" not in principal.scope:  # an API key's scope is its permissions: never more than the role's
        granted = granted & principal.scope
    principal.permissions = granted
    principal.resolved = True
    if principal.api_key_id is not None:
        api_keys.touch(principal.tenant_id, principal.api_key_id)
    return principal


def require(permission: str) -> Callable[[F], F]:
    """Decorator: the view needs an authenticated caller holding ``permission``.

    Raises 401 (no or invalid token) or 403 ``permission_denied``. The permission is recorded
    on the view as ``_required_permission`` for the OpenAPI document and for tests.
    """

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = current_principal()
            if permission not in principal.permissions:
                raise Forbidden(
                    f"This action needs the '{permission}' permission.",
                    code=ErrorCode.PERMISSION_DENIED,
                    title="Permission denied",
                    extra={"permission": permission},
                )
            return view(*args, **kwargs)

        wrapper._required_permission = permission  # type: ignore[attr-defined]
        document_auth(wrapper, permission)
        return wrapper  # type: ignore[return-value]

    return decorator


def authenticated(view: F) -> F:
    """Decorator: any authenticated member of the token's tenant."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        current_principal()
        return view(*args, **kwargs)

    wrapper._required_permission = None  # type: ignore[attr-defined]
    document_auth(wrapper, None)
    return wrapper  # type: ignore[return-value]


def check_verified_email() -> None:
    """Refuse a person whose email address is not verified (``User.email_verified_at``); service
    accounts (no user) pass: their tenant's admin registered them. Read from the database, never
    from the token, so a verification counts at once.

    Raises:
        Forbidden: 403 ``email_unverified``.
    """
    principal = current_principal()
    if principal.user_id is None:
        return
    verified = db.session().scalar(select(User.email_verified_at).where(User.id == principal.user_id))
    if verified is None:
        raise Forbidden(
            "Verify your email address first: open the link mailed to you, or ask for a new one "
            "(POST /api/v1/me/email/verification).",
            code=ErrorCode.EMAIL_UNVERIFIED,
            title="Email not verified",
        )


def require_verified_email(view: F) -> F:
    """Decorator (under ``require(...)``): the caller must have a verified email address
    (:func:`check_verified_email`). On inviting members, registering OAuth clients, billing
    checkout and portal; the SSO management endpoints will carry it too (docs/auth.md)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check_verified_email()
        return view(*args, **kwargs)

    wrapper._requires_verified_email = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def check_not_impersonated() -> None:
    """Refuse an impersonation token (one with an RFC 8693 ``act`` claim): the operator acting
    as a user may look and act inside the tenant, never change how anyone gets in (password,
    email, MFA, passkeys, SSO, API keys, clients, billing, the account itself). Step-up calls
    it first (:func:`saas.auth.stepup.check_step_up`), so every step-up action refuses
    impersonation (and an API key, which is not its creator signing in either);
    :func:`not_impersonated` marks the few sensitive views that prove the user
    by a password instead of a step-up.

    Raises:
        Forbidden: 403 ``impersonation_forbidden``; 403 ``api_key_forbidden`` for an API key.
    """
    principal = current_principal()
    if principal.api_key_id is not None:  # a key is not its creator signing in
        raise Forbidden(
            "An API key cannot do this: the user must sign in and do it themselves.",
            code=ErrorCode.API_KEY_FORBIDDEN,
            title="Not with an API key",
        )
    if principal.act is not None:
        raise Forbidden(
            "An impersonation session cannot do this: the user must do it themselves.",
            code=ErrorCode.IMPERSONATION_FORBIDDEN,
            title="Not while impersonating",
            extra={"operator": principal.act},
        )


def not_impersonated(view: F) -> F:
    """Decorator (under ``authenticated``/``require(...)``): :func:`check_not_impersonated`."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check_not_impersonated()
        return view(*args, **kwargs)

    wrapper._not_impersonated = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
