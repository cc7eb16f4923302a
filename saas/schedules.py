"""Every periodic job, in one list: what ``saas beat`` (Celery beat) runs and when.

Each :class:`Schedule` names a plain function by its dotted path (``package.module:function``),
called by a worker as ``fn(app)`` inside the app's context (its services: ``services(app)``),
with ``kwargs`` if given; what it returns (a count, a small dict) is logged. Beat publishes a
``saas.schedule.run`` task with the schedule's name; the task takes the schedule's Redis lock
first (``saas:schedule:<name>``, held at most ``lock_seconds``), so a run still going when the
next tick comes, or a second beat during a rollout, never runs the same job twice at once.

To add a job: write the function (``def my_job(app) -> int``) in its feature package and append
one line here, e.g. ``Schedule("audit.retention", "saas.audit_retention:prune", cron="40 2 * * *")``.
Times are UTC. ``every`` (seconds), ``every_setting`` (the name of a :class:`saas.settings.Settings`
attribute holding seconds; 0 turns the job off) or ``cron`` (five fields: minute hour
day-of-month month day-of-week, crontab(5)): exactly one.

This module imports nothing from the code it schedules (paths are strings): any layer may
have a job here without an import cycle; ``tests/ops/test_jobs_celery.py`` imports every path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Schedule:
    """One periodic job.

    Attributes:
        name: unique, stable (the lock's and beat's key), ``<area>.<job>``.
        function: ``package.module:function``, called as ``function(app, **kwargs)``.
        every: seconds between runs, or
        every_setting: the Settings attribute with the seconds between runs (0: off), or
        cron: ``"minute hour day-of-month month day-of-week"`` (UTC).
        lock_seconds: the longest one run may hold the schedule's lock (then it expires).
        kwargs: JSON-able keyword arguments.
    """

    name: str
    function: str
    every: float | None = None
    cron: str | None = None
    every_setting: str | None = None
    lock_seconds: int = 3600
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.every, self.cron, self.every_setting)) != 1:
            raise ValueError(f"schedule {self.name}: give one of every=, every_setting= or cron=")
        if self.cron is not None and len(self.cron.split()) != 5:
            raise ValueError(f"schedule {self.name}: cron needs 5 fields, got {self.cron!r}")
        if ":" not in self.function:
            raise ValueError(f"schedule {self.name}: function must be 'package.module:function'")


SCHEDULES: list[Schedule] = [
    # soft-deleted tenants whose retention is over (was the CronJob saas-purge, same time)
    Schedule("tenants.purge", "saas.ops.periodic:purge_tenants", cron="17 3 * * *", lock_seconds=6 * 3600),
    # local billing state repaired from Stripe (missed webhooks); `saas billing sync --all`
    Schedule(
        "billing.reconcile", "saas.billing.periodic:reconcile", cron="45 */6 * * *", lock_seconds=3 * 3600
    ),
    # refresh tokens, authorization codes and mailed account tokens past their life
    Schedule("auth.expired_tokens", "saas.auth.cleanup:prune_expired_tokens", cron="5 * * * *"),
    # delivered outbox rows older than a week (their payloads are already blank)
    Schedule("outbox.prune", "saas.worker.periodic:prune_outbox", cron="25 * * * *"),
    # each billed tenant's new API calls to Stripe Billing Meters (docs/billing.md "Usage"):
    # every USAGE_REPORT_INTERVAL seconds (900), a period's last slice soon after its end
    Schedule(
        "billing.report_usage",
        "saas.billing.periodic:report_usage",
        every_setting="usage_report_interval_seconds",
        lock_seconds=1800,
    ),
    # end-of-grace mails, once per subscription and grace period (`saas billing dunning`)
    Schedule("billing.dunning", "saas.billing.periodic:dunning", cron="*/10 * * * *", lock_seconds=600),
    # audit events past each plan's audit_log_days, in batches (`saas audit prune`)
    Schedule("audit.retention", "saas.ops.periodic:prune_audit", cron="40 2 * * *", lock_seconds=6 * 3600),
    # webhook attempts and messages past WEBHOOKS_RETENTION_DAYS (`saas webhooks prune`)
    Schedule("webhooks.prune", "saas.ops.periodic:prune_webhooks", cron="35 4 * * *"),
]


def by_name(name: str) -> Schedule:
    """The schedule called ``name``.

    Raises:
        KeyError: no such schedule.
    """
    for schedule in SCHEDULES:
        if schedule.name == name:
            return schedule
    raise KeyError(name)
