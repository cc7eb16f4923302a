"""auth: browser sessions of the hosted pages (server-side rows behind the saas_auth cookie)

Revision ID: 0008_browser_sessions
Revises: 0007_recovery_code_hmac
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008_browser_sessions"
down_revision = "0007_recovery_code_hmac"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "browser_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("auth_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amr", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_reason", sa.String(length=64), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["saas.users.id"], name=op.f("fk_browser_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_browser_sessions")),
        schema="saas",
    )
    op.create_index(
        "ix_browser_sessions_user_id", "browser_sessions", ["user_id"], unique=False, schema="saas"
    )


def downgrade() -> None:
    op.drop_index("ix_browser_sessions_user_id", table_name="browser_sessions", schema="saas")
    op.drop_table("browser_sessions", schema="saas")
