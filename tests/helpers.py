"""Shared test helpers: problem assertions, members of a given role, tokens, committed tenants,
the Redis server's clock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from flask import Flask
from sqlalchemy import delete, select, text

from saas.db import schema_name_for
from saas.identity.models import Membership, Tenant, User
from saas.services import EXTENSION, services

PROBLEM = "application/problem+json"


def replace_services(monkeypatch, app: Flask, **fields: Any) -> None:
    """Give ``app`` a copy of its services with ``fields`` replaced, for this test only (the
    services object is frozen; ``monkeypatch`` puts the original back)."""
    monkeypatch.setitem(app.extensions, EXTENSION, replace(services(app), **fields))


def assert_problem(response, status: int, code: str | None = None) -> dict[str, Any]:
    """Assert an RFC 9457 problem response and return its body."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == PROBLEM, response.mimetype
    body = response.get_json()
    assert body["status"] == status
    assert body["type"] == f"https://errors.saas.dev/{body['code']}"
    assert body["title"]
    assert "Traceback" not in response.get_data(as_text=True)
    if code is not None:
        assert body["code"] == code, body
    return body


def verify_email(app: Flask, user_id: Any) -> None:
    """Mark the user's email verified, straight in the test transaction (as the mailed link would)."""
    from saas.db import utcnow

    session = services(app).database.session()
    try:
        user = session.get(User, uuid.UUID(str(user_id)))
        assert user is not None
        user.email_verified_at = utcnow()
        session.commit()
    finally:
        session.close()


def verification_token(source: Any, email: str, kind: str = "email_verification") -> str:
    """The token of the newest verification link (or account link of ``kind``) queued for
    ``email`` (read from the committed outbox through ``source``, an app or an engine)."""
    from sqlalchemy.orm import Session

    from saas.outbox import OutboxMessage

    session = services(source).database.session() if isinstance(source, Flask) else Session(bind=source)
    try:
        rows = session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.topic == "mail.account_link")
            .order_by(OutboxMessage.id.desc())
        )
        return next(
            r.payload["token"]
            for r in rows
            if r.payload.get("to", "").lower() == email.lower() and r.payload.get("kind") == kind
        )
    finally:
        session.close()


def verify_by_link(base: str, source: Any, email: str) -> None:
    """Verify ``email`` the way its owner would: the token of its newest verification link
    (:func:`verification_token`) posted to ``POST /api/v1/auth/email/verify`` at ``base``."""
    import requests

    r = requests.post(
        f"{base}/api/v1/auth/email/verify", json={"token": verification_token(source, email)}, timeout=10
    )
    assert r.status_code == 204, r.text


