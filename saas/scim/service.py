"""SCIM 2.0 Users and Groups of one tenant (RFC 7643, RFC 7644): the tenancy logic.

Resources are parsed, validated, patched and serialised by scim2-models; the state lives in the
control plane: a SCIM User is a membership of the tenant, provisioned and deprovisioned only
through :mod:`saas.tenancy.members` (:func:`~saas.tenancy.members.provision_member`,
:func:`~saas.tenancy.members.deactivate_member`, :func:`~saas.tenancy.members.set_directory_role`),
which keep seats, Stripe's seat count, sessions and the audit log right. The directory's side of
each user and group is in :mod:`saas.scim.models`.

- ``id`` of a User is the user's id; another tenant's user is a 404 like an unknown one.
- ``active: false`` suspends the membership (sessions end, the seat is freed); ``DELETE``
  removes it. ``active: true`` reactivates it (a seat is taken again).
- The account's email (global, across tenants) is set once, at provisioning, from the primary
  (else work, else first) email or a ``userName`` that is an address; it counts as verified
  only on one of the tenant's verified domains. Later SCIM changes to ``emails`` or ``name``
  are the directory's attributes and do not rename the person's account.
- Groups map to roles: a member's role is the most powerful role of their groups (the
  settings' ``group_roles`` by ``displayName``, else a role named like the group), else the
  settings' ``default_role``. The tenant's last owner is never demoted by a group change.
- Versions: each write increments a counter; ``meta.version`` and ``ETag`` are ``W/"<n>"``
  (RFC 7644 section 3.14, RFC 7232); a stale ``If-Match`` is 412 and changes nothing.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from scim2_models import (
    Context,
    EnterpriseUser,
    Group,
    InvalidSyntaxException,
    InvalidValueException,
    NotFoundException,
    PatchOp,
    PreconditionFailedException,
    ResponseParameters,
    SCIMException,
    UniquenessException,
    User,
)
from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session

from saas.actions import ActionContext
from saas.audit import AuditAction
from saas.db import utcnow
from saas.errors import AppError, Conflict, ErrorCode
from saas.errors import ValidationError as AppValidationError
from saas.identity.models import Membership, Tenant, VerifiedDomain
from saas.identity.models import User as Account
from saas.rbac import ROLE_ORDER, can_assign
from saas.scim import filters
from saas.scim.filters import Attr
from saas.scim.models import ScimGroup, ScimGroupMember, ScimSettings, ScimToken, ScimUser
from saas.tenancy import members, roles

UserModel = User[EnterpriseUser]
GroupModel = Group
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
#: ``count`` is capped here (RFC 7644 section 3.4.2.4: the service provider may return fewer)
MAX_RESULTS = 200
SOURCE = "scim"
#: kept in ``ScimUser.data`` when the directory removed ``active``: the membership keeps its
#: status, and the attribute is not shown until the directory sets it again
ACTIVE_OMITTED = "__active_omitted"


@dataclass(frozen=True)
class Scope:
    """One SCIM request's context: the unit of work and actor (``ctx``: actor ``scim`` with the
    token's id), the token's tenant, and the base URL of ``/scim/v2`` (for ``meta.location``)."""

    ctx: ActionContext
    tenant: Tenant
    token: ScimToken
    base_url: str

    @property
    def session(self) -> Session:
        return self.ctx.session


# --- settings --------------------------------------------------------------------------------


def get_settings(session: Session, tenant_id: uuid.UUID) -> ScimSettings:
    """The tenant's provisioning settings (defaults when none were saved: no mapping, ``member``)."""
    row = session.get(ScimSettings, tenant_id)
    return (
        row if row is not None else ScimSettings(tenant_id=tenant_id, group_roles={}, default_role="member")
    )


def _settings_naming(session: Session, tenant_id: uuid.UUID, role: str) -> list[str]:
    row = session.get(ScimSettings, tenant_id)
    if row is None or (row.default_role != role and role not in (row.group_roles or {}).values()):
        return []
    return ["scim settings"]


def _rewrite_settings(session: Session, tenant_id: uuid.UUID, old: str, new: str) -> None:
    row = session.get(ScimSettings, tenant_id)
    if row is None:
        return
    if row.default_role == old:
        row.default_role = new
    if old in (row.group_roles or {}).values():
        row.group_roles = {k: (new if v == old else v) for k, v in row.group_roles.items()}


# a custom role's rename or replacement carries to the group roles (saas.tenancy.roles)
roles.register_referrer(roles.RoleReferrer(_settings_naming, _rewrite_settings))


def settings_to_public(row: ScimSettings) -> dict[str, Any]:
    return {"group_roles": dict(row.group_roles or {}), "default_role": row.default_role or "member"}


