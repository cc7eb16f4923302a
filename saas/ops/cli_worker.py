"""``saas worker`` (the Celery worker with the outbox relay) and ``saas beat`` (the schedules)."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import click

from saas.cli.helpers import Context, fail_cleanly, pass_ctx, print_json


def register(main: click.Group) -> None:
    main.add_command(worker)
    main.add_command(beat)


def _celery(ctx: Context):
    from saas.worker.engine import make_celery

    return make_celery(ctx.settings, lambda: ctx.app)


@click.command("worker")
@click.option("--once", is_flag=True, help="deliver what is due in this process (no broker), then exit")
@click.option("--poll-interval", default=1.0, show_default=True, type=click.FloatRange(0.05, 60),
              help="seconds between the relay's rounds when idle")  # fmt: skip
@click.option(
    "--concurrency", type=click.IntRange(1, 256), help="task threads/processes [WORKER_CONCURRENCY]"
)
@click.option(
    "--pool", type=click.Choice(["threads", "prefork", "solo"]), default="threads", show_default=True
)
@click.option("--relay/--no-relay", default=True, show_default=True,
              help="run the outbox relay beside the worker (safe in every replica; it touches the"
                   " heartbeat file)")  # fmt: skip
@click.option("--events", is_flag=True, help="send Celery task events (Flower, `celery events`)")
@pass_ctx
@fail_cleanly
def worker(
    ctx: Context,
    once: bool,
    poll_interval: float,
    concurrency: int | None,
    pool: str,
    relay: bool,
    events: bool,
) -> None:
    """Run a background worker: a Celery worker on ``CELERY_BROKER_URL`` (default ``REDIS_URL``)
    and the outbox relay, which publishes committed outbox rows to it. Stops gracefully on
    SIGTERM (the tasks in hand finish). Run as many as you like: each row is relayed by one
    relay (FOR UPDATE SKIP LOCKED) and run once (its attempt is checked)."""
    from saas.worker import HEARTBEAT_FILE, Worker, load_handlers

    app = ctx.app  # the handlers run in its app context (mail, billing jobs)
    load_handlers()
    if once:
        w = Worker(ctx.services.database, ctx.settings, services={"app": app})
        with app.app_context():
            print_json(w.run_until_idle())
        return
    from celery.signals import worker_process_init

    from saas.observability.metrics import ensure_multiproc_dir
    from saas.worker.engine import dispose_after_fork, publisher, quiet_task_logs
    from saas.worker.relay import Relay

    ensure_multiproc_dir()
    celery = _celery(ctx)
    celery.set_default()  # the pool's threads look tasks up on the default app
    quiet_task_logs(ctx.settings.log_level)
    if pool == "prefork":
        worker_process_init.connect(lambda **_: dispose_after_fork(app), weak=False)
    relay_loop = None
    if relay:
        relay_loop = Relay(
            ctx.services.database, publisher(celery), lease_seconds=ctx.settings.outbox_relay_lease_seconds
        )
        threading.Thread(
            target=relay_loop.run_forever,
            kwargs={"poll_seconds": poll_interval, "heartbeat": HEARTBEAT_FILE},
            name="outbox-relay",
            daemon=True,
        ).start()
    try:
        celery.Worker(
            pool_cls=pool,
            concurrency=concurrency or ctx.settings.worker_concurrency,
            loglevel=ctx.settings.log_level,
            task_events=events,
            without_mingle=True,
            without_gossip=True,
            quiet=True,
        ).start()
    finally:
        if relay_loop is not None:
            relay_loop.stopping.set()


@click.command("beat")
@click.option("--schedule-file", type=click.Path(dir_okay=False, path_type=Path),
              default=Path(tempfile.gettempdir()) / "saas-beat-schedule", show_default=True,
              help="where beat keeps each schedule's last run")  # fmt: skip
@click.option("--list", "list_only", is_flag=True, help="print the schedules and exit")
@pass_ctx
@fail_cleanly
def beat(ctx: Context, schedule_file: Path, list_only: bool) -> None:
    """Run Celery beat: publishes every schedule of ``saas/schedules.py`` when due, for the
    workers to run. Run exactly one (infra/k8s/beat.yaml: one replica, Recreate); each run
    also takes its schedule's Redis lock, so an overlap never runs a job twice at once."""
    from saas.schedules import SCHEDULES

    if list_only:
        fields = ("name", "function", "every", "every_setting", "cron")
        print_json([{f: getattr(s, f) for f in fields} for s in SCHEDULES])
        return
    celery = _celery(ctx)
    celery.Beat(schedule=str(schedule_file), loglevel=ctx.settings.log_level, quiet=True).run()