def signup_over_http(base: str, slug: str, email: str, *, name: str | None = None) -> dict:
    """The body of ``POST /api/v1/signup`` at ``base`` (a served instance): a tenant ``slug``
    (named ``name``, else its slug) and its owner ``email`` with the test password."""
    import requests

    from tests.conftest import TEST_PASSWORD

    r = requests.post(
        f"{base}/api/v1/signup",
        json={
            "tenant": {"name": name or slug, "slug": slug},
            "owner": {"email": email, "password": TEST_PASSWORD},
        },
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return r.json()


def public_client_over_http(base: str, owner: dict, redirect_uri: str) -> dict:
    """The registration body of a public first-party client ``App`` (redirect ``redirect_uri``)
    made at ``base`` by ``owner`` (a signup body) through ``POST /api/v1/clients``."""
    import requests

    r = requests.post(
        f"{base}/api/v1/clients",
        json={"name": "App", "client_type": "public", "first_party": True, "redirect_uris": [redirect_uri]},
        headers={"Authorization": f"Bearer {owner['token']['access_token']}"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return r.json()


def add_member(
    app: Flask,
    tenant_id: str | uuid.UUID,
    role: str,
    *,
    email: str | None = None,
    status: str = "active",
    verified: bool = True,
) -> User:
    """A user with ``role`` in the tenant, written straight to the test transaction; its email
    verified unless ``verified`` is false."""
    from saas.db import utcnow

    session = services(app).database.session()
    try:
        user = User(
            email=email or f"{role}-{uuid.uuid4().hex[:8]}@example.test",
            name=role.title(),
            email_verified_at=utcnow() if verified else None,
        )
        session.add(user)
        session.flush()
        session.add(
            Membership(user_id=user.id, tenant_id=uuid.UUID(str(tenant_id)), role=role, status=status)
        )
        session.commit()
        return user
    finally:
        session.close()


def token_for(app: Flask, user_id: Any, tenant_id: Any, role: str, scope: str = "api") -> str:
    """A valid access token, minted without the login flow (no password hashing)."""
    issued = services(app).tokens.issue(
        subject=str(user_id), tenant_id=str(tenant_id), roles=[role], scope=scope, client_id="saas-api"
    )
    return issued.token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def role_headers(app: Flask, tenant_id: Any, role: str) -> tuple[User, dict[str, str]]:
    user = add_member(app, tenant_id, role)
    return user, bearer(token_for(app, user.id, tenant_id, role))


def drop_tenant(engine, tenant_id: Any) -> None:
    """Remove a committed tenant: its schema, row, outbox messages, memberships and users left
    without one."""
    from saas.outbox import OutboxMessage

    tenant_id = uuid.UUID(str(tenant_id))
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema_name_for(tenant_id)}" CASCADE')
        conn.execute(delete(OutboxMessage).where(OutboxMessage.tenant_id == tenant_id))
        user_ids = list(conn.scalars(select(Membership.user_id).where(Membership.tenant_id == tenant_id)))
        conn.execute(delete(Tenant).where(Tenant.id == tenant_id))
        for user_id in user_ids:
            others = conn.scalar(select(Membership.id).where(Membership.user_id == user_id).limit(1))
            if others is None:
                conn.execute(delete(User).where(User.id == user_id))


def schema_exists(conn, schema: str) -> bool:
    return bool(conn.scalar(text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}))


def give_plan(session, tenant_id: Any, plan: str) -> None:
    """Operator override of a tenant's plan (as ``saas tenants set-plan`` does), for tests that
    need more seats than the free plan gives."""
    from saas.billing import entitlements
    from saas.billing.models import BillingOverride
    from saas.identity.models import Tenant

    tid = uuid.UUID(str(tenant_id))
    session.add(BillingOverride(tenant_id=tid, plan=plan, limits={}, reason="test"))
    session.get(Tenant, tid).plan = plan
    session.flush()
    entitlements.invalidate(session, tid)


def mailed_invitation_token(app: Flask, email: str) -> str:
    """The token of the newest invitation mailed to ``email``, read from the queued
    ``mail.invitation`` message (the API never returns it)."""
    from saas.outbox import OutboxMessage

    session = services(app).database.session()
    try:
        rows = session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.topic == "mail.invitation")
            .order_by(OutboxMessage.id.desc())
        ).all()
        for row in rows:
            if (row.payload or {}).get("to", "").lower() == email.strip().lower():
                return row.payload["token"]
        raise AssertionError(f"no invitation mailed to {email}")
    finally:
        session.close()


def redis_now(redis_client) -> datetime:
    """The Redis server's clock (``TIME``), which no test can move: key expiries (``EXPIREAT``,
    ``TTL``) and the limiter's GCRA are measured on it, whatever the Python clock says."""
    seconds, micros = redis_client.time()
    return datetime.fromtimestamp(seconds + micros / 1e6, UTC)


@contextmanager
def live_server(settings: Any, engine: Any, redis_client: Any, *, name: str = "127.0.0.1") -> Iterator[tuple]:
    """``(base_url, app, settings)``: the app served by werkzeug, threaded, on a free loopback
    port, committing for real; its issuer is the base URL (``name``: the host in it, e.g.
    ``localhost``, a WebAuthn RP id where an IP address cannot be one)."""
    import threading

    from werkzeug.serving import make_server

    from saas import create_app
    from saas.db import Database

    app_of: dict[str, Any] = {}
    server = make_server("127.0.0.1", 0, lambda environ, start: app_of["app"](environ, start), threaded=True)
    base = f"http://{name}:{server.server_port}"
    live_settings = settings.with_overrides(issuer=base)
    app_of["app"] = create_app(live_settings, database=Database(engine), redis=redis_client)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base, app_of["app"], live_settings
    finally:
        server.shutdown()
        thread.join(timeout=5)
