"""Provisioning: tenant row, schema at head, owner and membership, all or nothing; signup
validation (slug rules, email) and conflicts, including a concurrent race."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import delete, func, select, text

from saas import create_app
from saas.db import Database, schema_name_for
from saas.identity.models import Membership, Tenant, User
from saas.migrate import tenant_head_revision
from saas.outbox import OutboxMessage
from saas.services import services
from saas.tenancy import provisioning
from saas.tenancy.views import SIGNUP_PENDING
from tests.conftest import TEST_PASSWORD
from tests.helpers import assert_problem, drop_tenant, schema_exists


def _signup(client, slug="acme", email="ada@acme.test", password=TEST_PASSWORD, name="Acme"):
    return client.post(
        "/api/v1/signup",
        json={"tenant": {"name": name, "slug": slug}, "owner": {"email": email, "password": password}},
    )


def _counts(conn) -> tuple[int, int, int, int]:
    return (
        conn.scalar(select(func.count()).select_from(Tenant)),
        conn.scalar(select(func.count()).select_from(User)),
        conn.scalar(select(func.count()).select_from(Membership)),
        conn.scalar(text("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 't\\_%'")),
    )


def test_signup_creates_everything(client, connection):
    r = _signup(client)
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["tenant"]["slug"] == "acme" and body["tenant"]["status"] == "active"
    assert body["user"]["email"] == "ada@acme.test"
    assert "password" not in r.get_data(as_text=True)
    assert body["token"]["token_type"] == "Bearer" and body["token"]["refresh_token"]
    tenant_id = uuid.UUID(body["tenant"]["id"])
    schema = schema_name_for(tenant_id)
    tenant = connection.execute(select(Tenant).where(Tenant.id == tenant_id)).one()
    assert tenant.schema_name == schema and tenant.schema_version == tenant_head_revision()
    tables = set(
        connection.scalars(text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema})
    )
    assert tables == {"contacts", "audit_events", "audit_chain", "alembic_version"}
    stamped = connection.scalar(text(f'SELECT version_num FROM "{schema}".alembic_version'))  # noqa: S608
    assert stamped == tenant_head_revision()
    m = connection.execute(
        select(Membership.role, Membership.status).where(Membership.tenant_id == tenant_id)
    ).one()
    assert tuple(m) == ("owner", "active")
    actions = list(connection.scalars(text(f'SELECT action FROM "{schema}".audit_events')))  # noqa: S608
    assert "tenant.created" in actions


def test_failure_after_schema_created_leaves_nothing_http(client, connection, monkeypatch):
    before = _counts(connection)

    def boom(session, tenant):
        assert schema_exists(session.connection(), tenant.schema_name)  # the schema was created
        raise RuntimeError("injected failure")

    monkeypatch.setattr(provisioning, "after_schema_created", boom)
    r = _signup(client, slug="doomed", email="doomed@x.test")
    body = assert_problem(r, 500, "internal_error")
    assert "injected" not in r.get_data(as_text=True)
    assert body["request_id"]
    assert _counts(connection) == before
    assert connection.scalar(select(Tenant.id).where(Tenant.slug == "doomed")) is None
    assert connection.scalar(select(User.id).where(User.email == "doomed@x.test")) is None
    # and the service works again afterwards
    monkeypatch.setattr(provisioning, "after_schema_created", None)
    assert _signup(client, slug="doomed", email="doomed@x.test").status_code == 201


def test_failure_after_schema_created_leaves_nothing_committed(app, engine, monkeypatch):
    """The same on a real committed transaction (what the CLI does), seen from a fresh connection."""
    db = Database(engine)
    with engine.connect() as conn:
        before = _counts(conn)
    seen = {}

    def boom(session, tenant):
        seen["schema"] = tenant.schema_name
        raise RuntimeError("injected failure")

    monkeypatch.setattr(provisioning, "after_schema_created", boom)
    with app.app_context(), pytest.raises(RuntimeError), db.transaction() as session:
        provisioning.provision_tenant(
            session,
            services(app).passwords,
            slug="atomic",
            name="Atomic",
            owner_email="a@atomic.test",
            owner_password=None,
        )
    with engine.connect() as conn:
        assert _counts(conn) == before
        assert not schema_exists(conn, seen["schema"])
        assert conn.scalar(select(User.id).where(User.email == "a@atomic.test")) is None


def test_duplicate_slug_is_409_taken_email_is_202_and_both_leave_nothing(client, connection):
    assert _signup(client).status_code == 201
    before = _counts(connection)
    r = _signup(client, email="other@acme.test")
    body = assert_problem(r, 409, "slug_taken")
    assert body["field"] == "tenant.slug"
    r = _signup(client, slug="acme-two", email="ADA@Acme.Test")  # email unique case-insensitively
    # never email_taken: the account's mailbox is told instead
    assert r.status_code == 202 and r.get_json() == SIGNUP_PENDING
    assert _counts(connection) == before


def _wait_for_lock_waiter(engine, timeout=10.0) -> None:
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            )
            conn.rollback()
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("the second signup never waited on the first")


@pytest.mark.parametrize(
    ("second_slug", "second_email", "code"),
    [("email-race", "second@race.test", "slug_taken"), ("race-two", "FIRST@race.test", "email_taken")],
)
def test_concurrent_signup_race_is_409(app, engine, settings, redis_client, second_slug, second_email, code):
    """Both signups pass the existence checks; the unique index decides and the loser gets 409
    with nothing left behind (no tenant, schema, user or membership)."""
    real = create_app(settings, database=Database(engine), redis=redis_client)
    db = Database(engine)
    with engine.connect() as conn:
        before = _counts(conn)
    first = db.session()
    result = {}

    def second():
        with real.test_client() as c:
            result["response"] = _signup(c, slug=second_slug, email=second_email)

    try:
        with app.app_context():
            done = provisioning.provision_tenant(
                first,
                services(app).passwords,
                slug="email-race",
                name="Race",
                owner_email="first@race.test",
                owner_password=None,
            )
        first.flush()
        thread = threading.Thread(target=second)
        thread.start()
        _wait_for_lock_waiter(engine)
        first.commit()
        thread.join(timeout=20)
        assert not thread.is_alive()
        r = result["response"]
        if code == "email_taken":  # never said: the account's mailbox is told instead
            assert r.status_code == 202 and r.get_json() == SIGNUP_PENDING
        else:
            assert_problem(r, 409, code)
        with engine.connect() as conn:
            after = _counts(conn)
            assert after == (before[0] + 1, before[1] + 1, before[2] + 1, before[3] + 1)
            assert conn.scalar(
                select(func.count()).select_from(Tenant).where(Tenant.slug == second_slug)
            ) == (1 if second_slug == "email-race" else 0)
    finally:
        first.close()
        drop_tenant(engine, done.tenant.id)
        with engine.begin() as conn:  # the notice the losing signup queued (committed)
            conn.execute(delete(OutboxMessage).where(OutboxMessage.topic == "mail.account_exists"))


# --- validation ------------------------------------------------------------------------------

BAD_SLUGS = {
    "ab": "3 to 63",
    "a" * 64: "3 to 63",
    "has_underscore": "lowercase letters",
    "dots.not.ok": "lowercase letters",
    "-leading": "lowercase letters",
    "trailing-": "lowercase letters",
    "two--hyphens": "two hyphens",
    "ünïcode": "lowercase letters",
    "with space": "lowercase letters",
    "www": "reserved",
    "api": "reserved",
    "admin": "reserved",
}


@pytest.mark.parametrize(("slug", "message"), BAD_SLUGS.items())
def test_bad_slugs_are_422_on_the_slug_field(client, connection, slug, message):
    before = _counts(connection)
    r = _signup(client, slug=slug)
    body = assert_problem(r, 422, "validation_error")
    assert list(body["errors"]) == ["tenant"]
    assert list(body["errors"]["tenant"]) == ["slug"]
    assert message in " ".join(body["errors"]["tenant"]["slug"])
    assert _counts(connection) == before


@pytest.mark.parametrize("slug", ["abc", "a" * 63, "a-b-c", "123", "  Mixed-Case  "])
def test_good_slugs(client, slug):
    r = _signup(client, slug=slug, email=f"{uuid.uuid4().hex[:6]}@x.test")
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["tenant"]["slug"] == slug.strip().lower()


@pytest.mark.parametrize("email", ["not-an-email", "a@", "@example.test", "a b@example.test", ""])
def test_bad_emails_are_422_on_the_email_field(client, email):
    body = assert_problem(_signup(client, email=email), 422, "validation_error")
    assert list(body["errors"]) == ["owner"]
    assert "email" in body["errors"]["owner"]


def test_all_field_errors_in_one_response(client):
    r = client.post(
        "/api/v1/signup",
        json={"tenant": {"name": "", "slug": "a_"}, "owner": {"email": "nope", "password": "short"}},
    )
    body = assert_problem(r, 422)
    assert set(body["errors"]["tenant"]) == {"name", "slug"}
    assert set(body["errors"]["owner"]) == {"email", "password"}


def test_missing_objects_and_unknown_fields(client):
    body = assert_problem(client.post("/api/v1/signup", json={}), 422)
    assert set(body["errors"]) == {"tenant", "owner"}
    r = _signup(client)  # sanity: valid input passes
    assert r.status_code == 201
    body = assert_problem(
        client.post(
            "/api/v1/signup",
            json={
                "tenant": {"name": "X", "slug": "xyz", "plan": "pro"},
                "owner": {"email": "x@xyz.test", "password": TEST_PASSWORD},
            },
        ),
        422,
    )
    assert "plan" in body["errors"]["tenant"]


def test_validate_signup_checks_email_for_the_cli():
    from saas.errors import ValidationError

    with pytest.raises(ValidationError) as excinfo:
        provisioning.validate_signup(
            {"slug": "fine-slug", "name": "Fine"}, {"email": "bogus", "password": "a decent passphrase"}
        )
    assert set(excinfo.value.extra["errors"]["owner"]) == {"email"}
