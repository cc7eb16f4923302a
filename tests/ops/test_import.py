"""``saas tenants import`` of hostile and malformed files: every line is checked with the API's
own rules; without ``--trusted`` no plan, overrides, secrets or ids are taken from the file;
existing accounts are only ever invited; a bad file is one line naming its line and field, exit
code 2, and nothing is written."""

from __future__ import annotations

import copy
import json
import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from saas.identity.passwords import Passwords

#: a real argon2id hash of "hunter2hunter2", as a hostile file would carry it
KNOWN_PASSWORD = "hunter2hunter2"


@pytest.fixture()
def crafted(committed, run_cli, engine, tmp_path):
    """Exports a committed tenant and imports edited copies of the export."""
    return Crafted(committed, run_cli, engine, tmp_path)


class Crafted:
    def __init__(self, committed, run_cli, engine, tmp_path: Path) -> None:
        self.committed, self.run_cli, self.engine, self.tmp_path = committed, run_cli, engine, tmp_path

    def export(self, members: int = 1, contacts: int = 1) -> list[dict]:
        self.src = self.committed.tenant(members=members)
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    f'INSERT INTO "{self.src.schema_name}".contacts'  # noqa: S608
                    " (id, name, email, tags, created_at, updated_at, version)"
                    " SELECT gen_random_uuid(), 'c' || i, 'c' || i || '@x.test', ARRAY['t'], now(), now(), 1"
                    " FROM generate_series(1, :n) i"
                ),
                {"n": contacts},
            )
        out = self.tmp_path / f"src-{uuid.uuid4().hex[:6]}.jsonl"
        r = self.run_cli("tenants", "export", self.src.slug, "--out", str(out))
        assert r.exit_code == 0, r.output
        return [json.loads(line) for line in out.read_text().splitlines()]

    def write(self, records: list, *, fix_counts: bool = True) -> Path:
        """The records as a file, the trailer's counts made to match (a crafted file, not a
        damaged one); a str record is written as it is."""
        if fix_counts and isinstance(records[-1], dict) and records[-1].get("end"):
            counts: dict[str, int] = {}
            for r in records:
                if isinstance(r, dict) and "table" in r:
                    counts[r["table"]] = counts.get(r["table"], 0) + 1
            records[-1]["counts"] = counts
        path = self.tmp_path / f"crafted-{uuid.uuid4().hex[:6]}.jsonl"
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
        return path

    def run(self, records: list | Path, *args: str, fix_counts: bool = True):
        """(click result, new slug)."""
        path = records if isinstance(records, Path) else self.write(records, fix_counts=fix_counts)
        slug = "imp-" + uuid.uuid4().hex[:8]
        r = self.run_cli("tenants", "import", str(path), "--slug", slug, "--json", *args)
        if r.exit_code == 0:
            self.track(uuid.UUID(json.loads(r.stdout)["id"]))
        return r, slug

    def track(self, tenant_id: uuid.UUID) -> None:
        self.committed.track(tenant_id)

    def refused(self, records: list | Path, *args: str, fix_counts: bool = True) -> str:
        """Imports a bad file; asserts exit 2, one line, and nothing written; returns the line."""
        before = self.footprint()
        r, slug = self.run(records, *args, fix_counts=fix_counts)
        assert r.exit_code == 2, (r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert "Traceback" not in r.output
        assert self.footprint() == before  # no tenant, schema, user, invitation or mail left
        with self.engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM saas.tenants WHERE slug = :s"), {"s": slug}) == 0
        return lines[0]

    def footprint(self) -> tuple:
        with self.engine.connect() as conn:
            return tuple(
                conn.scalar(text(q))
                for q in (
                    "SELECT count(*) FROM saas.tenants",
                    "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 't\\_%'",
                    "SELECT count(*) FROM saas.users",
                    "SELECT count(*) FROM saas.memberships",
                    "SELECT count(*) FROM saas.invitations",
                    "SELECT count(*) FROM saas.outbox",
                    "SELECT count(*) FROM saas.oauth_clients",
                )
            )

    def tenant(self, slug: str):
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT * FROM saas.tenants WHERE slug = :s"), {"s": slug}).one()


def _index(records: list[dict], table: str) -> int:
    return next(i for i, r in enumerate(records) if r.get("table") == table)


def _before_tenant_rows(records: list[dict]) -> int:
    return next(
        i for i, r in enumerate(records) if str(r.get("table", "")).startswith("tenant.") or r.get("end")
    )


def _client(**changes) -> dict:
    row = {
        "id": str(uuid.uuid4()),
        "client_id": "c_" + uuid.uuid4().hex,
        "tenant_id": str(uuid.uuid4()),
        "name": "Hostile",
        "client_type": "confidential",
        "secret_hash": "ab" * 32,
        "secret_rotated_at": "2026-01-01T00:00:00+00:00",
        "redirect_uris": ["https://app.example.test/cb"],
        "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
        "scope": "openid api",
        "role": "member",
        "first_party": False,
        "created_by": None,
        "created_at": "2026-01-01T00:00:00+00:00",
        "updated_at": "2026-01-01T00:00:00+00:00",
    }
    row.update(changes)
    return {"table": "saas.oauth_clients", "row": row}


def _with_client(records: list[dict], **changes) -> tuple[list[dict], int, dict]:
    """The records with one more OAuth client; (records, its line number, the client record)."""
    record = _client(**changes)
    at = _before_tenant_rows(records)
    return [*records[:at], record, *records[at:]], at + 1, record


def _outsider(members: int = 1) -> tuple[dict, dict]:
    """(user record, membership record) of someone not in the database."""
    user_id = str(uuid.uuid4())
    email = f"stranger-{uuid.uuid4().hex[:8]}@evil.test"
    user = {"table": "saas.users", "row": {"id": user_id, "email": email, "name": "Mallory",
            "password_hash": Passwords(memory_kib=1024, time_cost=1).hash(KNOWN_PASSWORD),
            "status": "active", "created_at": "2026-01-01T00:00:00+00:00"}}  # fmt: skip
    membership = {"table": "saas.memberships", "row": {"id": str(uuid.uuid4()), "user_id": user_id,
                  "role": "owner", "status": "active", "invited_by": None,
                  "created_at": "2026-01-01T00:00:00+00:00"}}  # fmt: skip
    return user, membership


# --- the crafted fields of the finding ----------------------------------------------------------


def test_enterprise_plan_is_not_taken_without_trusted(crafted):
    records = crafted.export()
    records[0]["tenant"]["plan"] = "enterprise"
    r, slug = crafted.run(records)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert crafted.tenant(slug).plan == "free"
    assert any(
        "tenant.plan 'enterprise'" in n and "needs --trusted" in n and "line 1" in n for n in out["notes"]
    )

    r, slug = crafted.run(records, "--trusted")
    assert r.exit_code == 0, r.output
    assert crafted.tenant(slug).plan == "enterprise"
    # an unknown plan is refused even from a trusted file
    records[0]["tenant"]["plan"] = "platinum"
    line = crafted.refused(records, "--trusted")
    assert line.startswith("error: line 1: tenant.plan: Must be one of")


def test_the_command_says_what_trusted_takes(crafted):
    records = crafted.export()
    path = crafted.write(records)

    def imported(*args: str):
        r = crafted.run_cli("tenants", "import", str(path), "--slug", "say-" + uuid.uuid4().hex[:6], *args)
        assert r.exit_code == 0, r.output
        crafted.track(uuid.UUID(re.search(r"imported into \S+ \(([0-9a-f-]{36})\)", r.stdout).group(1)))
        return r

    r = imported()
    assert r.stdout.startswith("untrusted import: no plan, overrides, secrets")
    r = imported("--trusted")
    assert r.stdout.startswith("trusted import: plan, overrides, secrets and ids taken from the file")
    help_text = crafted.run_cli("tenants", "import", "--help").stdout
    assert "--trusted" in help_text and "password hashes" in help_text and "client secrets" in help_text


@pytest.mark.parametrize(
    ("tenant_settings", "field"),
    [
        ({"require_mfa": True, "allow_anyone": True}, "tenant.settings.allow_anyone: Unknown field."),
        (
            {"password_min_length": 1},
            "tenant.settings.password_min_length: Must be greater than or equal to 8",
        ),
        ({"require_mfa": "sometimes"}, "tenant.settings.require_mfa: Not a valid boolean."),
    ],
)
def test_settings_are_checked_by_the_api_schema(crafted, tenant_settings, field):
    records = crafted.export()
    records[0]["tenant"]["settings"] = tenant_settings
    for args in ((), ("--trusted",)):
        line = crafted.refused(records, *args)
        assert line.startswith(f"error: line 1: {field}"), line


def test_valid_settings_are_taken(crafted):
    records = crafted.export()
    records[0]["tenant"]["settings"] = {"require_mfa": True, "password_min_length": 12}
    r, slug = crafted.run(records)
    assert r.exit_code == 0, r.output
    assert crafted.tenant(slug).settings == {"require_mfa": True, "password_min_length": 12}


@pytest.mark.parametrize("trusted", [False, True])
def test_javascript_redirect_uri_is_refused(crafted, trusted):
    records, line_no, _ = _with_client(crafted.export(), redirect_uris=["javascript:alert(document.cookie)"])
    line = crafted.refused(records, *(["--trusted"] if trusted else []))
    assert line.startswith(f"error: line {line_no} (saas.oauth_clients): redirect_uris: javascript:"), line
    assert "Use https" in line


@pytest.mark.parametrize("trusted", [False, True])
def test_password_grant_is_refused(crafted, trusted):
    records, line_no, _ = _with_client(crafted.export(), grant_types=["authorization_code", "password"])
    line = crafted.refused(records, *(["--trusted"] if trusted else []))
    assert line.startswith(
        f"error: line {line_no} (saas.oauth_clients): grant_types: Unsupported: password"
    ), line


def test_owner_role_client_is_neutralised_without_trusted(crafted):
    records, line_no, record = _with_client(crafted.export(), role="owner", first_party=True)
    r, _slug = crafted.run(records)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    with crafted.engine.connect() as conn:
        client = conn.execute(
            text(
                "SELECT client_id, role, first_party, secret_hash FROM saas.oauth_clients"
                " WHERE tenant_id = :t"
            ),
            {"t": out["id"]},
        ).one()
        created = conn.scalar(
            text(f"SELECT count(*) FROM \"{out['schema']}\".audit_events WHERE action = 'client.created'")  # noqa: S608
        )
    assert client.role == "member" and client.first_party is False
    assert client.client_id != record["row"]["client_id"]  # a new id, generated
    assert client.secret_hash and client.secret_hash != record["row"]["secret_hash"]  # a new secret
    assert created == 1  # registered through the clients service
    notes = " | ".join(out["notes"])
    assert f"saas.oauth_clients.role 'owner' (given 'member') (line {line_no})" in notes
    assert "saas.oauth_clients.secret_hash" in notes and "rotate it before use" in notes


def test_owner_role_client_with_trusted_and_roles_outside_the_set(crafted):
    records, _, record = _with_client(crafted.export(), role="owner")
    r, _slug = crafted.run(records, "--trusted")
    assert r.exit_code == 0, r.output
    with crafted.engine.connect() as conn:
        client = conn.execute(
            text("SELECT client_id, role, secret_hash FROM saas.oauth_clients WHERE tenant_id = :t"),
            {"t": json.loads(r.stdout)["id"]},
        ).one()
    assert tuple(client) == (record["row"]["client_id"], "owner", record["row"]["secret_hash"])
    records, line_no, _ = _with_client(crafted.export(), role="superuser")
    for args in ((), ("--trusted",)):
        line = crafted.refused(records, *args)
        assert line.startswith(f"error: line {line_no} (saas.oauth_clients): role: One of owner"), line


def test_file_chosen_password_hash_is_not_taken_without_trusted(crafted):
    records = crafted.export()
    user, membership = _outsider()
    email = user["row"]["email"]
    crafted.committed.user_emails.add(email)
    at = _index(records, "saas.memberships")
    records[at:at] = [user, membership]
    r, _slug = crafted.run(records)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    with crafted.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT u.id, u.password_hash, m.status, m.role FROM saas.users u"
                " JOIN saas.memberships m ON m.user_id = u.id WHERE u.email = :e AND m.tenant_id = :t"
            ),
            {"e": email, "t": out["id"]},
        ).one()
        mails = conn.scalar(
            text(
                "SELECT count(*) FROM saas.outbox WHERE topic = 'mail.invitation'"
                " AND tenant_id = :t AND payload->>'to' = :e"
            ),
            {"t": out["id"], "e": email},
        )
    assert row.password_hash is None  # the file's hash is not the account's password
    assert str(row.id) != user["row"]["id"]  # and its id is not the file's
    assert (row.status, row.role) == ("invited", "owner") and mails == 1  # invited by mail
    assert any("saas.users.password_hash" in n and f"line {at + 1}" in n for n in out["notes"])
    with crafted.engine.begin() as conn:
        conn.execute(text("DELETE FROM saas.users WHERE email = :e"), {"e": email})

    r, _slug = crafted.run(records, "--trusted")
    assert r.exit_code == 0, r.output
    with crafted.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT u.id, u.password_hash, m.status FROM saas.users u"
                " JOIN saas.memberships m ON m.user_id = u.id WHERE u.email = :e"
            ),
            {"e": email},
        ).one()
    assert row.password_hash == user["row"]["password_hash"] and row.status == "active"
    assert str(row.id) == user["row"]["id"]
    assert Passwords().verify(row.password_hash, KNOWN_PASSWORD)


