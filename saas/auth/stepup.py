"""Step-up authentication for sensitive actions (RFC 9470): the check, and the rules of when.

The check: the caller's access token must have an ``auth_time`` at most ``max_age`` seconds old
(default ``STEP_UP_MAX_AGE``, 10 minutes) and, when the user has MFA enabled, an ``amr``
showing a second factor (``otp``, or ``mfa`` of a passkey: :func:`saas.auth.tokens.satisfies_mfa`).
Otherwise the answer is 401 with
``WWW-Authenticate: Bearer error="insufficient_user_authentication", max_age=..., acr_values=...``
(RFC 9470 section 3) and the problem code ``insufficient_user_authentication``; the client logs
the user in again (``/oauth/authorize?max_age=...`` or ``POST /api/v1/auth/login``) and retries.
Service-account tokens (``client_credentials``) never pass: no person authenticated.

An action that always needs it declares so on its view (other packages too)::

    from saas.auth.stepup import require_step_up

    @blp.route("/billing/plan")
    class Plan(MethodView):
        @require("billing:manage")
        @require_step_up()
        def put(self, body): ...

An action that needs it only for some requests has its rule in :data:`RULES`, here: the view
names the action and states the request's facts, the rule decides (:func:`step_up_for`)::

    step_up_for("member.invite", role=body["role"])  # step-up for owner and admin invitations
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from saas import db
from saas.auth import mfa
from saas.auth.context import Principal, check_not_impersonated, current_principal
from saas.auth.errors import InsufficientUserAuthentication
from saas.auth.tokens import ACR_MFA, ACR_PASSWORD, satisfies_mfa
from saas.identity.models import custom_role_permissions
from saas.rbac import ROLES
from saas.services import services

F = TypeVar("F", bound=Callable[..., Any])


def check_step_up(max_age: int | None = None) -> None:
    """Raise :class:`InsufficientUserAuthentication` unless the current token is fresh enough
    (``auth_time`` within ``max_age`` seconds) and MFA-backed when the user has MFA.

    An impersonation token never passes: 403 ``impersonation_forbidden``
    (:func:`saas.auth.context.check_not_impersonated`), whatever its times."""
    check_not_impersonated()
    max_age = max_age or services().settings.step_up_max_age_seconds
    principal = current_principal()
    if principal.user_id is None:
        raise InsufficientUserAuthentication(
            "This action needs a person's recent login, not a service account.",
            max_age=max_age,
            acr=ACR_PASSWORD,
        )
    has_mfa = mfa.has_mfa(db.session(), principal.user_id)
    acr = ACR_MFA if has_mfa else ACR_PASSWORD
    auth_time = principal.claims.get("auth_time")
    if not isinstance(auth_time, int) or time.time() - auth_time > max_age:
        raise InsufficientUserAuthentication(
            f"This action needs a login within the last {max_age // 60} minutes.", max_age=max_age, acr=acr
        )
    if has_mfa and not satisfies_mfa(principal.claims.get("amr")):
        raise InsufficientUserAuthentication(
            "This action needs a login with your second factor.", max_age=max_age, acr=acr
        )


def require_step_up(max_age: int | None = None) -> Callable[[F], F]:
    """Decorator form of :func:`check_step_up`; put it under ``require(...)``."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check_step_up(max_age)
            return view(*args, **kwargs)

        wrapper._step_up = True  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


# --- the rules: which requests of an action need a step-up ------------------------------------

#: roles whose grant is a step-up action: an owner or admin can hand out every other role
PRIVILEGED_ROLES = frozenset({"owner", "admin"})


@dataclass(frozen=True)
class StepUpRule:
    """When ``action`` needs a step-up: ``applies(principal, **facts)``, the facts being what the
    view states about the request (keyword arguments of :func:`step_up_for`)."""

    action: str
    when: str
    applies: Callable[..., bool]


def _settings_change(principal: Principal, *, settings_changed: bool) -> bool:
    return settings_changed


#: a custom role holding one of these can change who gets in or what others may do: granting
#: it is a step-up action like granting admin (saas.tenancy.roles)
PRIVILEGED_PERMISSIONS = frozenset(
    {"members:manage", "roles:manage", "tenant:manage", "billing:manage", "clients:manage", "sso:manage"}
)


def _grants_privileged_role(principal: Principal, *, role: str) -> bool:
    if role in PRIVILEGED_ROLES:
        return True
    if role in ROLES:
        return False
    perms = custom_role_permissions(db.session(), principal.tenant_id, role)
    return bool(perms and perms & PRIVILEGED_PERMISSIONS)


def _demotes_owner(principal: Principal, *, from_role: str, to_role: str) -> bool:
    return from_role == "owner" and to_role != "owner"


def _removes_someone_else(principal: Principal, *, user_id: uuid.UUID) -> bool:
    return principal.user_id != user_id


#: action -> its rule (an action not listed here is a programming error: :func:`step_up_for`
#: raises ``KeyError``)
RULES: dict[str, StepUpRule] = {
    rule.action: rule
    for rule in (
        StepUpRule(
            "tenant.update",
            "its settings change (require_mfa, session_idle_minutes...: security policy); a "
            "rename needs none",
            _settings_change,
        ),
        StepUpRule(
            "member.invite",
            "the invitation is for an owner, an admin or a custom role holding a privileged permission",
            _grants_privileged_role,
        ),
        StepUpRule(
            "member.change_role",
            "the new role is owner, admin or a custom role holding a privileged permission",
            _grants_privileged_role,
        ),
        StepUpRule("member.demote_owner", "an owner loses the owner role", _demotes_owner),
        StepUpRule(
            "member.remove", "the member removed is someone else (leaving needs none)", _removes_someone_else
        ),
    )
}


def needs_step_up(action: str, principal: Principal | None = None, **facts: Any) -> bool:
    """Whether ``action``, with these facts, needs a step-up (``principal``: the current one)."""
    return RULES[action].applies(principal or current_principal(), **facts)


def step_up_for(action: str, **facts: Any) -> None:
    """Ask ``action``'s rule, and check the step-up (:func:`check_step_up`) when it applies.

    Raises:
        InsufficientUserAuthentication: the rule applies and the token is not fresh enough.
    """
    principal = current_principal()
    if RULES[action].applies(principal, **facts):
        check_step_up()
