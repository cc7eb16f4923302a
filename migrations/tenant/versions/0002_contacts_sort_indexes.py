"""contacts: one index per list sort order, tie-breaker included

The list's pages (saas.pagination) order by ``(column, id)``: a cursor page is a range of the
index on ``(column, id)``, an offset page its head, so neither sorts the tenant's contacts.
The single-column indexes they replace are prefixes of the new ones. ``updated_at`` is a sort
of the list too and had no index.

Runs inside the tenant's transaction like every tenant migration: ``CREATE INDEX`` holds a
lock that blocks writes to the tenant's contacts while it builds (about 1 s per million rows).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 10:00:00
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_SORTS = ("name", "email", "company", "created_at", "updated_at")
_OLD = ("name", "email", "company", "created_at")


def upgrade() -> None:
    for column in _SORTS:
        op.create_index(f"ix_contacts_{column}_id", "contacts", [column, "id"], unique=False, schema="tenant")
    for column in _OLD:
        op.drop_index(f"ix_contacts_{column}", table_name="contacts", schema="tenant")


def downgrade() -> None:
    for column in _OLD:
        op.create_index(f"ix_contacts_{column}", "contacts", [column], unique=False, schema="tenant")
    for column in _SORTS:
        op.drop_index(f"ix_contacts_{column}_id", table_name="contacts", schema="tenant")
