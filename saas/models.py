"""Import every control-plane model so ``shared_metadata`` is complete (migrations, checks)."""

from saas.auth.models import AuthorizationCode, Consent, MfaFactor, OAuthClient, RecoveryCode, RefreshToken
from saas.identity.models import User
from saas.outbox import OutboxMessage
from saas.tenancy.models import Invitation, Membership, Tenant

__all__ = [
    "AuthorizationCode",
    "Consent",
    "Invitation",
    "Membership",
    "MfaFactor",
    "OAuthClient",
    "OutboxMessage",
    "RecoveryCode",
    "RefreshToken",
    "Tenant",
    "User",
]
