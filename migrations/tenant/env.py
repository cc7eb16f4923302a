"""Alembic environment of the tenant track, applied to one tenant schema per run.

``saas.migrate`` passes the connection (inside the tenant's own transaction) and the schema
name. ``SET LOCAL`` scopes the search path to that transaction only (invariant 3).
"""

from alembic import context
from psycopg import sql as pgsql
from sqlalchemy import text

from saas.db import TENANT_PLACEHOLDER, check_schema_name, tenant_metadata
from saas.product import tenant_tables

tenant_tables()  # the platform's and the product's tables on tenant_metadata

config = context.config
connection = config.attributes["connection"]
schema = check_schema_name(config.attributes["schema"])

connection.execute(text("SET LOCAL search_path TO " + pgsql.Identifier(schema).as_string(None)))
connection = connection.execution_options(schema_translate_map={TENANT_PLACEHOLDER: schema})


def include_name(name, type_, parent_names):
    if type_ == "schema":
        return name == schema
    return True


context.configure(
    connection=connection,
    target_metadata=tenant_metadata,
    version_table_schema=schema,
    include_schemas=True,
    include_name=include_name,
    compare_type=True,
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
