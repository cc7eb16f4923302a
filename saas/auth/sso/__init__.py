"""Per-tenant single sign-on (docs/auth.md, "Per-tenant SSO"): a tenant's OpenID Connect and
SAML 2.0 identity providers (:class:`saas.identity.models.SsoConnection`), home realm discovery,
just-in-time membership and ``require_sso``.

Modules: ``protocol`` (the contract every protocol implements, the identity it yields and the
login transaction between the redirect to the IdP and its answer), ``connections`` (the
connections' service), ``directory`` (the port to :mod:`saas.tenancy.members`, which
``saas.auth`` cannot import), ``login`` (starting and completing a sign-in), ``policy``
(``require_sso`` and break-glass owners), ``oidc`` and ``saml`` (the two protocols and their
callback routes). The API is :mod:`saas.tenancy.sso_views` (the plan gate is billing's).
"""
