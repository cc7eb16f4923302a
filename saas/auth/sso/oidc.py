"""OpenID Connect connections: a tenant's IdP as an OpenID Provider (OpenID Connect Core 1.0).

Configuration (``POST /api/v1/sso/connections`` with ``"type": "oidc"``): ``issuer``,
``client_id``, ``client_secret`` (sealed, never returned; without one the client is public and
authenticates with PKCE only), ``scopes`` (default ``openid email profile``; ``openid`` is
required). The IdP is registered with the one redirect URI ``<SAAS_ISSUER>/sso/oidc/callback``
(shown as ``config.redirect_uri``): the ``state`` finds the transaction, and so the connection.

- Discovery (OpenID Connect Discovery 1.0 section 4): ``<issuer>/.well-known/openid-configuration``,
  whose ``issuer`` must equal the configured one exactly (section 4.3); it must name an
  authorization, a token and a ``jwks_uri`` endpoint and allow the ``code`` response type and,
  when it lists PKCE methods, ``S256``. Kept per process for ``DISCOVERY_TTL`` seconds
  (memo ``sso.oidc_discovery``); the JWKS for ``JWKS_TTL`` seconds (memo ``sso.oidc_jwks``),
  fetched again at once on an unknown ``kid`` (a key rotation), at most every
  ``JWKS_REFETCH_SECONDS``. The issuer is ``https`` (``http`` on a loopback address only in
  development and test): the service fetches what a tenant admin names, nothing else.
- The request (section 3.1.2.1) with Authlib's client
  (:class:`authlib.integrations.requests_client.OAuth2Session`): authorization code with PKCE
  ``S256`` (RFC 7636), a 256-bit ``state`` (the transaction's) and ``nonce``; ``login_hint`` is
  the address typed on the hosted page.
- The callback ``GET /sso/oidc/callback``: the transaction is taken once (a replayed ``state``
  finds nothing); an error response (section 3.1.2.6) or an ``iss`` parameter naming another
  issuer (RFC 9207) ends the sign-in; the code is exchanged (section 3.1.3) with
  ``client_secret_basic``, or ``client_secret_post`` when discovery lists only that.
- The ID token (section 3.1.3.7): signed (``RS256``, ``PS256``, ``ES256``... never ``none`` nor
  a MAC) by a key of the JWKS; ``iss`` the issuer; ``aud`` containing the client id, and with
  several audiences ``azp`` equal to it (``azp``, when present, must be the client id); ``exp``
  in the future and ``iat`` not in the future, within ``LEEWAY`` seconds; ``nonce`` the
  transaction's (constant-time comparison). ``email`` from the ID token, else from UserInfo
  (section 5.3, whose ``sub`` must be the ID token's); an ``email_verified`` of ``false`` is
  refused. ``groups`` and every string claim feed ``role_mapping``.

Every refusal ends on the hosted error page with ``sso.login_failed`` (``saas.auth.sso.login``).

The relying party's parts that know no connection (:func:`discover`, :func:`authorization_url`,
:func:`exchange_code`, :func:`validate_id_token`, :func:`userinfo`, :func:`token_auth_method`)
are social login's too (:mod:`saas.auth.social.protocol`).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.requests_client import OAuth2Session
from flask import Blueprint, Response, redirect, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from saas import db
from saas.auth.pages import security_headers
from saas.auth.sso import connections
from saas.auth.sso.login import complete_login, login_failed
from saas.auth.sso.protocol import LoginTransaction, SsoIdentity, register_protocol, take_transaction
from saas.cache.guard import RedisUnavailable
from saas.errors import AppError, ErrorCode, ValidationError
from saas.identity.models import SsoConnection
from saas.memo import Memo
from saas.security import random_token, same_string
from saas.services import services

log = logging.getLogger(__name__)

CALLBACK_PATH = "/sso/oidc/callback"
DEFAULT_SCOPES = "openid email profile"
#: seconds a discovery document / a JWKS is reused
DISCOVERY_TTL = 300
JWKS_TTL = 300
#: an unknown ``kid`` fetches the JWKS again, but not more often than this
JWKS_REFETCH_SECONDS = 10
#: seconds of clock skew allowed on ``exp`` and ``iat``
LEEWAY = 60
#: the longest an ``iat`` may lie in the past (a token minted for another sign-in long ago)
MAX_TOKEN_AGE = 600
HTTP_TIMEOUT = 10
#: asymmetric signatures only (OIDC Core section 10.1; a MAC would be keyed by our client secret)
ALLOWED_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")

#: issuer -> (discovery document, monotonic time fetched)
_discovery: Memo[str, tuple[dict[str, Any], float]] = Memo("sso.oidc_discovery", maxsize=256)
#: jwks_uri -> (JWKS, monotonic time fetched)
_jwks: Memo[str, tuple[dict[str, Any], float]] = Memo("sso.oidc_jwks", maxsize=256)

bp = Blueprint("sso_oidc", __name__)
bp.after_request(security_headers)


class MetadataInvalid(AppError):
    status, code, title = 422, ErrorCode.SSO_METADATA_INVALID, "Identity provider metadata invalid"


class ProviderUnreachable(AppError):
    status, code, title = 502, ErrorCode.SSO_PROVIDER_UNREACHABLE, "Identity provider unreachable"


class TokenRefused(Exception):
    """The IdP's answer failed a check: ``reason`` (a snake_case word for the audit event) and a
    sentence for the page."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --- discovery and keys --------------------------------------------------------------------------


