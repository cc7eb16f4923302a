"""``saas dev``: the service on this machine, migrations applied and the outbox delivered."""

from __future__ import annotations

import os
import sys

import click

from saas.cli.helpers import CliError, Context, fail_cleanly, pass_ctx


def register(main: click.Group) -> None:
    main.add_command(dev)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers", default=1, show_default=True, type=int, help="gunicorn workers (1 = Flask dev server)"
)
@pass_ctx
@fail_cleanly
def dev(ctx: Context, host: str, port: int, workers: int) -> None:
    """Run the service on the configured servers, or an embedded PostgreSQL and Redis stand-in.

    Applies pending migrations first, so a fresh clone serves the API at once, and delivers the
    outbox as ``saas worker`` does: without ``SMTP_URL`` every outgoing mail (invitations and
    their tokens included) is printed to this console.
    """
    os.environ.setdefault("SAAS_ENV", "development")
    # log lines for a person (LOG_FORMAT=json keeps JSON), coloured only on a terminal
    os.environ.setdefault("LOG_FORMAT", "console")
    # the links of mailed tokens, the iss claim and the passkeys' RP id name this server: on
    # another --port too (localhost, not 127.0.0.1: an IP address cannot be a WebAuthn RP id)
    local = host in ("127.0.0.1", "0.0.0.0", "::1", "::", "localhost")  # noqa: S104 - names, not a bind
    os.environ.setdefault("SAAS_ISSUER", f"http://{'localhost' if local else host}:{port}")
    settings = ctx.settings
    from saas.migrate import upgrade_shared
    from saas.ops.migrations import migrate_tenants

    app = ctx.app
    upgrade_shared(ctx.migration_engine)
    migrate_tenants(ctx.migration_engine)
    click.echo(f"serving on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    mail = "printed here" if not settings.smtp_url else "sent over SMTP_URL"
    click.echo(f"delivering the outbox (mail {mail})")
    if workers > 1:
        if not settings.redis_url:
            raise CliError("several workers need REDIS_URL (the in-process stand-in is per process)")
        os.environ["DATABASE_URL"] = settings.database_url or ""
        # the outbox worker in a child process sharing this console; gunicorn replaces this one
        import subprocess

        subprocess.Popen([sys.executable, "-c", "from saas.cli import main; main(['worker'])"])
        os.execvp(  # noqa: S606 - replaces this process with gunicorn
            sys.executable,
            [sys.executable, "-m", "gunicorn", "-c", "infra/gunicorn.conf.py", "-b", f"{host}:{port}",
             "-w", str(workers), "wsgi:app"],
        )  # fmt: skip
    _deliver_outbox_in_background(app)
    quiet_werkzeug()
    app.run(host=host, port=port, debug=False, use_reloader=False, threaded=True)


#: the in-process job engine of ``saas dev`` (referenced for the process's life)
_running: list[object] = []


def quiet_werkzeug() -> None:
    """The development server's own request lines off: the app's request log already has one per
    request (the route template, never the path's query string, which Werkzeug's line would
    carry with any token in it); its warnings and errors stay."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def _deliver_outbox_in_background(app) -> None:
    """Run the job engine inside ``saas dev``'s single process: a Celery worker thread on the
    configured broker (``memory://`` without ``REDIS_URL``: nothing to install) and the outbox
    relay beside it, so the mail prints to the same console (the embedded Redis stand-in is per
    process too)."""
    import threading

    from saas.services import services
    from saas.worker import load_handlers
    from saas.worker.engine import in_process_worker, make_celery, publisher
    from saas.worker.relay import Relay

    load_handlers()
    settings = services(app).settings
    celery = make_celery(settings, lambda: app)
    lease = settings.outbox_relay_lease_seconds
    relay = Relay(services(app).database, publisher(celery), lease_seconds=lease)
    worker = in_process_worker(celery, pool="threads", concurrency=2)
    worker.__enter__()  # a daemon thread: ends with the process
    _running.append(worker)  # kept: a collected context manager would stop the worker
    relay_thread = threading.Thread(
        target=relay.run_forever, kwargs={"poll_seconds": 0.5}, name="outbox-relay", daemon=True
    )
    relay_thread.start()
