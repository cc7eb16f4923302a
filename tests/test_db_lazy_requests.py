"""The request unit of work in lazy-begin mode, on real requests.

Every other API test binds the app to a Connection inside an outer transaction (savepoint
mode), where ``Database.session`` ignores ``lazy_begin``. Here the app runs on an Engine made
by :meth:`saas.db.Database.from_url`, as in production, and commits for real on its own tenants
(dropped at the end). For each request, every statement is recorded with the connection's
transaction status right after it: reads before the first write run in autocommit (``IDLE``),
and every write runs inside the one transaction (``INTRANS``) that the request commits or
rolls back as a whole.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import delete, event, select, update

from saas import create_app
from saas import db as saas_db
from saas.audit import AuditEvent
from saas.auth.models import RefreshToken
from saas.db import Database, schema_name_for, shared_metadata
from saas.security import token_hash
from saas.services import services
from tests.conftest import TEST_PASSWORD
from tests.helpers import drop_tenant, mailed_invitation_token, verification_token

WRITES = {"INSERT", "UPDATE", "DELETE", "CREATE", "ALTER", "DROP", "COMMENT", "GRANT"}
IDLE, INTRANS = TransactionStatus.IDLE, TransactionStatus.INTRANS


class Recorder:
    """(first word, transaction status after the statement) of every statement on the engine."""

    def __init__(self, engine) -> None:
        self.seen: list[tuple[str, TransactionStatus]] = []
        event.listen(engine, "after_cursor_execute", self._after)

    def _after(self, conn, cursor, statement, params, context, many) -> None:
        word = statement.lstrip().split(None, 1)[0].upper().strip("(")
        self.seen.append((word, cursor.connection.info.transaction_status))

    def take(self) -> list[tuple[str, TransactionStatus]]:
        seen, self.seen = self.seen, []
        return seen


def assert_read_only(seen: list[tuple[str, TransactionStatus]]) -> None:
    """Only SELECTs, each outside a transaction (so no BEGIN was sent, and no COMMIT)."""
    assert seen, "the request ran no statement"
    assert all(word == "SELECT" and status == IDLE for word, status in seen), seen


def assert_lazy_writes(seen: list[tuple[str, TransactionStatus]], *, reads_first: bool = True) -> None:
    """At least one write; every write (and everything after the first one) in the transaction;
    with ``reads_first``, the request's first statement was a read outside any transaction
    (else it was a locking read, ``FOR UPDATE``, which opened the transaction)."""
    writes = [i for i, (word, _) in enumerate(seen) if word in WRITES]
    assert writes, seen
    assert all(status == INTRANS for _, status in seen[writes[0] :]), seen
    assert all(word == "SELECT" for word, status in seen if status == IDLE), seen
    assert seen[0] == ("SELECT", IDLE if reads_first else INTRANS), seen


@pytest.fixture(scope="module")
def lazy(settings, database_url, redis_client) -> Iterator[tuple]:
    """(app, recorder): the app on a production-like Engine, whose tenants are dropped after."""
    database = Database.from_url(database_url, pool_size=2, max_overflow=0)
    app = create_app(settings, database=database, redis=redis_client)
    app.testing = True
    recorder = Recorder(database.engine)
    tenants: list[str] = []
    app.config["lazy_tenants"] = tenants
    yield app, recorder
    ids = [uuid.UUID(t) for t in tenants]
    with database.engine.begin() as conn:  # rows keyed by tenant but not cascaded (the outbox...)
        for table in reversed(shared_metadata.sorted_tables):
            if "tenant_id" in table.c and table.name != "memberships":
                conn.execute(delete(table).where(table.c.tenant_id.in_(ids)))
    for tenant_id in ids:
        drop_tenant(database.engine, tenant_id)
    database.dispose()


@pytest.fixture()
def client(lazy):
    return lazy[0].test_client()


@pytest.fixture()
def recorder(lazy):
    lazy[1].take()
    return lazy[1]


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _signup(app, client, recorder) -> dict:
    slug = f"lazy-{uuid.uuid4().hex[:8]}"
    r = client.post(
        "/api/v1/signup",
        json={
            "tenant": {"name": "Lazy Inc", "slug": slug},
            "owner": {"email": f"owner@{slug}.test", "password": TEST_PASSWORD},
        },
    )
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    app.config["lazy_tenants"].append(body["tenant"]["id"])
    assert_lazy_writes(recorder.take())
    body["email"] = f"owner@{slug}.test"
    # inviting needs a verified owner: the mailed link's token
    r = client.post("/api/v1/auth/email/verify", json={"token": verification_token(app, body["email"])})
    assert r.status_code == 204, r.get_json()
    recorder.take()
    return body


def _audit_actions(app, tenant_id: str) -> list[str]:
    with services(app).database.transaction(schema_name_for(uuid.UUID(tenant_id))) as session:
        return list(session.scalars(select(AuditEvent.action)))


def test_signup_login_and_contacts(lazy, client, recorder):
    app, _ = lazy
    owner = _signup(app, client, recorder)

    r = client.post("/api/v1/auth/login", json={"email": owner["email"], "password": TEST_PASSWORD})
    assert r.status_code == 200, r.get_json()
    assert_lazy_writes(recorder.take())  # user and membership read, then the refresh token row
    h = _auth(r.get_json()["access_token"])

    assert client.get("/api/v1/me", headers=h).status_code == 200
    assert_read_only(recorder.take())

    ids = []
    for name in ("Ada", "Grace", "Alan"):
        r = client.post("/api/v1/contacts", json={"name": name, "tags": ["vip"]}, headers=h)
        assert r.status_code == 201, r.get_json()
        assert_lazy_writes(recorder.take())
        ids.append((r.get_json()["id"], r.headers["ETag"]))

    r = client.get("/api/v1/contacts?sort=name&page_size=2&tag=vip&q=a", headers=h)
    assert r.status_code == 200
    assert [c["name"] for c in r.get_json()] == ["Ada", "Alan"]
    assert_read_only(recorder.take())

    (cid, etag), *_ = ids
    r = client.patch(f"/api/v1/contacts/{cid}", json={"company": "Engines"}, headers={**h, "If-Match": etag})
    assert r.status_code == 200, r.get_json()
    assert_lazy_writes(recorder.take())
    r = client.get(f"/api/v1/contacts/{cid}", headers=h)
    assert r.get_json()["company"] == "Engines"
    assert_read_only(recorder.take())

    assert client.get("/api/v1/audit-events", headers=h).status_code == 200
    assert_read_only(recorder.take())
    actions = _audit_actions(app, owner["tenant"]["id"])
    assert actions.count("contact.created") == 3 and "contact.updated" in actions


def test_invite_and_accept(lazy, client, recorder):
    app, _ = lazy
    owner = _signup(app, client, recorder)
    h = _auth(owner["token"]["access_token"])
    email = f"new-{uuid.uuid4().hex[:6]}@lazy.test"
    r = client.post("/api/v1/members", json={"email": email, "role": "member"}, headers=h)
    assert r.status_code == 201, r.get_json()
    assert_lazy_writes(recorder.take())
    token = mailed_invitation_token(app, email)

    r = client.post("/api/v1/invitations/accept", json={"token": token, "password": TEST_PASSWORD + "!"})
    assert r.status_code in (200, 201), r.get_json()
    assert_lazy_writes(recorder.take(), reads_first=False)  # the invitation is read FOR UPDATE

    r = client.get("/api/v1/members", headers=h)
    assert {m["email"]: m["status"] for m in r.get_json()}[email] == "active"
    assert_read_only(recorder.take())


def test_a_request_failing_after_a_write_leaves_nothing(lazy, client, recorder, monkeypatch):
    """A write, then a 409: the write went into the request's transaction, which the 409
    rolled back, with the audit event the service had recorded by then."""
    from tenants import contacts
    from tenants.models import Contact

    app, _ = lazy
    owner = _signup(app, client, recorder)
    h = _auth(owner["token"]["access_token"])
    r = client.post("/api/v1/contacts", json={"name": "Ada"}, headers=h)
    cid = r.get_json()["id"]
    audit_before = _audit_actions(app, owner["tenant"]["id"])
    recorder.take()
    check = contacts._check_if_match

    def racing_check(contact):  # a write mid-request, then the versioned write matches no row
        check(contact)
        table = Contact.__table__
        saas_db.session().connection().execute(
            update(table).where(table.c.id == contact.id).values(version=table.c.version + 1, name="Other")
        )

    monkeypatch.setattr(contacts, "_check_if_match", racing_check)
    r = client.patch(f"/api/v1/contacts/{cid}", json={"name": "Mine"}, headers=h)
    assert r.status_code == 409, r.get_json()
    assert_lazy_writes(recorder.take())
    monkeypatch.undo()

    got = client.get(f"/api/v1/contacts/{cid}", headers=h).get_json()
    assert got["name"] == "Ada"  # neither "Other" (the mid-request write) nor "Mine"
    assert _audit_actions(app, owner["tenant"]["id"]) == audit_before


def test_refresh_reuse_commits_its_revocation(lazy, client, recorder):
    """The deliberate commit of a failing request (saas.auth.service.refresh): reuse of a
    rotated refresh token revokes the family, and the revocation survives the 400."""
    app, _ = lazy
    owner = _signup(app, client, recorder)
    r1 = owner["token"]["refresh_token"]
    r = client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": r1})
    assert r.status_code == 200, r.get_json()
    assert_lazy_writes(recorder.take(), reads_first=False)  # the token is read FOR UPDATE
    r2 = r.get_json()["refresh_token"]
    with services(app).database.transaction() as session:  # past the grace window
        session.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == token_hash(r1))
            .values(used_at=RefreshToken.used_at - timedelta(minutes=5))
        )
    recorder.take()

    r = client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": r1})
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"
    assert_lazy_writes(recorder.take(), reads_first=False)
    with services(app).database.transaction() as session:
        rows = session.scalars(select(RefreshToken).where(RefreshToken.token_hash == token_hash(r2))).all()
        assert [row.revoked_reason for row in rows] == ["reuse_detected"]
    recorder.take()
    r = client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": r2})
    assert r.status_code == 400 and "revoked" in r.get_json()["error_description"]
