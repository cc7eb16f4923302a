"""Tenant lifecycle: suspend/resume effects on the API, soft delete and purge, rename, show,
export and import into a new tenant; every operator action audited with the operator."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import text

from saas.audit import Actor
from saas.identity.models import find_tenant
from saas.ops import lifecycle


def _audit(engine, schema: str) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(f'SELECT action, actor_type, actor_id FROM "{schema}".audit_events ORDER BY occurred_at')  # noqa: S608
            )
        ]


def test_suspend_refuses_requests_and_refresh_until_resumed(api, client, db_session):
    acme = api.signup("acme")
    headers = api.auth(acme)
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    tenant = find_tenant(db_session, "acme")
    operator = Actor("operator", "alice")
    lifecycle.suspend(db_session, tenant, "unpaid invoices", operator)
    db_session.flush()

    r = client.get("/api/v1/me", headers=headers)
    assert r.status_code == 403 and r.get_json()["code"] == "tenant_suspended"
    r = client.post(
        "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": acme["token"]["refresh_token"]}
    )
    assert r.status_code in (400, 401, 403)
    rows = db_session.execute(
        text(
            "SELECT action, actor_type, actor_id, data"  # noqa: S608
            f' FROM "{tenant.schema_name}".audit_events WHERE action = :a'
        ),
        {"a": "tenant.suspended"},
    ).all()
    assert len(rows) == 1 and rows[0].actor_id == "alice" and rows[0].data["reason"] == "unpaid invoices"
    assert rows[0].data["revoked_sessions"] >= 1

    lifecycle.resume(db_session, tenant, operator)
    db_session.flush()
    fresh = api.login("owner@acme.test", tenant="acme")
    assert fresh.status_code == 200
    assert client.get("/api/v1/me", headers=api.auth(fresh.get_json())).status_code == 200


def test_cli_lifecycle_list_show_suspend_rename_delete_purge(committed, run_cli, engine):
    a = committed.tenant(members=2)
    b = committed.tenant()
    with engine.begin() as conn:
        conn.execute(text("UPDATE saas.tenants SET plan = 'pro' WHERE id = :i"), {"i": b.id})

    shown = json.loads(run_cli("tenants", "show", a.slug, "--json").stdout)
    assert shown["schema"] == a.schema_name and shown["schema_bytes"] > 0
    assert len(shown["members"]) == 2
    assert shown["usage"] == {"audit_chain": 0, "audit_events": 0, "contacts": 0}
    assert shown["state"] == "active"

    r = run_cli("tenants", "suspend", a.slug, "--reason", "abuse report #12")
    assert r.exit_code == 0, r.output
    assert run_cli("tenants", "suspend", a.slug, "--reason", "again").exit_code == 1
    listed = json.loads(run_cli("tenants", "list", "--status", "suspended", "--json").stdout)
    assert a.slug in [t["slug"] for t in listed] and b.slug not in [t["slug"] for t in listed]
    pro = json.loads(run_cli("tenants", "list", "--plan", "pro", "--json").stdout)
    assert [t["slug"] for t in pro if t["slug"] in (a.slug, b.slug)] == [b.slug]
    assert run_cli("tenants", "resume", a.slug).exit_code == 0

    new_slug = "renamed-" + uuid.uuid4().hex[:6]
    assert run_cli("tenants", "rename-slug", a.slug, new_slug).exit_code == 0
    assert run_cli("tenants", "rename-slug", new_slug, b.slug).exit_code == 1  # taken
    assert run_cli("tenants", "rename-slug", new_slug, "Bad Slug!").exit_code == 1

    r = run_cli("tenants", "delete", new_slug, "--retention-days", "0", "--json")
    assert r.exit_code == 0, r.output
    deleted = json.loads(run_cli("tenants", "list", "--status", "deleted", "--json").stdout)
    assert new_slug in [t["slug"] for t in deleted]
    assert "due " + new_slug in run_cli("tenants", "purge", "--dry-run").stdout
    actions = _audit(engine, a.schema_name)
    assert [x[0] for x in actions] == [
        "tenant.suspended",
        "tenant.resumed",
        "tenant.slug_renamed",
        "tenant.deletion_scheduled",
    ]
    assert all(x[1] == "operator" and x[2] == "op-tester" for x in actions)

    r = run_cli("tenants", "purge", "--tenant", new_slug, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["purged"] == [new_slug]
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM saas.tenants WHERE id = :i"), {"i": a.id}) == 0
        assert (
            conn.scalar(text("SELECT count(*) FROM pg_namespace WHERE nspname = :s"), {"s": a.schema_name})
            == 0
        )
    assert run_cli("tenants", "show", b.slug).exit_code == 0  # the other one is untouched


def test_export_import_roundtrip_and_delete_now(committed, run_cli, engine, tmp_path):
    src = committed.tenant(members=2)
    with engine.begin() as conn:
        owner = conn.scalar(text("SELECT id FROM saas.users WHERE email = :e"), {"e": f"m0@{src.slug}.test"})
        conn.execute(
            text(
                f'INSERT INTO "{src.schema_name}".contacts'  # noqa: S608
                " (id, name, email, tags, created_at, updated_at, created_by, version) VALUES"
                " (gen_random_uuid(), 'Grace', 'grace@navy.test', ARRAY['vip','navy'], now(), now(), :o, 1)"
            ),
            {"o": owner},
        )
    out = tmp_path / "export.jsonl"
    r = run_cli("tenants", "export", src.slug, "--out", str(out))
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["format"] == "saas.tenant-export" and lines[0]["tenant"]["slug"] == src.slug
    assert lines[-1]["end"] and lines[-1]["counts"]["tenant.contacts"] == 1
    assert oct(out.stat().st_mode & 0o777) == "0o600"

    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text("\n".join(out.read_text().splitlines()[:-1]) + "\n")
    r = run_cli("tenants", "import", str(truncated), "--slug", "copy-" + uuid.uuid4().hex[:6])
    assert r.exit_code == 2 and "truncated" in r.stderr  # a bad file: exit 2, one line

    copy_slug = "copy-" + uuid.uuid4().hex[:6]
    r = run_cli("tenants", "import", str(out), "--slug", copy_slug, "--json")
    assert r.exit_code == 0, r.output
    copy = json.loads(r.stdout)
    committed.track(uuid.UUID(copy["id"]))
    assert copy["schema"] != src.schema_name
    with engine.connect() as conn:
        rows = conn.execute(text(f'SELECT name, tags, created_by FROM "{copy["schema"]}".contacts')).all()  # noqa: S608
        assert [(r.name, r.tags, r.created_by) for r in rows] == [("Grace", ["vip", "navy"], owner)]
        members = conn.execute(
            text("SELECT status, count(*) FROM saas.memberships WHERE tenant_id = :t GROUP BY status"),
            {"t": copy["id"]},
        ).all()
        assert [tuple(m) for m in members] == [("invited", 2)]  # existing users invited, never linked
    assert ("tenant.imported", "operator", "op-tester") in _audit(engine, copy["schema"])

    # delete --now needs --yes; with it: an export, then the schema and rows are gone
    assert run_cli("tenants", "delete", src.slug, "--now").exit_code == 2
    final = tmp_path / "final.jsonl"
    r = run_cli("tenants", "delete", src.slug, "--now", "--yes", "--out", str(final), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(final.read_text().splitlines()[-1])["counts"]["tenant.contacts"] == 1
    with engine.connect() as conn:
        assert (
            conn.scalar(text("SELECT count(*) FROM pg_namespace WHERE nspname = :s"), {"s": src.schema_name})
            == 0
        )
        assert conn.scalar(text("SELECT count(*) FROM saas.tenants WHERE id = :i"), {"i": src.id}) == 0


def test_delete_now_exports_first_and_a_failed_export_deletes_nothing(
    committed, run_cli, engine, monkeypatch
):
    """Review defect: --now committed a 0-day deletion before exporting; a failed export left a
    tenant the purge schedule then dropped with no export anywhere."""
    from saas.ops import export

    tenant = committed.tenant()
    r = run_cli("tenants", "delete", tenant.slug, "--now", "--yes")
    assert r.exit_code == 2 and "--out" in r.output  # no durable destination: refused up front

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "export_to_file", disk_full)
    r = run_cli("tenants", "delete", tenant.slug, "--now", "--yes", "--out", "/nonexistent/x.jsonl")
    assert r.exit_code == 1 and "nothing was deleted" in r.stderr
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, deleted_at, purge_after FROM saas.tenants WHERE id = :i"), {"i": tenant.id}
        ).one()
    assert tuple(row) == ("active", None, None)  # resumed; never scheduled for the purge
    actions = [a for a, _, _ in _audit(engine, tenant.schema_name)]
    assert "tenant.suspended" in actions and "tenant.resumed" in actions
    assert "tenant.deletion_scheduled" not in actions


def test_export_import_carries_clients_consents_billing_and_mfa(committed, run_cli, engine, tmp_path):
    """Review defect: OAuth clients, consents, billing account and overrides, and the members'
    MFA factors and recovery codes were lost by export/import."""
    from saas.auth.models import Consent, MfaFactor, OAuthClient, RecoveryCode
    from saas.billing.models import BillingAccount, BillingOverride
    from saas.db import Database
    from saas.identity.models import User

    src = committed.tenant(members=2)
    tag = uuid.uuid4().hex[:8]
    with Database(engine).transaction() as session:
        owner = session.query(User).filter_by(email=f"m0@{src.slug}.test").one()
        member = session.query(User).filter_by(email=f"m1@{src.slug}.test").one()
        member_id = member.id
        session.add(MfaFactor(user_id=member.id, status="active", secret_encrypted="enc-" + tag, last_step=7))
        session.add(RecoveryCode(user_id=member.id, code_hash="h" * 64))
        session.add(
            OAuthClient(
                client_id=f"c_{tag}",
                tenant_id=src.id,
                name="CRM sync",
                client_type="confidential",
                secret_hash="5e" * 32,
                redirect_uris=["https://crm.test/cb"],
                grant_types=["authorization_code"],
                created_by=owner.id,
            )
        )
        session.add(Consent(user_id=member.id, tenant_id=src.id, client_id=f"c_{tag}", scope="openid api"))
        # the owner's account stays: an existing account is invited, its consent not copied
        session.add(Consent(user_id=owner.id, tenant_id=src.id, client_id=f"c_{tag}", scope="openid"))
        session.add(
            BillingAccount(
                tenant_id=src.id,
                stripe_customer_id=f"cus_{tag}",
                stripe_subscription_id=f"sub_{tag}",
                plan="pro",
                status="active",
            )
        )
        session.add(BillingOverride(tenant_id=src.id, plan="enterprise", limits={"seats": 50}, reason="deal"))
    out = tmp_path / "export.jsonl"
    assert run_cli("tenants", "export", src.slug, "--out", str(out)).exit_code == 0
    tables = [json.loads(line).get("table") for line in out.read_text().splitlines()]
    for table in (
        "saas.oauth_clients",
        "saas.oauth_consents",
        "saas.billing_accounts",
        "saas.billing_overrides",
        "saas.mfa_factors",
        "saas.mfa_recovery_codes",
    ):
        assert table in tables, table
    assert json.loads(out.read_text().splitlines()[0])["version"] == 3

    with engine.begin() as conn:  # the member's account is gone: the import creates it anew
        conn.execute(text("DELETE FROM saas.users WHERE id = :i"), {"i": member_id})
    r = run_cli("tenants", "import", str(out), "--slug", "copy-" + tag, "--json", "--trusted")
    assert r.exit_code == 0, r.output
    copy = json.loads(r.stdout)
    committed.track(uuid.UUID(copy["id"]))
    assert any(f"cus_{tag}" in n and "NOT attached" in n for n in copy["notes"])
    assert any(f"c_{tag}" in n for n in copy["notes"])  # the client_id was taken by the source
    with engine.connect() as conn:
        new_member = conn.scalar(
            text("SELECT id FROM saas.users WHERE email = :e"), {"e": f"m1@{src.slug}.test"}
        )
        factor = conn.execute(
            text("SELECT status, secret_encrypted, last_step FROM saas.mfa_factors WHERE user_id = :u"),
            {"u": new_member},
        ).one()
        assert tuple(factor) == ("active", "enc-" + tag, 7)
        assert (
            conn.scalar(
                text("SELECT count(*) FROM saas.mfa_recovery_codes WHERE user_id = :u"), {"u": new_member}
            )
            == 1
        )
        client = conn.execute(
            text(
                "SELECT client_id, name, secret_hash, created_by FROM saas.oauth_clients WHERE tenant_id = :t"
            ),
            {"t": copy["id"]},
        ).one()
        assert client.client_id.startswith("c_") and client.client_id != f"c_{tag}"
        assert client.name == "CRM sync" and client.secret_hash == "5e" * 32
        consent = conn.execute(
            text("SELECT client_id, scope FROM saas.oauth_consents WHERE tenant_id = :t"), {"t": copy["id"]}
        ).one()
        assert tuple(consent) == (client.client_id, "openid api")  # the member's only: the owner was invited
        override = conn.execute(
            text("SELECT plan, limits FROM saas.billing_overrides WHERE tenant_id = :t"), {"t": copy["id"]}
        ).one()
        assert tuple(override) == ("enterprise", {"seats": 50})
        accounts = conn.scalar(
            text("SELECT count(*) FROM saas.billing_accounts WHERE tenant_id = :t"), {"t": copy["id"]}
        )
        assert accounts == 0  # Stripe ids never silently reused
    # reusing the customer while the source holds it is refused, nothing written
    move = ("tenants", "import", str(out), "--slug", "move-" + tag, "--trusted", "--reuse-stripe-customer")
    r = run_cli(*move)
    assert r.exit_code == 1 and "stripe_customer_in_use" in r.stderr
    # a move: the source deleted (its export taken), then the customer is attached to the copy
    r = run_cli("tenants", "delete", src.slug, "--now", "--yes", "--out", str(tmp_path / "final.jsonl"))
    assert r.exit_code == 0, r.output
    r = run_cli(*move, "--json")
    assert r.exit_code == 0, r.output
    moved = json.loads(r.stdout)
    committed.track(uuid.UUID(moved["id"]))
    with engine.connect() as conn:
        account = conn.execute(
            text(
                "SELECT stripe_customer_id, stripe_subscription_id, plan FROM saas.billing_accounts"
                " WHERE tenant_id = :t"
            ),
            {"t": moved["id"]},
        ).one()
    assert tuple(account) == (f"cus_{tag}", f"sub_{tag}", "pro")


def test_import_streams_in_batches_and_a_damaged_file_writes_nothing(committed, run_cli, engine, tmp_path):
    src = committed.tenant()
    with engine.begin() as conn:
        conn.execute(
            text(
                f'INSERT INTO "{src.schema_name}".contacts'  # noqa: S608
                " (id, name, email, tags, created_at, updated_at, version)"
                " SELECT gen_random_uuid(), 'c' || i, 'c' || i || '@x.test', ARRAY['t'], now(), now(), 1"
                " FROM generate_series(1, 2500) i"
            )
        )
    out = tmp_path / "big.jsonl"
    assert run_cli("tenants", "export", src.slug, "--out", str(out)).exit_code == 0
    slug = "big-" + uuid.uuid4().hex[:6]
    r = run_cli("tenants", "import", str(out), "--slug", slug, "--json")
    assert r.exit_code == 0, r.output
    copy = json.loads(r.stdout)
    committed.track(uuid.UUID(copy["id"]))
    assert copy["rows"]["tenant.contacts"] == 2500
    with engine.connect() as conn:
        assert conn.scalar(text(f'SELECT count(*) FROM "{copy["schema"]}".contacts')) == 2500  # noqa: S608

    lines = out.read_text().splitlines()
    trailer = json.loads(lines[-1])
    trailer["counts"]["tenant.contacts"] = 2499
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("\n".join([*lines[:-1], json.dumps(trailer)]) + "\n")
    bad_slug = "bad-" + uuid.uuid4().hex[:6]
    r = run_cli("tenants", "import", str(damaged), "--slug", bad_slug)
    assert r.exit_code == 2 and "counts do not match" in r.stderr
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM saas.tenants WHERE slug = :s"), {"s": bad_slug}) == 0


def test_import_of_a_membership_without_its_user_is_a_clear_error(committed, run_cli, engine, tmp_path):
    src = committed.tenant()
    out = tmp_path / "t.jsonl"
    assert run_cli("tenants", "export", src.slug, "--out", str(out)).exit_code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    kept = [r for r in records if r.get("table") != "saas.users"]
    trailer = kept[-1]
    if "counts" in trailer:
        trailer["counts"].pop("saas.users", None)
    broken = tmp_path / "no-users.jsonl"
    broken.write_text("\n".join(json.dumps(r) for r in kept) + "\n")
    slug = "nousers-" + uuid.uuid4().hex[:6]
    r = run_cli("tenants", "import", str(broken), "--slug", slug)
    assert r.exit_code == 2 and "not in the export" in r.stderr, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM saas.tenants WHERE slug = :s"), {"s": slug}) == 0
