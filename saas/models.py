"""Import every control-plane model so ``shared_metadata`` is complete (migrations, checks)."""

from saas.auth.models import AuthorizationCode, Consent, MfaFactor, OAuthClient, RecoveryCode, RefreshToken
from saas.billing.models import BillingAccount, BillingOverride, UsagePeriod, UsageReport, WebhookEvent
from saas.identity.models import Invitation, Membership, Tenant, User, VerifiedDomain
from saas.outbox import OutboxMessage
from saas.scim.models import ScimGroup, ScimGroupMember, ScimSettings, ScimToken, ScimUser
from saas.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookMessage

__all__ = [
    "AuthorizationCode",
    "BillingAccount",
    "BillingOverride",
    "Consent",
    "Invitation",
    "Membership",
    "MfaFactor",
    "OAuthClient",
    "OutboxMessage",
    "RecoveryCode",
    "RefreshToken",
    "ScimGroup",
    "ScimGroupMember",
    "ScimSettings",
    "ScimToken",
    "ScimUser",
    "Tenant",
    "UsagePeriod",
    "UsageReport",
    "User",
    "VerifiedDomain",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
    "WebhookMessage",
]