@pytest.mark.parametrize("trusted", [False, True])
def test_existing_user_of_another_tenant_is_invited_never_linked(crafted, trusted):
    other = crafted.committed.tenant()
    victim_email = f"m0@{other.slug}.test"
    with crafted.engine.connect() as conn:
        victim = conn.execute(
            text("SELECT id, password_hash FROM saas.users WHERE email = :e"), {"e": victim_email}
        ).one()
    records = crafted.export()
    user, membership = _outsider()
    user["row"]["email"] = victim_email.upper()  # matched case-insensitively
    at = _index(records, "saas.memberships")
    records[at:at] = [user, membership]
    r, _slug = crafted.run(records, *(["--trusted"] if trusted else []))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    with crafted.engine.connect() as conn:
        memberships = conn.execute(
            text("SELECT status, role FROM saas.memberships WHERE user_id = :u AND tenant_id = :t"),
            {"u": victim.id, "t": out["id"]},
        ).all()
        invitations = conn.scalar(
            text(
                "SELECT count(*) FROM saas.invitations i JOIN saas.memberships m ON m.id = i.membership_id"
                " WHERE m.user_id = :u AND m.tenant_id = :t AND i.accepted_at IS NULL"
            ),
            {"u": victim.id, "t": out["id"]},
        )
        mails = conn.scalar(
            text(
                "SELECT count(*) FROM saas.outbox WHERE topic = 'mail.invitation' AND tenant_id = :t"
                " AND lower(payload->>'to') = :e"
            ),
            {"t": out["id"], "e": victim_email},
        )
        after = conn.execute(
            text("SELECT password_hash FROM saas.users WHERE id = :u"), {"u": victim.id}
        ).scalar()
        accounts = conn.scalar(
            text("SELECT count(*) FROM saas.users WHERE lower(email) = :e"), {"e": victim_email}
        )
    assert [tuple(m) for m in memberships] == [("invited", "owner")]  # not an active owner
    assert invitations == 1 and mails == 1  # an invitation, mailed through the outbox
    assert after == victim.password_hash and accounts == 1  # the account untouched, not duplicated
    assert any(victim_email.upper() in n and "invited" in n for n in out["notes"])