def put_settings(
    ctx: ActionContext, tenant_id: uuid.UUID, *, group_roles: dict[str, str], default_role: str
) -> ScimSettings:
    """Replace the tenant's settings, then re-derive the role of every provisioned member (their
    groups may map differently now). Audited ``scim.settings_updated``.

    Raises:
        ValidationError: an unknown role. Forbidden: ``role_not_assignable``, a role above the
            caller's (an admin cannot map a group to ``owner``).
    """
    actor_role = ctx.principal.role if ctx.principal is not None else None
    for field, role in [("default_role", default_role), *(("group_roles", r) for r in group_roles.values())]:
        try:
            members.check_role_exists(ctx.session, tenant_id, role)
        except AppValidationError:
            raise AppValidationError({field: [f"Unknown role {role!r}."]}) from None
        if role in ROLE_ORDER and not can_assign(actor_role or "", role):
            from saas.errors import Forbidden

            raise Forbidden(f"Your role cannot grant '{role}'.", code=ErrorCode.ROLE_NOT_ASSIGNABLE)
    row = ctx.session.get(ScimSettings, tenant_id)
    if row is None:
        row = ScimSettings(tenant_id=tenant_id)
        ctx.session.add(row)
    row.group_roles = {str(k).strip(): v for k, v in group_roles.items()}
    row.default_role = default_role
    ctx.session.flush()
    ctx.record(
        AuditAction.SCIM_SETTINGS_UPDATED,
        tenant_id=tenant_id,
        target_type="tenant",
        target_id=tenant_id,
        data=settings_to_public(row),
    )
    user_ids = list(ctx.session.scalars(select(ScimUser.user_id).where(ScimUser.tenant_id == tenant_id)))
    _sync_roles(ctx, tenant_id, user_ids)
    return row


# --- roles -----------------------------------------------------------------------------------


def group_role(
    session: Session, tenant_id: uuid.UUID, settings: ScimSettings, display_name: str
) -> str | None:
    """The role a group named ``display_name`` grants: the settings' mapping (names compared
    case-insensitively), else the role of that name, else None."""
    wanted = display_name.strip().lower()
    for name, role in (settings.group_roles or {}).items():
        if name.lower() == wanted:
            return role
    try:
        members.check_role_exists(session, tenant_id, wanted)
    except AppValidationError:
        return None
    return wanted


def _sync_roles(ctx: ActionContext, tenant_id: uuid.UUID, user_ids: list[uuid.UUID]) -> None:
    """Set each member's role from their groups (:func:`group_role`), else the default role,
    through :func:`~saas.tenancy.members.set_directory_role`. The last owner keeps the role."""
    if not user_ids:
        return
    session = ctx.session
    settings = get_settings(session, tenant_id)
    rows = session.execute(
        select(ScimGroupMember.user_id, ScimGroup.display_name)
        .join(ScimGroup, ScimGroup.id == ScimGroupMember.group_id)
        .where(ScimGroup.tenant_id == tenant_id, ScimGroupMember.user_id.in_(user_ids))
    ).all()
    groups_of: dict[uuid.UUID, list[str]] = {}
    for uid, name in rows:
        groups_of.setdefault(uid, []).append(name)
    for uid in sorted(set(user_ids)):
        membership = session.scalars(
            select(Membership).where(Membership.tenant_id == tenant_id, Membership.user_id == uid)
        ).first()
        if membership is None:
            continue
        mapped = [
            r for r in (group_role(session, tenant_id, settings, g) for g in groups_of.get(uid, [])) if r
        ]
        default = settings.default_role or "member"
        target = members.most_powerful_role(session, tenant_id, mapped) if mapped else default
        try:
            members.set_directory_role(ctx, membership, target, source=SOURCE)
        except Conflict as exc:
            if exc.code != ErrorCode.LAST_OWNER:
                raise  # the tenant keeps its last owner whatever the directory's groups say


# --- shared helpers --------------------------------------------------------------------------


def etag(version: int) -> str:
    return f'W/"{version}"'


def check_if_match(header: str | None, version: int) -> None:
    """RFC 7232 section 3.1 with weak comparison: ``*`` or one of the listed tags must be the
    current version.

    Raises:
        PreconditionFailedException: 412, the resource changed since the client read it.
    """
    if not header:
        return
    tags = [t.strip() for t in header.split(",") if t.strip()]
    current = etag(version)
    if "*" in tags or any(t.removeprefix("W/") == current.removeprefix("W/") for t in tags):
        return
    raise PreconditionFailedException(detail=f"The resource is at version {current}; nothing was changed.")


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        return None


def _validation_error(exc: PydanticValidationError) -> SCIMException:
    """scim2-models reports SCIM errors as pydantic errors whose type is ``scim_<scimType>``."""
    first = exc.errors()[0] if exc.errors() else {}
    kind = str(first.get("type", ""))
    where = ".".join(str(p) for p in first.get("loc", ()))
    detail = f"{where + ': ' if where else ''}{first.get('msg', 'invalid value')}"
    if kind == "scim_mutability":
        from scim2_models import MutabilityException

        return MutabilityException(detail=detail)
    if kind == "scim_invalidPath":
        from scim2_models import InvalidPathException

        return InvalidPathException(detail=detail)
    if kind == "scim_noTarget":
        from scim2_models import NoTargetException

        return NoTargetException(detail=detail)
    if kind == "scim_invalidSyntax":
        return InvalidSyntaxException(detail=detail)
    return InvalidValueException(detail=detail)


