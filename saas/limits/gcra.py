"""GCRA rate limits and the monthly quota, all checked in one atomic Lua call.

GCRA (the Generic Cell Rate Algorithm, ITU-T I.371; also "leaky bucket as a meter") keeps one
number per key, the *theoretical arrival time* (TAT), so memory per key is constant whatever the
limit. A policy of ``limit`` requests per ``period`` seconds uses the emission interval
``T = ceil(period / limit)`` (in microseconds, an integer so the arithmetic is exact) and the
tolerance ``tau = limit * T``: a fresh key admits exactly ``limit`` requests at once, then one
every ``T``. A request at time ``now`` is admitted when ``max(TAT, now) + T - now <= tau``.

The clock is the Redis server's (``TIME`` inside the script), so workers and hosts with skewed
clocks agree. The script checks every policy first and writes nothing unless all of them (and
the quota) admit the request: a refused request consumes nothing anywhere.

Script contract (``KEYS``, ``ARGV``)::

    KEYS  = [policy_1 ... policy_n, quota_counter?, revocation_1 ... revocation_m]
    ARGV  = [n, cost, peek(0|1), quota_limit(-1: count only, -2: no counter), quota_expire_at,
             T_1, tau_1, ... T_n, tau_n]          -- T and tau in microseconds; T = 0: a limit
                                                  -- of 0, always refused, retry after tau
    reply = [status(0 ok, 1 rate limited, 2 quota exceeded, 3 revoked), hit(1-based policy,
             or revocation key, or 0), quota_used, now_us, remaining_1, reset_us_1, retry_us_1, ...]

The revocation keys (``saas.auth.revocation``: the caller's session and OAuth client markers,
in the tenant's hash slot like the rest) ride the same call: when one exists the script answers
status 3 at once, with no policy states, and consumes nothing.

It runs with ``EVALSHA``; on ``NOSCRIPT`` (server restarted, ``SCRIPT FLUSH``) it is sent once
with ``EVAL``, which also caches it again.

On a Redis Cluster every key of one call must be in one hash slot: a tenant's plan is (its keys
carry the ``{t:<tenant uuid>}`` tag); a sign-in's plan has an IP's and an account's slot, and
:meth:`Plan.split` gives its parts, which :meth:`saas.limits.Limiter.run` checks one by one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

LUA = r"""
local n = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local peek = tonumber(ARGV[3])
local quota_limit = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local first = n + 1
if quota_limit >= -1 then first = n + 2 end
for j = first, #KEYS do
  if redis.call('EXISTS', KEYS[j]) == 1 then return {3, j - first + 1, 0, now} end
