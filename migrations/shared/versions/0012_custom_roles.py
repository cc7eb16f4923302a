"""custom roles: a tenant's own named sets of permissions

Revision ID: 0012_custom_roles
Revises: 0011_sso_connections

``memberships.role`` names a built-in role or one of the tenant's ``custom_roles`` by name
(docs/auth.md, "Custom roles"); names are unique per tenant.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012_custom_roles"
down_revision = "0011_sso_connections"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "custom_roles",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("permissions", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["saas.tenants.id"],
            name=op.f("fk_custom_roles_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_custom_roles")),
        sa.UniqueConstraint("tenant_id", "name", name="uq_custom_roles_tenant_name"),
        schema="saas",
    )


def downgrade() -> None:
    op.drop_table("custom_roles", schema="saas")
