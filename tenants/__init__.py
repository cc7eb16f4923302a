"""The product each tenant gets inside its own schema: a small CRM (contacts).

It depends on ``saas`` only through a narrow surface: the request session (bound to the
tenant's schema), ``require(permission)``, the current principal and the audit writer.
"""
