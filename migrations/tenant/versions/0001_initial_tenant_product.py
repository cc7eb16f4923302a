"""initial tenant product

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-21 13:27:22.143693
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "audit_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_type", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.String(length=320), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=64), nullable=True),
        sa.Column("target_id", sa.String(length=64), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        schema="tenant",
    )
    op.create_index("ix_audit_events_action", "audit_events", ["action"], unique=False, schema="tenant")
    op.create_index("ix_audit_events_actor_id", "audit_events", ["actor_id"], unique=False, schema="tenant")
    op.create_index(
        "ix_audit_events_occurred_at", "audit_events", ["occurred_at"], unique=False, schema="tenant"
    )
    op.create_table(
        "contacts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("phone", sa.String(length=64), nullable=True),
        sa.Column("company", sa.String(length=200), nullable=True),
        sa.Column("tags", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contacts")),
        schema="tenant",
    )
    op.create_index("ix_contacts_company", "contacts", ["company"], unique=False, schema="tenant")
    op.create_index("ix_contacts_created_at", "contacts", ["created_at"], unique=False, schema="tenant")
    op.create_index("ix_contacts_email", "contacts", ["email"], unique=False, schema="tenant")
    op.create_index("ix_contacts_name", "contacts", ["name"], unique=False, schema="tenant")


def downgrade() -> None:

    op.drop_index("ix_contacts_name", table_name="contacts", schema="tenant")
    op.drop_index("ix_contacts_email", table_name="contacts", schema="tenant")
    op.drop_index("ix_contacts_created_at", table_name="contacts", schema="tenant")
    op.drop_index("ix_contacts_company", table_name="contacts", schema="tenant")
    op.drop_table("contacts", schema="tenant")
    op.drop_index("ix_audit_events_occurred_at", table_name="audit_events", schema="tenant")
    op.drop_index("ix_audit_events_actor_id", table_name="audit_events", schema="tenant")
    op.drop_index("ix_audit_events_action", table_name="audit_events", schema="tenant")
    op.drop_table("audit_events", schema="tenant")