def test_reuse_stripe_customer_needs_trusted(crafted):
    records = crafted.export()
    r, _ = crafted.run(records, "--reuse-stripe-customer")
    assert r.exit_code == 2 and "--trusted" in r.output


def test_untrusted_import_leaves_out_secrets_consents_overrides_and_audit_history(crafted):
    records = crafted.export()
    owner_id = next(r["row"]["id"] for r in records if r.get("table") == "saas.users")
    records, _, client = _with_client(records)
    at = _before_tenant_rows(records)
    t0 = "2026-01-01T00:00:00+00:00"
    factor = {"id": str(uuid.uuid4()), "user_id": owner_id, "kind": "totp", "status": "active",
              "secret_encrypted": "enc", "last_step": None, "failed_count": 0, "locked_until": None,
              "created_at": t0, "confirmed_at": None}  # fmt: skip
    consent = {"id": str(uuid.uuid4()), "user_id": owner_id, "tenant_id": str(uuid.uuid4()),
               "client_id": client["row"]["client_id"], "scope": "openid", "granted_at": t0}  # fmt: skip
    override = {"tenant_id": str(uuid.uuid4()), "plan": "enterprise", "limits": {"seats": -1},
                "reason": "forged", "set_by": "nobody", "set_at": t0}  # fmt: skip
    event = {"id": str(uuid.uuid4()), "occurred_at": t0, "actor_type": "operator", "actor_id": "ceo",
             "action": "tenant.gifted", "target_type": None, "target_id": None, "ip": None,
             "user_agent": None, "request_id": None, "data": {}}  # fmt: skip
    records[at:at] = [
        {"table": "saas.mfa_factors", "row": factor},
        {"table": "saas.oauth_consents", "row": consent},
        {"table": "saas.billing_overrides", "row": override},
    ]
    records.insert(len(records) - 1, {"table": "tenant.audit_events", "row": event})
    r, _slug = crafted.run(records)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    with crafted.engine.connect() as conn:
        for table in ("oauth_consents", "billing_overrides"):
            n = conn.scalar(text(f"SELECT count(*) FROM saas.{table} WHERE tenant_id = :t"), {"t": out["id"]})  # noqa: S608
            assert n == 0, table
        forged = conn.scalar(
            text(f"SELECT count(*) FROM \"{out['schema']}\".audit_events WHERE action = 'tenant.gifted'")  # noqa: S608
        )
        assert forged == 0
    notes = " | ".join(out["notes"])
    for what in ("saas.mfa_factors", "saas.oauth_consents", "saas.billing_overrides", "tenant.audit_events"):
        assert f"not taken (needs --trusted): {what}" in notes, what


