"""The tenant cache: isolation by construction, version invalidation, stampede protection,
invalidation on role change / removal / suspension, the SQL-free hot path, ETag, key rotation."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis as redis_lib
from sqlalchemy import event, select

from saas.cache import MISS, invalidate_tenant, publish_rotation
from saas.cache.namespace import TenantKeys
from saas.identity.models import Membership, Tenant
from saas.services import services
from tests.conftest import Api
from tests.helpers import mailed_invitation_token


def test_entries_never_cross_tenants(lapp):
    cache = services(lapp).cache
    a, b = uuid.uuid4(), uuid.uuid4()
    _, version = cache.get_many(a, ["plan"])
    cache.set_many(a, version, {"plan": "A's secret"})
    assert cache.get(a, "plan") == "A's secret"
    assert cache.get(b, "plan") is MISS
    _, vb = cache.get_many(b, ["plan"])
    cache.set_many(b, vb, {"plan": "B's"})
    assert cache.get(a, "plan") == "A's secret" and cache.get(b, "plan") == "B's"
    with pytest.raises(TypeError):
        cache.get("a-tenant-slug", "plan")


def test_version_invalidation_and_racing_writer(lapp, redis_client):
    cache = services(lapp).cache
    tid = uuid.uuid4()
    _, version = cache.get_many(tid, ["x"])
    cache.set_many(tid, version, {"x": 1})
    assert cache.get(tid, "x") == 1
    cache.invalidate(tid)
    assert cache.get(tid, "x") is MISS
    # a writer that computed under the old version cannot resurrect stale data
    cache.set_many(tid, version, {"x": "stale"})
    assert cache.get(tid, "x") is MISS
    # the counter lost (eviction, flush): never a hit on an old entry
    _, v2 = cache.get_many(tid, ["x"])
    cache.set_many(tid, v2, {"x": 2})
    redis_client.delete(TenantKeys(tid).cache_version())
    cache.local.clear()
    assert cache.get(tid, "x") is MISS


def test_local_layer_staleness_is_bounded(lapp, redis_client):
    cache = services(lapp).cache
    tid = uuid.uuid4()
    _, version = cache.get_many(tid, ["x"])
    cache.set_many(tid, version, {"x": "old"})
    assert cache.get(tid, "x") == "old"
    redis_client.incr(TenantKeys(tid).cache_version())  # another process invalidated
    time.sleep(cache.local.ttl + 0.05)
    assert cache.get(tid, "x") is MISS


def test_stampede_lock_computes_once(lapp):
    cache = services(lapp).cache
    tid = uuid.uuid4()
    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.1)
        return "expensive"

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_set(tid, "e", compute, lock=True)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["expensive"] * 8
    assert len(calls) == 1


def _member(client, owner_headers, email, role):
    invited = client.post("/api/v1/members", json={"email": email, "role": role}, headers=owner_headers)
    assert invited.status_code == 201, invited.get_json()
    accepted = client.post(
        "/api/v1/invitations/accept",
        json={
            "token": mailed_invitation_token(client.application, email),
            "password": "another good passphrase",
        },
    )
    assert accepted.status_code == 200, accepted.get_json()
    return Api.auth(accepted.get_json()), accepted.get_json()["user"]["id"]


def test_role_change_and_removal_take_effect_at_once(lapi, lclient):
    owner = lapi.auth(lapi.signup("roles"))
    member, member_id = _member(lclient, owner, "m@roles.test", "member")
    assert lclient.post("/api/v1/contacts", json={"name": "A"}, headers=member).status_code == 201
    assert lclient.get("/api/v1/me", headers=member).get_json()["role"] == "member"  # cached now
    changed = lclient.patch(f"/api/v1/members/{member_id}", json={"role": "viewer"}, headers=owner)
    assert changed.status_code == 200
    denied = lclient.post("/api/v1/contacts", json={"name": "B"}, headers=member)
    assert denied.status_code == 403 and denied.get_json()["code"] == "permission_denied"
    assert lclient.delete(f"/api/v1/members/{member_id}", headers=owner).status_code == 204
    assert lclient.get("/api/v1/contacts", headers=member).status_code == 401


def test_suspension_and_direct_orm_changes_invalidate(lapi, lclient, db_session):
    signed = lapi.signup("suspend")
    h = lapi.auth(signed)
    assert lclient.get("/api/v1/contacts", headers=h).status_code == 200  # cached
    tenant = db_session.get(Tenant, uuid.UUID(signed["tenant"]["id"]))
    tenant.status = "suspended"
    db_session.flush()  # no commit: the flush alone invalidates
    refused = lclient.get("/api/v1/contacts", headers=h)
    assert refused.status_code == 403 and refused.get_json()["code"] == "tenant_suspended"
    tenant.status = "active"
    db_session.flush()
    assert lclient.get("/api/v1/contacts", headers=h).status_code == 200
    membership = db_session.scalars(select(Membership).where(Membership.tenant_id == tenant.id)).one()
    membership.role = "viewer"
    db_session.commit()
    assert lclient.get("/api/v1/me", headers=h).get_json()["role"] == "viewer"


def test_other_app_sees_changes_within_one_second(make_app, redis_client):
    one, two = make_app(), make_app()
    api = Api(one.test_client())
    signed = api.signup("twoapps")
    h = api.auth(signed)
    c2 = two.test_client()
    assert c2.get("/api/v1/me", headers=h).get_json()["role"] == "owner"
    # an invalidation published by another process reaches this one through Redis only
    services(two).cache.local.ttl = 0.5
    redis_client.incr(TenantKeys(uuid.UUID(signed["tenant"]["id"])).cache_version())
    time.sleep(0.6)
    hits_before = services(two).counters.get("cache_misses_total")
    assert c2.get("/api/v1/me", headers=h).status_code == 200
    assert services(two).counters.get("cache_misses_total") > hits_before


class CountingRedis(redis_lib.Redis):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands: list[str] = []

    def execute_command(self, *args, **options):
        self.commands.append(str(args[0]))
        return super().execute_command(*args, **options)


def test_hot_path_cache_hit_runs_only_the_data_queries(make_app, redis_client, connection):
    counting = CountingRedis(connection_pool=redis_client.connection_pool)
    app = make_app(redis=counting)
    client = app.test_client()
    api = Api(client)
    h = api.auth(api.signup("hotpath"))
    for i in range(3):
        client.post("/api/v1/contacts", json={"name": f"C{i}"}, headers=h)
    assert client.get("/api/v1/contacts", headers=h).status_code == 200  # warm the cache
    statements: list[str] = []

    def record(conn, cursor, statement, params, context, executemany):
        head = statement.lstrip().split(None, 1)[0].upper()
        if head not in ("SAVEPOINT", "RELEASE", "ROLLBACK"):  # the test's own transaction
            statements.append(statement)

    # the signing-key watcher's GET runs at most every 0.5 s: a loaded machine can take longer
    # than that between the two requests, so the measured one is kept inside its interval
    services(app).key_watcher._next_check = time.monotonic() + 60
    counting.commands.clear()
    event.listen(connection.engine, "before_cursor_execute", record)
    try:
        response = client.get("/api/v1/contacts", headers=h)
    finally:
        event.remove(connection.engine, "before_cursor_execute", record)
    assert response.status_code == 200 and len(response.get_json()) == 3
    assert len(statements) == 1, statements  # the page, with its total as a window count
    assert "count(*) over ()" in statements[0].lower() and "contacts" in statements[0]
    assert response.headers["X-Pagination"].startswith('{"total": 3')
    assert counting.commands == ["EVALSHA"], counting.commands  # one round trip: the limits


def test_etag_and_cache_control(lapi, lclient):
    h = lapi.auth(lapi.signup("etags"))
    tenant = lclient.get("/api/v1/tenant", headers=h)
    etag = tenant.headers["ETag"]
    assert etag and tenant.headers["Cache-Control"] == "private, no-store"
    not_modified = lclient.get("/api/v1/tenant", headers={**h, "If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.data == b""
    lclient.patch("/api/v1/tenant", json={"name": "Renamed"}, headers=h)
    changed = lclient.get("/api/v1/tenant", headers={**h, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    listing = lclient.get("/api/v1/contacts", headers=h)
    assert "ETag" not in listing.headers and listing.headers["Cache-Control"] == "private, no-store"
    created = lclient.post("/api/v1/contacts", json={"name": "Ada"}, headers=h).get_json()
    one = lclient.get(f"/api/v1/contacts/{created['id']}", headers=h)
    # the list (serialised in one pass) renders a contact exactly as the schema does
    lclient.patch(f"/api/v1/contacts/{created['id']}", json={"tags": ["x"], "phone": "1"}, headers=h)
    one = lclient.get(f"/api/v1/contacts/{created['id']}", headers=h)
    assert lclient.get("/api/v1/contacts", headers=h).get_json() == [one.get_json()]
    assert (
        lclient.get(
            f"/api/v1/contacts/{created['id']}", headers={**h, "If-None-Match": one.headers["ETag"]}
        ).status_code
        == 304
    )


def test_key_rotation_reaches_other_processes(make_app, tmp_path):
    from saas.auth.keys import KeyStore

    key_dir = tmp_path / "keys"
    first = KeyStore(key_dir, generate=True).active.path
    first.rename(key_dir / "20000101T000000-first.pem")  # keys are ordered by file name
    one = make_app(signing_key_path=key_dir)
    two = make_app(signing_key_path=key_dir)
    services(two).key_watcher.check_interval = 0
    old_kid = services(two).keys.active.kid
    services(one).keys.add_key()
    publish_rotation(one)
    new_kid = services(one).keys.active.kid
    assert new_kid != old_kid
    api = Api(one.test_client())
    h = api.auth(api.signup("rotation"))  # signed with the new key
    assert two.test_client().get("/api/v1/me", headers=h).status_code == 200
    assert services(two).keys.active.kid == new_kid
    jwks = two.test_client().get("/.well-known/jwks.json").get_json()
    assert {k["kid"] for k in jwks["keys"]} == {old_kid, new_kid}


def test_invalidate_tenant_api_drops_local_entries(lapp):
    cache = services(lapp).cache
    tid = uuid.uuid4()
    _, version = cache.get_many(tid, ["x"])
    cache.set_many(tid, version, {"x": 1})
    invalidate_tenant([tid])
    assert cache.get(tid, "x") is MISS


def test_values_that_are_not_json_are_not_cached(lapp):
    import datetime as dt

    cache = services(lapp).cache
    tid = uuid.uuid4()
    value = cache.get_or_set(tid, "when", lambda: {"at": dt.datetime(2026, 1, 1)})
    assert value == {"at": dt.datetime(2026, 1, 1)}  # computed, returned unaltered
    assert cache.get(tid, "when") is MISS
