"""The social providers' protocols: the authorization request, and the verified answer.

OpenID Connect providers go through the relying party of :mod:`saas.auth.sso.oidc` (the code
per-tenant SSO runs): discovery and its ``issuer`` check, the JWKS cache, the authorization
request with PKCE ``S256`` (RFC 7636), ``state`` and ``nonce`` (OIDC Core section 3.1.2.1), the
code exchange (section 3.1.3), the ID token's checks (section 3.1.3.7) and UserInfo (section
5.3). GitHub is OAuth 2.0 (RFC 6749 section 4.1) with PKCE, then its REST API: ``GET /user``
(the subject: the numeric ``id``, stable across renames) and ``GET /user/emails`` (only the
``primary`` address, and only when ``verified``).

A transaction lives in Redis under its ``state`` for ``TRANSACTION_TTL`` seconds (key
``social:tx:<state>``, taken once with ``GETDEL``): the provider, the PKCE verifier and the
nonce, never in the browser. The hosted session keeps the ``state`` too, so an answer carried to
another browser finds nothing there (login CSRF, RFC 6749 section 10.12).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import requests

from saas.auth.social import providers
from saas.auth.social.providers import SocialProvider
from saas.auth.sso import oidc
from saas.auth.sso.oidc import TokenRefused
from saas.security import random_token
from saas.services import services

#: seconds a sign-in may take at the provider
TRANSACTION_TTL = 600
HTTP_TIMEOUT = 10


@dataclass(frozen=True)
class SocialIdentity:
    """Who the provider says signed in, after its answer was verified.

    Attributes:
        subject: the provider's stable id (OIDC ``sub``; GitHub's numeric user id), <= 512 chars.
        email: the address it asserts (may be None: GitHub without a verified primary address).
        email_verified: the provider says the address is verified (OIDC ``email_verified: true``;
            GitHub ``verified: true``); Microsoft never says so.
        name: a display name, when sent.
    """

    subject: str
    email: str | None
    email_verified: bool
    name: str | None = None


def callback_path(provider: SocialProvider) -> str:
    return f"/oauth/social/{provider.name}/callback"


def redirect_uri(provider: SocialProvider) -> str:
    """The redirect URI to register at the provider: ``<SAAS_ISSUER>/oauth/social/<name>/callback``."""
    return services().settings.issuer + callback_path(provider)


def _key(state: str) -> str:
    return "social:tx:" + state


def _discover(provider: SocialProvider) -> dict[str, Any]:
    if provider.kind == "github":
        return {
            "authorization_endpoint": providers.GITHUB_AUTHORIZE,
            "token_endpoint": providers.GITHUB_TOKEN,
        }
    assert provider.issuer is not None
    problem = oidc.check_issuer_url(provider.issuer)
    if problem:
        raise oidc.MetadataInvalid(f"SOCIAL_PROVIDERS {provider.name}: issuer: {problem}")
    return oidc.discover(provider.issuer, document_issuer=provider.document_issuer)


def begin(provider: SocialProvider, login_hint: str | None = None) -> tuple[str, str]:
    """``(url, state)``: the authorization request for ``provider``, its transaction saved.

    Raises:
        saas.auth.sso.oidc.ProviderUnreachable / MetadataInvalid: discovery failed.
        saas.cache.guard.RedisUnavailable: the transaction cannot be stored.
    """
    doc = _discover(provider)
    state = random_token(32)
    url, data = oidc.authorization_url(
        doc,
        client_id=provider.client_id,
        redirect_uri=redirect_uri(provider),
        scope=provider.scopes,
        state=state,
        login_hint=login_hint,
        nonce=provider.kind == "oidc",
    )
    payload = json.dumps({"provider": provider.name, **data})
    key = _key(state)
    services().redis_guard.call("social", lambda r: r.set(key, payload, ex=TRANSACTION_TTL), key=key)
    return url, state


def take_transaction(state: str | None) -> dict[str, Any] | None:
    """The transaction of ``state``, removed in the same command; None when unknown, used or expired.

    Raises:
        saas.cache.guard.RedisUnavailable.
    """
    if not state or len(state) > 128:
        return None
    key = _key(state)
    raw = services().redis_guard.call("social", lambda r: r.getdel(key), key=key)
    return json.loads(raw) if raw is not None else None


def finish(provider: SocialProvider, transaction: dict[str, Any], code: str) -> SocialIdentity:
    """The verified identity of the provider's answer ``code`` (the module's doc).

    Raises:
        TokenRefused: a check failed (its ``reason``: ``token_error``, ``id_token_*``, ``no_email``...).
        saas.errors.AppError: discovery or the JWKS failed (422 / 502).
    """
    doc = _discover(provider)
    auth_method = "client_secret_post" if provider.kind == "github" else oidc.token_auth_method(doc, True)
    token = oidc.exchange_code(
        doc["token_endpoint"],
        client_id=provider.client_id,
        client_secret=provider.client_secret,
        auth_method=auth_method,
        redirect_uri=redirect_uri(provider),
        code=code,
        verifier=str(transaction.get("code_verifier") or ""),
    )
    if provider.kind == "github":
        return _github_identity(str(token.get("access_token") or ""))
    id_token = token.get("id_token")
    if not isinstance(id_token, str):
        raise TokenRefused("no_id_token", "The provider sent no ID token.")
    assert provider.issuer is not None
    claims = oidc.validate_id_token(
        id_token,
        issuer=provider.issuer,
        client_id=provider.client_id,
        nonce=str(transaction.get("nonce") or ""),
        doc=doc,
        accept_issuer=provider.accept_issuer(),
    )
    extra = (
        {} if "email" in claims else oidc.userinfo(doc, str(token.get("access_token") or ""), claims["sub"])
    )
    merged = {**extra, **claims}
    email = merged.get("email") if isinstance(merged.get("email"), str) else None
    name = merged.get("name") if isinstance(merged.get("name"), str) else None
    verified = merged.get("email_verified") is True and provider.name != "microsoft"
    return SocialIdentity(claims["sub"], email, verified, name)


def _github_get(path: str, access_token: str) -> Any:
    try:
        response = requests.get(
            providers.GITHUB_API + path,
            headers={
                "Authorization": f"Bearer {access_token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
            },
            timeout=HTTP_TIMEOUT,
        )
    except requests.RequestException as exc:
        raise TokenRefused("api_unreachable", f"GitHub's API failed: {type(exc).__name__}.") from None
    if response.status_code != 200:
        raise TokenRefused("api_error", f"GitHub's API answered HTTP {response.status_code}.")
    try:
        return response.json()
    except ValueError:
        raise TokenRefused("api_error", "GitHub's API answered no JSON.") from None


def _github_identity(access_token: str) -> SocialIdentity:
    """GitHub's user (``GET /user``: ``id``, ``name``) and its verified primary address
    (``GET /user/emails``: ``[{"email", "primary", "verified"}]``; the ``email`` of ``/user`` is
    only the public profile's and proves nothing)."""
    if not access_token:
        raise TokenRefused("token_error", "GitHub sent no access token.")
    user = _github_get("/user", access_token)
    if not isinstance(user, dict) or not isinstance(user.get("id"), int):
        raise TokenRefused("api_error", "GitHub's user has no id.")
    emails = _github_get("/user/emails", access_token)
    primary = next(
        (
            e
            for e in (emails if isinstance(emails, list) else [])
            if isinstance(e, dict)
            and e.get("primary") is True
            and e.get("verified") is True
            and isinstance(e.get("email"), str)
        ),
        None,
    )
    name = user.get("name") if isinstance(user.get("name"), str) else None
    return SocialIdentity(str(user["id"]), primary["email"] if primary else None, primary is not None, name)
