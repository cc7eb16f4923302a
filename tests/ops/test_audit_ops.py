"""The audit log's operations (docs/audit.md), committed for real: concurrent appends never
fork a tenant's chain, retention prunes each plan's ``audit_log_days`` in batches and keeps
the chain verifiable, ``saas audit verify|prune`` and their exit codes, and a trusted import's
history chained anew."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update

from saas import audit
from saas.audit import AuditAction, AuditChain, AuditEvent, verify_chain
from saas.db import Database, utcnow
from saas.identity.models import Tenant
from saas.ops.audit_retention import prune_expired
from tests.ops.test_import import crafted  # noqa: F401 - the fixture

#: the tests' clock, years after the real one whatever the day: the audit.pruned event a prune
#: writes carries the real clock's time, which must stay long before NOW (no fixed date)
NOW = (datetime.now(UTC) + timedelta(days=1500)).replace(hour=12, minute=0, second=0, microsecond=0)


def _event(when: datetime, **data) -> dict:
    return {
        "id": uuid.uuid4(), "occurred_at": when, "actor_type": "system", "actor_id": None,
        "action": AuditAction.CONTACT_CREATED, "target_type": None, "target_id": None, "ip": None,
        "user_agent": None, "request_id": None, "data": data,
    }  # fmt: skip


def _append(db: Database, tenant: Tenant, *days_ago: float, now: datetime = NOW) -> None:
    with db.transaction(tenant.schema_name) as session:
        audit.append(session, [_event(now - timedelta(days=d), days=d) for d in days_ago])


def _verify(db: Database, tenant: Tenant):
    with db.transaction(tenant.schema_name) as session:
        return verify_chain(session)


def _kept(db: Database, tenant: Tenant) -> list[tuple[int, object]]:
    with db.transaction(tenant.schema_name) as session:
        rows = session.execute(select(AuditEvent.seq, AuditEvent.data).order_by(AuditEvent.seq)).all()
        return [(r.seq, r.data.get("days")) for r in rows]


def _set_plan(db: Database, tenant: Tenant, plan: str) -> None:
    with db.transaction() as session:
        session.execute(update(Tenant).where(Tenant.id == tenant.id).values(plan=plan))


def test_concurrent_appends_never_fork_the_chain(committed):
    """Six transactions at once, fifteen events each, on one tenant: the chain row's lock
    serialises them, so ``seq`` is 1..90 without a gap or a duplicate and every link holds."""
    tenant = committed.tenant()
    db = committed.db
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            start.wait(timeout=30)
            for i in range(15):
                with db.transaction(tenant.schema_name) as session:
                    audit.record(
                        session, AuditAction.CONTACT_CREATED, actor=audit.SYSTEM, data={"w": n, "i": i}
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert [seq for seq, _ in _kept(db, tenant)] == list(range(1, 91))
    report = _verify(db, tenant)
    assert report.ok and report.checked == 90 and report.head_seq == 90


def test_prune_keeps_each_plans_days_in_batches_and_the_chain_verifies(committed):
    db = committed.db
    free, pro, unlimited = committed.tenant(), committed.tenant(), committed.tenant()
    _set_plan(db, pro, "pro")
    _append(db, free, 30, 10, 8, 5, 20, 1)  # 20 days old after a recent one: kept (a prefix only)
    _append(db, pro, 100, 30)
    _append(db, unlimited, 400)
    with db.transaction() as session:  # an operator's override: unlimited retention
        from saas.billing.models import BillingOverride

        session.add(BillingOverride(tenant_id=unlimited.id, plan="free", limits={"audit_log_days": -1},
                                    reason="legal hold", set_by="op"))  # fmt: skip
    only = {free.slug, pro.slug, unlimited.slug}
    results = {r.slug: r for r in prune_expired(db, NOW, only=only, batch_size=2)}
    assert (results[free.slug].days, results[free.slug].deleted, results[free.slug].batches) == (7, 3, 2)
    assert (results[pro.slug].days, results[pro.slug].deleted) == (90, 1)
    assert (results[unlimited.slug].days, results[unlimited.slug].deleted) == (None, 0)
    assert _kept(db, free)[:3] == [(4, 5), (5, 20), (6, 1)]
    for tenant, anchor in ((free, 3), (pro, 1), (unlimited, 0)):
        report = _verify(db, tenant)
        assert report.ok and report.anchor_seq == anchor, (tenant.slug, report)
    with db.transaction(free.schema_name) as session:
        pruned = session.scalars(select(AuditEvent).where(AuditEvent.action == "audit.pruned")).one()
        chain = session.get(AuditChain, 1)
        assert pruned.seq == 7 and pruned.actor_type == "system"
        before = (NOW - timedelta(days=7)).isoformat()
        assert pruned.data == {"deleted": 3, "before": before, "through_seq": 3, "retention_days": 7}
        assert chain.anchor_seq == 3 and chain.pruned_at is not None
    # again: nothing more is old enough, nothing is recorded
    again = {r.slug: r for r in prune_expired(db, NOW, only=only)}
    assert all(r.deleted == 0 for r in again.values())
    assert _kept(db, free)[-1][0] == 7
    # later, the out-of-order event and all after it go too (the audit.pruned event's time is
    # the real clock's, long before NOW); the chain still verifies
    later = {r.slug: r for r in prune_expired(db, NOW + timedelta(days=14), only={free.slug})}
    assert later[free.slug].deleted == 4 and _verify(db, free).ok


def test_a_tenant_whose_prune_fails_stops_no_other(committed):
    db = committed.db
    broken, fine = committed.tenant(), committed.tenant()
    _append(db, broken, 30)
    _append(db, fine, 30)
    with db.engine.begin() as conn:
        conn.execute(text(f'DROP TABLE "{broken.schema_name}".audit_chain'))
    results = {r.slug: r for r in prune_expired(db, NOW, only={broken.slug, fine.slug})}
    assert results[broken.slug].error and "audit_chain" in results[broken.slug].error
    assert results[fine.slug].deleted == 1 and results[fine.slug].error is None
    with pytest.raises(ValueError):
        prune_expired(db, NOW, batch_size=0)


def test_cli_verify_names_the_first_broken_link_and_exits_1(committed, run_cli):
    db = committed.db
    tenant = committed.tenant()
    _append(db, tenant, 4, 3, 2, 1)
    r = run_cli("audit", "verify", tenant.slug)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("ok: 4 events (seq 1 to 4), 0 redacted; head ")
    head = json.loads(run_cli("audit", "verify", tenant.slug, "--json").stdout)
    assert head["ok"] is True and head["head_seq"] == 4 and len(head["head_hash"]) == 64
    with db.engine.begin() as conn:
        table = f'"{tenant.schema_name}".audit_events'
        conn.execute(text(f"UPDATE {table} SET action = 'contact.deleted' WHERE seq = 2"))  # noqa: S608
        event_id = conn.scalar(text(f'SELECT id FROM "{tenant.schema_name}".audit_events WHERE seq = 2'))  # noqa: S608
    r = run_cli("audit", "verify", tenant.slug)
    assert r.exit_code == 1
    assert r.stdout.strip() == (
        f"broken at seq 2 (event {event_id}): the event's content does not match its hash (edited); "
        "1 events verified before it"
    )
    body = json.loads(run_cli("audit", "verify", tenant.slug, "--json").stdout)
    assert body["ok"] is False and body["broken_seq"] == 2 and body["broken_id"] == str(event_id)
    r = run_cli("audit", "verify", "nope")
    assert r.exit_code == 1 and r.stderr.strip() == "error: no tenant 'nope'"


def test_cli_prune_and_list(committed, run_cli):
    db = committed.db
    tenant = committed.tenant()
    _append(db, tenant, 30, 0, now=utcnow())  # relative to the clock the command reads
    r = run_cli("audit", "prune", "--tenant", tenant.slug, "--json")
    assert r.exit_code == 0, r.output
    [row] = json.loads(r.stdout)
    assert (row["slug"], row["retention_days"], row["deleted"], row["anchor_seq"]) == (tenant.slug, 7, 1, 1)
    r = run_cli("audit", "prune", "--tenant", tenant.slug)
    assert r.exit_code == 0 and r.stdout.startswith("pruned 0 events in 0 of 1 tenants")
    assert run_cli("audit", "verify", tenant.slug).exit_code == 0
    listed = json.loads(run_cli("audit", tenant.slug, "--json").stdout)  # `saas audit TENANT` still lists
    assert [e["action"] for e in listed] == ["audit.pruned", "contact.created"]
    assert json.loads(run_cli("audit", "list", tenant.slug, "--json").stdout) == listed
    r = run_cli("audit", "prune", "--tenant", "nope")
    assert r.exit_code == 1 and r.stderr.strip() == "error: no tenant 'nope'"


def test_a_trusted_import_chains_the_history_anew(crafted, committed, run_cli, engine):  # noqa: F811
    records = crafted.export()
    src = crafted.src
    _append(committed.db, src, 3, 2, 1)
    out = crafted.tmp_path / "src-chained.jsonl"
    assert run_cli("tenants", "export", src.slug, "--out", str(out)).exit_code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert not any(r.get("table") == "tenant.audit_chain" for r in records)
    events = [r["row"] for r in records if r.get("table") == "tenant.audit_events"]
    assert [e["seq"] for e in events] == [1, 2, 3]  # in chain order
    events[1]["hash"] = "f" * 64  # a file's chain columns are never taken
    r, slug = crafted.run(records, "--trusted")
    assert r.exit_code == 0, r.output
    assert run_cli("audit", "verify", slug).exit_code == 0
    imported = json.loads(run_cli("audit", slug, "--json").stdout)
    assert sum(e["action"] == "contact.created" for e in imported) == 3
