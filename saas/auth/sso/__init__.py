"""Per-tenant single sign-on (docs/auth.md, "Per-tenant SSO"): a tenant's OpenID Connect and
SAML 2.0 identity providers (:class:`saas.identity.models.SsoConnection`), home realm discovery,
just-in-time membership and ``require_sso``.

Modules: ``protocol`` (the contract every protocol implements, the identity it yields and the
login transaction between the redirect to the IdP and its answer), ``connections`` (the
connections' service), ``views`` (their API), ``login`` (starting and completing a sign-in),
``oidc`` and ``saml`` (the two protocols and their callback routes).
"""
