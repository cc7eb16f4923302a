"""Registers the operations commands on the ``saas`` CLI (imported at the bottom of
:mod:`saas.cli`)."""

from __future__ import annotations

import importlib

for _module in (
    "cli_migrate",  # tenants migrate, db check
    "cli_tenants",  # tenants suspend|resume|delete|purge|export|import|rename-slug
    "cli_ops",  # users, audit, jobs, doctor
    "cli_worker",  # worker
):
    importlib.import_module(f"saas.ops.{_module}")