# --- malformed files ----------------------------------------------------------------------------


def test_bad_json_names_its_line_and_column(crafted):
    records = crafted.export()
    at = _index(records, "tenant.contacts")
    lines: list = [*records]
    lines[at] = '{"table": "tenant.contacts", "row": {"name": "x",}}'
    line = crafted.refused(lines)
    assert line.startswith(f"error: line {at + 1}, column 50: not JSON (Expecting property name"), line


def test_duplicated_keys_and_non_json_numbers_are_refused(crafted):
    records = crafted.export()
    at = _index(records, "tenant.contacts")
    lines: list = [*records]
    lines[at] = '{"table": "tenant.contacts", "table": "saas.users", "row": {}}'
    assert crafted.refused(lines).startswith(f"error: line {at + 1}: not JSON (table: the key appears twice")
    lines[at] = '{"table": "tenant.contacts", "row": {"name": NaN}}'
    assert crafted.refused(lines).startswith(f"error: line {at + 1}: not JSON (NaN is not JSON)")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda row: row.update(name=123), "name: Not a valid string."),
        (lambda row: row.update(email="not an email"), "email: Not a valid email address."),
        (lambda row: row.update(tags="vip"), "tags: Not a valid list."),
        (lambda row: row.update(tags=["x" * 51]), "tags[0]: Length must be between 1 and 50."),
        (lambda row: row.update(id="not-a-uuid"), "id: Not a valid UUID."),
        (lambda row: row.update(created_at="yesterday"), "created_at: Not a valid datetime."),
        (lambda row: row.update(version="1"), "version: Not a valid integer."),
        (lambda row: row.pop("name"), "name: Missing data for required field."),
        (lambda row: row.update(is_admin=True), "is_admin: Unknown field."),
        (lambda row: row.update(name="a\x00b"), "name: Must not contain NUL characters (U+0000)."),
        (
            lambda row: row.update(company="\ud800"),
            "company: Must not contain unpaired surrogates (U+D800 to U+DFFF): not Unicode text.",
        ),
    ],
)
def test_bad_contact_rows_name_line_and_field(crafted, change, expected):
    records = crafted.export(contacts=3)
    at = [i for i, r in enumerate(records) if r.get("table") == "tenant.contacts"][-1]
    change(records[at]["row"])
    line = crafted.refused(records)
    assert line == f"error: line {at + 1} (tenant.contacts): {expected}", line


