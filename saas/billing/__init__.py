"""Billing: the plan catalogue and the entitlements a tenant's plan gives.

Everything that enforces a limit (rate limits, seats, feature gates) asks
:func:`saas.billing.entitlements.entitlements_for` and nothing else.
"""
