"""Plans and entitlements.

The catalogue is ``plans.toml`` beside this file (reviewed like code); an invalid catalogue
raises :class:`CatalogueError` at start-up. :func:`entitlements_for` answers what a tenant may
use now, from its plan and status. Limits are integers; ``None`` means unlimited.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

CATALOGUE_PATH = Path(__file__).with_name("plans.toml")
LIMIT_KEYS = ("seats", "requests_per_minute", "monthly_api_calls")


class CatalogueError(RuntimeError):
    """The plan catalogue is invalid; the message names the plan and key."""


@dataclass(frozen=True)
class Plan:
    id: str
    name: str
    seats: int | None
    requests_per_minute: int
    monthly_api_calls: int | None
    features: Mapping[str, Any] = field(default_factory=dict)
    per_seat: bool = False
    price_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Entitlements:
    """What a tenant may use now. ``read_only``: writes answer 402 ``payment_required``."""

    plan: str
    seats: int | None
    requests_per_minute: int
    monthly_api_calls: int | None
    features: Mapping[str, Any]
    read_only: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "seats": self.seats,
            "requests_per_minute": self.requests_per_minute,
            "monthly_api_calls": self.monthly_api_calls,
            "features": dict(self.features),
            "read_only": self.read_only,
        }


def _limit(plan_id: str, key: str, raw: Any, required: bool = True) -> int | None:
    if raw is None and not required:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < -1:
        raise CatalogueError(f"plans.{plan_id}.{key}: expected an integer >= -1, got {raw!r}")
    return None if raw == -1 else raw


def parse_catalogue(data: Mapping[str, Any]) -> tuple[str, dict[str, Plan]]:
    """Validate a parsed catalogue; returns (default plan id, plans by id)."""
    raw_plans = data.get("plans")
    if not isinstance(raw_plans, Mapping) or not raw_plans:
        raise CatalogueError("plans: at least one plan is required")
    plans: dict[str, Plan] = {}
    for plan_id, raw in raw_plans.items():
        if not isinstance(raw, Mapping):
            raise CatalogueError(f"plans.{plan_id}: expected a table")
        rpm = _limit(plan_id, "requests_per_minute", raw.get("requests_per_minute"))
        if rpm is None:
            raise CatalogueError(f"plans.{plan_id}.requests_per_minute: must be a positive limit")
        plans[plan_id] = Plan(
            id=plan_id,
            name=str(raw.get("name", plan_id)),
            seats=_limit(plan_id, "seats", raw.get("seats")),
            requests_per_minute=rpm,
            monthly_api_calls=_limit(plan_id, "monthly_api_calls", raw.get("monthly_api_calls")),
            features=dict(raw.get("features") or {}),
            per_seat=bool(raw.get("per_seat", False)),
            price_env=dict(raw.get("price_env") or {}),
        )
    default = data.get("default_plan")
    if default not in plans:
        raise CatalogueError(f"default_plan: {default!r} is not a plan of the catalogue")
    return default, plans


@cache
def catalogue(path: Path = CATALOGUE_PATH) -> tuple[str, dict[str, Plan]]:
    """The parsed catalogue (read once per process)."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogueError(f"{path}: {exc}") from None
    return parse_catalogue(data)


def plan(plan_id: str | None) -> Plan:
    """A plan by id; unknown or None gives the default plan."""
    default, plans = catalogue()
    return plans.get(plan_id or default) or plans[default]


def entitlements_for(tenant: Any) -> Entitlements:
    """Entitlements of ``tenant`` (anything with ``plan``) from its plan.

    The billing issue extends this with subscription status, grace periods and operator
    overrides; callers do not change.
    """
    p = plan(getattr(tenant, "plan", None))
    return Entitlements(p.id, p.seats, p.requests_per_minute, p.monthly_api_calls, p.features)
