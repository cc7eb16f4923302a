"""The product surface: the one module a product package (``tenants/``) imports from ``saas``,
and the one place ``saas`` reaches the product.

A product is a package with a ``register(product: Product)`` function. It declares its
blueprints (routes under ``/api/v1``) and its resources (a tenant table with the marshmallow
schema that checks its rows, for export and import); importing the package registers its
tables on :data:`saas.db.tenant_metadata`. The platform never imports a product module by name
outside this file: ``create_app`` registers what :func:`product` returns, and code that needs
every tenant table (provisioning, migrations, export, the schema check) calls
:func:`tenant_tables`.

Everything a product may use is re-exported below, so its imports read as one list and the
import-linter contract (``tenants`` imports ``saas`` only through ``saas.product``) keeps it so.
The shape follows Sentry's silo declarations (``src/sentry/db/models/base.py``): a module says
where it belongs, and a check, not a convention, holds it there.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from saas.actions import ActionContext
from saas.api import Blueprint, QueryArgsSchema
from saas.audit import AuditAction
from saas.auth.context import current_principal, require
from saas.db import TenantBase, session, utcnow
from saas.errors import Conflict, ErrorCode, NotFound, PreconditionFailed, ValidationError
from saas.pagination import Listing
from saas.webhooks.events import emit as emit_webhook

__all__ = [
    "PRODUCT_PACKAGE",
    "ActionContext",
    "AuditAction",
    "Blueprint",
    "Conflict",
    "ErrorCode",
    "Listing",
    "NotFound",
    "PreconditionFailed",
    "Product",
    "QueryArgsSchema",
    "Resource",
    "TenantBase",
    "ValidationError",
    "current_principal",
    "emit_webhook",
    "product",
    "require",
    "session",
    "tenant_tables",
    "utcnow",
]

#: the product package this deployment serves (one per deployment)
PRODUCT_PACKAGE = "tenants"


@dataclass(frozen=True, slots=True)
class Resource:
    """A product table that tenant export and import carry.

    Attributes:
        model: the SQLAlchemy model (a :class:`saas.db.TenantBase` subclass).
        schema: the marshmallow schema of the API's writes; an imported row is checked with the
            fields it declares (so an import cannot write what the API would refuse).
    """

    model: type[TenantBase]
    schema: type[Any]


@dataclass
class Product:
    """What a product registered: filled by its ``register(product)`` function, then read."""

    name: str
    blueprints: list[Blueprint] = field(default_factory=list)
    resources: dict[str, Resource] = field(default_factory=dict)

    def blueprint(self, blueprint: Blueprint) -> None:
        """Serve ``blueprint`` (its routes carry their own ``require(...)`` permissions)."""
        self.blueprints.append(blueprint)

    def resource(self, model: type[TenantBase], schema: type[Any]) -> None:
        """Carry ``model``'s table in tenant export and import, rows checked by ``schema``.

        Raises:
            ValueError: the table is registered twice, or is not a tenant table.
        """
        table = model.__table__.name  # type: ignore[attr-defined]
        if table in self.resources or model.metadata is not TenantBase.metadata:
            raise ValueError(f"{table}: registered twice, or not a tenant table")
        self.resources[table] = Resource(model, schema)


_registered: Product | None = None  # the one product of this process, once it registered


def product() -> Product:
    """The product package (:data:`PRODUCT_PACKAGE`), imported and registered once per process
    (a registration, not a memo: it runs once and is never evicted).

    Raises:
        ImportError: no such package. AttributeError: it has no ``register`` function.
    """
    global _registered
    if _registered is None:
        module = importlib.import_module(PRODUCT_PACKAGE)
        registering = Product(PRODUCT_PACKAGE)
        module.register(registering)
        _registered = registering
    return _registered


def tenant_tables() -> list[Any]:
    """Every table of a tenant schema (the platform's and the product's), in dependency order."""
    from saas.db import tenant_metadata

    product()
    return list(tenant_metadata.sorted_tables)
