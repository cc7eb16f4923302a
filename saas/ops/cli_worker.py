"""``saas worker``: deliver outbox messages (mail, usage reports, deferred webhooks)."""

from __future__ import annotations

import click

from saas.cli import Context, _fail_cleanly, _print_json, main, pass_ctx
from saas.services import services


@main.command("worker")
@click.option("--once", is_flag=True, help="deliver what is due, then exit")
@click.option("--poll-interval", default=1.0, show_default=True, type=click.FloatRange(0.05, 60),
              help="seconds between polls when idle")  # fmt: skip
@pass_ctx
@_fail_cleanly
def worker(ctx: Context, once: bool, poll_interval: float) -> None:
    """Run the background worker (stops gracefully on SIGTERM). Run as many as you like: each
    message is taken by one worker (FOR UPDATE SKIP LOCKED)."""
    from saas.worker import Worker, load_handlers

    app = ctx.app
    load_handlers()
    w = Worker(services(app).database, ctx.settings, services={"app": app})
    with app.app_context():
        if once:
            _print_json(w.run_until_idle())
        else:
            w.run_forever(poll_interval)
