"""Alembic environment of the shared (control-plane) track. Run by ``saas.migrate``."""

from alembic import context

import saas.models  # noqa: F401 - registers every shared table
from saas.db import SHARED_SCHEMA, shared_metadata

config = context.config
connection = config.attributes["connection"]


def include_name(name, type_, parent_names):
    if type_ == "schema":
        return name == SHARED_SCHEMA
    return True


context.configure(
    connection=connection,
    target_metadata=shared_metadata,
    version_table_schema=SHARED_SCHEMA,
    include_schemas=True,
    include_name=include_name,
    compare_type=True,
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
