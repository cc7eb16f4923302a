"""verified domains: the DNS domains a tenant claims, and proves with a TXT record

Revision ID: 0010_verified_domains
Revises: 0009_identity_lifecycle

At most one tenant holds a domain verified: the partial unique index on ``domain`` where
``verified_at`` is set (docs/auth.md, "Verified domains").
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_verified_domains"
down_revision = "0009_identity_lifecycle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "verified_domains",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["saas.tenants.id"],
            name=op.f("fk_verified_domains_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verified_domains")),
        sa.UniqueConstraint("tenant_id", "domain", name="uq_verified_domains_tenant_domain"),
        schema="saas",
    )
    op.create_index(
        "uq_verified_domains_domain_verified",
        "verified_domains",
        ["domain"],
        unique=True,
        schema="saas",
        postgresql_where=sa.text("verified_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_verified_domains_domain_verified", table_name="verified_domains", schema="saas")
    op.drop_table("verified_domains", schema="saas")
