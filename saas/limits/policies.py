"""Which limits apply to a request, and the keys they use.

Policies (names appear in the ``RateLimit-Policy`` header and in 429 problems):

===================  =====================================  ================  ==============
policy               applies to                             default           key subject
===================  =====================================  ================  ==============
``tenant``           authenticated requests (not sign-in)   plan's requests_  the tenant
                                                            per_minute / 1m
``user``/``client``  same, per user or OAuth client         share x tenant    user or client
``api_key``          same, per API key (not its creator's)  share x tenant    the key
``monthly``          same (quota, not a rate)               monthly_api_calls tenant, period
``ip``               other requests without a live          300/1m            client IP
                     principal (no token, a forged one,
                     or one of a deleted tenant)
``login-ip``         ``POST /api/v1/auth/login``, hosted    30/1m             client IP
                     ``POST /oauth/login``, ``DELETE
                     /api/v1/me/mfa/totp``
``login-account``    same                                   10/1m             HMAC(email), else
                                                                              HMAC(bearer sub)
``mfa-ip``           ``POST /api/v1/auth/mfa``, hosted      30/1m             client IP
                     ``POST /oauth/mfa`` and ``/oauth/mfa/
                     enroll``, ``POST /api/v1/me/mfa/totp/
                     confirm``, ``DELETE /api/v1/me/mfa/
                     totp``
``mfa-account``      same                                   5/1m              email / token sub
                                                                              / bearer sub
``token-ip``         ``POST /oauth/token``                  60/1m             client IP
``token-client``     same                                   30/1m             client_id, else
                                                                              HMAC(refresh tok)
``signup-ip``        ``POST /api/v1/signup``                10/1h             client IP
``signup-account``   same                                   3/1h              HMAC(owner email)
``mail-ip``          endpoints that mail someone a link      20/1h             client IP
                     (``POST /api/v1/auth/password/forgot``,
                     ``/api/v1/me/email``, ``/api/v1/me/
                     email/verification``, hosted forgot)
``mail-account``     same                                   5/1h              HMAC(email), else
                                                                              HMAC(bearer sub)
===================  =====================================  ================  ==============

The sign-in policies apply by endpoint (:data:`AUTH_ENDPOINTS`), whatever credentials the
request carries. Override any fixed one with
``RATELIMIT_POLICIES="login-ip=20/1m,signup-ip=5/1h"`` (units ``s``, ``m``, ``h``, ``d``).
Tenant keys are built by :class:`saas.cache.namespace.TenantKeys` (the only way to spell
them), pre-authentication keys by :class:`saas.cache.namespace.PublicKeys`.
IPv6 clients are limited per /64. Account subjects are HMAC-SHA-256 of the normalised value with
the app's secret key, so Redis never holds an email address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from saas.cache.namespace import PublicKeys, TenantKeys
from saas.limits.gcra import Check

_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

DEFAULT_POLICIES: dict[str, str] = {
    "ip": "300/1m",
    "login-ip": "30/1m",
    "login-account": "10/1m",
    "mfa-ip": "30/1m",
    "mfa-account": "5/1m",
    "token-ip": "60/1m",
    "token-client": "30/1m",
    "signup-ip": "10/1h",
    "signup-account": "3/1h",
    "mail-ip": "20/1h",
    "mail-account": "5/1h",
}

#: (method, path or URL rule) -> the groups of sign-in throttles of every endpoint that checks a
#: password, a code, a client secret or an identity provider's answer, or creates an account.
#: They apply by endpoint, whatever credentials the request carries: a bearer token (valid,
#: forged, or of a deleted tenant) neither lifts them nor adds the tenant's limits (which would
#: also put tenant keys and ``{pre:<subject>}`` keys in one script, Redis Cluster slots apart).
AUTH_ENDPOINTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", "/api/v1/auth/login"): ("login",),
    ("POST", "/oauth/login"): ("login",),  # the hosted sign-in page (form)
    ("POST", "/api/v1/auth/mfa"): ("mfa",),
    ("POST", "/oauth/mfa"): ("mfa",),
    ("POST", "/oauth/mfa/enroll"): ("mfa",),  # the hosted enrolment's first code
    ("POST", "/api/v1/me/mfa/totp/confirm"): ("mfa",),
    ("DELETE", "/api/v1/me/mfa/totp"): ("login", "mfa"),  # password and code
    ("POST", "/oauth/token"): ("token",),
    ("POST", "/api/v1/signup"): ("signup",),
    # the mailed invitation token proves the mailbox and sets a new account's password
    ("POST", "/api/v1/invitations/accept"): ("login",),
    # the identity lifecycle (docs/auth.md): each proves who someone is or mails them
    ("POST", "/api/v1/auth/password/forgot"): ("login", "mail"),
    ("POST", "/api/v1/auth/password/reset"): ("login",),
    ("PUT", "/api/v1/me/password"): ("login",),
    ("POST", "/api/v1/auth/email/verify"): ("login",),
    ("POST", "/api/v1/auth/email/change"): ("login",),
    ("POST", "/api/v1/me/email/verification"): ("login", "mail"),
    ("POST", "/api/v1/me/email"): ("login", "mail"),
    ("POST", "/api/v1/me/webauthn/registration/options"): ("login",),
    ("POST", "/api/v1/me/webauthn/registration/verify"): ("login",),
    ("POST", "/api/v1/auth/webauthn/options"): ("login",),
    ("POST", "/api/v1/auth/webauthn/verify"): ("login",),
    ("POST", "/api/v1/auth/mfa/webauthn/options"): ("mfa",),  # a passkey as the second factor
    ("POST", "/api/v1/auth/mfa/webauthn/verify"): ("mfa",),
    ("GET", "/api/v1/me/export"): ("mail",),  # heavy, and no password: the mail throttles
    ("DELETE", "/api/v1/me"): ("login",),
    ("POST", "/account/forgot"): ("login", "mail"),  # the hosted pages' forms
    ("POST", "/account/reset"): ("login",),
    ("POST", "/account/verify"): ("login",),
    ("POST", "/account/email"): ("login",),
    ("POST", "/oauth/webauthn/options"): ("login",),
    ("POST", "/oauth/webauthn/verify"): ("login",),
    # social login (saas.auth.social_views): the mailed linking link, and spending it
    ("POST", "/oauth/social/link/email"): ("login", "mail"),
    ("POST", "/oauth/social/link/confirm"): ("login",),
    # the answers of identity providers, each signing someone in (docs/auth.md, "Per-tenant SSO",
    # "Social login"); a path with a variable part is matched by its URL rule
    ("GET", "/sso/oidc/callback"): ("login",),
    ("POST", "/sso/saml/<uuid:connection_id>/acs"): ("login",),
    ("GET", "/oauth/sso/complete"): ("login",),
    ("GET", "/oauth/social/<name>/callback"): ("login",),
}

EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})

#: the per-account login throttle: when it starts refusing, the account is locked out of
#: password sign-in (audited as ``auth.login_throttled``, once per window)
LOCKOUT_POLICY = "login-account"

#: requests per minute of a tenant whose entitlements lack the key (never the case for
#: :func:`saas.billing.entitlements.entitlements_for`'s output)
DEFAULT_TENANT_RPM = 60


@dataclass(frozen=True, slots=True)
class Rate:
    limit: int
    period: int  # seconds

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"30/1m"``, ``"10/h"``, ``"5/30s"``.

        Raises:
            ValueError: malformed, or a zero limit or period.
        """
        match = _RATE_RE.match(text)
        if not match:
            raise ValueError(f"expected <count>/<n><s|m|h|d>, got {text!r}")
        count, n, unit = int(match[1]), int(match[2] or 1), match[3]
        if count <= 0 or n <= 0:
            raise ValueError(f"limit and period must be positive in {text!r}")
        return cls(count, n * _UNITS[unit])