def check_issuer_url(issuer: str) -> str | None:
    """Why ``issuer`` cannot be an issuer here, or None: an absolute ``https`` URL without query
    or fragment (OIDC Discovery section 2; ``http`` on a loopback address in development and test)."""
    if not isinstance(issuer, str) or not issuer or len(issuer) > 2048:
        return "An https URL of at most 2048 characters."
    try:
        parts = urlsplit(issuer)
    except ValueError:
        return "Not a URL."
    if parts.query or parts.fragment or not parts.hostname:
        return "An https URL without query or fragment."
    if parts.scheme == "https":
        return None
    if (
        parts.scheme == "http"
        and parts.hostname in LOOPBACK_HOSTS
        and services().settings.env in ("development", "test")
    ):
        return None
    return "Use https."


def _get_json(url: str, what: str) -> dict[str, Any]:
    try:
        response = requests.get(url, timeout=HTTP_TIMEOUT, headers={"Accept": "application/json"})
    except requests.RequestException as exc:
        raise ProviderUnreachable(
            f"The {what} at {url} could not be fetched: {type(exc).__name__}."
        ) from None
    if response.status_code != 200:
        raise MetadataInvalid(f"The {what} at {url} answered HTTP {response.status_code}.")
    try:
        body = response.json()
    except ValueError:
        raise MetadataInvalid(f"The {what} at {url} is not JSON.") from None
    if not isinstance(body, dict):
        raise MetadataInvalid(f"The {what} at {url} is not a JSON object.")
    return body


