"""Every multi-key Redis call stays inside one hash slot, and sign-in keys spread over slots.

The key sets are the ones the code builds (the limiter's plans with their revocation markers,
the cache's ``MGET`` and pipelines, the billing state's ``WATCH``), checked with
``redis.cluster.key_slot``; the suites re-run in this directory send them to a real cluster,
which refuses a key set across slots (``CROSSSLOT``).
"""

from __future__ import annotations

import collections
import uuid
from types import SimpleNamespace

import pytest
from redis.cluster import key_slot

from saas.auth import revocation
from saas.billing.entitlements import cache_key, generation_key
from saas.cache.namespace import PLATFORM_KEYS_VERSION, PublicKeys, TenantKeys
from saas.limits import calendar_month, gcra, policies, usage_key
from saas.limits.gcra import Quota

SECRET = b"slot-test-secret"


def slot(key: str) -> int:
    return key_slot(key.encode())


def slots(keys) -> set[int]:
    return {slot(k) for k in keys}


def _quota(tenant: uuid.UUID) -> Quota:
    from datetime import UTC, datetime

    period = calendar_month(tenant, datetime(2026, 12, 2, tzinfo=UTC))
    key = usage_key(tenant, period.label)
    return Quota("monthly", key, 1000, period.label, 30 * 86400, 2e9, 2_000_000_000)


@pytest.mark.parametrize("principal", ["user", "client", "api_key", "unlimited"])
def test_a_tenant_plan_and_its_revocation_markers_share_the_tenants_slot(principal):
    tenant = uuid.uuid4()
    ent = {"requests_per_minute": None if principal == "unlimited" else 600, "monthly_api_calls": 10_000}
    user = uuid.uuid4() if principal in ("user", "api_key") else None
    client_id = "svc-client" if principal == "client" else "first-party"
    key_id = uuid.uuid4() if principal == "api_key" else None
    own_client = client_id if principal == "client" else None
    checks = policies.tenant_checks(tenant, ent, user, own_client, 0.5, key_id)
    plan = gcra.Plan.of(checks, _quota(tenant))
    sid = str(uuid.uuid4())
    who = SimpleNamespace(tenant_id=tenant, client_id=client_id, api_key_id=key_id, claims={"sid": sid})
    marks = revocation.keys_for(who)
    keys = plan.keys + marks
    assert len(keys) >= 2 and marks  # the call really is multi-key
    assert slots(keys) == {slot("{t:" + str(tenant) + "}")}
    assert plan.split() == (plan,)  # one Lua call on a cluster too


def test_every_tenant_key_and_the_cache_key_sets_are_in_the_tenants_slot():
    tenant = uuid.uuid4()
    keys = TenantKeys(tenant)
    own = slot(keys.tag)
    spelled = [
        keys.rate("tenant"), keys.rate("user", "ab"), keys.usage("2026-12"), keys.cache_version(),
        keys.cache("tenant"), keys.cache("ent"), keys.cache("m:1") + ":lock", keys.revoked_session("s"),
        keys.revoked_client("c"), keys.revoked_api_key("k"), keys.api_key_used("k"),
        keys.seen_assertion(uuid.uuid4(), "d" * 40), cache_key(tenant), generation_key(tenant),
    ]  # fmt: skip
    assert slots(spelled) == {own}
    # TenantCache.get_many's MGET: the version counter and the entries
    assert slots([keys.cache_version(), *map(keys.cache, ["tenant", "ent", "principal:x"])]) == {own}
    # every method of TenantKeys that builds a key is in the list above
    builders = {n for n in dir(TenantKeys) if not n.startswith("_") and callable(getattr(TenantKeys, n))}
    assert builders - {"pattern"} == {
        "rate", "usage", "cache_version", "cache", "revoked_session", "revoked_client", "revoked_api_key",
        "api_key_used", "seen_assertion",
    }  # fmt: skip


def _signin(groups, ip, body=None, form=None, user=None):
    rates = policies.parse_policies(())
    return policies.signin_checks(groups, ip, rates, SECRET, body, form, None, user)


@pytest.mark.parametrize("groups", sorted(set(policies.AUTH_ENDPOINTS.values())))
def test_a_signin_plan_is_one_slot_per_subject(groups):
    body = {"email": "someone@example.test", "owner": {"email": "someone@example.test"}, "mfa_token": "t"}
    form = {"client_id": "app-1"} if "token" in groups else None
    checks = _signin(groups, "203.0.113.9", None if form else body, form, user="u-1")
    plan = gcra.Plan.of(checks, None)
    by_subject = collections.defaultdict(set)
    for check in checks:
        by_subject["ip" if check.policy.endswith("-ip") else "account"].add(slot(check.key))
    assert by_subject["ip"] == {slot("{pre:203.0.113.9}")}
    assert len(by_subject["account"]) == 1 and by_subject["account"] != by_subject["ip"]
    parts = plan.split()
    assert len(parts) == 2 and all(len(slots(p.keys)) == 1 for p in parts)
    assert sorted(c.policy for p in parts for c in p.checks) == sorted(c.policy for c in checks)
    # the lockout marker of an account key is in the account's slot
    for check in checks:
        assert slot(policies.lockout_marker(check.key)) == slot(check.key)


