"""The social providers of ``SOCIAL_PROVIDERS`` (:func:`saas.settings._social_providers`).

Three names know their endpoints; any other name is an OpenID Connect issuer (discovery, OpenID
Connect Discovery 1.0 section 4):

- ``google``: OpenID Connect, issuer ``https://accounts.google.com``; Google's ID tokens carry
  ``iss`` ``https://accounts.google.com`` or ``accounts.google.com`` (Google Identity, "Validate
  an ID token"), both accepted.
- ``microsoft``: OpenID Connect, the multi-tenant endpoint
  ``https://login.microsoftonline.com/common/v2.0`` (or the ``issuer`` given: one Entra tenant's).
  Its discovery document names the template ``https://login.microsoftonline.com/{tenantid}/v2.0``,
  and an ID token's ``iss`` must be that template with the token's own ``tid`` (Microsoft identity
  platform, "Validate the issuer" for multi-tenant applications). Microsoft sends no
  ``email_verified``: its ``email`` is not treated as verified.
- ``github``: OAuth 2.0 only (no ID token): authorization code with PKCE, then ``GET /user`` and
  ``GET /user/emails`` of the REST API; the address is the primary one only when ``verified``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from saas.services import services

GOOGLE_ISSUER = "https://accounts.google.com"
MICROSOFT_ISSUER = "https://login.microsoftonline.com/common/v2.0"
MICROSOFT_TEMPLATE = "https://login.microsoftonline.com/{tenantid}/v2.0"
#: GitHub's endpoints (module constants: a test may point them at a local fake)
GITHUB_AUTHORIZE = "https://github.com/login/oauth/authorize"
GITHUB_TOKEN = "https://github.com/login/oauth/access_token"  # noqa: S105 - a URL
GITHUB_API = "https://api.github.com"
DEFAULT_OIDC_SCOPES = "openid email profile"
GITHUB_SCOPES = "read:user user:email"
LABELS = {"google": "Google", "github": "GitHub", "microsoft": "Microsoft"}


@dataclass(frozen=True)
class SocialProvider:
    """One configured provider.

    Attributes:
        name: the key in ``SOCIAL_PROVIDERS``; identities are stored as ``social:<name>``.
        kind: ``oidc`` or ``github``.
        label: the button's text after "Sign in with".
        issuer: the OpenID Connect issuer (None for GitHub).
        document_issuer: the ``issuer`` its discovery document names when not ``issuer``
            (Microsoft's ``{tenantid}`` template).
    """

    name: str
    kind: str
    label: str
    client_id: str
    client_secret: str
    scopes: str
    issuer: str | None = None
    document_issuer: str | None = None

    @property
    def provider_key(self) -> str:
        """``ExternalIdentity.provider`` of its identities."""
        return f"social:{self.name}"

    def accept_issuer(self) -> Callable[[Mapping[str, Any]], bool] | None:
        """The ``iss`` rule where equality with ``issuer`` is not it (Google, Microsoft)."""
        if self.name == "google" and self.issuer == GOOGLE_ISSUER:
            return lambda claims: claims.get("iss") in (GOOGLE_ISSUER, "accounts.google.com")
        if self.document_issuer and "{tenantid}" in self.document_issuer:
            template = self.document_issuer

            def microsoft(claims: Mapping[str, Any]) -> bool:
                tid = claims.get("tid")
                return (
                    isinstance(tid, str)
                    and bool(tid)
                    and claims.get("iss") == template.replace("{tenantid}", tid)
                )

            return microsoft
        return None


def _provider(name: str, config: Mapping[str, str]) -> SocialProvider:
    common = {
        "name": name,
        "label": config.get("label") or LABELS.get(name) or name,
        "client_id": config["client_id"],
        "client_secret": config["client_secret"],
    }
    if name == "github":
        return SocialProvider(kind="github", scopes=config.get("scopes") or GITHUB_SCOPES, **common)
    scopes = config.get("scopes") or DEFAULT_OIDC_SCOPES
    if name == "google":
        return SocialProvider(kind="oidc", scopes=scopes, issuer=GOOGLE_ISSUER, **common)
    if name == "microsoft":
        issuer = config.get("issuer") or MICROSOFT_ISSUER
        template = MICROSOFT_TEMPLATE if issuer == MICROSOFT_ISSUER else None
        return SocialProvider(kind="oidc", scopes=scopes, issuer=issuer, document_issuer=template, **common)
    return SocialProvider(kind="oidc", scopes=scopes, issuer=config["issuer"], **common)


def configured() -> list[SocialProvider]:
    """The providers of ``SOCIAL_PROVIDERS``, in the order configured (the buttons' order)."""
    return [_provider(n, c) for n, c in (services().settings.social_providers or {}).items()]


def get(name: str) -> SocialProvider | None:
    """The configured provider ``name``, or None."""
    config = (services().settings.social_providers or {}).get(name)
    return _provider(name, config) if config is not None else None


def label_of(provider_key: str) -> str:
    """The label of an ``ExternalIdentity.provider`` ``social:<name>`` (its name when no longer
    configured)."""
    name = provider_key.removeprefix("social:")
    found = get(name)
    return found.label if found is not None else LABELS.get(name, name)
