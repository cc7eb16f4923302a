"""Step-up authentication for sensitive actions (RFC 9470).

Use on any view (other packages too)::

    from saas.auth.stepup import require_step_up

    @blp.route("/billing/plan")
    class Plan(MethodView):
        @require("billing:manage")
        @require_step_up()
        def put(self, body): ...

The caller's access token must have an ``auth_time`` at most ``max_age`` seconds old (default
``STEP_UP_MAX_AGE``, 10 minutes) and, when the user has MFA enabled, an ``amr`` containing
``otp``. Otherwise the answer is 401 with
``WWW-Authenticate: Bearer error="insufficient_user_authentication", max_age=..., acr_values=...``
(RFC 9470 section 3) and the problem code ``insufficient_user_authentication``; the client logs
the user in again (``/oauth/authorize?max_age=...`` or ``POST /api/v1/auth/login``) and retries.
Service-account tokens (``client_credentials``) never pass: no person authenticated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from saas import db
from saas.auth.context import current_principal
from saas.auth.tokens import ACR_MFA, ACR_PASSWORD
from saas.errors import AppError
from saas.services import services

F = TypeVar("F", bound=Callable[..., Any])


class InsufficientUserAuthentication(AppError):
    """RFC 9470 section 3: 401 with the ``insufficient_user_authentication`` challenge."""

    status, code, title = 401, "insufficient_user_authentication", "Recent authentication required"

    def __init__(self, detail: str, *, max_age: int, acr: str):
        super().__init__(detail, extra={"max_age": max_age, "acr_values": acr})
        self.headers["WWW-Authenticate"] = (
            f'Bearer error="insufficient_user_authentication", error_description="{detail}", '
            f'max_age={max_age}, acr_values="{acr}"'
        )


def check_step_up(max_age: int | None = None) -> None:
    """Raise :class:`InsufficientUserAuthentication` unless the current token is fresh enough
    (``auth_time`` within ``max_age`` seconds) and MFA-backed when the user has MFA."""
    from saas.auth import mfa

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
    if has_mfa and "otp" not in (principal.claims.get("amr") or []):
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