def test_signin_keys_spread_over_the_slots_and_the_nodes():
    """4000 sign-in subjects (2000 client IPs, 2000 accounts): no slot holds more than a few,
    and each third of the slot space (a three-primary cluster's share) holds about a third."""
    keys = [PublicKeys.rate("login-ip", f"198.51.{i // 250}.{i % 250}") for i in range(2000)]
    keys += [PublicKeys.rate("login-account", "e:" + policies.account_subject(SECRET, f"u{i}@x.test"))
             for i in range(2000)]  # fmt: skip
    counts = collections.Counter(slot(k) for k in keys)
    assert len(counts) > 3300 and max(counts.values()) <= 5  # about what 4000 random draws give
    thirds = collections.Counter(slot(k) * 3 // 16384 for k in keys)
    assert all(1000 < n < 1700 for n in thirds.values()), thirds
    # the platform key is one key: never in a multi-key call
    assert slot(PLATFORM_KEYS_VERSION) == slot("{platform}")


def _two_node_checks(guard, ip_limit: int, account_limit: int):
    from saas.limits import gcra

    ip_key = PublicKeys.rate("login-ip", f"192.0.2.{ip_limit}")
    ip_check = gcra.Check("login-ip", ip_key, ip_limit, 60, "login")
    nodes = {guard.node_of(ip_check.key)}
    n = 0
    while True:  # an account subject whose slot is another node's than the IP's
        key = PublicKeys.rate("login-account", f"e:{ip_limit}-{n}")
        if guard.node_of(key) not in nodes:
            return ip_check, gcra.Check("login-account", key, account_limit, 60, "login")
        n += 1


def _limiter(redis_client):
    from saas.cache.guard import CircuitBreaker, Counters, RedisGuard
    from saas.limits import Limiter

    guard = RedisGuard(redis_client, CircuitBreaker(), Counters())
    settings = SimpleNamespace(ratelimit_policies=(), ratelimit_principal_share=0.5,
                               ratelimit_fail_closed=("login",), secret_key="s")  # fmt: skip
    return guard, Limiter(guard, settings)


def test_a_refusal_by_the_first_part_never_consumes_the_second(redis_client):
    """The IP part refuses: the account part is only peeked (its bucket is untouched)."""
    redis_client.flushdb()
    guard, limiter = _limiter(redis_client)
    ip_check, account = _two_node_checks(guard, 2, 100)
    plan = gcra.Plan.of([ip_check, account], None)
    decisions = [limiter.run(plan) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[2].hit.check.policy == "login-ip"
    peek = limiter.run(gcra.Plan.of([account], None), peek=True)
    assert peek.states[0].remaining == 97  # two consumed, and the peek's own


def test_a_plan_across_slots_runs_part_by_part_on_the_cluster(redis_client):
    """Limiter.run on the cluster: the login pair is two slots (two nodes here), checked part by
    part; when the second part refuses, the first gives back what it consumed, so the refused
    request consumes nothing anywhere."""
    redis_client.flushdb()
    guard, limiter = _limiter(redis_client)
    assert guard.clustered
    ip_check, account = _two_node_checks(guard, 100, 2)
    plan = gcra.Plan.of([ip_check, account], None)
    assert len(plan.split()) == 2
    decisions = [limiter.run(plan) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    refused = decisions[2]
    assert refused.hit is not None and refused.hit.check.policy == "login-account"
    assert [s.check.policy for s in refused.states] == ["login-ip", "login-account"]
    # the refused request consumed nothing in the IP's slot: two admitted, and the peek's own
    # request counted in its answer (the refused one, not given back, would make it 96)
    peek = limiter.run(gcra.Plan.of([ip_check], None), peek=True)
    assert peek.states[0].remaining == 97
    # a give-back to a full bucket leaves no key
    fresh = gcra.Plan.of([gcra.Check("p", PublicKeys.rate("p", "gb"), 5, 60)], None)
    assert limiter.run(fresh).allowed and redis_client.exists(fresh.keys[0])
    guard.call("limits", lambda r: fresh.give_back(r), key=fresh.keys[0])
    assert not redis_client.exists(fresh.keys[0])
