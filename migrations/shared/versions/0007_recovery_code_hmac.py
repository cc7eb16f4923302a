"""mfa recovery codes: hash_scheme, so plain SHA-256 rows can be told from keyed ones

Revision ID: 0007_recovery_code_hmac
Revises: 0006_client_resource_server

Existing rows are ``sha256`` (the plain SHA-256 of the code). New rows are ``hmac-sha256``:
HMAC-SHA256, under a key derived from ``SECRET_KEY``, of the user id and that same SHA-256, so
an old row is rewritten without the code: by ``saas users rehash-recovery-codes`` (every user at
once), or for one user at that user's next recovery-code check. The migration itself cannot do
it: it has no key.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_recovery_code_hmac"
down_revision = "0006_client_resource_server"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "mfa_recovery_codes",
        sa.Column("hash_scheme", sa.String(length=16), nullable=False, server_default="sha256"),
        schema="saas",
    )
    op.alter_column("mfa_recovery_codes", "hash_scheme", server_default=None, schema="saas")


def downgrade() -> None:
    op.drop_column("mfa_recovery_codes", "hash_scheme", schema="saas")
