"""``saas worker``: deliver outbox messages (mail, usage reports, deferred webhooks)."""

from __future__ import annotations

import click

from saas.cli.helpers import Context, fail_cleanly, pass_ctx, print_json


def register(main: click.Group) -> None:
    main.add_command(worker)


@click.command("worker")
@click.option("--once", is_flag=True, help="deliver what is due, then exit")
@click.option("--poll-interval", default=1.0, show_default=True, type=click.FloatRange(0.05, 60),
              help="seconds between polls when idle")  # fmt: skip
@pass_ctx
@fail_cleanly
def worker(ctx: Context, once: bool, poll_interval: float) -> None:
    """Run the background worker (stops gracefully on SIGTERM). Run as many as you like: each
    message is taken by one worker (FOR UPDATE SKIP LOCKED)."""
    from saas.worker import Worker, load_handlers

    app = ctx.app  # the handlers run in its app context (mail, billing jobs)
    load_handlers()
    w = Worker(ctx.services.database, ctx.settings, services={"app": app})
    with app.app_context():
        if once:
            print_json(w.run_until_idle())
        else:
            w.run_forever(poll_interval)
