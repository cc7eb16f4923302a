"""The product each tenant gets inside its own schema: a small CRM (contacts).

It depends on ``saas`` only through its product surface, :mod:`saas.product` (an import-linter
contract in ``.ci/run`` holds it there), and registers itself with :func:`register`.
"""

from __future__ import annotations

from saas.product import Product
from tenants import models


def register(product: Product) -> None:
    """Declare the product's routes and exportable tables (called once by ``saas.product``)."""
    from tenants import contacts

    product.blueprint(contacts.blp)
    product.resource(models.Contact, contacts.ContactSchema)
