"""The OAuth 2.1 / OpenID Connect provider on Authlib (docs/auth.md).

* :mod:`~saas.auth.oauth.server`: the ``AuthorizationServer`` subclass, its ``init_app`` and the
  ``server()`` accessor;
* :mod:`~saas.auth.oauth.grants`: ``authorization_code`` (PKCE ``S256`` only),
  ``refresh_token`` (rotation, reuse detection), ``client_credentials``;
* :mod:`~saas.auth.oauth.endpoints`: revocation (RFC 7009) and introspection (RFC 7662), as
  Authlib endpoints registered with ``register_endpoint``;
* :mod:`~saas.auth.oauth.authorization`: the authorization request, consent and codes, for the
  hosted pages;
* :mod:`~saas.auth.oauth.metadata`: discovery (RFC 8414, OIDC Discovery 1.0);
* :mod:`~saas.auth.oauth.routes`: the thin Flask routes.

Errors are :mod:`saas.auth.errors`'. The modules import one another in that order, routes last;
this package re-exports nothing.
"""