def validate(model: Any, body: Any, scim_ctx: Context, scope: Scope | None = None) -> Any:
    """``body`` (a decoded JSON object) as the scim2-models ``model`` in ``scim_ctx`` (creation,
    replacement, PATCH or search request: RFC 7643 section 7's mutability and requirements).

    Raises:
        InvalidSyntaxException: not a JSON object. InvalidValueException (and the other
            ``scimType`` errors scim2-models reports): a value the schema refuses; all 400.
    """
    if not isinstance(body, dict):
        raise InvalidSyntaxException(detail="The request body must be a JSON object.")
    extension = body.get(ENTERPRISE_SCHEMA)
    if scope is not None and isinstance(extension, dict) and "manager" in extension:
        body = {
            **body,
            ENTERPRISE_SCHEMA: {**extension, "manager": _manager("manager", extension["manager"], scope)},
        }
    try:
        return model.model_validate(body, scim_ctx=scim_ctx)
    except PydanticValidationError as exc:
        raise _validation_error(exc) from None
    except SCIMException:
        raise
    except (ValueError, TypeError) as exc:
        raise InvalidValueException(detail=str(exc)) from None


def _stored(model: Any, drop: tuple[str, ...]) -> dict[str, Any]:
    """What is kept of a written resource: its JSON without the attributes the server owns or
    never stores (``password`` is write-only and never kept)."""
    data = model.model_dump(scim_ctx=Context.RESOURCE_CREATION_REQUEST)
    for key in ("id", "meta", "password", *drop):
        data.pop(key, None)
    return data


def app_error_to_scim(err: AppError) -> SCIMException:
    """A tenancy error met while provisioning, as a SCIM error (RFC 7644 section 3.12)."""
    detail = err.detail or err.title
    if isinstance(err, AppValidationError):
        return InvalidValueException(detail=f"{detail} {getattr(err, 'errors', '') or ''}".strip())
    exc = SCIMException(detail=detail)
    exc.status = err.status
    if err.status == 409:
        linked = (ErrorCode.ALREADY_MEMBER, ErrorCode.ACCOUNT_NOT_LINKABLE)
        exc.scim_type = "uniqueness" if err.code in linked else ""
    return exc


def response_parameters(attributes: str | None, excluded: str | None) -> ResponseParameters | None:
    """``attributes`` / ``excludedAttributes`` (RFC 7644 section 3.9), comma-separated."""
    if not attributes and not excluded:
        return None
    try:
        return ResponseParameters(
            attributes=[a.strip() for a in attributes.split(",") if a.strip()] if attributes else None,
            excluded_attributes=[a.strip() for a in excluded.split(",") if a.strip()] if excluded else None,
        )
    except (PydanticValidationError, ValueError) as exc:
        raise InvalidValueException(detail=f"Bad attributes or excludedAttributes: {exc}") from None


def serialise(model: Any, params: ResponseParameters | None = None) -> dict[str, Any]:
    return model.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE, response_parameters=params)


def _page(start_index: int | None, count: int | None) -> tuple[int, int]:
    """RFC 7644 section 3.4.2.4: ``startIndex`` below 1 is 1; ``count`` below 0 is 0."""
    start = max(1, start_index or 1)
    n = MAX_RESULTS if count is None else max(0, min(count, MAX_RESULTS))
    return start, n


# --- users -----------------------------------------------------------------------------------

USER_ATTRS: filters.AttributeMap = {
    "id": Attr(ScimUser.user_id, "uuid"),
    "username": Attr(ScimUser.user_name),
    "externalid": Attr(ScimUser.external_id, case_exact=True),
    "displayname": Attr(ScimUser.display_name),
    "name.givenname": Attr(ScimUser.given_name),
    "name.familyname": Attr(ScimUser.family_name),
    "emails.value": Attr(ScimUser.email),
    "emails.type": Attr(constant="work", sortable=False),
    "active": Attr(Membership.status == "active", "boolean", sortable=False),
    "meta.created": Attr(ScimUser.created_at, "datetime"),
    "meta.lastmodified": Attr(ScimUser.updated_at, "datetime"),
}


def _user_location(scope: Scope, user_id: uuid.UUID) -> str:
    return f"{scope.base_url}/Users/{user_id}"


def _load_user(scope: Scope, user_id: Any, *, lock: bool = False) -> tuple[ScimUser, Membership, Account]:
    uid = _uuid(user_id)
    query = (
        select(ScimUser, Membership, Account)
        .join(
            Membership,
            (Membership.user_id == ScimUser.user_id) & (Membership.tenant_id == ScimUser.tenant_id),
        )
        .join(Account, Account.id == ScimUser.user_id)
        .where(ScimUser.tenant_id == scope.tenant.id, ScimUser.user_id == uid)
    )
    if lock:
        query = query.with_for_update(of=ScimUser)
    row = scope.session.execute(query).first() if uid is not None else None
    if row is None:
        raise NotFoundException(detail=f"No User {user_id} in this tenant.")
    return row[0], row[1], row[2]


def _user_groups(scope: Scope, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[dict[str, Any]]]:
    out: dict[uuid.UUID, list[dict[str, Any]]] = {}
    if not user_ids:
        return out
    rows = scope.session.execute(
        select(ScimGroupMember.user_id, ScimGroup.id, ScimGroup.display_name)
        .join(ScimGroup, ScimGroup.id == ScimGroupMember.group_id)
        .where(ScimGroup.tenant_id == scope.tenant.id, ScimGroupMember.user_id.in_(user_ids))
        .order_by(ScimGroup.display_name)
    ).all()
    for uid, gid, name in rows:
        out.setdefault(uid, []).append(
            {"value": str(gid), "display": name, "$ref": f"{scope.base_url}/Groups/{gid}", "type": "direct"}
        )
    return out


