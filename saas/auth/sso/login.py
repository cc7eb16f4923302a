"""TEMPORARY stand-in for the SSO login pipeline (the OIDC engineer's ``saas.auth.sso.login``:
JIT membership, role mapping, the hosted session). Dropped at merge.

``start_login`` creates and saves a transaction around the protocol's ``begin``;
``complete_login`` answers with the verified identity as JSON so the SAML tests can see it.
"""

from __future__ import annotations

from flask import Response, jsonify

from saas.auth.sso.protocol import (
    LoginTransaction,
    SsoIdentity,
    new_transaction,
    protocol_for,
    save_transaction,
)
from saas.identity.models import SsoConnection


def start_login(connection: SsoConnection, next_url: str, login_hint: str | None = None) -> Response:
    transaction = new_transaction(connection, next_url, login_hint)
    response = protocol_for(connection.type).begin(connection, transaction)
    save_transaction(transaction)
    return response


def complete_login(transaction: LoginTransaction, identity: SsoIdentity) -> Response:
    return jsonify(
        {
            "connection_id": str(transaction.connection_id),
            "tenant_id": str(transaction.tenant_id),
            "next_url": transaction.next_url,
            "subject": identity.subject,
            "email": identity.email,
            "name": identity.name,
            "groups": list(identity.groups),
            "attributes": {k: list(v) for k, v in identity.attributes.items()},
            "amr": list(identity.amr),
        }
    )
