"""oauth clients: resource_server, the clients that may introspect their tenant's tokens

Revision ID: 0006_client_resource_server
Revises: 0005_ops

False for every existing client: after this migration only the clients an admin marks as
resource servers (or a token's audience) learn anything from introspection (RFC 7662 section 4).
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_client_resource_server"
down_revision = "0005_ops"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "oauth_clients",
        sa.Column("resource_server", sa.Boolean(), nullable=False, server_default=sa.false()),
        schema="saas",
    )
    op.alter_column("oauth_clients", "resource_server", server_default=None, schema="saas")


def downgrade() -> None:
    op.drop_column("oauth_clients", "resource_server", schema="saas")