def user_model(
    scope: Scope, su: ScimUser, membership: Membership, groups: list[dict[str, Any]] | None = None
):
    """The User resource (a scim2-models ``User[EnterpriseUser]``) of a provisioned member."""
    data = copy.deepcopy(su.data or {})
    data.setdefault("schemas", [USER_SCHEMA])
    omitted = data.pop(ACTIVE_OMITTED, False)
    data.update(
        id=str(su.user_id),
        userName=su.user_name,
        active=membership.status == "active",
        meta=_meta("User", su, _user_location(scope, su.user_id)),
    )
    if omitted:
        data.pop("active")
    if groups is None:
        groups = _user_groups(scope, [su.user_id]).get(su.user_id, [])
    _set_or_drop(data, "groups", groups)
    return UserModel.model_validate(data)


def _meta(resource_type: str, row: ScimUser | ScimGroup, location: str) -> dict[str, Any]:
    """A resource's ``meta`` (RFC 7643 section 3.1): its type, times, location and version."""
    return {
        "resourceType": resource_type,
        "created": row.created_at.isoformat(),
        "lastModified": row.updated_at.isoformat(),
        "location": location,
        "version": etag(row.version),
    }


def _set_or_drop(data: dict[str, Any], name: str, values: list[dict[str, Any]]) -> None:
    """``data[name] = values``, or no ``name`` at all when there are none (an empty multi-valued
    attribute is left out, RFC 7643 section 2.5)."""
    if values:
        data[name] = values
    else:
        data.pop(name, None)


def get_user(scope: Scope, user_id: Any):
    su, membership, _ = _load_user(scope, user_id)
    return user_model(scope, su, membership), su.version


def list_users(
    scope: Scope,
    *,
    filter: str | None,
    start_index: int | None,
    count: int | None,
    sort_by: str | None,
    sort_order: str | None,
) -> tuple[int, int, list[Any]]:
    """``(totalResults, startIndex, resources)`` of a query (RFC 7644 section 3.4.2)."""
    base = (
        select(ScimUser, Membership)
        .join(
            Membership,
            (Membership.user_id == ScimUser.user_id) & (Membership.tenant_id == ScimUser.tenant_id),
        )
        .where(ScimUser.tenant_id == scope.tenant.id)
    )
    total, start, rows = _search(
        scope, base, USER_ATTRS, ScimUser.created_at, ScimUser.user_id,
        filter=filter, start_index=start_index, count=count, sort_by=sort_by, sort_order=sort_order,
    )  # fmt: skip
    groups = _user_groups(scope, [r[0].user_id for r in rows])
    return total, start, [user_model(scope, su, m, groups.get(su.user_id, [])) for su, m in rows]


def _search(
    scope: Scope,
    base: Any,
    attrs: Any,
    default_order: Any,
    tiebreak: Any,
    *,
    filter: str | None,
    start_index: int | None,
    count: int | None,
    sort_by: str | None,
    sort_order: str | None,
) -> tuple[int, int, list[Any]]:
    """``(totalResults, startIndex, rows)`` of the ``base`` select of one resource type
    (RFC 7644 section 3.4.2): narrowed by ``filter`` (section 3.4.2.2, over ``attrs``), sorted
    by ``sort_by``/``sort_order`` (section 3.4.2.3; default ``default_order``, ascending) then
    ``tiebreak``, paged by ``start_index``/``count`` (section 3.4.2.4). Rows are
    :class:`~sqlalchemy.Row` objects (no query when ``count`` is 0)."""
    start, n = _page(start_index, count)
    if filter:
        base = base.where(filters.where(filter, attrs))
    total = scope.session.scalar(select(func.count()).select_from(base.subquery())) or 0
    order = filters.sort_column(sort_by, attrs) if sort_by else default_order
    order = order.desc() if (sort_order or "").lower() == "descending" else order.asc()
    rows = scope.session.execute(base.order_by(order, tiebreak).offset(start - 1).limit(n)).all() if n else []
    return total, start, rows


def _primary_email(model: Any) -> str | None:
    emails = [e for e in (model.emails or []) if e.value]
    chosen = (
        next((e for e in emails if e.primary), None)
        or next((e for e in emails if str(e.type or "").lower() == "work"), None)
        or (emails[0] if emails else None)
    )
    if chosen is not None:
        return str(chosen.value).strip()
    if model.user_name and "@" in model.user_name:
        return model.user_name.strip()
    return None


def _taken(scope: Scope, column: Any, id_column: Any, name: str, self_id: uuid.UUID | None) -> bool:
    """Whether another resource of the tenant (not ``self_id``) has ``name`` in ``column``,
    compared case-insensitively (``userName`` and ``displayName`` are ``caseExact: false``,
    RFC 7643 sections 4.1.1 and 4.2)."""
    model = column.class_
    clash = scope.session.scalar(
        select(id_column).where(
            model.tenant_id == scope.tenant.id,
            func.lower(column) == name.lower(),
            *([id_column != self_id] if self_id is not None else []),
        )
    )
    return clash is not None