def discover(issuer: str, *, fresh: bool = False, document_issuer: str | None = None) -> dict[str, Any]:
    """The issuer's discovery document, checked (see the module's doc), kept ``DISCOVERY_TTL`` s.

    ``document_issuer``: the ``issuer`` the document must name when it is not ``issuer`` itself
    (Microsoft's multi-tenant ``.../common/v2.0`` names the template
    ``https://login.microsoftonline.com/{tenantid}/v2.0``; social login's providers).

    Raises:
        ProviderUnreachable: 502 (network, timeout). MetadataInvalid: 422 (status, JSON, fields).
    """
    kept = None if fresh else _discovery.get(issuer)
    if kept is not None and time.monotonic() - kept[1] < DISCOVERY_TTL:
        return kept[0]
    doc = _get_json(issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery document")
    expected = document_issuer or issuer
    if doc.get("issuer") != expected:
        raise MetadataInvalid(
            f"The discovery document names the issuer {str(doc.get('issuer'))[:200]!r}, not {expected!r} "
            "(OpenID Connect Discovery 1.0 section 4.3: they must be equal)."
        )
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not isinstance(doc.get(name), str) or not doc[name].startswith(("https://", "http://")):
            raise MetadataInvalid(f"The discovery document has no usable {name}.")
    if "code" not in (doc.get("response_types_supported") or ["code"]):
        raise MetadataInvalid("The provider does not support the authorization code flow.")
    methods = doc.get("code_challenge_methods_supported")
    if methods is not None and "S256" not in methods:
        raise MetadataInvalid("The provider does not support PKCE S256.")
    _discovery.put(issuer, (doc, time.monotonic()))
    return doc


def _key_set(jwks_uri: str, *, refetch: bool = False) -> KeySet:
    kept = _jwks.get(jwks_uri)
    now = time.monotonic()
    stale = kept is None or now - kept[1] >= JWKS_TTL
    if refetch and kept is not None and now - kept[1] >= JWKS_REFETCH_SECONDS:
        stale = True
    if stale:
        body = _get_json(jwks_uri, "JWKS")
        if not isinstance(body.get("keys"), list):
            raise MetadataInvalid("The JWKS has no keys.")
        kept = _jwks.put(jwks_uri, (body, now))
    assert kept is not None
    keys = [k for k in kept[0]["keys"] if isinstance(k, dict) and k.get("use", "sig") == "sig"]
    return KeySet.import_key_set({"keys": keys})


def _header(token: str) -> dict[str, Any]:
    try:
        raw = token.split(".")[0]
        header = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, IndexError):
        raise TokenRefused("id_token_malformed", "The identity provider's ID token is malformed.") from None
    if not isinstance(header, dict):
        raise TokenRefused("id_token_malformed", "The identity provider's ID token is malformed.")
    return header


def _signing_key(doc: Mapping[str, Any], header: Mapping[str, Any]) -> Any:
    """The JWKS key of the token's ``kid`` (the only key when the token names none), fetching
    the JWKS again once when the ``kid`` is unknown."""
    kid = header.get("kid")
    for refetch in (False, True):
        key_set = _key_set(doc["jwks_uri"], refetch=refetch)
        if kid is None and len(key_set.keys) == 1:
            return key_set.keys[0]
        for key in key_set.keys:
            if key.kid == kid:
                return key
    raise TokenRefused(
        "id_token_unknown_key", "The ID token is signed by a key the provider does not publish."
    )


