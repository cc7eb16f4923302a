"""Discovery: authorization server metadata (RFC 8414) that is also OpenID Connect Discovery 1.0
metadata, built from what the server registers (grants, client authentication methods)."""

from __future__ import annotations

from typing import Any

from saas.auth.clients import GRANT_TYPES, SUPPORTED_SCOPES
from saas.auth.oauth.endpoints import IntrospectionEndpoint, RevocationEndpoint
from saas.auth.oauth.grants import AUTH_METHODS
from saas.services import services


def server_metadata() -> dict[str, Any]:
    """Authorization server metadata (RFC 8414 section 2) that is also valid OIDC Discovery 1.0
    metadata: both well-known documents serve this one dictionary."""
    issuer = services().settings.issuer  # normalised (no trailing slash) by Settings
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth/authorize",
        "token_endpoint": f"{issuer}/oauth/token",
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "introspection_endpoint": f"{issuer}/oauth/introspect",
        "userinfo_endpoint": f"{issuer}/oauth/userinfo",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        # OpenID Connect RP-Initiated Logout 1.0 section 2.1
        "end_session_endpoint": f"{issuer}/oauth/end-session",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(GRANT_TYPES),
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": list(RevocationEndpoint.CLIENT_AUTH_METHODS),
        "introspection_endpoint_auth_methods_supported": list(IntrospectionEndpoint.CLIENT_AUTH_METHODS),
        "scopes_supported": list(SUPPORTED_SCOPES),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "claims_supported": [
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "acr",
            "amr",
            "azp",
            "at_hash",
            "sid",
            "tid",
            "email",
            "name",
        ],
        "acr_values_supported": ["urn:saas:acr:pwd", "urn:saas:acr:mfa"],
        "prompt_values_supported": ["login", "consent", "none", "select_account"],
        "authorization_response_iss_parameter_supported": True,
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        # OpenID Connect Back-Channel Logout 1.0 section 2.1 (every logout token carries sid);
        # no front-channel logout (iframes): OpenID Connect Front-Channel Logout 1.0 section 3
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "frontchannel_logout_supported": False,
    }
