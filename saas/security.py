"""The platform's security primitives: constant-time comparison, token hashing, random tokens.

Every secret the package hands out (refresh tokens, authorization codes, client secrets,
``mfa_token``\\s, invitation tokens) is 128 bits of randomness or more, so its SHA-256 is what is
stored and looked up (a slow hash buys nothing against a random secret), and every comparison of
a presented value with a stored one takes the same time whatever the values.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def same_string(a: str, b: str) -> bool:
    """Constant-time equality of two strings of any characters (``hmac.compare_digest`` raises
    ``TypeError`` on non-ASCII ``str``; UTF-8 bytes never do)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def token_hash(token: str) -> str:
    """The stored form of a random token or secret: its SHA-256, 64 hex digits."""
    return hashlib.sha256(token.encode()).hexdigest()


def random_token(nbytes: int = 32) -> str:
    """``nbytes`` random bytes (default 256 bits), URL-safe base64 without padding."""
    return secrets.token_urlsafe(nbytes)
