"""The shared-track migration 0003_auth gives exactly the tables the auth models declare."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import saas.models  # noqa: F401 - registers every shared table
from saas.db import SHARED_SCHEMA, shared_metadata


def test_shared_migrations_match_models(engine):
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_schemas": True,
                "compare_type": True,
                "version_table_schema": SHARED_SCHEMA,
                "include_name": lambda name, type_, parents: (
                    name == SHARED_SCHEMA if type_ == "schema" else True
                ),
            },
        )
        assert compare_metadata(context, shared_metadata) == []
