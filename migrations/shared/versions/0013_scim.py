"""SCIM 2.0 provisioning: tenants' SCIM tokens (SHA-256 only), settings, and the directory's
users, groups and group members

Revision ID: 0013_scim
Revises: 0012_custom_roles
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013_scim"
down_revision = "0012_custom_roles"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"], ["saas.tenants.id"], name=op.f(f"fk_{table}_tenant_id_tenants"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "scim_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        _tenant_fk("scim_tokens"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scim_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_scim_tokens_token_hash")),
        schema="saas",
    )
    op.create_index("ix_scim_tokens_tenant_id", "scim_tokens", ["tenant_id"], schema="saas")
    op.create_table(
        "scim_settings",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("group_roles", JSON, nullable=False),
        sa.Column("default_role", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        _tenant_fk("scim_settings"),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_scim_settings")),
        schema="saas",
    )
    op.create_table(
        "scim_users",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("user_name", sa.String(length=320), nullable=False),
        sa.Column("external_id", sa.String(length=320), nullable=True),
        sa.Column("display_name", sa.String(length=320), nullable=True),
        sa.Column("given_name", sa.String(length=200), nullable=True),
        sa.Column("family_name", sa.String(length=200), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("data", JSON, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        _tenant_fk("scim_users"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["saas.users.id"], name=op.f("fk_scim_users_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "user_id", name=op.f("pk_scim_users")),
        schema="saas",
    )
    op.create_index(
        "uq_scim_users_tenant_user_name",
        "scim_users",
        ["tenant_id", sa.text("lower(user_name)")],
        unique=True,
        schema="saas",
    )
    op.create_table(
        "scim_groups",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("display_name", sa.String(length=320), nullable=False),
        sa.Column("external_id", sa.String(length=320), nullable=True),
        sa.Column("data", JSON, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        _tenant_fk("scim_groups"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scim_groups")),
        schema="saas",
    )
    op.create_index(
        "uq_scim_groups_tenant_display_name",
        "scim_groups",
        ["tenant_id", sa.text("lower(display_name)")],
        unique=True,
        schema="saas",
    )
    op.create_table(
        "scim_group_members",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("group_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("display", sa.String(length=320), nullable=True),
        sa.ForeignKeyConstraint(
            ["group_id"], ["saas.scim_groups.id"], name=op.f("fk_scim_group_members_group_id_scim_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["saas.users.id"],
            name=op.f("fk_scim_group_members_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scim_group_members")),
        sa.UniqueConstraint("group_id", "user_id", name="uq_scim_group_members_group_user"),
        schema="saas",
    )  # fmt: skip
    op.create_index("ix_scim_group_members_user_id", "scim_group_members", ["user_id"], schema="saas")


def downgrade() -> None:
    op.drop_table("scim_group_members", schema="saas")
    op.drop_table("scim_groups", schema="saas")
    op.drop_table("scim_users", schema="saas")
    op.drop_table("scim_settings", schema="saas")
    op.drop_table("scim_tokens", schema="saas")