def _check_user_name(scope: Scope, user_name: str | None, self_id: uuid.UUID | None) -> str:
    name = (user_name or "").strip()
    if not name:
        raise InvalidValueException(detail="userName is required (RFC 7643 section 4.1.1).")
    if len(name) > 320:
        raise InvalidValueException(detail="userName is at most 320 characters.")
    if _taken(scope, ScimUser.user_name, ScimUser.user_id, name, self_id):
        raise UniquenessException(detail=f"userName {name!r} is taken in this tenant.")
    return name


def _apply_user(su: ScimUser, model: Any, user_name: str, *, omit_active: bool = False) -> None:
    su.user_name = user_name
    su.external_id = model.external_id
    su.display_name = model.display_name
    su.given_name = model.name.given_name if model.name else None
    su.family_name = model.name.family_name if model.name else None
    email = _primary_email(model)
    su.email = email.lower() if email else None
    su.data = _stored(model, ("userName", "active", "groups"))
    if omit_active and model.active is None:
        su.data[ACTIVE_OMITTED] = True


def _email_verified(session: Session, tenant_id: uuid.UUID, email: str) -> bool:
    """True only when the address's domain is one of the tenant's verified domains."""
    domain = email.rsplit("@", 1)[-1].strip().lower().rstrip(".")
    return (
        session.scalar(
            select(VerifiedDomain.id).where(
                VerifiedDomain.tenant_id == tenant_id,
                VerifiedDomain.domain == domain,
                VerifiedDomain.verified_at.is_not(None),
            )
        )
        is not None
    )


def _set_active(scope: Scope, membership: Membership, account: Account, active: bool | None) -> None:
    if active is None:
        return
    if not active and membership.status != "suspended":
        members.deactivate_member(scope.ctx, scope.tenant.id, account.id, source=SOURCE)
    elif active and membership.status == "suspended":
        members.provision_member(
            scope.ctx,
            scope.tenant,
            email=account.email,
            name=None,
            role=membership.role,
            source=SOURCE,
            email_verified=False,
            reactivate=True,
        )


def create_user(scope: Scope, body: Any):
    """``POST /Users`` (RFC 7644 section 3.3): provision a member. An address that is already a
    member of the tenant (signed up, invited) is linked, keeping its role; a new member gets the
    default role. 409 ``uniqueness``: the ``userName`` or the member is provisioned already."""
    model = validate(UserModel, body, Context.RESOURCE_CREATION_REQUEST, scope)
    _forget_removed_members(scope)
    user_name = _check_user_name(scope, model.user_name, None)
    email = _primary_email(model)
    if not email or "@" not in email or len(email) > 320:
        raise InvalidValueException(
            detail="A User needs an email address (emails, or a userName that is one)."
        )
    session, tenant = scope.session, scope.tenant
    settings = get_settings(session, tenant.id)
    name = model.display_name or (model.name.formatted if model.name else None)
    if not name and model.name and (model.name.given_name or model.name.family_name):
        name = " ".join(p for p in (model.name.given_name, model.name.family_name) if p)
    existing = session.scalar(
        select(ScimUser.user_id)
        .join(Account, Account.id == ScimUser.user_id)
        .where(ScimUser.tenant_id == tenant.id, func.lower(Account.email) == email.lower())
    )
    if existing is not None:
        raise UniquenessException(detail=f"A User with the email {email!r} is provisioned already.")
    try:
        provisioned = members.provision_member(
            scope.ctx,
            tenant,
            email=email,
            name=name,
            role=settings.default_role or "member",
            source=SOURCE,
            email_verified=_email_verified(session, tenant.id, email),
            reactivate=True,
        )
    except AppError as err:
        raise app_error_to_scim(err) from None
    now = utcnow()
    su = ScimUser(tenant_id=tenant.id, user_id=provisioned.user.id, version=1, created_at=now, updated_at=now)
    _apply_user(su, model, user_name)
    session.add(su)
    session.flush()
    if model.active is False:
        members.deactivate_member(scope.ctx, tenant.id, provisioned.user.id, source=SOURCE)
    membership = session.scalars(
        select(Membership).where(Membership.tenant_id == tenant.id, Membership.user_id == provisioned.user.id)
    ).one()
    scope.ctx.record(
        AuditAction.SCIM_USER_CREATED,
        tenant_id=tenant.id,
        target_type="user",
        target_id=su.user_id,
        data={"userName": user_name, "externalId": su.external_id},
    )
    return user_model(scope, su, membership, []), su.version


def _forget_removed_members(scope: Scope) -> None:
    """Drop the directory's records of members removed outside SCIM (``DELETE
    /api/v1/members/{id}``, leaving, account deletion), so their ``userName`` can be provisioned
    again and they are no group's members any more."""
    gone = ~exists(
        select(Membership.id).where(
            Membership.tenant_id == ScimUser.tenant_id, Membership.user_id == ScimUser.user_id
        )
    )
    stale = list(
        scope.session.scalars(select(ScimUser.user_id).where(ScimUser.tenant_id == scope.tenant.id, gone))
    )
    if not stale:
        return
    scope.session.execute(
        delete(ScimGroupMember).where(
            ScimGroupMember.user_id.in_(stale),
            ScimGroupMember.group_id.in_(select(ScimGroup.id).where(ScimGroup.tenant_id == scope.tenant.id)),
        )
    )
    scope.session.execute(
        delete(ScimUser).where(ScimUser.tenant_id == scope.tenant.id, ScimUser.user_id.in_(stale))
    )
    scope.session.flush()