end
local status, hit, worst = 0, 0, -1
local out = {}
local tats = {}
for i = 1, n do
  local T = tonumber(ARGV[4 + 2 * i])
  local tau = tonumber(ARGV[5 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + T * cost
  local diff = new_tat - now
  local remaining, reset, retry
  if T == 0 then
    -- a limit of 0: always refused (retry after one window, passed as tau), writes nothing
    retry = tau
    remaining = 0
    reset = 0
    if retry > worst then worst = retry; hit = i end
    status = 1
  elseif diff > tau then
    retry = diff - tau
    remaining = math.floor((tau - (tat - now)) / T)
    reset = tat - now
    if retry > worst then worst = retry; hit = i end
    status = 1
  else
    retry = 0
    remaining = math.floor((tau - diff) / T)
    reset = diff
  end
  if remaining < 0 then remaining = 0 end
  tats[i] = new_tat
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
local used = 0
if quota_limit >= -1 then
  used = tonumber(redis.call('GET', KEYS[n + 1]) or '0')
  if status == 0 and quota_limit >= 0 and used + cost > quota_limit then status = 2 end
end
if status == 0 and peek == 0 then
  for i = 1, n do
    local ttl = math.ceil((tats[i] - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
  end
  if quota_limit >= -1 then
    used = redis.call('INCRBY', KEYS[n + 1], cost)
    redis.call('EXPIREAT', KEYS[n + 1], tonumber(ARGV[5]))
  end
end
local reply = {status, hit, used, now}
for i = 1, #out do reply[#reply + 1] = out[i] end
return reply
"""

SHA = hashlib.sha1(LUA.encode()).hexdigest()  # noqa: S324 - the script id Redis uses

#: gives back what one admitted request consumed (:meth:`Plan.give_back`): each policy's TAT
#: moves back by ``T * cost`` (a TAT at or before now is a full bucket: the key is dropped) and
#: the quota counter, if any, goes down by ``cost``.
#: KEYS = [policy_1 ... policy_n, quota_counter?]; ARGV = [n, cost, T_1 ... T_n]
GIVE_BACK_LUA = r"""
local n = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, n do
  local T = tonumber(ARGV[2 + i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if T > 0 and tat > now then
    local new_tat = tat - T * cost
    if new_tat <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
    end
  end
end
if #KEYS > n then redis.call('DECRBY', KEYS[n + 1], cost) end
return 1
"""
GIVE_BACK_SHA = hashlib.sha1(GIVE_BACK_LUA.encode()).hexdigest()  # noqa: S324


@dataclass(frozen=True, slots=True)
class Check:
    """One policy applied to one key. ``limit`` requests per ``period`` seconds.

    ``group`` is the failure-policy group (``general``, ``login``, ``mfa``, ``token``, ``signup``).
    """

    policy: str
    key: str
    limit: int
    period: int
    group: str = "general"

    @property
    def interval_us(self) -> int:
        """The emission interval ``T`` (µs); 0 for a limit of 0 (the script refuses it)."""
        if self.limit <= 0:
            return 0
        return -(-self.period * 1_000_000 // self.limit)

    @property
    def tolerance_us(self) -> int:
        """``tau`` (µs); for a limit of 0, the window (the ``Retry-After`` of a refusal)."""
        if self.limit <= 0:
            return self.period * 1_000_000
        return self.interval_us * self.limit


@dataclass(frozen=True, slots=True)
class Quota:
    """A counter of admitted requests per billing period (``limit`` None: counted for metering,
    not enforced)."""

    policy: str
    key: str
    limit: int | None
    period_label: str
    period_seconds: int
    reset_at: float  # unix seconds, end of the period
    expire_at: int  # unix seconds, when the counter may be dropped


@dataclass(frozen=True, slots=True)
class PolicyState:
    check: Check
    remaining: int
    reset_seconds: int
    retry_seconds: int


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one request. ``reason``: ``ok``, ``rate_limited`` or ``quota_exceeded``."""

    allowed: bool
    reason: str
    states: tuple[PolicyState, ...]
    hit: PolicyState | None
    quota: Quota | None
    quota_used: int
    now: float  # unix seconds (Redis clock)
    #: a revocation key of the call exists (status 3): nothing was checked or consumed
    revoked: bool = False

    @property
    def quota_remaining(self) -> int | None:
        if self.quota is None or self.quota.limit is None:
            return None
        return max(0, self.quota.limit - self.quota_used)


#: answers of a cluster node that the cluster client handles (redirect, wait, reload the map)
_REDIRECTS = (redis.exceptions.AskError, redis.exceptions.ClusterError, redis.exceptions.TryAgainError)


def _call(
    client: Any, nkeys: int, keys: Sequence[str], args: Sequence[Any], lua: str = LUA, sha: str = SHA
) -> Any:
    """``EVALSHA`` (``EVAL`` on ``NOSCRIPT``).

    On a :class:`~redis.cluster.RedisCluster` it is sent on the pool of the node that serves the
    keys' slot in the client's slot map; a redirection (``MOVED``, ``ASK``) or a failed node is
    left to the cluster client's own path, which follows it, reloads the slot map and retries.

    On a real :class:`redis.Redis` the command goes straight to a pooled connection: redis-py 8's
    generic command path (retry wrapper, observability hooks) costs more CPU than the script's
    round trip. Errors are the same exceptions, and a broken connection is dropped.
    """
    if type(client) is RedisCluster and keys:
        node = client.nodes_manager.slots_cache.get(key_slot(keys[0].encode()))
        node_client = node[0].redis_connection if node else None
        if node_client is not None:
            try:
                return _call(node_client, nkeys, keys, args, lua, sha)
            except (redis.exceptions.ResponseError, redis.exceptions.ConnectionError,
                    redis.exceptions.TimeoutError, OSError) as exc:  # fmt: skip
                if isinstance(exc, redis.exceptions.ResponseError) and not isinstance(exc, _REDIRECTS):
                    raise  # the script's own error: the cluster client would answer the same
                # MOVED, ASK, a node down: the cluster client redirects, reloads its slot map
                # and retries once (saas.redis_client)
    pool = getattr(client, "connection_pool", None)
    if type(client) is not redis.Redis or pool is None or getattr(client, "connection", None) is not None:
        try:
            return client.evalsha(sha, nkeys, *keys, *args)
        except redis.exceptions.NoScriptError:
            return client.eval(lua, nkeys, *keys, *args)
    conn = pool.get_connection()
    try:
        try:
            conn.send_command("EVALSHA", sha, nkeys, *keys, *args)
            return conn.read_response()
        except redis.exceptions.NoScriptError:
            conn.send_command("EVAL", lua, nkeys, *keys, *args)
            return conn.read_response()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def _ceil_seconds(us: int) -> int:
    return int(-(-us // 1_000_000))


@dataclass(frozen=True, slots=True)
class Plan:
    """Checks and a quota with the script's fixed arguments worked out once (a request's plan
    is the same for every request of one principal until its entitlements or the billing
    period change, so :class:`saas.limits.Limiter` keeps it)."""

    checks: tuple[Check, ...]
    quota: Quota | None
    keys: tuple[str, ...]
    args: tuple[int, ...]  # ARGV from quota_limit on: quota_limit, quota_expire_at, T_1, tau_1...

    @classmethod
    def of(cls, checks: list[Check] | tuple[Check, ...], quota: Quota | None) -> Plan:
        keys = [c.key for c in checks]
        args: list[int] = []
        if quota is not None:
            keys.append(quota.key)
            args += [-1 if quota.limit is None else quota.limit, quota.expire_at]
        else:
            args += [-2, 0]
        for c in checks:
            args += [c.interval_us, c.tolerance_us]
        return cls(tuple(checks), quota, tuple(keys), tuple(args))

    def run(
        self, client: Any, cost: int = 1, peek: bool = False, revocation: tuple[str, ...] = ()
    ) -> Decision:
        """Check (and unless ``peek``, consume) the checks and the quota atomically; with
        ``revocation`` keys, first check that none exists (:attr:`Decision.revoked`).

        Raises:
            redis.RedisError, OSError: Redis failed (the caller applies the failure policy).
        """
        checks = self.checks
        keys = self.keys + revocation if revocation else self.keys
        reply = _call(client, len(keys), keys, (len(checks), cost, 1 if peek else 0, *self.args))
        status, hit, used, now_us = (int(x) for x in reply[:4])
        if status == 3:
            return Decision(False, "revoked", (), None, self.quota, used, now_us / 1_000_000, True)
        states = tuple(
            PolicyState(c, int(reply[4 + 3 * i]), _ceil_seconds(int(reply[5 + 3 * i])),
                        _ceil_seconds(int(reply[6 + 3 * i])))
            for i, c in enumerate(checks)
        )  # fmt: skip
        return Decision(
            allowed=status == 0,
            reason=("ok", "rate_limited", "quota_exceeded")[status],
            states=states,
            hit=states[hit - 1] if status == 1 and hit else None,
            quota=self.quota,
            quota_used=used,
            now=now_us / 1_000_000,
        )

    def give_back(self, client: Any, cost: int = 1) -> None:
        """Undo what :meth:`run` consumed for one admitted request of ``cost`` (the other part of
        a split plan refused it): every policy's bucket gets its ``cost`` intervals back and the
        quota counter its ``cost`` calls. Requests admitted in between keep theirs.

        Raises:
            redis.RedisError, OSError: Redis failed.
        """
        args = (len(self.checks), cost, *(c.interval_us for c in self.checks))
        _call(client, len(self.keys), self.keys, args, GIVE_BACK_LUA, GIVE_BACK_SHA)

    def slots(self) -> tuple[int, ...]:
        """The Redis Cluster hash slot of each key of :attr:`keys` (``redis.crc.key_slot``)."""
        return tuple(key_slot(k.encode()) for k in self.keys)

    def split(self) -> tuple[Plan, ...]:
        """The plan as parts whose keys each share one hash slot, in the order of their first
        check (one part, ``(self,)``, when every key is in one slot: a tenant's plan, whose keys
        all carry its ``{t:<uuid>}`` tag). A sign-in plan's keys are in the slots of its
        subjects (the client IP's, the account's: :class:`saas.cache.namespace.PublicKeys`)."""
        slots = self.slots()
        if len(set(slots)) <= 1:
            return (self,)
        order: dict[int, list[Check]] = {}
        for check, slot in zip(self.checks, slots, strict=False):
            order.setdefault(slot, []).append(check)
        quota_slot = slots[-1] if self.quota is not None else None
        if quota_slot is not None:
            order.setdefault(quota_slot, [])
        return tuple(
            Plan.of(checks, self.quota if slot == quota_slot else None) for slot, checks in order.items()
        )

    def merge(self, decisions: Sequence[Decision]) -> Decision:
        """One :class:`Decision` of the plan from its parts' (:meth:`split`): admitted when
        every part admits; a refusal names the policy with the longest wait."""
        if any(d.revoked for d in decisions):
            return next(d for d in decisions if d.revoked)
        by_check = {state.check: state for d in decisions for state in d.states}
        states = tuple(by_check[c] for c in self.checks)
        refused = [d for d in decisions if not d.allowed]
        limited = [d.hit for d in refused if d.reason == "rate_limited" and d.hit is not None]
        reason = "ok"
        if refused:
            reason = "rate_limited" if any(d.reason == "rate_limited" for d in refused) else "quota_exceeded"
        quota_part = next((d for d in decisions if d.quota is not None), None)
        return Decision(
            allowed=not refused,
            reason=reason,
            states=states,
            hit=max(limited, key=lambda s: s.retry_seconds) if limited else None,
            quota=self.quota,
            quota_used=quota_part.quota_used if quota_part is not None else 0,
            now=max(d.now for d in decisions),
        )


def run(client: Any, checks: list[Check], quota: Quota | None, cost: int = 1, peek: bool = False) -> Decision:
    """Check (and unless ``peek``, consume) all ``checks`` and the ``quota`` atomically.

    Raises:
        redis.RedisError, OSError: Redis failed (the caller applies the failure policy).
    """
    return Plan.of(checks, quota).run(client, cost, peek)
