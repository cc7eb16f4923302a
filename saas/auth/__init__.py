"""Authentication and the OAuth 2.1 / OpenID Connect provider (docs/auth.md).

Import the modules themselves (``from saas.auth import service``); this package re-exports
nothing, so importing it never pulls in a module that could import it back.
"""