def _write_user(
    scope: Scope,
    su: ScimUser,
    membership: Membership,
    account: Account,
    model: Any,
    *,
    omit_active: bool = False,
) -> Any:
    user_name = _check_user_name(scope, model.user_name, su.user_id)
    _apply_user(su, model, user_name, omit_active=omit_active)
    su.version += 1
    su.updated_at = utcnow()
    scope.session.flush()
    try:
        _set_active(scope, membership, account, model.active)
    except AppError as err:
        raise app_error_to_scim(err) from None
    scope.ctx.record(
        AuditAction.SCIM_USER_UPDATED,
        tenant_id=scope.tenant.id,
        target_type="user",
        target_id=su.user_id,
        data={"userName": user_name, "active": model.active},
    )
    scope.session.flush()
    return user_model(scope, su, membership)


def replace_user(scope: Scope, user_id: Any, body: Any, if_match: str | None):
    """``PUT /Users/{id}`` (RFC 7644 section 3.5.1): the resource as sent replaces the stored one."""
    su, membership, account = _load_user(scope, user_id, lock=True)
    check_if_match(if_match, su.version)
    model = validate(UserModel, body, Context.RESOURCE_REPLACEMENT_REQUEST, scope)
    return _write_user(scope, su, membership, account, model), su.version


def patch_user(scope: Scope, user_id: Any, body: Any, if_match: str | None):
    """``PATCH /Users/{id}`` (RFC 7644 section 3.5.2), with the shapes Entra ID and Okta send
    (:func:`normalise_patch`)."""
    su, membership, account = _load_user(scope, user_id, lock=True)
    check_if_match(if_match, su.version)
    current = user_model(scope, su, membership)
    patch = validate(PatchOp[UserModel], normalise_patch(body, scope), Context.RESOURCE_PATCH_REQUEST)
    try:
        changed = patch.patch(current)
    except PydanticValidationError as exc:
        raise _validation_error(exc) from None
    if not changed:
        return current, su.version
    return _write_user(scope, su, membership, account, current, omit_active=True), su.version


def delete_user(scope: Scope, user_id: Any, if_match: str | None) -> None:
    """``DELETE /Users/{id}`` (RFC 7644 section 3.6): the membership goes (sessions end, seat
    freed, :func:`~saas.tenancy.members.deactivate_member`), with the directory's record and the
    user's group memberships; the account itself stays (it may belong to other tenants)."""
    su, _membership, account = _load_user(scope, user_id, lock=True)
    check_if_match(if_match, su.version)
    session, tenant_id = scope.session, scope.tenant.id
    try:
        members.deactivate_member(scope.ctx, tenant_id, account.id, source=SOURCE, delete=True)
    except AppError as err:
        raise app_error_to_scim(err) from None
    group_ids = list(
        session.scalars(
            select(ScimGroupMember.group_id)
            .join(ScimGroup, ScimGroup.id == ScimGroupMember.group_id)
            .where(ScimGroup.tenant_id == tenant_id, ScimGroupMember.user_id == account.id)
        )
    )
    if group_ids:
        session.execute(
            delete(ScimGroupMember).where(
                ScimGroupMember.group_id.in_(group_ids), ScimGroupMember.user_id == account.id
            )
        )
        for group in session.scalars(select(ScimGroup).where(ScimGroup.id.in_(group_ids))):
            group.version += 1
            group.updated_at = utcnow()
    session.delete(su)
    session.flush()


# --- groups ----------------------------------------------------------------------------------


def _members_exists(op: Any, value: Any):
    sub = select(ScimGroupMember.id).where(ScimGroupMember.group_id == ScimGroup.id)
    if op is None:
        return exists(sub)
    uid = _uuid(value)
    from scim2_models.path import CompareOperator

    if op not in (CompareOperator.eq, CompareOperator.ne):
        raise filters.InvalidFilterException(detail="members takes eq, ne or pr.")
    matched = exists(sub.where(ScimGroupMember.user_id == uid)) if uid is not None else None
    if op is CompareOperator.eq:
        return matched if matched is not None else filters.false()
    return ~matched if matched is not None else filters.true()


GROUP_ATTRS: filters.AttributeMap = {
    "id": Attr(ScimGroup.id, "uuid"),
    "displayname": Attr(ScimGroup.display_name),
    "externalid": Attr(ScimGroup.external_id, case_exact=True),
    "members.value": Attr(build=_members_exists, kind="exists", sortable=False),
    "meta.created": Attr(ScimGroup.created_at, "datetime"),
    "meta.lastmodified": Attr(ScimGroup.updated_at, "datetime"),
}


def _load_group(scope: Scope, group_id: Any, *, lock: bool = False) -> ScimGroup:
    gid = _uuid(group_id)
    query = select(ScimGroup).where(ScimGroup.tenant_id == scope.tenant.id, ScimGroup.id == gid)
    if lock:
        query = query.with_for_update()
    group = scope.session.scalars(query).first() if gid is not None else None
    if group is None:
        raise NotFoundException(detail=f"No Group {group_id} in this tenant.")
    return group


