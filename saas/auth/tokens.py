"""JWT access tokens (RFC 9068 profile): issue and verify locally against cached keys.

Claims: ``iss``, ``sub`` (user id, or client id for service accounts), ``aud``, ``exp``, ``iat``,
``nbf``, ``jti``, ``client_id``, ``tid`` (tenant id), ``roles``, ``scope``, ``auth_time``, ``amr``,
``acr`` (these three only when a person authenticated: never on service-account tokens), ``sid``
(the refresh-token family, i.e. the session), ``act`` (RFC 8693 section 4.1: the operator
acting as the user, only on ``saas users impersonate`` tokens: :mod:`saas.auth.impersonation`).
Header: ``typ: at+jwt``, ``alg`` (RS256 or ES256 only), ``kid``.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from authlib.oidc.core.util import create_half_hash
from joserfc import jwt
from joserfc.errors import JoseError

from saas.auth.keys import KeyStore, SigningKey
from saas.errors import Unauthorized
from saas.memo import Memo

ALLOWED_ALGS = ("RS256", "ES256")
LEEWAY_SECONDS = 30
#: the ``client_id`` of tokens from ``POST /api/v1/auth/login`` (no registered client)
FIRST_PARTY_CLIENT = "saas-api"


ACR_PASSWORD = "urn:saas:acr:pwd"  # noqa: S105 - an acr value
ACR_MFA = "urn:saas:acr:mfa"


def satisfies_mfa(amr: list[str] | tuple[str, ...] | None) -> bool:
    """Whether a login's RFC 8176 ``amr`` values satisfy "a second factor was used": ``otp``
    (TOTP or a recovery code after the password) or ``mfa`` (a user-verified passkey, or a
    password and a passkey). The one test of it: ``require_mfa``, step-up, the hosted pages."""
    return bool(amr) and ("otp" in amr or "mfa" in amr)


def acr_for(amr: list[str]) -> str:
    """The ``acr`` value for a list of RFC 8176 ``amr`` values: MFA when a second factor was used."""
    return ACR_MFA if satisfies_mfa(amr) else ACR_PASSWORD


@dataclass(frozen=True)
class IssuedToken:
    token: str
    claims: dict[str, Any]
    expires_in: int


def _header(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 8192:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4))
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


class TokenService:
    """Signs and verifies access tokens. ``access_ttl`` in seconds."""

    #: verified tokens remembered (per process); each is at most a few kilobytes
    VERIFIED_CACHE_SIZE = 2048

    def __init__(self, keys: KeyStore, issuer: str, audience: str, access_ttl: int):
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.access_ttl = access_ttl
        # token -> (claims, the key that verified it): the signature, header and issuer/audience
        # checks are pure functions of the token and that key, so a token seen again skips them
        # (the RS256 verification and two JSON decodes, ~0.1 ms) while the key is still live.
        # The time checks run on every use.
        self._verified: Memo[str, tuple[dict[str, Any], SigningKey]] = Memo(
            "auth.verified_tokens", self.VERIFIED_CACHE_SIZE
        )

    def issue(
        self,
        *,
        subject: str,
        tenant_id: str,
        roles: list[str],
        scope: str,
        client_id: str,
        auth_time: int | None = None,
        amr: list[str] | None = None,
        extra: dict[str, Any] | None = None,
        ttl: int | None = None,
    ) -> IssuedToken:
        """Sign an access token. ``amr`` None means a password login (``["pwd"]``); an empty
        ``amr`` means no person authenticated (a ``client_credentials`` service account, an
        operator's impersonation token), and the token then carries no ``auth_time``, ``amr``
        or ``acr``. ``ttl``: seconds to ``exp`` (default ``access_ttl``)."""
        now = int(time.time())
        ttl = ttl or self.access_ttl
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": secrets.token_urlsafe(16),
            "client_id": client_id,
            "tid": tenant_id,
            "roles": roles,
            "scope": scope,
        }
        if amr is None:
            amr = ["pwd"]
        if amr:
            # a person authenticated: when and how (RFC 9068 section 2.2.1, RFC 8176)
            claims.update({"auth_time": auth_time or now, "amr": amr, "acr": acr_for(amr)})
        if extra:
            claims.update(extra)
        key = self.keys.active
        header = {"alg": key.alg, "kid": key.kid, "typ": "at+jwt"}
        return IssuedToken(jwt.encode(header, claims, key.key), claims, ttl)

    def issue_id_token(
        self,
        *,
        subject: str,
        client_id: str,
        auth_time: int,
        amr: list[str],
        access_token: str | None = None,
        nonce: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """An OpenID Connect ID token (OIDC Core section 2): ``aud`` is the client, ``nonce`` echoes
        the authorization request, ``at_hash`` (section 3.1.3.6) binds it to ``access_token``.
        Header ``typ: JWT`` so it can never pass :meth:`verify` as an access token."""
        now = int(time.time())
        key = self.keys.active
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": client_id,
            "azp": client_id,
            "iat": now,
            "exp": now + self.access_ttl,
            "auth_time": auth_time,
            "amr": amr,
            "acr": acr_for(amr),
        }
        if nonce:
            claims["nonce"] = nonce
        if access_token:
            claims["at_hash"] = create_half_hash(access_token, key.alg).decode()
        if extra:
            claims.update(extra)
        return jwt.encode({"alg": key.alg, "kid": key.kid, "typ": "JWT"}, claims, key.key)

    def verify_id_token_hint(self, token: str) -> dict[str, Any] | None:
        """The claims of an ID token this server issued, for an ``id_token_hint`` (OpenID Connect
        RP-Initiated Logout 1.0 section 2): signature by a published key, ``alg`` allowed,
        ``typ`` ``JWT`` (an access token or a logout token is refused), ``iss`` ours, ``sub`` and
        ``aud`` present. ``exp`` is not checked: section 4 asks the OP to accept a hint that has
        expired. None for anything else (never raises)."""
        header = _header(token)
        if not header or header.get("alg") not in ALLOWED_ALGS or header.get("typ") != "JWT":
            return None
        signing_key = self.keys.find(str(header.get("kid", "")))
        if signing_key is None or signing_key.alg != header["alg"]:
            return None
        try:
            claims = dict(jwt.decode(token, signing_key.key, algorithms=[header["alg"]]).claims)
        except (JoseError, ValueError):
            return None
        if claims.get("iss") != self.issuer or not isinstance(claims.get("sub"), str):
            return None
        if not claims.get("aud"):
            return None
        return claims

    def verify(self, token: str) -> dict[str, Any]:
        """Verify signature, header and registered claims; return the claims.

        Raises:
            Unauthorized: any defect (bad signature, ``alg`` not allowed, unknown ``kid``, wrong
                ``typ``, ``iss`` or ``aud``, expired or not yet valid), with ``invalid_token``.
        """
        cached = self._verified.get(token)
        if cached is not None:
            claims, signing_key = cached
            if self.keys.find(signing_key.kid) is signing_key:  # not retired, not replaced
                self._check_times(claims)
                return dict(claims)
            self._verified.pop(token, None)
        return dict(self._verify_uncached(token))

    def _verify_uncached(self, token: str) -> dict[str, Any]:
        """Every check; remembers the token when it passes."""
        header = _header(token)
        if not header:
            raise Unauthorized("The access token is malformed.")
        alg = header.get("alg")
        if alg not in ALLOWED_ALGS:
            raise Unauthorized("The access token's algorithm is not accepted.")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ("at+jwt", "application/at+jwt"):
            raise Unauthorized("The token is not an access token.")
        signing_key = self.keys.find(str(header.get("kid", "")))
        if signing_key is None or signing_key.alg != alg:
            raise Unauthorized("The access token's key is unknown.")
        try:
            decoded = jwt.decode(token, signing_key.key, algorithms=[alg])
        except (JoseError, ValueError):
            raise Unauthorized("The access token's signature is invalid.") from None
        claims = decoded.claims
        if claims.get("iss") != self.issuer:
            raise Unauthorized("The access token was issued by someone else.")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if self.audience not in auds:
            raise Unauthorized("The access token is meant for another audience.")
        self._check_times(claims)
        if not claims.get("tid") or not claims.get("sub"):
            raise Unauthorized("The access token lacks a tenant or subject.")
        self._verified.put(token, (claims, signing_key))
        return claims

    @staticmethod
    def _check_times(claims: dict[str, Any]) -> None:
        """``exp`` and ``nbf`` (or ``iat``) against now, with :data:`LEEWAY_SECONDS`."""
        now = int(time.time())
        exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
        if not isinstance(exp, int) or exp + LEEWAY_SECONDS < now:
            raise Unauthorized("The access token has expired.")
        if isinstance(nbf, int) and nbf - LEEWAY_SECONDS > now:
            raise Unauthorized("The access token is not valid yet.")
