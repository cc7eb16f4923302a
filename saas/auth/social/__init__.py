"""Social login (docs/auth.md, "Social login"): "Sign in with Google, GitHub or Microsoft", and
any OpenID Connect issuer, configured by ``SOCIAL_PROVIDERS`` for the whole service.

Modules: ``providers`` (the configured providers, their endpoints and issuer rules),
``protocol`` (the authorization request and the verified answer: OpenID Connect through the
relying party of :mod:`saas.auth.sso.oidc`, GitHub's OAuth 2.0 and REST API), ``links`` (linked
identities: the linking rule, the mailed proof, listing and unlinking) and ``api``
(``/api/v1/me/identities``). The hosted routes under ``/oauth/social/`` are
:mod:`saas.auth.social_views` (beside :mod:`saas.auth.hosted`, whose steps they end with: the
hosted pages import this package, so it cannot import them back).
"""