def validate_id_token(
    token: str,
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    doc: Mapping[str, Any],
    now: float | None = None,
    accept_issuer: Callable[[Mapping[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """The claims of ``token`` after OpenID Connect Core section 3.1.3.7's checks (the module's doc).

    ``accept_issuer``: decides the ``iss`` check from the verified claims instead of equality with
    ``issuer`` (Microsoft's multi-tenant endpoint: ``iss`` is its template with the token's
    ``tid``; Google: ``accounts.google.com`` with or without ``https://``).

    Raises:
        TokenRefused: with the failed check's reason (``id_token_signature``, ``id_token_issuer``,
            ``id_token_audience``, ``id_token_azp``, ``id_token_expired``, ``id_token_iat``,
            ``id_token_nonce``...).
    """
    header = _header(token)
    if header.get("alg") not in ALLOWED_ALGS:
        raise TokenRefused(
            "id_token_alg", f"The ID token's algorithm {str(header.get('alg'))[:20]!r} is not allowed."
        )
    key = _signing_key(doc, header)
    try:
        claims = dict(jwt.decode(token, key, algorithms=[header["alg"]]).claims)
    except (JoseError, ValueError) as exc:
        raise TokenRefused(
            "id_token_signature", f"The ID token's signature does not verify ({type(exc).__name__})."
        ) from None
    now = time.time() if now is None else now
    if not (accept_issuer(claims) if accept_issuer is not None else claims.get("iss") == issuer):
        raise TokenRefused("id_token_issuer", "The ID token was issued by another issuer.")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if client_id not in audiences:
        raise TokenRefused("id_token_audience", "The ID token is not for this application (aud).")
    azp = claims.get("azp")
    if (len(audiences) > 1 and azp is None) or (azp is not None and azp != client_id):
        raise TokenRefused("id_token_azp", "The ID token was issued to another party (azp).")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or exp <= now - LEEWAY:
        raise TokenRefused("id_token_expired", "The ID token has expired.")
    if not isinstance(iat, int | float) or iat > now + LEEWAY or iat < now - MAX_TOKEN_AGE:
        raise TokenRefused("id_token_iat", "The ID token's issue time is out of range.")
    sent = claims.get("nonce")
    if not isinstance(sent, str) or not same_string(sent, nonce):
        raise TokenRefused("id_token_nonce", "The ID token does not answer this sign-in (nonce).")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise TokenRefused("id_token_subject", "The ID token names no subject.")
    return claims


# --- the protocol ----------------------------------------------------------------------------------


def _redirect_uri() -> str:
    return services().settings.issuer + CALLBACK_PATH


def token_auth_method(doc: Mapping[str, Any], has_secret: bool) -> str:
    if not has_secret:
        return "none"
    methods = doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    if "client_secret_basic" in methods:
        return "client_secret_basic"
    if "client_secret_post" in methods:
        return "client_secret_post"
    raise MetadataInvalid("The provider supports neither client_secret_basic nor client_secret_post.")


class OidcProtocol:
    """The ``oidc`` protocol (:class:`saas.auth.sso.protocol.SsoProtocol`)."""

    type = "oidc"

    def validate_config(
        self, payload: Mapping[str, Any], connection: SsoConnection | None
    ) -> tuple[dict[str, Any], str | None]:
        """``issuer``, ``client_id`` (both required on create), ``client_secret`` (optional; kept
        when absent on update), ``scopes``; discovery is fetched and checked whenever the issuer
        is given (so a bad issuer or an unreachable one changes nothing).

        Raises:
            ValidationError: 422 per field. MetadataInvalid: 422. ProviderUnreachable: 502.
        """
        current = dict(connection.config or {}) if connection is not None else {}
        errors: dict[str, list[str]] = {}
        config = dict(current)
        for name in ("issuer", "client_id"):
            if name in payload:
                value = payload[name]
                if not isinstance(value, str) or not value.strip() or len(value) > 2048:
                    errors[name] = ["A non-empty string of at most 2048 characters."]
                else:
                    config[name] = value.strip()
            elif connection is None:
                errors[name] = ["Missing data for required field."]
        if "issuer" in config and "issuer" not in errors and (msg := check_issuer_url(config["issuer"])):
            errors["issuer"] = [msg]
        secret = payload.get("client_secret")
        if secret is not None and (not isinstance(secret, str) or not secret or len(secret) > 2048):
            errors["client_secret"] = ["A non-empty string of at most 2048 characters."]
        if "scopes" in payload:
            scopes = payload["scopes"]
            if isinstance(scopes, list):
                scopes = " ".join(str(s) for s in scopes)
            words = list(dict.fromkeys(str(scopes or "").split()))
            if "openid" not in words or len(" ".join(words)) > 1024:
                errors["scopes"] = ["Space-separated scopes including openid."]
            else:
                config["scopes"] = " ".join(words)
        config.setdefault("scopes", DEFAULT_SCOPES)
        if errors:
            raise ValidationError(errors)
        has_secret = bool(secret) or bool(connection is not None and connection.secret_encrypted)
        if connection is None or "issuer" in payload or "client_secret" in payload:
            doc = discover(config["issuer"], fresh=True)
            config["token_endpoint_auth_method"] = token_auth_method(doc, has_secret)
        return config, secret

    def public_config(self, connection: SsoConnection) -> dict[str, Any]:
        config = connection.config or {}
        return {
            "issuer": config.get("issuer"),
            "client_id": config.get("client_id"),
            "scopes": config.get("scopes", DEFAULT_SCOPES),
            "token_endpoint_auth_method": config.get("token_endpoint_auth_method"),
            "redirect_uri": _redirect_uri(),
        }

    def begin(self, connection: SsoConnection, transaction: LoginTransaction) -> Response:
        """The redirect to the authorization endpoint (PKCE S256, ``state``, ``nonce``); the
        verifier and nonce stay in the transaction (Redis), never in the browser.

        Raises:
            ProviderUnreachable / MetadataInvalid: discovery failed.
        """
        config = connection.config or {}
        doc = discover(config["issuer"])
        url, data = authorization_url(
            doc,
            client_id=config["client_id"],
            redirect_uri=_redirect_uri(),
            scope=config.get("scopes", DEFAULT_SCOPES),
            state=transaction.state,
            login_hint=transaction.login_hint,
        )
        transaction.data.update(data)
        return redirect(url)


PROTOCOL = OidcProtocol()
register_protocol(PROTOCOL)


# --- the callback --------------------------------------------------------------------------------


def authorization_url(
    doc: Mapping[str, Any],
    *,
    client_id: str,
    redirect_uri: str,
    scope: str,
    state: str,
    login_hint: str | None = None,
    nonce: bool = True,
) -> tuple[str, dict[str, str]]:
    """``(url, data)``: the authorization request (OIDC Core section 3.1.2.1; RFC 6749 section
    4.1.1) with Authlib's client, PKCE ``S256`` (RFC 7636) and, for OpenID Connect, a 256-bit
    ``nonce``; ``data`` (``code_verifier``, ``nonce``) is what the caller keeps server-side for
    the callback (:func:`exchange_code`, :func:`validate_id_token`). ``nonce=False`` for a plain
    OAuth 2.0 provider (GitHub), which has no ID token to carry it."""
    verifier = random_token(48)
    data = {"code_verifier": verifier}
    client = OAuth2Session(client_id, redirect_uri=redirect_uri, scope=scope, code_challenge_method="S256")
    extra: dict[str, str] = {}
    if nonce:
        data["nonce"] = extra["nonce"] = random_token(32)
    if login_hint:
        extra["login_hint"] = login_hint
    url, _state = client.create_authorization_url(
        doc["authorization_endpoint"], state=state, code_verifier=verifier, **extra
    )
    return url, data


def exchange_code(
    token_endpoint: str,
    *,
    client_id: str,
    client_secret: str | None,
    auth_method: str,
    redirect_uri: str,
    code: str,
    verifier: str,
) -> dict[str, Any]:
    """The token response for ``code`` (OIDC Core section 3.1.3; RFC 6749 section 4.1.3), with
    the PKCE verifier and the client authenticated by ``auth_method`` (``client_secret_basic``,
    ``client_secret_post`` or ``none``).

    Raises:
        TokenRefused: ``token_error`` (the provider refused, or answered no JSON),
            ``token_unreachable`` (network).
    """
    client = OAuth2Session(
        client_id,
        client_secret,
        token_endpoint_auth_method=auth_method,
        redirect_uri=redirect_uri,
        default_timeout=HTTP_TIMEOUT,
    )
    try:
        token = client.fetch_token(
            token_endpoint,
            grant_type="authorization_code",
            code=code,
            code_verifier=verifier,
        )
    except AuthlibBaseError as exc:
        raise TokenRefused("token_error", f"The identity provider refused the code: {exc.error}.") from None
    except requests.RequestException as exc:
        raise TokenRefused(
            "token_unreachable", f"The identity provider's token endpoint failed: {type(exc).__name__}."
        ) from None
    except ValueError:
        raise TokenRefused("token_error", "The identity provider's token response is not JSON.") from None
    return dict(token)


def _exchange(connection: SsoConnection, doc: Mapping[str, Any], code: str, verifier: str) -> dict[str, Any]:
    config = connection.config or {}
    secret = connections.client_secret(connection)
    return exchange_code(
        doc["token_endpoint"],
        client_id=config["client_id"],
        client_secret=secret,
        auth_method=config.get("token_endpoint_auth_method") or token_auth_method(doc, bool(secret)),
        redirect_uri=_redirect_uri(),
        code=code,
        verifier=verifier,
    )


def userinfo(doc: Mapping[str, Any], access_token: str, subject: str) -> dict[str, Any]:
    url = doc.get("userinfo_endpoint")
    if not isinstance(url, str) or not access_token:
        return {}
    try:
        response = requests.get(
            url, headers={"Authorization": f"Bearer {access_token}"}, timeout=HTTP_TIMEOUT
        )
        body = response.json() if response.status_code == 200 else {}
    except (requests.RequestException, ValueError):
        return {}
    if not isinstance(body, dict) or body.get("sub") != subject:  # OIDC Core section 5.3.2
        return {}
    return body


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def identity_from(claims: Mapping[str, Any], userinfo: Mapping[str, Any]) -> SsoIdentity:
    """The :class:`SsoIdentity` of verified claims (UserInfo fills what the ID token lacks).

    Raises:
        TokenRefused: no address, or ``email_verified`` false.
    """
    merged = {**userinfo, **claims}
    email = merged.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise TokenRefused(
            "no_email", "The identity provider sent no email address (ask for the email scope)."
        )
    if merged.get("email_verified") is False:
        raise TokenRefused(
            "email_unverified_at_idp", "The identity provider says your address is not verified."
        )
    attributes = {k: _strings(v) for k, v in merged.items() if _strings(v)}
    name = merged.get("name") if isinstance(merged.get("name"), str) else None
    return SsoIdentity(
        subject=claims["sub"],
        email=email.strip(),
        name=name,
        groups=_strings(merged.get("groups")),
        attributes=attributes,
        amr=_strings(claims.get("amr")),
    )


@bp.get(CALLBACK_PATH)
def callback() -> Response:
    """The redirect URI of every OIDC connection (OIDC Core section 3.1.2.5): the transaction of
    ``state``, then the checks of the module's doc, then :func:`complete_login`."""
    try:
        transaction = take_transaction(request.args.get("state"))
    except RedisUnavailable:
        return login_failed(
            None,
            None,
            "redis_unavailable",
            "Sign-in is unavailable right now. Try again shortly.",
            status=503,
        )
    if transaction is None:
        return login_failed(
            None,
            None,
            "unknown_state",
            "This sign-in has expired or was already used. Go back to the application and sign in again.",
        )
    tenant_id, connection_id = transaction.tenant_id, transaction.connection_id
    connection = db.session().get(SsoConnection, connection_id)
    if connection is None or connection.type != "oidc":
        return login_failed(
            None, connection_id, "connection_gone", "This single sign-on connection no longer exists."
        )
    issuer = (connection.config or {}).get("issuer", "")
    if "error" in request.args:
        error = request.args.get("error", "")[:100]
        description = request.args.get("error_description", "")[:300]
        return login_failed(
            tenant_id,
            connection_id,
            "idp_error",
            f"The identity provider answered: {error}" + (f" ({description})." if description else "."),
            data={"error": error},
        )
    if "iss" in request.args and request.args["iss"] != issuer:  # RFC 9207 section 2.4
        return login_failed(
            tenant_id, connection_id, "issuer_mismatch", "The answer came from another issuer."
        )
    code = request.args.get("code", "")
    if not code or len(code) > 2048:
        return login_failed(
            tenant_id, connection_id, "no_code", "The identity provider sent no authorization code."
        )
    try:
        doc = discover(issuer)
        token = _exchange(connection, doc, code, transaction.data.get("code_verifier", ""))
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise TokenRefused("no_id_token", "The identity provider sent no ID token.")
        claims = validate_id_token(
            id_token,
            issuer=issuer,
            client_id=connection.config["client_id"],
            nonce=transaction.data.get("nonce", ""),
            doc=doc,
        )
        extra = (
            {} if "email" in claims else userinfo(doc, str(token.get("access_token") or ""), claims["sub"])
        )
        identity = identity_from(claims, extra)
    except TokenRefused as err:
        return login_failed(tenant_id, connection_id, err.reason, err.detail)
    except AppError as err:  # discovery or the JWKS failed
        return login_failed(tenant_id, connection_id, str(err.code), err.detail or err.title, status=502)
    return complete_login(transaction, identity)
