"""usage billed in the subscription's own period: billing_accounts.current_period_start, the
periods being reported (billing_usage_periods) and one report row per slice

Revision ID: 0018_usage_periods
Revises: 0017_billing_depth

An existing subscription's period start is estimated from its end and interval until the next
sync (``saas billing sync --all`` right after the upgrade brings Stripe's own value).
``billing_usage_reports`` becomes the ledger of slices (primary key tenant, period, slice): an
existing row (a whole calendar month, sent) becomes that month's slice 1, sent when it was
reported, its event timestamp the month's last second.
"""

import sqlalchemy as sa
from alembic import op

revision = "0018_usage_periods"
down_revision = "0017_billing_depth"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "billing_accounts",
        sa.Column("current_period_start", sa.DateTime(timezone=True), nullable=True),
        schema="saas",
    )
    # until the next sync brings Stripe's value (run `saas billing sync --all` after upgrading),
    # a live subscription's period starts one interval before its end (Stripe's anniversary;
    # exact but for month-end anchors after a shorter month)
    op.execute(
        "UPDATE saas.billing_accounts SET current_period_start = ((current_period_end AT TIME ZONE 'UTC')"
        " - CASE WHEN \"interval\" = 'year' THEN interval '1 year' ELSE interval '1 month' END)"
        " AT TIME ZONE 'UTC' WHERE current_period_end IS NOT NULL AND current_period_start IS NULL"
    )
    op.create_table(
        "billing_usage_periods",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("period", sa.String(length=32), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=False),
        sa.Column("reported", sa.BigInteger(), nullable=False),
        sa.Column("slices", sa.Integer(), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["saas.tenants.id"],
            name=op.f("fk_billing_usage_periods_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "period", name=op.f("pk_billing_usage_periods")),
        schema="saas",
    )
    op.create_index(
        "ix_billing_usage_periods_open",
        "billing_usage_periods",
        ["tenant_id"],
        unique=False,
        schema="saas",
        postgresql_where="closed_at IS NULL",
    )
    op.alter_column(
        "billing_usage_reports", "period", type_=sa.String(length=32), existing_nullable=False, schema="saas"
    )
    op.add_column(
        "billing_usage_reports",
        sa.Column("slice", sa.Integer(), nullable=False, server_default="1"),
        schema="saas",
    )
    for column in (
        sa.Column("cumulative", sa.BigInteger(), nullable=True),
        sa.Column("event_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    ):
        op.add_column("billing_usage_reports", column, schema="saas")
    op.execute(
        "UPDATE saas.billing_usage_reports SET cumulative = quantity, sent_at = reported_at, "
        "event_at = (to_date(period, 'YYYY-MM') + interval '1 month' - interval '1 second')"
        " AT TIME ZONE 'UTC'"
    )
    op.alter_column("billing_usage_reports", "cumulative", nullable=False, schema="saas")
    op.alter_column("billing_usage_reports", "event_at", nullable=False, schema="saas")
    op.alter_column("billing_usage_reports", "slice", server_default=None, schema="saas")
    op.drop_constraint("pk_billing_usage_reports", "billing_usage_reports", type_="primary", schema="saas")
    op.create_primary_key(
        "pk_billing_usage_reports", "billing_usage_reports", ["tenant_id", "period", "slice"], schema="saas"
    )


def downgrade() -> None:
    op.drop_constraint("pk_billing_usage_reports", "billing_usage_reports", type_="primary", schema="saas")
    op.execute("DELETE FROM saas.billing_usage_reports WHERE length(period) <> 7 OR slice <> 1")
    op.create_primary_key(
        "pk_billing_usage_reports", "billing_usage_reports", ["tenant_id", "period"], schema="saas"
    )
    op.drop_column("billing_usage_reports", "sent_at", schema="saas")
    op.drop_column("billing_usage_reports", "event_at", schema="saas")
    op.drop_column("billing_usage_reports", "cumulative", schema="saas")
    op.drop_column("billing_usage_reports", "slice", schema="saas")
    op.alter_column(
        "billing_usage_reports", "period", type_=sa.String(length=7), existing_nullable=False, schema="saas"
    )
    op.drop_index(
        "ix_billing_usage_periods_open",
        table_name="billing_usage_periods",
        schema="saas",
        postgresql_where="closed_at IS NULL",
    )
    op.drop_table("billing_usage_periods", schema="saas")
    op.drop_column("billing_accounts", "current_period_start", schema="saas")
