"""The platform's security primitives: constant-time comparison, token hashing, random tokens,
and sealing secrets at rest (AES-256-GCM).

Every secret the package hands out (refresh tokens, authorization codes, client secrets,
``mfa_token``\\s, invitation tokens) is 128 bits of randomness or more, so its SHA-256 is what is
stored and looked up (a slow hash buys nothing against a random secret), and every comparison of
a presented value with a stored one takes the same time whatever the values.

A secret the service must read back (a TOTP seed, an SSO connection's client secret) is sealed
with :func:`seal`: AES-256-GCM (NIST SP 800-38D) under a key derived from ``SECRET_KEY`` with
HKDF-SHA256 (RFC 5869) and an ``info`` of its own per use, so a key serves one kind of secret
only, and with associated data naming the row it belongs to (a sealed value copied to another
row fails to open).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: the prefix of a sealed value's text form (the format's version)
SEALED_PREFIX = "v1:"


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


def _aead(info: bytes, secret_key: str | bytes | None) -> AESGCM:
    if secret_key is None:
        from flask import current_app

        secret_key = current_app.config["SECRET_KEY"]
    raw = secret_key.encode() if isinstance(secret_key, str) else secret_key
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(raw))


def seal(plaintext: str, aad: bytes, *, info: bytes, secret_key: str | bytes | None = None) -> str:
    """``plaintext`` encrypted with AES-256-GCM: ``"v1:"`` + URL-safe base64 of a random 96-bit
    nonce, the ciphertext and its 128-bit tag. The key is HKDF-SHA256 of ``secret_key`` (default:
    the current app's ``SECRET_KEY``) with ``info`` (one per kind of secret, e.g.
    ``b"saas mfa totp v1"``); ``aad`` (the owning row's id) is authenticated, not stored."""
    nonce = os.urandom(12)
    sealed = _aead(info, secret_key).encrypt(nonce, plaintext.encode(), aad)
    return SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()


def unseal(stored: str, aad: bytes, *, info: bytes, secret_key: str | bytes | None = None) -> str:
    """The plaintext of :func:`seal`'s ``stored`` (same ``aad``, ``info`` and key).

    Raises:
        cryptography.exceptions.InvalidTag: another key, ``info`` or ``aad``, or a changed value.
    """
    raw = base64.urlsafe_b64decode(stored.removeprefix(SEALED_PREFIX))
    return _aead(info, secret_key).decrypt(raw[:12], raw[12:], aad).decode()
