"""``saas webhooks prune``: the retention of webhook attempts and messages (docs/webhooks.md).
Added to ``saas`` by :func:`register`; run daily by ``saas beat`` (``webhooks.prune`` in
:mod:`saas.schedules`)."""

from __future__ import annotations

import click

from saas.cli.helpers import Context, fail_cleanly, pass_ctx, print_json


def register(main: click.Group) -> None:
    main.add_command(webhooks)


@click.group()
def webhooks() -> None:
    """Outgoing webhooks: retention."""


@webhooks.command("prune")
@click.option("--days", type=click.IntRange(1, 3650), default=None,
              help="keep this many days (default: WEBHOOKS_RETENTION_DAYS, 30)")  # fmt: skip
@pass_ctx
@fail_cleanly
def prune_cmd(ctx: Context, days: int | None) -> None:
    """Delete attempts, finished deliveries and messages older than the retention; prints the
    counts as JSON."""
    from saas.db import utcnow
    from saas.webhooks.delivery import prune

    keep = days or ctx.settings.webhooks_retention_days
    with ctx.services.database.transaction() as session:
        counts = prune(session, utcnow(), keep)
    print_json({"days": keep, "deleted": counts})
