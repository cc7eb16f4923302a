"""sso connections and external identities: a tenant's OIDC and SAML identity providers, and the
outside identities (SSO, social login) linked to accounts

Revision ID: 0011_sso_connections
Revises: 0010_verified_domains
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011_sso_connections"
down_revision = "0010_verified_domains"
branch_labels = None
depends_on = None

JSONB = postgresql.JSONB(astext_type=sa.Text())


def upgrade() -> None:
    op.create_table(
        "sso_connections",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("domains", JSONB, nullable=False),
        sa.Column("default_role", sa.String(length=64), nullable=False),
        sa.Column("role_mapping", JSONB, nullable=False),
        sa.Column("config", JSONB, nullable=False),
        sa.Column("secret_encrypted", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["saas.tenants.id"],
            name=op.f("fk_sso_connections_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sso_connections")),
        schema="saas",
    )
    op.create_index("ix_sso_connections_tenant_id", "sso_connections", ["tenant_id"], schema="saas")
    op.create_table(
        "external_identities",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(length=80), nullable=False),
        sa.Column("subject", sa.String(length=512), nullable=False),
        sa.Column("connection_id", sa.Uuid(), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["saas.users.id"],
            name=op.f("fk_external_identities_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["saas.sso_connections.id"],
            name=op.f("fk_external_identities_connection_id_sso_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_external_identities")),
        sa.UniqueConstraint("provider", "subject", name="uq_external_identities_provider_subject"),
        schema="saas",
    )
    op.create_index("ix_external_identities_user_id", "external_identities", ["user_id"], schema="saas")


def downgrade() -> None:
    op.drop_index("ix_external_identities_user_id", table_name="external_identities", schema="saas")
    op.drop_table("external_identities", schema="saas")
    op.drop_index("ix_sso_connections_tenant_id", table_name="sso_connections", schema="saas")
    op.drop_table("sso_connections", schema="saas")