@pytest.mark.parametrize(
    ("table", "change", "expected"),
    [
        ("saas.users", lambda row: row.pop("email"), "email: Missing data for required field."),
        ("saas.users", lambda row: row.update(password_hash="plain"), None),
        ("saas.users", lambda row: row.update(is_staff=True), "is_staff: Unknown field."),
        ("saas.memberships", lambda row: row.update(role="god"), "role: Must be one of: owner, admin"),
        ("saas.memberships", lambda row: row.update(user_id=str(uuid.uuid4())), "user_id: names user"),
    ],
)
def test_bad_member_rows_name_line_and_field(crafted, table, change, expected):
    records = crafted.export()
    at = _index(records, table)
    change(records[at]["row"])
    line = crafted.refused(records, "--trusted")
    expected = expected or "password_hash: Not an argon2 hash."
    assert line.startswith(f"error: line {at + 1} ({table}): {expected}"), line


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda recs: recs.__setitem__(0, {**recs[0], "format": "other"}), "error: line 1: format: not a"),
        (lambda recs: recs[0].update(version=9), "error: line 1: version: Must be one of: 1, 2, 3."),
        (lambda recs: recs[0].update(tenant_revision="abc"), "error: line 1: tenant_revision: exported at"),
        (
            lambda recs: recs[0]["tenant"].update(name=""),
            "error: line 1: tenant.name: Length must be between 1 and 200.",
        ),
        (lambda recs: recs[0].update(extra=1), "error: line 1: extra: Unknown field."),
        (
            lambda recs: recs.insert(1, {"table": "saas.refresh_tokens", "row": {}}),
            "error: line 2: table: unknown",
        ),
        (lambda recs: recs.insert(1, ["a", "list"]), "error: line 2: Invalid input type."),
        (lambda recs: recs.insert(1, {"table": "saas.users"}), "error: line 2: row: Missing data"),
    ],
)
def test_bad_headers_and_records_name_line_and_field(crafted, mutate, expected):
    records = crafted.export()
    mutate(records)
    line = crafted.refused(records)
    assert line.startswith(expected), line


