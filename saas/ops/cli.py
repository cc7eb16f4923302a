"""Registers the operations commands on the ``saas`` CLI (imported at the bottom of
:mod:`saas.cli`)."""

from __future__ import annotations

from saas.ops import cli_migrate  # noqa: F401 - tenants migrate, db check
