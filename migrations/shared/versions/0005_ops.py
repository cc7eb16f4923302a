"""operations: tenant suspension and scheduled deletion, outbox dead letters

Revision ID: 0005_ops
Revises: 0004_billing_fixes
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_ops"
down_revision = "0004_billing_fixes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("suspended_reason", sa.Text(), nullable=True), schema="saas")
    op.add_column(
        "tenants", sa.Column("suspended_at", sa.DateTime(timezone=True), nullable=True), schema="saas"
    )
    op.add_column(
        "tenants", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True), schema="saas"
    )
    op.add_column(
        "tenants", sa.Column("purge_after", sa.DateTime(timezone=True), nullable=True), schema="saas"
    )
    op.create_index(
        "ix_tenants_purge_after",
        "tenants",
        ["purge_after"],
        unique=False,
        schema="saas",
        postgresql_where=sa.text("purge_after IS NOT NULL"),
    )
    op.add_column("outbox", sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True), schema="saas")
    op.create_index(
        "ix_outbox_failed",
        "outbox",
        ["failed_at"],
        unique=False,
        schema="saas",
        postgresql_where=sa.text("failed_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_failed", "outbox", schema="saas")
    op.drop_column("outbox", "failed_at", schema="saas")
    op.drop_index("ix_tenants_purge_after", "tenants", schema="saas")
    for column in ("purge_after", "deleted_at", "suspended_at", "suspended_reason"):
        op.drop_column("tenants", column, schema="saas")