def test_not_utf8_and_empty_files_are_one_line(crafted):
    path = crafted.tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"format": "saas.tenant-export", "name": "caf\xe9"}\n')
    assert "not UTF-8" in crafted.refused(path)
    empty = crafted.tmp_path / "empty.jsonl"
    empty.write_text("")
    assert crafted.refused(empty) == "error: file: empty (no header line)"


def test_a_bad_row_after_a_thousand_good_ones_leaves_nothing(crafted):
    """All or nothing: tenant rows are inserted 1,000 at a time and the members invited before
    them; a bad last row still leaves no tenant, schema, user, invitation or mail."""
    records = crafted.export(members=2, contacts=1200)
    user, membership = _outsider()
    at = _index(records, "saas.memberships")
    records[at:at] = [user, membership]
    records[-2]["row"]["email"] = "broken"
    line = crafted.refused(records)
    assert line.startswith(f"error: line {len(records) - 1} (tenant.contacts): email:"), line
    with crafted.engine.connect() as conn:
        assert (
            conn.scalar(text("SELECT count(*) FROM saas.users WHERE email = :e"), {"e": user["row"]["email"]})
            == 0
        )


def test_duplicate_contact_ids_are_refused_by_lines(crafted):
    records = crafted.export(contacts=3)
    contacts = [i for i, r in enumerate(records) if r.get("table") == "tenant.contacts"]
    records[contacts[2]]["row"]["id"] = records[contacts[0]]["row"]["id"]
    line = crafted.refused(records)
    assert line.startswith(
        f"error: lines {contacts[0] + 1}-{contacts[2] + 1} (tenant.contacts): refused by the database"
    )
    assert "already exists" in line


# --- a normal tenant still round-trips --------------------------------------------------------


def test_round_trip_of_a_normal_tenant(crafted):
    records = crafted.export(members=2, contacts=5)
    path = crafted.write(records, fix_counts=False)  # the export as written
    r, slug = crafted.run(path)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["trusted"] is False and out["rows"]["tenant.contacts"] == 5
    with crafted.engine.connect() as conn:
        contacts = conn.execute(text(f'SELECT id, name FROM "{out["schema"]}".contacts ORDER BY name')).all()  # noqa: S608
        members = conn.execute(
            text("SELECT role, status FROM saas.memberships WHERE tenant_id = :t ORDER BY role"),
            {"t": out["id"]},
        ).all()
    source = sorted(
        (r["row"]["id"], r["row"]["name"]) for r in records if r.get("table") == "tenant.contacts"
    )
    assert sorted((str(c.id), c.name) for c in contacts) == source
    assert [tuple(m) for m in members] == [("member", "invited"), ("owner", "invited")]
    assert crafted.tenant(slug).name == crafted.src.name

    r, _slug = crafted.run(path, "--trusted")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["rows"]["tenant.contacts"] == 5


def test_invitations_keep_the_api_seat_limit(crafted):
    """Members come in through ``members.invite``, so the plan's seats bound them as in the API:
    four members on the default plan (3 seats) are refused at the fourth's line."""
    records = crafted.export(members=4)
    fourth = [i for i, r in enumerate(records) if r.get("table") == "saas.memberships"][3]
    line = crafted.refused(records)
    expected = f"error: line {fourth + 1} (saas.memberships): seats_exceeded: Your plan 'free'"
    assert line.startswith(expected), line
    records[0]["tenant"]["plan"] = "pro"  # a trusted file's plan is taken: its seats apply
    r, _slug = crafted.run(records, "--trusted")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["rows"]["saas.memberships"] == 4


# --- custom roles (issue 13) ----------------------------------------------------------------------


