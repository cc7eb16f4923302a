"""billing: ordering guard of customer events (billing_accounts.customer_event_created)

Revision ID: 0004_billing_fixes
Revises: 0003_auth
Create Date: 2026-11-21 14:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_billing_fixes"
down_revision = "0003_auth"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "billing_accounts", sa.Column("customer_event_created", sa.BigInteger(), nullable=True), schema="saas"
    )


def downgrade() -> None:
    op.drop_column("billing_accounts", "customer_event_created", schema="saas")