def _group_members(scope: Scope, group_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[dict[str, Any]]]:
    out: dict[uuid.UUID, list[dict[str, Any]]] = {}
    if not group_ids:
        return out
    rows = scope.session.execute(
        select(
            ScimGroupMember.group_id,
            ScimUser.user_id,
            func.coalesce(ScimGroupMember.display, ScimUser.display_name),
            ScimUser.user_name,
        )
        .join(
            ScimUser, (ScimUser.user_id == ScimGroupMember.user_id) & (ScimUser.tenant_id == scope.tenant.id)
        )
        .join(
            Membership,
            (Membership.user_id == ScimUser.user_id) & (Membership.tenant_id == ScimUser.tenant_id),
        )
        .where(ScimGroupMember.group_id.in_(group_ids))
        .order_by(ScimUser.user_name)
    ).all()
    for gid, uid, display, user_name in rows:
        out.setdefault(gid, []).append(
            {
                "value": str(uid),
                "display": display or user_name,
                "$ref": _user_location(scope, uid),
                "type": "User",
            }
        )
    return out


def group_model(scope: Scope, group: ScimGroup, members_: list[dict[str, Any]] | None = None):
    data = copy.deepcopy(group.data or {})
    data.setdefault("schemas", [GROUP_SCHEMA])
    data.update(
        id=str(group.id),
        displayName=group.display_name,
        meta=_meta("Group", group, f"{scope.base_url}/Groups/{group.id}"),
    )
    if members_ is None:
        members_ = _group_members(scope, [group.id]).get(group.id, [])
    _set_or_drop(data, "members", members_)
    return GroupModel.model_validate(data)


def get_group(scope: Scope, group_id: Any):
    group = _load_group(scope, group_id)
    return group_model(scope, group), group.version


def list_groups(
    scope: Scope,
    *,
    filter: str | None,
    start_index: int | None,
    count: int | None,
    sort_by: str | None,
    sort_order: str | None,
) -> tuple[int, int, list[Any]]:
    """``(totalResults, startIndex, resources)`` of a query (RFC 7644 section 3.4.2)."""
    base = select(ScimGroup).where(ScimGroup.tenant_id == scope.tenant.id)
    total, start, found = _search(
        scope, base, GROUP_ATTRS, ScimGroup.created_at, ScimGroup.id,
        filter=filter, start_index=start_index, count=count, sort_by=sort_by, sort_order=sort_order,
    )  # fmt: skip
    rows = [row[0] for row in found]
    members_of = _group_members(scope, [g.id for g in rows])
    return total, start, [group_model(scope, g, members_of.get(g.id, [])) for g in rows]


def _check_display_name(scope: Scope, name: str | None, self_id: uuid.UUID | None) -> str:
    name = (name or "").strip()
    if not name or len(name) > 320:
        raise InvalidValueException(
            detail="displayName is required, at most 320 characters (RFC 7643 section 4.2)."
        )
    if _taken(scope, ScimGroup.display_name, ScimGroup.id, name, self_id):
        raise UniquenessException(detail=f"A Group named {name!r} exists in this tenant.")
    return name


def _member_ids(scope: Scope, model: Any) -> dict[uuid.UUID, str | None]:
    """The user ids a Group's ``members`` name: each must be a User of this tenant (400
    ``invalidValue`` otherwise, the whole request refused). Nested groups are not supported."""
    wanted: dict[uuid.UUID, str | None] = {}
    for member in model.members or []:
        if str(member.type or "User") == "Group":
            raise InvalidValueException(detail="Nested groups are not supported.")
        uid = _uuid(member.value)
        if uid is None:
            raise InvalidValueException(detail=f"No User {member.value!r} in this tenant.")
        wanted[uid] = member.display
    if wanted:
        found = set(
            scope.session.scalars(
                select(ScimUser.user_id).where(
                    ScimUser.tenant_id == scope.tenant.id, ScimUser.user_id.in_(wanted)
                )
            )
        )
        missing = set(wanted) - found
        if missing:
            raise InvalidValueException(detail=f"No User {sorted(map(str, missing))[0]} in this tenant.")
    return wanted


def _write_group(scope: Scope, group: ScimGroup, model: Any, *, action: AuditAction) -> None:
    session = scope.session
    old_name = group.display_name
    group.display_name = _check_display_name(scope, model.display_name, group.id)
    group.external_id = model.external_id
    group.data = _stored(model, ("displayName", "members"))
    displays = _member_ids(scope, model)
    wanted = set(displays)
    rows = {
        m.user_id: m
        for m in session.scalars(select(ScimGroupMember).where(ScimGroupMember.group_id == group.id))
    }
    current = set(rows)
    added, removed = wanted - current, current - wanted
    if removed:
        session.execute(
            delete(ScimGroupMember).where(
                ScimGroupMember.group_id == group.id, ScimGroupMember.user_id.in_(removed)
            )
        )
    for uid in sorted(added):
        session.add(ScimGroupMember(group_id=group.id, user_id=uid, display=displays[uid]))
    for uid in wanted & current:
        rows[uid].display = displays[uid]
    session.flush()
    affected = wanted | removed if old_name != group.display_name else added | removed
    try:
        _sync_roles(scope.ctx, scope.tenant.id, sorted(affected))
    except AppError as err:
        raise app_error_to_scim(err) from None
    scope.ctx.record(
        action,
        tenant_id=scope.tenant.id,
        target_type="scim_group",
        target_id=group.id,
        data={
            "displayName": group.display_name,
            "added": sorted(map(str, added)),
            "removed": sorted(map(str, removed)),
        },
    )
    session.flush()