def _export_with_custom_role(crafted) -> list[dict]:
    """An export of a tenant on enterprise whose second member holds custom role
    ``support-agent`` (active) and whose third is invited with it."""
    crafted.src = src = crafted.committed.tenant(members=3)
    with crafted.engine.begin() as conn:
        conn.execute(text("UPDATE saas.tenants SET plan = 'enterprise' WHERE id = :t"), {"t": src.id})
        conn.execute(
            text(
                "INSERT INTO saas.custom_roles (id, tenant_id, name, description, permissions, created_at,"
                " updated_at) VALUES (gen_random_uuid(), :t, 'support-agent', 'Helps',"
                ' \'["contacts:read", "members:read"]\', now(), now())'
            ),
            {"t": src.id},
        )
        conn.execute(
            text(
                "UPDATE saas.memberships m SET role = 'support-agent',"
                " status = CASE WHEN u.email LIKE 'm2@%' THEN 'invited' ELSE 'active' END"
                " FROM saas.users u WHERE u.id = m.user_id AND m.tenant_id = :t AND u.email NOT LIKE 'm0@%'"
            ),
            {"t": src.id},
        )
    out = crafted.tmp_path / f"roles-{uuid.uuid4().hex[:6]}.jsonl"
    r = crafted.run_cli("tenants", "export", src.slug, "--out", str(out))
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def _held_roles(crafted, tenant_id: str) -> list[tuple]:
    """(email, status, role, the role's permissions) of each member holding a custom role."""
    with crafted.engine.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                text(
                    "SELECT split_part(u.email, '@', 1), m.status, m.role, cr.permissions"
                    " FROM saas.memberships m JOIN saas.users u ON u.id = m.user_id"
                    " JOIN saas.custom_roles cr ON cr.tenant_id = m.tenant_id AND cr.name = m.role"
                    " WHERE m.tenant_id = :t ORDER BY u.email"
                ),
                {"t": tenant_id},
            )
        ]


def test_custom_roles_are_exported_and_resolve_for_members_and_invitees(crafted):
    records = _export_with_custom_role(crafted)
    assert records[0]["version"] == 3
    roles = [r["row"] for r in records if r.get("table") == "saas.custom_roles"]
    assert [(r["name"], r["permissions"]) for r in roles] == [
        ("support-agent", ["contacts:read", "members:read"])
    ]
    assert _index(records, "saas.custom_roles") < _before_tenant_rows(records)
    path = crafted.write(records, fix_counts=False)  # the export as written

    # trusted, m1 as an account new to this database: an active member holding the role at once
    moved = copy.deepcopy(records)
    m1 = next(
        r["row"] for r in moved if r.get("table") == "saas.users" and r["row"]["email"].startswith("m1@")
    )
    m1["email"] = f"m1@moved-{uuid.uuid4().hex[:8]}.test"
    crafted.committed.user_emails.add(m1["email"])
    r, _slug = crafted.run(crafted.write(moved, fix_counts=False), "--trusted")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["rows"]["saas.custom_roles"] == 1
    perms = ["contacts:read", "members:read"]
    assert _held_roles(crafted, out["id"]) == [
        ("m1", "active", "support-agent", perms),
        ("m2", "invited", "support-agent", perms),
    ]

    # untrusted: the default plan (free, no custom_roles) takes the roles anyway; all are invited
    r, slug = crafted.run(path)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert crafted.tenant(slug).plan == "free"
    assert _held_roles(crafted, out["id"]) == [
        ("m1", "invited", "support-agent", perms),
        ("m2", "invited", "support-agent", perms),
    ]
    assert any("lacks 'custom_roles'" in note for note in out["notes"]), out["notes"]
    with crafted.engine.connect() as conn:
        mails = conn.scalars(
            text(
                "SELECT payload->>'role' FROM saas.outbox WHERE tenant_id = :t AND topic = 'mail.invitation'"
            ),
            {"t": out["id"]},
        ).all()
    assert sorted(mails) == ["owner", "support-agent", "support-agent"]


def test_a_member_role_missing_from_the_file_is_refused(crafted):
    records = _export_with_custom_role(crafted)
    at = _index(records, "saas.custom_roles")
    del records[at]
    line_no = next(i for i, r in enumerate(records) if r.get("row", {}).get("role") == "support-agent") + 1
    line = crafted.refused(records, "--trusted")
    assert line.startswith(
        f"error: line {line_no} (saas.memberships): role: Must be one of: owner, admin, member, viewer."
    ), line


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"permissions": ["contacts:read", "root:everything"]},
            "permissions: Unknown permissions: root:everything",
        ),
        ({"name": "owner"}, "name: 'owner' is a built-in role's name."),
        ({"name": "Bad Name"}, "name: 2 to 32 lowercase letters"),
    ],
)
def test_bad_custom_roles_are_refused_by_the_roles_service_rules(crafted, change, expected):
    records = _export_with_custom_role(crafted)
    at = _index(records, "saas.custom_roles")
    records[at]["row"].update(change)
    line = crafted.refused(records)
    assert line.startswith(f"error: line {at + 1} (saas.custom_roles): {expected}"), line


