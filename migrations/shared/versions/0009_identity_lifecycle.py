"""identity lifecycle: verified emails, account tokens (reset, verification, email change),
passkeys, known devices, and OpenID Connect logout (RP-initiated and back-channel)

Revision ID: 0009_identity_lifecycle
Revises: 0008_browser_sessions

Accounts that exist before this revision have ``email_verified_at`` NULL: nothing proved their
mailbox, so they are unverified until they use a verification link (docs/auth.md, "Emails").
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009_identity_lifecycle"
down_revision = "0008_browser_sessions"
branch_labels = None
depends_on = None

JSONB = postgresql.JSONB(astext_type=sa.Text())


def upgrade() -> None:
    # --- emails ----------------------------------------------------------------------------------
    op.add_column("users", sa.Column("email_verified_at", sa.DateTime(timezone=True)), schema="saas")

    # --- account tokens (password reset, email verification, email change) ------------------------
    op.create_table(
        "account_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["saas.users.id"], name=op.f("fk_account_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_account_tokens_token_hash")),
        schema="saas",
    )
    op.create_index(
        "ix_account_tokens_user_purpose", "account_tokens", ["user_id", "purpose"], schema="saas"
    )

    # --- passkeys (WebAuthn) ----------------------------------------------------------------------
    op.create_table(
        "webauthn_credentials",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("credential_id", sa.LargeBinary(), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("sign_count", sa.BigInteger(), nullable=False),
        sa.Column("aaguid", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("transports", JSONB, nullable=False),
        sa.Column("discoverable", sa.Boolean(), nullable=False),
        sa.Column("backup_eligible", sa.Boolean(), nullable=False),
        sa.Column("backed_up", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["saas.users.id"], name=op.f("fk_webauthn_credentials_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webauthn_credentials")),
        sa.UniqueConstraint("credential_id", name=op.f("uq_webauthn_credentials_credential_id")),
        schema="saas",
    )
    op.create_index(
        "ix_webauthn_credentials_user_id", "webauthn_credentials", ["user_id"], schema="saas"
    )

    # --- known devices (the new-device notice) -----------------------------------------------------
    op.create_table(
        "known_devices",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("device_hash", sa.String(length=64), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["saas.users.id"], name=op.f("fk_known_devices_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_known_devices")),
        sa.UniqueConstraint("user_id", "device_hash", name=op.f("uq_known_devices_user_id_device_hash")),
        schema="saas",
    )

    # --- OpenID Connect logout -------------------------------------------------------------------
    op.add_column(
        "oauth_clients",
        sa.Column("post_logout_redirect_uris", JSONB, nullable=False, server_default="[]"),
        schema="saas",
    )
    op.add_column("oauth_clients", sa.Column("backchannel_logout_uri", sa.String(2048)), schema="saas")
    op.add_column(
        "oauth_clients",
        sa.Column(
            "backchannel_logout_session_required", sa.Boolean(), nullable=False, server_default=sa.false()
        ),
        schema="saas",
    )
    op.add_column("refresh_tokens", sa.Column("browser_session_id", sa.Uuid()), schema="saas")
    op.add_column("authorization_codes", sa.Column("browser_session_id", sa.Uuid()), schema="saas")
    op.create_index(
        "ix_refresh_tokens_browser_session_id",
        "refresh_tokens",
        ["browser_session_id"],
        schema="saas",
        postgresql_where=sa.text("browser_session_id IS NOT NULL"),
    )
    op.create_index(
        "ix_authorization_codes_browser_session_id",
        "authorization_codes",
        ["browser_session_id"],
        schema="saas",
        postgresql_where=sa.text("browser_session_id IS NOT NULL"),
    )
    op.create_table(
        "backchannel_logout_attempts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("outbox_id", sa.BigInteger(), nullable=True),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("sid", sa.String(length=64), nullable=True),
        sa.Column("sub", sa.String(length=64), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backchannel_logout_attempts")),
        schema="saas",
    )
    op.create_index(
        "ix_backchannel_logout_attempts_client_id", "backchannel_logout_attempts", ["client_id"],
        schema="saas",
    )


def downgrade() -> None:
    op.drop_index(
        "ix_backchannel_logout_attempts_client_id", table_name="backchannel_logout_attempts", schema="saas"
    )
    op.drop_table("backchannel_logout_attempts", schema="saas")
    op.drop_index("ix_refresh_tokens_browser_session_id", table_name="refresh_tokens", schema="saas")
    op.drop_index(
        "ix_authorization_codes_browser_session_id", table_name="authorization_codes", schema="saas"
    )
    op.drop_column("authorization_codes", "browser_session_id", schema="saas")
    op.drop_column("refresh_tokens", "browser_session_id", schema="saas")
    op.drop_column("oauth_clients", "backchannel_logout_session_required", schema="saas")
    op.drop_column("oauth_clients", "backchannel_logout_uri", schema="saas")
    op.drop_column("oauth_clients", "post_logout_redirect_uris", schema="saas")
    op.drop_table("known_devices", schema="saas")
    op.drop_index("ix_webauthn_credentials_user_id", table_name="webauthn_credentials", schema="saas")
    op.drop_table("webauthn_credentials", schema="saas")
    op.drop_index("ix_account_tokens_user_purpose", table_name="account_tokens", schema="saas")
    op.drop_table("account_tokens", schema="saas")
    op.drop_column("users", "email_verified_at", schema="saas")