def create_group(scope: Scope, body: Any):
    """``POST /Groups``. 409 ``uniqueness``: the ``displayName`` exists in the tenant."""
    model = validate(GroupModel, body, Context.RESOURCE_CREATION_REQUEST)
    now = utcnow()
    group = ScimGroup(
        tenant_id=scope.tenant.id, display_name="", version=1, created_at=now, updated_at=now, data={}
    )
    name = _check_display_name(scope, model.display_name, None)
    group.display_name = name
    scope.session.add(group)
    scope.session.flush()
    group.display_name = ""  # so that _write_group sees a rename: every member's role is derived
    _write_group(scope, group, model, action=AuditAction.SCIM_GROUP_CREATED)
    return group_model(scope, group), group.version


def replace_group(scope: Scope, group_id: Any, body: Any, if_match: str | None):
    group = _load_group(scope, group_id, lock=True)
    check_if_match(if_match, group.version)
    model = validate(GroupModel, body, Context.RESOURCE_REPLACEMENT_REQUEST)
    group.version += 1
    group.updated_at = utcnow()
    _write_group(scope, group, model, action=AuditAction.SCIM_GROUP_UPDATED)
    return group_model(scope, group), group.version


def patch_group(scope: Scope, group_id: Any, body: Any, if_match: str | None):
    group = _load_group(scope, group_id, lock=True)
    check_if_match(if_match, group.version)
    current = group_model(scope, group)
    patch = validate(PatchOp[GroupModel], normalise_patch(body, scope), Context.RESOURCE_PATCH_REQUEST)
    try:
        changed = patch.patch(current)
    except PydanticValidationError as exc:
        raise _validation_error(exc) from None
    if not changed:
        return current, group.version
    group.version += 1
    group.updated_at = utcnow()
    _write_group(scope, group, current, action=AuditAction.SCIM_GROUP_UPDATED)
    return group_model(scope, group), group.version


def delete_group(scope: Scope, group_id: Any, if_match: str | None) -> None:
    group = _load_group(scope, group_id, lock=True)
    check_if_match(if_match, group.version)
    session = scope.session
    former = sorted(
        session.scalars(select(ScimGroupMember.user_id).where(ScimGroupMember.group_id == group.id))
    )
    session.delete(group)
    session.flush()
    try:
        _sync_roles(scope.ctx, scope.tenant.id, former)
    except AppError as err:
        raise app_error_to_scim(err) from None
    scope.ctx.record(
        AuditAction.SCIM_GROUP_DELETED,
        tenant_id=scope.tenant.id,
        target_type="scim_group",
        target_id=group.id,
        data={"displayName": group.display_name},
    )
    session.flush()


# --- PATCH bodies as Entra ID and Okta send them ---------------------------------------------


def normalise_patch(body: Any, scope: Scope) -> Any:
    """Rewrite the PatchOp shapes that real directories send into RFC 7644 section 3.5.2 ones,
    before scim2-models validates and applies them:

    - a path-less ``add``/``replace`` whose value object has keys that are paths (Entra ID:
      ``{"name.givenName": "x", "emails[type eq \\"work\\"].value": "y", "urn:...:User:department": "z"}``)
      becomes one operation per such key;
    - a ``remove`` of ``members`` with a value listing members (Entra ID) becomes one
      ``members[value eq "..."]`` removal each;
    - a ``manager`` value given as a bare id (Entra ID) gets its ``value`` and ``$ref``.

    ``op`` in any case and ``active`` as the string ``"False"`` are accepted by scim2-models.
    Anything that is not a PatchOp object is returned as it is (and refused by validation).
    """
    if not isinstance(body, dict) or not isinstance(body.get("Operations"), list):
        return body
    out: list[Any] = []
    for op in body["Operations"]:
        if not isinstance(op, dict):
            out.append(op)
            continue
        kind = str(op.get("op", "")).lower()
        path, value = op.get("path"), op.get("value")
        if kind in ("add", "replace") and not path and isinstance(value, dict):
            plain: dict[str, Any] = {}
            for key, item in value.items():
                if isinstance(key, str) and ("." in key or "[" in key):
                    out.append({"op": kind, "path": key, "value": _manager(key, item, scope)})
                else:
                    plain[key] = item
            if plain:
                out.append({**op, "op": kind, "value": plain})
            continue
        if (
            kind == "remove"
            and isinstance(path, str)
            and path.lower() == "members"
            and isinstance(value, list)
        ):
            for item in value:
                member = item.get("value") if isinstance(item, dict) else item
                out.append({"op": "remove", "path": f"members[value eq {_quote(member)}]"})
            continue
        if isinstance(path, str):
            value = _manager(path, value, scope)
            op = {**op, "value": value} if "value" in op else op
        out.append({**op, "op": kind or op.get("op")})
    return {**body, "Operations": out}


def _quote(value: Any) -> str:
    import json

    return json.dumps(str(value))


def _manager(path: str, value: Any, scope: Scope) -> Any:
    if not path.lower().endswith(":manager") and path.lower() != "manager":
        return value
    if isinstance(value, str):
        value = {"value": value}
    if isinstance(value, dict) and value.get("value") and "$ref" not in value:
        value = {**value, "$ref": _user_location(scope, value["value"])}
    return value
