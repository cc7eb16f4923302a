"""Endpoint secrets and Standard Webhooks signatures (Standard Webhooks 1.0, "Signature scheme").

A secret is ``whsec_`` + base64 of 32 random bytes (the spec allows 24 to 64). It is sealed at
rest (:func:`saas.security.seal`, AES-256-GCM under a key derived from ``SECRET_KEY`` with
:data:`INFO`, the endpoint's id as associated data) and shown once, when the endpoint is created
or its secret rotated.

Each attempt is signed by the ``standardwebhooks`` library (``Webhook.sign``): HMAC-SHA256 over
``<webhook-id>.<webhook-timestamp>.<body>``, base64, prefixed ``v1,``. While a rotated secret is
still valid (24 hours by default) the message is signed with it too: the
``webhook-signature`` header holds one ``v1,<signature>`` per secret, separated by spaces
(newest first), and a receiver verifying with either secret accepts it.
"""

from __future__ import annotations

import base64
import os
import uuid
from datetime import datetime

from standardwebhooks.webhooks import Webhook

from saas.security import seal, unseal

PREFIX = "whsec_"
INFO = b"saas webhook endpoint secret v1"
SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh ``whsec_...`` secret (32 random bytes)."""
    return PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def seal_secret(endpoint_id: uuid.UUID, secret: str, secret_key: str | bytes | None = None) -> str:
    return seal(secret, endpoint_id.bytes, info=INFO, secret_key=secret_key)


def unseal_secret(endpoint_id: uuid.UUID, sealed: str, secret_key: str | bytes | None = None) -> str:
    """Raises: ``cryptography.exceptions.InvalidTag`` (another key or row)."""
    return unseal(sealed, endpoint_id.bytes, info=INFO, secret_key=secret_key)


def signature_header(secrets: list[str], message_id: str, timestamp: datetime, body: str) -> str:
    """The ``webhook-signature`` header: ``v1,<base64>`` for each of ``secrets``, space-separated.

    Args:
        secrets: ``whsec_...`` secrets, newest first.
        timestamp: the attempt's time (aware, UTC); its whole seconds are ``webhook-timestamp``.
        body: the exact body sent.
    """
    return " ".join(Webhook(secret).sign(message_id, timestamp, body) for secret in secrets)
