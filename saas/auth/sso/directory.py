"""The directory port of single sign-on: how SSO adds members without importing the tenancy package.

``saas.tenancy`` imports ``saas.auth`` (members use sessions and step-up), so ``saas.auth`` never
imports it back (docs/architecture.md, the ``acyclic`` contract). Just-in-time membership and
``role_mapping`` still go through the one implementation of directory provisioning,
:mod:`saas.tenancy.members` (seats, billing, audit): that module is registered here as the
directory when its API is set up (:mod:`saas.tenancy.sso_views`), and SSO calls it through
:func:`directory`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, Protocol

from sqlalchemy.orm import Session

from saas.actions import ActionContext
from saas.identity.models import Membership, Tenant


class Directory(Protocol):
    """What :mod:`saas.tenancy.members` provides (see its functions for shapes and errors)."""

    def provision_member(
        self,
        ctx: ActionContext,
        tenant: Tenant,
        *,
        email: str,
        name: str | None,
        role: str,
        source: str,
        email_verified: bool,
        reactivate: bool = False,
    ) -> Any: ...

    def set_directory_role(
        self, ctx: ActionContext, membership: Membership, role: str, *, source: str
    ) -> bool: ...

    def check_role_exists(self, session: Session, tenant_id: uuid.UUID, role: str) -> None: ...

    def most_powerful_role(self, session: Session, tenant_id: uuid.UUID, roles: Iterable[str]) -> str: ...


_DIRECTORY: list[Directory] = []


def register_directory(directory_impl: Directory) -> None:
    """Make ``directory_impl`` the directory (idempotent: the last registration wins)."""
    _DIRECTORY[:] = [directory_impl]


def directory() -> Directory:
    """The registered directory.

    Raises:
        RuntimeError: none registered (the app was built without the tenancy API).
    """
    if not _DIRECTORY:
        raise RuntimeError("no SSO directory registered (saas.tenancy.sso_views registers it)")
    return _DIRECTORY[0]