def parse_policies(overrides: Iterable[str]) -> dict[str, Rate]:
    """The fixed policies with ``name=rate`` overrides applied.

    Raises:
        ValueError: unknown policy name or malformed rate.
    """
    specs = dict(DEFAULT_POLICIES)
    for item in overrides:
        name, sep, rate = item.partition("=")
        name = name.strip()
        if not sep or name not in DEFAULT_POLICIES:
            raise ValueError(f"unknown policy {name!r} (known: {', '.join(DEFAULT_POLICIES)})")
        specs[name] = rate
    return {name: Rate.parse(spec) for name, spec in specs.items()}


def account_subject(secret: bytes, value: str) -> str:
    """HMAC-SHA-256 (first 24 hex digits) of an NFKC-normalised, trimmed, lower-cased value."""
    normal = unicodedata.normalize("NFKC", value).strip().lower()
    return hmac.new(secret, normal.encode(), hashlib.sha256).hexdigest()[:24]


def tenant_checks(
    tenant_id: uuid.UUID, entitlements: Mapping[str, Any], user_id: uuid.UUID | None, client_id: str | None,
    share: float, api_key_id: uuid.UUID | None = None,
) -> list[Check]:  # fmt: skip
    """The per-tenant and per-principal policies of an authenticated request.

    An API key (``api_key_id``) is its own principal: policy ``api_key``, its own bucket of the
    same share, inside the tenant's; its creator's ``user`` bucket is not touched.

    ``requests_per_minute`` of the entitlements: ``None`` (an override of -1) is unlimited, so
    there are no checks (and no headers) for ``tenant``/``user``/``client``; ``0`` refuses
    every request (a check of limit 0, see :class:`saas.limits.gcra.Check`); an absent key
    falls back to :data:`DEFAULT_TENANT_RPM`.
    """
    keys = TenantKeys(tenant_id)
    raw = entitlements.get("requests_per_minute", DEFAULT_TENANT_RPM)
    if raw is None or int(raw) < 0:  # -1 is the catalogue's spelling of unlimited
        return []
    rpm = int(raw)
    checks = [Check("tenant", keys.rate("tenant"), rpm, 60)]
    per_principal = max(1, math.ceil(rpm * share)) if rpm > 0 else 0
    if api_key_id is not None:
        checks.append(Check("api_key", keys.rate("key", api_key_id.hex), per_principal, 60))
    elif user_id is not None:
        checks.append(Check("user", keys.rate("user", user_id.hex), per_principal, 60))
    elif client_id:
        checks.append(Check("client", keys.rate("client", _safe(client_id)), per_principal, 60))
    return checks


