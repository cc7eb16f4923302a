"""``saas users rehash-recovery-codes``: rows stored as plain SHA-256 (before keyed hashes) are
rewritten as HMAC-SHA256 under the key derived from SECRET_KEY, without the codes."""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import select

from saas.auth import mfa
from saas.auth.models import RecoveryCode
from saas.db import Database
from saas.identity.models import User


def test_rehash_recovery_codes_rewrites_legacy_rows(committed, run_cli, engine, cli_settings):
    tenant = committed.tenant()
    db = Database(engine)
    codes = ["abcde-fghij", "klmno-pqrst"]
    with db.transaction() as session:
        user = session.scalars(select(User).where(User.email == f"m0@{tenant.slug}.test")).one()
        user_id = user.id
        for code in codes:
            legacy = hashlib.sha256(code.replace("-", "").encode()).hexdigest()
            session.add(RecoveryCode(user_id=user_id, code_hash=legacy, hash_scheme="sha256"))
    r = run_cli("users", "rehash-recovery-codes")
    assert r.exit_code == 0, r.output
    assert "2 recovery code(s) rewritten" in r.output
    key = mfa.recovery_code_key(cli_settings.secret_key)
    digests = [hashlib.sha256(c.replace("-", "").encode()).digest() for c in codes]
    expected = {hmac.new(key, user_id.bytes + d, "sha256").hexdigest() for d in digests}
    with db.transaction() as session:
        rows = list(session.scalars(select(RecoveryCode).where(RecoveryCode.user_id == user_id)))
    assert {r.code_hash for r in rows} == expected and {r.hash_scheme for r in rows} == {"hmac-sha256"}
    again = run_cli("users", "rehash-recovery-codes")
    assert again.exit_code == 0 and "0 recovery code(s) rewritten" in again.output


def test_an_export_from_before_keyed_hashes_imports_as_legacy_rows(committed, run_cli, engine, tmp_path):
    """A file written before ``hash_scheme`` existed holds plain SHA-256 hashes: they are imported
    as such (and rewritten later), not mislabelled as keyed hashes that never verify."""
    import json
    import uuid

    src = committed.tenant(members=2)
    db = Database(engine)
    legacy = hashlib.sha256(b"abcdefghij").hexdigest()
    with db.transaction() as session:
        member = session.scalars(select(User).where(User.email == f"m1@{src.slug}.test")).one()
        member_id = member.id
        session.add(RecoveryCode(user_id=member_id, code_hash=legacy, hash_scheme="sha256"))
    out = tmp_path / "export.jsonl"
    assert run_cli("tenants", "export", src.slug, "--out", str(out)).exit_code == 0
    lines = []
    for line in out.read_text().splitlines():
        record = json.loads(line)
        if record.get("table") == "saas.mfa_recovery_codes":
            record["row"].pop("hash_scheme")  # as the older code wrote it
        lines.append(json.dumps(record))
    out.write_text("\n".join(lines) + "\n")
    with engine.begin() as conn:
        conn.execute(RecoveryCode.__table__.delete().where(RecoveryCode.user_id == member_id))
        conn.execute(User.__table__.delete().where(User.id == member_id))
    slug = "copy-" + uuid.uuid4().hex[:8]
    r = run_cli("tenants", "import", str(out), "--trusted", "--slug", slug, "--json")
    assert r.exit_code == 0, r.output
    committed.track(uuid.UUID(json.loads(r.stdout)["id"]))
    with db.transaction() as session:
        user = session.scalars(select(User).where(User.email == f"m1@{src.slug}.test")).one()
        rows = list(session.scalars(select(RecoveryCode).where(RecoveryCode.user_id == user.id)))
    assert [(r.code_hash, r.hash_scheme) for r in rows] == [(legacy, "sha256")]
