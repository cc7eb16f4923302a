"""Redis key names that carry the tenant by construction (design invariant 8).

Every key of tenant data is built by :class:`TenantKeys`, whose only constructor argument is the
tenant's :class:`uuid.UUID`: a tenant-less key cannot be spelled through this API. Keys start
with the Redis Cluster hash tag ``{t:<tenant uuid>}`` so one tenant's keys (rate limits, usage,
cache entries, cache version) live in one slot and one Lua script may touch them all.

Layout (``<id>`` is the canonical UUID text, ``8c0f...-....``):

==================================  ===========================================================
``{t:<id>}:rl:<policy>[:<subject>]``  GCRA theoretical arrival time of a rate-limit policy
``{t:<id>}:usage:<YYYY-MM>``          API calls counted in the billing period (metering reads it)
``{t:<id>}:cv``                       cache version of the tenant (bumped on every change)
``{t:<id>}:c:<name>``                 cache entry ``[version, value]`` (JSON)
``{t:<id>}:rv:s:<session id>``        a revoked session (refresh-token family; ``saas.auth.revocation``)
``{t:<id>}:rv:c:<client id>``         a deleted OAuth client of the tenant (same module)
``{t:<id>}:saml:a:<conn>:<hash>``     a SAML assertion id seen at a connection's ACS (replay)
``{t:<id>}:rv:k:<api key id>``       a revoked API key of the tenant (same module)
``{t:<id>}:ku:<api key id>``          an API key's ``last_used_at`` was written this minute
==================================  ===========================================================

Keys that belong to no tenant (pre-authentication throttles, platform keys) are built by
:class:`PublicKeys` under their own hash tags (one per IP or account: ``{pre:<subject>}``) and
can never be confused with a tenant's.
"""

from __future__ import annotations

import uuid


class TenantKeys:
    """Key builder for one tenant. ``TenantKeys(tenant_id)``; raises ``TypeError`` for anything
    but a :class:`uuid.UUID` (no strings, no ``None``)."""

    __slots__ = ("tag", "tenant_id")

    def __init__(self, tenant_id: uuid.UUID) -> None:
        if not isinstance(tenant_id, uuid.UUID):
            raise TypeError(f"a tenant key needs the tenant's UUID, got {type(tenant_id).__name__}")
        self.tenant_id = tenant_id
        self.tag = "{t:" + str(tenant_id) + "}"

    def rate(self, policy: str, subject: str | None = None) -> str:
        """GCRA state key of ``policy`` (optionally for one ``subject`` inside the tenant)."""
        return f"{self.tag}:rl:{policy}:{subject}" if subject else f"{self.tag}:rl:{policy}"

    def usage(self, period: str) -> str:
        """Usage counter of billing period ``period`` (``YYYY-MM``)."""
        return f"{self.tag}:usage:{period}"

    def cache_version(self) -> str:
        return f"{self.tag}:cv"

    def cache(self, name: str) -> str:
        return f"{self.tag}:c:{name}"

    def revoked_session(self, session_id: str) -> str:
        """Marker of a revoked session (``sid``) of the tenant; see :mod:`saas.auth.revocation`."""
        return f"{self.tag}:rv:s:{session_id}"

    def revoked_client(self, client_id: str) -> str:
        """Marker of a deleted OAuth client of the tenant; see :mod:`saas.auth.revocation`."""
        return f"{self.tag}:rv:c:{client_id}"

    def seen_assertion(self, connection_id: uuid.UUID, assertion_digest: str) -> str:
        """Marker of a SAML assertion id already used at a connection (``saas.auth.sso.saml``)."""
        return f"{self.tag}:saml:a:{connection_id}:{assertion_digest}"
    def revoked_api_key(self, key_id: str) -> str:
        """Marker of a revoked API key of the tenant; see :mod:`saas.auth.revocation`."""
        return f"{self.tag}:rv:k:{key_id}"

    def api_key_used(self, key_id: str) -> str:
        """Guard of an API key's ``last_used_at`` write (``SET NX EX``; :mod:`saas.auth.api_keys`)."""
        return f"{self.tag}:ku:{key_id}"

    def pattern(self, kind: str = "*") -> str:
        """A SCAN pattern over this tenant's keys of ``kind`` (``rl``, ``c``...)."""
        return f"{self.tag}:{kind}*" if kind != "*" else f"{self.tag}:*"


class PublicKeys:
    """Keys of throttles that run before any tenant is known (login, signup, per-IP).

    Each subject has its own hash tag, ``{pre:<subject>}``: every policy of one client IP
    (``ip``, ``login-ip``, ``mfa-ip``...) shares that IP's slot, every policy of one account
    (``login-account``, ``mfa-account``...) the account's, so the platform's sign-in traffic
    spreads over the cluster's slots (no hot slot) and one subject's keys can still go in one
    script. A sign-in request's IP and account keys are in two slots: the limiter checks them
    part by part on a cluster (:meth:`saas.limits.Limiter.run`).

    ==========================================  ===================================================
    ``{pre:<ip>}:rl:<policy>``                  a client IP's (an IPv6 client's /64) throttle
    ``{pre:<kind>:<hmac>}:rl:<policy>``         an account's (``e:`` email, ``s:`` token subject,
                                                ``c:`` OAuth client, ``r:`` refresh token, ``m:``
                                                MFA token; HMAC-SHA-256 of the value)
    ``{pre:<...>}:rl:login-account:audited``    this lockout window is audited (``SET NX EX``)
    ==========================================  ===================================================
    """

    PREFIX = "{pre:"

    @classmethod
    def rate(cls, policy: str, subject: str) -> str:
        """The GCRA key of ``policy`` for ``subject`` (a client IP or an account subject);
        ``subject`` must not contain ``}`` (IPs and the HMAC subjects never do)."""
        return f"{cls.PREFIX}{subject}}}:rl:{policy}"


PLATFORM_KEYS_VERSION = "{platform}:keys:version"