def ip_checks(ip: str, rates: Mapping[str, Rate]) -> list[Check]:
    """The ``ip`` policy of any request that is neither a sign-in nor a live principal's."""
    rate = rates["ip"]
    return [Check("ip", PublicKeys.rate("ip", ip), rate.limit, rate.period)]


def signin_checks(
    groups: Iterable[str], ip: str, rates: Mapping[str, Rate], secret: bytes, body: Any, form: Any, auth: Any,
    user: str | None = None,
) -> list[Check]:  # fmt: skip
    """The strict pair of each group: ``<group>-ip`` on the client IP and the account policy
    (``<group>-account``, ``token-client``) on the account the body names. ``user`` (the
    ``sub`` of a verified bearer token) is the account when the body names none, as for
    ``DELETE /api/v1/me/mfa/totp``; its subject is the one a JWT-shaped ``mfa_token`` gives."""
    checks: list[Check] = []
    for group in groups:
        ip_rate = rates[f"{group}-ip"]
        checks.append(
            Check(f"{group}-ip", PublicKeys.rate(f"{group}-ip", ip), ip_rate.limit, ip_rate.period, group)
        )
        account_policy = "token-client" if group == "token" else f"{group}-account"
        subject = _account_of(group, secret, body, form, auth)
        if subject is None and user and group != "token":
            subject = "s:" + account_subject(secret, user)
        if subject:
            rate = rates[account_policy]
            key = PublicKeys.rate(account_policy, subject)
            checks.append(Check(account_policy, key, rate.limit, rate.period, group))
    return checks


def lockout_marker(key: str) -> str:
    """The key marking that the lockout of the account throttled by ``key`` (a
    :data:`LOCKOUT_POLICY` key) is already audited; it expires after the policy's window."""
    return f"{key}:audited"


def _account_of(group: str, secret: bytes, body: Any, form: Any, auth: Any) -> str | None:
    if group == "token":
        client_id = (form.get("client_id") if form else None) or (auth.username if auth else None)
        if client_id:
            return "c:" + account_subject(secret, str(client_id))
        refresh = form.get("refresh_token") if form else None
        return "r:" + account_subject(secret, refresh) if refresh else None
    if not isinstance(body, dict):
        body = form if form is not None else None  # hosted pages post forms
        if body is None:
            return None
    email = body.get("email")
    if group == "signup":
        owner = body.get("owner")
        email = owner.get("email") if isinstance(owner, dict) else None
    if isinstance(email, str) and email.strip():
        return "e:" + account_subject(secret, email)
    if group == "mfa":
        token = body.get("mfa_token")
        if isinstance(token, str) and token:
            sub = _unverified_sub(token)
            return ("s:" + account_subject(secret, sub)) if sub else ("m:" + account_subject(secret, token))
    return None


def _unverified_sub(token: str) -> str | None:
    """The ``sub`` of a JWT-shaped token, unverified (a throttle key only, never trusted)."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 8192:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    sub = payload.get("sub") if isinstance(payload, dict) else None
    return sub if isinstance(sub, str) and sub else None


def _safe(value: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
        return value
    return hashlib.sha256(value.encode()).hexdigest()[:24]