# --- directory settings: domains, SSO connections, SCIM settings ----------------------------------

SEALED = "v1.SEALED-CLIENT-SECRET-" + "Zx9" * 10


def test_domains_sso_and_scim_settings_move_without_the_sealed_secret(crafted):
    records = _export_with_custom_role(crafted)  # to learn the source tenant
    src = crafted.src
    domain = f"{src.slug}.example.test"
    with crafted.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO saas.verified_domains (id, tenant_id, domain, token, created_at, verified_at)"
                " VALUES (gen_random_uuid(), :t, :d, 'oldtoken', now(), now())"
            ),
            {"t": src.id, "d": domain},
        )
        conn.execute(
            text(
                "INSERT INTO saas.sso_connections (id, tenant_id, type, name, enabled, domains, default_role,"
                " role_mapping, config, secret_encrypted, created_at, updated_at) VALUES (gen_random_uuid(),"
                " :t, 'oidc', 'Okta', true, CAST(:domains AS jsonb), 'support-agent',"
                ' \'{"admins": "admin"}\', \'{"issuer": "https://idp.example.test", "client_id": "abc"}\','
                " :sealed, now(), now())"
            ),
            {"t": src.id, "domains": json.dumps([domain]), "sealed": SEALED},
        )
        conn.execute(
            text(
                "INSERT INTO saas.scim_settings (tenant_id, group_roles, default_role, updated_at)"
                " VALUES (:t, '{\"Support\": \"support-agent\"}', 'viewer', now())"
            ),
            {"t": src.id},
        )
    out = crafted.tmp_path / "directory.jsonl"
    r = crafted.run_cli("tenants", "export", src.slug, "--out", str(out))
    assert r.exit_code == 0, r.output
    assert SEALED not in out.read_text() and "secret_encrypted" not in out.read_text()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [
        r["table"] for r in records if r.get("table", "").startswith(("saas.sso", "saas.scim", "saas.ver"))
    ] == [
        "saas.verified_domains",
        "saas.sso_connections",
        "saas.scim_settings",
    ]
    with crafted.engine.begin() as conn:  # as if the target were another deployment
        conn.execute(text("DELETE FROM saas.verified_domains WHERE tenant_id = :t"), {"t": src.id})

    r, _slug = crafted.run(crafted.write(records, fix_counts=False), "--trusted")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    new = result["id"]
    with crafted.engine.connect() as conn:
        claim = conn.execute(
            text("SELECT domain, token, verified_at FROM saas.verified_domains WHERE tenant_id = :t"),
            {"t": new},
        ).one()
        sso = conn.execute(
            text(
                "SELECT enabled, secret_encrypted, domains, default_role, role_mapping, config"
                " FROM saas.sso_connections WHERE tenant_id = :t"
            ),
            {"t": new},
        ).one()
        scim = conn.execute(
            text("SELECT group_roles, default_role FROM saas.scim_settings WHERE tenant_id = :t"), {"t": new}
        ).one()
        tokens = conn.scalar(text("SELECT count(*) FROM saas.scim_tokens WHERE tenant_id = :t"), {"t": new})
    assert claim.domain == domain and claim.verified_at is None and claim.token != "oldtoken"
    assert (sso.enabled, sso.secret_encrypted, sso.domains, sso.default_role) == (
        False,
        None,
        [domain],
        "support-agent",
    )
    assert sso.role_mapping == {"admins": "admin"} and sso.config["issuer"] == "https://idp.example.test"
    assert (scim.group_roles, scim.default_role, tokens) == ({"Support": "support-agent"}, "viewer", 0)
    notes = "\n".join(result["notes"])
    assert f"_saas-challenge.{domain}" in notes and claim.token in notes
    assert "imported DISABLED" in notes and "re-enable" in notes

    # untrusted: the SSO connection is not taken (its config is not checked offline); the rest is
    r, _slug = crafted.run(crafted.write(copy.deepcopy(records), fix_counts=False))
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["rows"]["saas.sso_connections"] == 0 and result["rows"]["saas.scim_settings"] == 1
    assert any(n.startswith("not taken (needs --trusted): saas.sso_connections") for n in result["notes"])

    # a SCIM mapping to a role the file does not have is refused at its line
    at = _index(records, "saas.scim_settings")
    records[at]["row"]["group_roles"] = {"Support": "god"}
    line = crafted.refused(records, "--trusted")
    assert line.startswith(
        f"error: line {at + 1} (saas.scim_settings): group_roles.Support: Must be one of"
    ), line
