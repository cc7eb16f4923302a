"""billing depth: the customer's tax ids and address, the unpaid invoice's page, the dunning mark

Revision ID: 0017_billing_depth
Revises: 0014_api_keys

``billing_accounts.customer_address`` and ``customer_tax_ids`` mirror the Stripe customer (from
``customer.updated`` and ``customer.tax_id.*``); ``open_invoice_url`` is the unpaid latest
invoice's hosted page while ``past_due``; ``grace_notice_for`` holds the start
(``past_due_since``) of the grace period whose end was mailed, so ``saas billing dunning``
mails once per subscription and grace period.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0017_billing_depth"
down_revision = "0014_api_keys"
branch_labels = None
depends_on = None


def _columns() -> list[sa.Column]:
    return [
        sa.Column("customer_address", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("customer_tax_ids", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("open_invoice_url", sa.String(length=2048), nullable=True),
        sa.Column("grace_notice_for", sa.DateTime(timezone=True), nullable=True),
    ]


def upgrade() -> None:
    for column in _columns():
        op.add_column("billing_accounts", column, schema="saas")


def downgrade() -> None:
    for column in reversed(_columns()):
        op.drop_column("billing_accounts", column.name, schema="saas")
