"""SAML 2.0 single sign-on for a tenant's connection (docs/auth.md, "SAML 2.0"): this service is
the service provider (SP) of the Web Browser SSO profile (SAML 2.0 Profiles section 4.1) with
pysaml2, whose signature checks run ``xmlsec1`` (Debian package ``xmlsec1``).

* :class:`SamlProtocol` (registered as ``saml`` on import) checks a connection's IdP metadata
  (``metadata_xml`` or ``metadata_url``), shows what the tenant admin gives the IdP, and starts a
  sign-in with an ``<AuthnRequest>`` (Profiles 4.1.4.1) by HTTP-Redirect (Bindings 3.4) or,
  when the IdP offers only that, HTTP-POST (Bindings 3.5). The request is not signed (the SP
  has no key; metadata asking for signed requests is refused), ``ForceAuthn`` is false.
* The SP's configuration is built in code per connection (a pysaml2 ``SPConfig`` from a dict:
  no files per tenant): entity id ``<SAAS_ISSUER>/sso/saml/<id>/metadata``, one
  AssertionConsumerService ``<SAAS_ISSUER>/sso/saml/<id>/acs`` (HTTP-POST), signed assertions
  wanted, unsolicited responses refused, a clock skew of :data:`CLOCK_SKEW_SECONDS`.
* The routes (:data:`bp`): ``GET /sso/saml/<id>/metadata`` (the SP's metadata),
  ``GET /sso/saml/<id>/login?next=`` (an SP-initiated sign-in) and ``POST /sso/saml/<id>/acs``
  (the IdP's answer). The ACS takes the login transaction named by ``RelayState`` (single use)
  and refuses the response unless (:func:`verify_response`): it is a success ``<Response>`` to
  that transaction's request (``InResponseTo``, Profiles 4.1.4.3), addressed to the ACS
  (``Destination``, Bindings 3.5.5.2), issued by the connection's IdP (``Issuer``), carrying
  exactly one assertion, signed by a certificate of the IdP's metadata (Profiles 4.1.3.5 and
  4.1.4.5; Core 5.4), whose ``AudienceRestriction`` names the SP and whose bearer
  ``SubjectConfirmationData`` names the ACS as ``Recipient``, the request as ``InResponseTo``
  and a ``NotOnOrAfter`` not passed (Profiles 4.1.4.2, 4.1.4.3; Core 2.5.1.2 for
  ``NotBefore``/``NotOnOrAfter``), with an ``AuthnStatement``; and the assertion's ``ID`` was
  never used at this connection (Profiles 4.1.4.5: the SP keeps used assertion ids until they
  expire; a Redis ``SET NX`` until ``NotOnOrAfter`` plus the skew, key
  :meth:`saas.cache.namespace.TenantKeys.seen_assertion`). Every refusal is an HTML error page
  (400, 403, 404 or 503) and an ``sso.login_failed`` audit event in the tenant (committed with
  ``EarlyCommit.SSO_LOGIN_FAILED``); nothing else is written. An accepted answer becomes an
  :class:`~saas.auth.sso.protocol.SsoIdentity` for :func:`saas.auth.sso.login.complete_login`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import logging
import secrets
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from flask import Blueprint, Flask, Response, abort, redirect, request
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, samlp
from saml2.attribute_converter import ac_factory
from saml2.client import Saml2Client
from saml2.config import SPConfig
from saml2.mdstore import InMemoryMetaData
from saml2.metadata import create_metadata_string
from saml2.saml import NAMEID_FORMAT_EMAILADDRESS, NAMEID_FORMAT_TRANSIENT, SCM_BEARER
from saml2.sigver import SignatureError
from saml2.time_util import str_to_time

from saas import db
from saas.auth import pages
from saas.auth.errors import ErrorPage
from saas.auth.pages import security_headers
from saas.auth.sso import login as sso_login
from saas.auth.sso.fetch import FetchFailed, FetchRefused, fetch_document
from saas.auth.sso.protocol import LoginTransaction, SsoIdentity, register_protocol, take_transaction
from saas.cache.guard import RedisUnavailable
from saas.cache.namespace import TenantKeys
from saas.errors import AppError, ErrorCode, ValidationError
from saas.identity.models import SsoConnection, Tenant
from saas.services import services

#: seconds of clock difference allowed between the IdP and this service (``NotBefore``,
#: ``NotOnOrAfter``, ``IssueInstant``)
CLOCK_SKEW_SECONDS = 60
#: the largest metadata document accepted, in bytes (inline or fetched)
METADATA_MAX_BYTES = 1024 * 1024
#: the largest ``SAMLResponse`` form field accepted, in characters (base64)
RESPONSE_MAX_CHARS = 512 * 1024
#: the SP metadata's media type (SAML 2.0 Metadata, appendix "Media type registration")
METADATA_MEDIA_TYPE = "application/samlmetadata+xml"
BINDINGS = {BINDING_HTTP_REDIRECT: "HTTP-Redirect", BINDING_HTTP_POST: "HTTP-POST"}
#: attribute names read for the email, the display name and the groups when the connection
#: names none (LDAP/eduPerson friendly names as pysaml2 maps them, and Entra ID's claim URIs)
EMAIL_ATTRIBUTES = (
    "email",
    "mail",
    "emailAddress",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
)
NAME_ATTRIBUTES = ("displayName", "name", "cn", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name")
GROUP_ATTRIBUTES = ("groups", "memberOf", "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups")
#: AuthnContextClassRef values (SAML 2.0 Authentication Context; REFEDS MFA; Entra ID) as RFC
#: 8176 ``amr`` values; others add nothing
AMR_OF_CLASS = {
    "urn:oasis:names:tc:SAML:2.0:ac:classes:Password": ("pwd",),
    "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport": ("pwd",),
    "https://refeds.org/profile/mfa": ("mfa",),
    "http://schemas.microsoft.com/claims/multipleauthn": ("mfa",),
    "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorContract": ("mfa",),
    "urn:oasis:names:tc:SAML:2.0:ac:classes:X509": ("hwk",),
}
#: signature and digest algorithms accepted on an assertion (the URIs of XML Signature 1.1 and
#: RFC 9231); SHA-1 and MD5 are refused (collision attacks; NIST SP 800-131A)
SIGNATURE_ALGORITHMS = frozenset(
    {
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
        "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256",
        "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384",
        "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512",
    }
)
DIGEST_ALGORITHMS = frozenset(
    {
        "http://www.w3.org/2001/04/xmlenc#sha256",
        "http://www.w3.org/2001/04/xmldsig-more#sha384",
        "http://www.w3.org/2001/04/xmlenc#sha512",
    }
)
#: the HTTP-POST form's policy: the hosted pages' without their scripts, but for its own, by nonce
POST_FORM_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'"

bp = Blueprint("saml", __name__)
log = logging.getLogger(__name__)
# pysaml2 logs each subject's NameID and attributes at INFO: personal data kept out of the
# service's logs (its warnings and errors, a signature that fails, still pass)
logging.getLogger("saml2").setLevel(logging.WARNING)


class SsoMetadataInvalid(AppError):
    """422 ``sso_metadata_invalid``: the IdP's metadata cannot be used (the detail says why)."""

    status, code, title = 422, ErrorCode.SSO_METADATA_INVALID, "SSO metadata invalid"


class SsoProviderUnreachable(AppError):
    """502 ``sso_provider_unreachable``: the metadata URL gave no usable answer."""

    status, code, title = 502, ErrorCode.SSO_PROVIDER_UNREACHABLE, "SSO provider unreachable"


# --- URLs of the SP ------------------------------------------------------------------------------


def sp_entity_id(connection_id: uuid.UUID) -> str:
    """The SP's entity id for a connection: its metadata URL (Metadata section 2.3.2 allows a
    resolvable URL), on ``SAAS_ISSUER``."""
    return f"{services().settings.issuer}/sso/saml/{connection_id}/metadata"


def acs_url(connection_id: uuid.UUID) -> str:
    return f"{services().settings.issuer}/sso/saml/{connection_id}/acs"


def login_url(connection_id: uuid.UUID) -> str:
    return f"{services().settings.issuer}/sso/saml/{connection_id}/login"


def _xmlsec_binary() -> str:
    """The ``xmlsec1`` program pysaml2 signs and verifies with.

    Raises:
        ErrorPage: 503, it is not installed (no SAML sign-in can be verified).
    """
    found = shutil.which("xmlsec1")
    if found is None:
        raise ErrorPage("Single sign-on unavailable", "SAML sign-in is not available right now.", 503)
    return found


def _sp_config(connection: SsoConnection) -> SPConfig:
    """The pysaml2 SP configuration of one connection, in memory."""
    config = SPConfig()
    config.load(
        {
            "entityid": sp_entity_id(connection.id),
            "xmlsec_binary": _xmlsec_binary(),
            "accepted_time_diff": CLOCK_SKEW_SECONDS,
            "allow_unknown_attributes": True,
            "service": {
                "sp": {
                    "name": f"SSO connection {connection.id}",
                    "endpoints": {
                        "assertion_consumer_service": [(acs_url(connection.id), BINDING_HTTP_POST)]
                    },
                    "allow_unsolicited": False,
                    "authn_requests_signed": False,
                    "want_assertions_signed": True,
                    "want_response_signed": False,
                    "name_id_policy_format": None,
                    "name_id_format_allow_create": True,
                }
            },
            "metadata": {"inline": [connection.config["metadata_xml"]]} if connection.config else {},
        }
    )
    return config


def sp_metadata(connection: SsoConnection) -> str:
    """The SP's metadata XML (an ``SPSSODescriptor`` with ``WantAssertionsSigned="true"``)."""
    config = SPConfig()
    config.load(
        {
            "entityid": sp_entity_id(connection.id),
            "xmlsec_binary": _xmlsec_binary(),
            "service": {
                "sp": {
                    "endpoints": {
                        "assertion_consumer_service": [(acs_url(connection.id), BINDING_HTTP_POST)]
                    },
                    "authn_requests_signed": False,
                    "want_assertions_signed": True,
                    "name_id_format": [NAMEID_FORMAT_EMAILADDRESS],
                }
            },
        }
    )
    return create_metadata_string(None, config=config, valid=None, sign=False).decode()


# --- IdP metadata ---------------------------------------------------------------------------------


def _instant(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime(*str_to_time(text)[:6], tzinfo=UTC)
    except Exception:  # pysaml2 raises ValueError, TypeError or AttributeError
        raise SsoMetadataInvalid(f"The metadata's validUntil {text[:40]!r} is not an xs:dateTime.") from None


def parse_idp_metadata(xml: str, *, allow_private: bool) -> dict[str, Any]:
    """Read one IdP's metadata (SAML 2.0 Metadata, sections 2.3 and 2.4.3).

    Returns:
        ``{"idp_entity_id", "sso_url", "sso_binding", "certificates": [PEM], "valid_until":
        ISO 8601 or None, "metadata_xml"}``.

    Raises:
        SsoMetadataInvalid: not well-formed XML (a DTD or entity declarations included: the
            parser is defusedxml), no SAML 2.0 ``IDPSSODescriptor`` or more than one IdP, a
            ``validUntil`` in the past, no ``SingleSignOnService`` with the HTTP-Redirect or
            HTTP-POST binding (or one not on https), no signing certificate (a ``KeyDescriptor``
            whose ``use`` is ``signing`` or absent), a certificate that does not parse, or
            ``WantAuthnRequestsSigned`` (this SP does not sign).
    """
    text = xml.strip()
    if not text:
        raise SsoMetadataInvalid("The metadata is empty.")
    if len(text.encode()) > METADATA_MAX_BYTES:
        raise SsoMetadataInvalid(f"The metadata is larger than {METADATA_MAX_BYTES} bytes.")
    store = InMemoryMetaData(ac_factory(), text, check_validity=False)
    try:
        store.load()
    except Exception as exc:  # pysaml2 wraps the parser's error (defusedxml, ElementTree)
        cause = exc.__cause__ or exc
        if type(cause).__name__ in ("DTDForbidden", "EntitiesForbidden", "ExternalReferenceForbidden"):
            raise SsoMetadataInvalid("The metadata declares a DTD or entities, which are refused.") from None
        raise SsoMetadataInvalid(f"The metadata is not well-formed XML ({str(cause)[:200]}).") from None
    root = store.entities_descr or store.entity_descr
    if root is None:
        raise SsoMetadataInvalid(
            "The metadata has no md:EntityDescriptor or md:EntitiesDescriptor root element."
        )
    idps = [entity_id for entity_id, entity in store.items() if entity.get("idpsso_descriptor")]
    if not idps:
        raise SsoMetadataInvalid(
            "The metadata has no md:IDPSSODescriptor supporting SAML 2.0 (protocolSupportEnumeration "
            "urn:oasis:names:tc:SAML:2.0:protocol)."
        )
    if len(idps) > 1:
        raise SsoMetadataInvalid(
            f"The metadata describes {len(idps)} identity providers; give the metadata of one."
        )
    idp = idps[0]
    if not isinstance(idp, str) or not idp.strip() or len(idp) > 1024:
        raise SsoMetadataInvalid("The IdP's entityID is missing or longer than 1024 characters (Core 8.3.6).")
    entity = store[idp]
    now = datetime.now(UTC)
    valid_until = [
        v for v in (_instant(root.valid_until), _instant(entity.get("valid_until"))) if v is not None
    ]
    expiry = min(valid_until) if valid_until else None
    if expiry is not None and expiry <= now:
        raise SsoMetadataInvalid(
            f"The metadata expired: its validUntil ({expiry.isoformat()}) is in the past."
        )
    descriptor = entity["idpsso_descriptor"][0]
    if str(descriptor.get("want_authn_requests_signed", "false")).lower() in ("true", "1"):
        raise SsoMetadataInvalid(
            "The IdP wants signed AuthnRequests (WantAuthnRequestsSigned), which this service does not send."
        )
    sso_url = sso_binding = None
    for binding in (BINDING_HTTP_REDIRECT, BINDING_HTTP_POST):
        services_ = store.service(idp, "idpsso_descriptor", "single_sign_on_service", binding) or []
        if services_:
            sso_url, sso_binding = services_[0].get("location") or "", binding
            break
    if sso_url is None:
        raise SsoMetadataInvalid(
            "The IdP has no SingleSignOnService with the HTTP-Redirect or HTTP-POST binding."
        )
    parts = urlsplit(sso_url)
    if (parts.scheme != "https" and not (allow_private and parts.scheme == "http")) or not parts.hostname:
        raise SsoMetadataInvalid(
            f"The IdP's SingleSignOnService location must be an https URL, got {sso_url[:200]!r}."
        )
    certificates = []
    try:
        found = store.certs(idp, "idpsso", use="signing")
    except (KeyError, TypeError, AttributeError):  # an empty ds:X509Certificate or KeyInfo
        raise SsoMetadataInvalid("A signing KeyDescriptor of the IdP holds no certificate.") from None
    for _name, b64 in found:
        try:
            der = base64.b64decode("".join(b64.split()), validate=True)
            cert = x509.load_der_x509_certificate(der)
        except (ValueError, binascii.Error):
            raise SsoMetadataInvalid(
                "A signing certificate of the IdP is not a base64 DER X.509 certificate."
            ) from None
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        if pem not in certificates:
            certificates.append(pem)
    if not certificates:
        raise SsoMetadataInvalid(
            'The IdP has no signing certificate (an md:KeyDescriptor with use="signing" or no use, '
            "holding ds:X509Certificate)."
        )
    return {
        "idp_entity_id": idp,
        "sso_url": sso_url,
        "sso_binding": sso_binding,
        "certificates": certificates,
        "valid_until": expiry.isoformat() if expiry else None,
        "metadata_xml": text,
    }


def fingerprint(pem: str) -> str:
    """``SHA256:AB:CD:...``, the form IdP consoles show."""
    digest = x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA256())
    return "SHA256:" + ":".join(f"{b:02X}" for b in digest)


def _optional_name(payload: Mapping[str, Any], name: str, errors: dict[str, list[str]]) -> None:
    value = payload.get(name)
    if value is not None and (not isinstance(value, str) or not 1 <= len(value.strip()) <= 256):
        errors[name] = ["Must be an attribute name of 1 to 256 characters, or null."]


class SamlProtocol:
    """The ``saml`` protocol (:class:`saas.auth.sso.protocol.SsoProtocol`)."""

    type = "saml"

    def validate_config(
        self, payload: Mapping[str, Any], connection: SsoConnection | None
    ) -> tuple[dict[str, Any], str | None]:
        """The connection's SAML settings from a create (``connection`` None) or update body:
        ``metadata_xml`` (the IdP's metadata document) or ``metadata_url`` (fetched now: see
        :mod:`saas.auth.sso.fetch`), and optional ``email_attribute`` and ``groups_attribute``
        (attribute names; None: the usual names, :data:`EMAIL_ATTRIBUTES`, :data:`GROUP_ATTRIBUTES`).
        An update without metadata keeps the current one. There is no secret (None).

        Raises:
            ValidationError: both or (on create) neither metadata field, a field of the wrong
                type, a ``metadata_url`` that is not https or resolves to a non-public address
                (unless ``SSO_ALLOW_PRIVATE_URLS``).
            SsoMetadataInvalid: 422, the metadata is unusable (:func:`parse_idp_metadata`).
            SsoProviderUnreachable: 502, the metadata URL gave no usable answer.
        """
        errors: dict[str, list[str]] = {}
        xml, url = payload.get("metadata_xml"), payload.get("metadata_url")
        if xml is not None and not isinstance(xml, str):
            errors["metadata_xml"] = ["Must be the metadata document, as a string."]
        if url is not None and (not isinstance(url, str) or len(url) > 2048):
            errors["metadata_url"] = ["Must be a URL of at most 2048 characters."]
        if xml is not None and url is not None:
            errors["metadata_url"] = ["Give metadata_xml or metadata_url, not both."]
        if xml is None and url is None and (connection is None or not connection.config):
            errors["metadata_xml"] = ["metadata_xml or metadata_url is required."]
        _optional_name(payload, "email_attribute", errors)
        _optional_name(payload, "groups_attribute", errors)
        if errors:
            raise ValidationError(errors)
        allow_private = services().settings.sso_allow_private_urls
        current = dict(connection.config) if connection is not None and connection.config else {}
        if url is not None:
            try:
                body = fetch_document(
                    url, allow_private=allow_private, accept=f"{METADATA_MEDIA_TYPE}, application/xml"
                )
            except FetchRefused as exc:
                raise ValidationError({"metadata_url": [f"Refused: {exc}."]}) from None
            except FetchFailed as exc:
                raise SsoProviderUnreachable(f"The metadata URL could not be read: {exc}.") from None
            try:
                xml = body.decode("utf-8")
            except UnicodeDecodeError:
                raise SsoMetadataInvalid("The metadata URL did not answer with UTF-8 XML.") from None
        if xml is not None:
            config = {**current, **parse_idp_metadata(xml, allow_private=allow_private), "metadata_url": url}
        else:
            config = current
        for name in ("email_attribute", "groups_attribute"):
            if name in payload:
                value = payload[name]
                config[name] = value.strip() if isinstance(value, str) else None
            else:
                config.setdefault(name, None)
        return config, None

    def public_config(self, connection: SsoConnection) -> dict[str, Any]:
        """What the API shows: the SP's entity id, ACS URL, metadata URL and login URL (what the
        tenant admin gives the IdP), the IdP's entity id, SSO URL and binding, its certificates'
        SHA-256 fingerprints, the metadata's expiry, the configured attribute names."""
        config = connection.config or {}
        return {
            "sp_entity_id": sp_entity_id(connection.id),
            "sp_metadata_url": sp_entity_id(connection.id),
            "acs_url": acs_url(connection.id),
            "login_url": login_url(connection.id),
            "metadata_url": config.get("metadata_url"),
            "idp_entity_id": config.get("idp_entity_id"),
            "idp_sso_url": config.get("sso_url"),
            "idp_sso_binding": BINDINGS.get(config.get("sso_binding", "")),
            "certificate_fingerprints": [fingerprint(pem) for pem in config.get("certificates", [])],
            "metadata_valid_until": config.get("valid_until"),
            "email_attribute": config.get("email_attribute"),
            "groups_attribute": config.get("groups_attribute"),
        }

    def begin(self, connection: SsoConnection, transaction: LoginTransaction) -> Response:
        """An ``<AuthnRequest>`` to the IdP (Profiles 4.1.4.1): by HTTP-Redirect (a 303 with the
        deflated request, Bindings 3.4.4) or HTTP-POST (a form the page submits, Bindings 3.5.4),
        ``RelayState`` the transaction's ``state``; its ``ID`` goes to
        ``transaction.data["request_id"]`` for ``InResponseTo``.

        Raises:
            ErrorPage: the IdP's metadata expired (400), ``xmlsec1`` is missing (503).
        """
        config = connection.config
        _check_metadata_current(config)
        client = Saml2Client(config=_sp_config(connection))
        binding = config["sso_binding"]
        request_id, authn_request = client.create_authn_request(
            config["sso_url"], binding=BINDING_HTTP_POST, force_authn=None
        )
        transaction.data["request_id"] = request_id
        if binding == BINDING_HTTP_REDIRECT:
            info = client.apply_binding(
                BINDING_HTTP_REDIRECT,
                str(authn_request),
                destination=config["sso_url"],
                relay_state=transaction.state,
            )
            location = dict(info["headers"])["Location"]
            return security_headers(redirect(location, 303))
        encoded = base64.b64encode(str(authn_request).encode()).decode()
        return _post_form(config["sso_url"], {"SAMLRequest": encoded, "RelayState": transaction.state})


register_protocol(SamlProtocol())


def _check_metadata_current(config: Mapping[str, Any]) -> None:
    until = config.get("valid_until")
    if until and datetime.fromisoformat(until) <= datetime.now(UTC):
        raise ErrorPage(
            "Single sign-on not available",
            "The identity provider's metadata has expired; an administrator must update the connection.",
        )


def _post_form(action: str, fields: Mapping[str, str]) -> Response:
    """An HTML page whose form posts ``fields`` to ``action`` (its script, allowed by a nonce,
    submits it; the button does without script)."""
    nonce = secrets.token_urlsafe(16)
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in fields.items()
    )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Signing in</title></head><body>'
        f'<form id="saml" method="post" action="{html.escape(action)}">{inputs}'
        '<button type="submit">Continue to your identity provider</button></form>'
        f'<script nonce="{nonce}">document.getElementById("saml").submit();</script></body></html>'
    )
    response = Response(page, 200, mimetype="text/html")
    response.headers["Content-Security-Policy"] = f"{POST_FORM_CSP}; script-src 'nonce-{nonce}'"
    return security_headers(response)


# --- verifying the IdP's answer -------------------------------------------------------------------


class Refused(Exception):
    """The IdP's answer is refused: ``reason`` (a stable word for the audit log), ``detail``
    (shown to the person and logged), ``status``."""

    def __init__(self, reason: str, detail: str, status: int = 403):
        super().__init__(detail)
        self.reason, self.detail, self.status = reason, detail, status


@dataclass(frozen=True)
class VerifiedAssertion:
    identity: SsoIdentity
    #: the assertion's ``ID`` and when it stops being usable (the replay marker's expiry)
    assertion_id: str
    expires_at: datetime


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime(*str_to_time(text)[:6], tzinfo=UTC)
    except Exception:  # pysaml2 raises ValueError, TypeError or AttributeError
        raise Refused("malformed", "The assertion has a time that is not an xs:dateTime.", 400) from None


def _check_window(
    not_before: str | None, not_on_or_after: str | None, what: str, now: datetime
) -> datetime | None:
    skew = timedelta(seconds=CLOCK_SKEW_SECONDS)
    start, end = _time(not_before), _time(not_on_or_after)
    if start is not None and now + skew < start:
        raise Refused("not_yet_valid", f"The {what} is not valid yet (NotBefore {not_before}).")
    if end is not None and now - skew >= end:
        raise Refused("expired", f"The {what} has expired (NotOnOrAfter {not_on_or_after}).")
    return end


def _precheck(connection: SsoConnection, xml: bytes, request_id: str) -> tuple[Any, datetime]:
    """The addressing and time rules on the parsed (not yet verified) response, for precise
    refusals; passing them grants nothing (the signature is checked after). Returns the
    response object and the assertion's expiry."""
    config = connection.config
    idp, acs, audience = config["idp_entity_id"], acs_url(connection.id), sp_entity_id(connection.id)
    try:
        response = samlp.response_from_string(xml)
    except Exception:  # defusedxml and ElementTree errors, and pysaml2's
        raise Refused("malformed", "The SAMLResponse is not a well-formed SAML 2.0 Response.", 400) from None
    if response is None:
        raise Refused("malformed", "The SAMLResponse is not a samlp:Response.", 400)
    if response.version != "2.0":
        raise Refused("malformed", "The Response is not SAML 2.0.", 400)
    status = response.status.status_code.value if response.status and response.status.status_code else None
    if status != samlp.STATUS_SUCCESS:
        inner = response.status.status_code.status_code if status else None
        said = (inner.value if inner is not None else status) or "no status"
        raise Refused("idp_status", f"The identity provider did not sign you in ({said.rsplit(':', 1)[-1]}).")
    if response.destination is not None and response.destination != acs:
        raise Refused("destination", "The Response is addressed to another service (Destination).")
    if response.issuer is not None and (response.issuer.text or "").strip() != idp:
        raise Refused("issuer", "The Response comes from another identity provider (Issuer).")
    if response.in_response_to != request_id:
        raise Refused("in_response_to", "The Response answers another sign-in request (InResponseTo).")
    if response.encrypted_assertion:
        raise Refused(
            "encrypted", "Encrypted assertions are not supported: configure the IdP to sign, not encrypt."
        )
    if len(response.assertion) != 1:
        raise Refused(
            "assertion_count", f"The Response must hold exactly one assertion, not {len(response.assertion)}."
        )
    assertion = response.assertion[0]
    if assertion.issuer is None or (assertion.issuer.text or "").strip() != idp:
        raise Refused("issuer", "The assertion comes from another identity provider (Issuer).")
    if assertion.signature is None:
        raise Refused("unsigned", "The assertion is not signed; the identity provider must sign assertions.")
    signed_info = assertion.signature.signed_info
    method = signed_info.signature_method.algorithm if signed_info and signed_info.signature_method else None
    digests = {
        ref.digest_method.algorithm
        for ref in (signed_info.reference if signed_info else [])
        if ref.digest_method
    }
    references = signed_info.reference if signed_info else []
    if len(references) != 1 or references[0].uri != f"#{assertion.id}":
        # XML Signature Wrapping: the signature must cover this assertion and nothing else
        raise Refused("signature", "The assertion's signature does not cover the assertion itself.")
    if method not in SIGNATURE_ALGORITHMS or not digests or not digests <= DIGEST_ALGORITHMS:
        raise Refused(
            "signature_algorithm",
            "The assertion is signed with a weak or unknown algorithm (SHA-1?); sign with RSA-SHA256 "
            "or stronger.",
        )
    now = datetime.now(UTC)
    conditions = assertion.conditions
    if conditions is None:
        raise Refused("audience", "The assertion has no Conditions naming this service as its audience.")
    audiences = [
        (a.text or "").strip()
        for restriction in conditions.audience_restriction
        for a in restriction.audience
    ]
    if audience not in audiences:
        raise Refused("audience", "The assertion is meant for another service (AudienceRestriction).")
    expiry = _check_window(conditions.not_before, conditions.not_on_or_after, "assertion", now)
    subject = assertion.subject
    if subject is None or subject.name_id is None or not (subject.name_id.text or "").strip():
        raise Refused("subject", "The assertion names no subject (NameID).")
    bearers = [c for c in subject.subject_confirmation if c.method == SCM_BEARER]
    if not bearers:
        raise Refused("subject_confirmation", "The assertion has no bearer SubjectConfirmation.")
    problem: Refused | None = None
    for confirmation in bearers:
        data = confirmation.subject_confirmation_data
        try:
            if data is None or data.recipient != acs:
                raise Refused("recipient", "The assertion is meant for another address (Recipient).")
            if data.in_response_to != request_id:
                raise Refused(
                    "in_response_to", "The assertion answers another sign-in request (InResponseTo)."
                )
            if not data.not_on_or_after:
                raise Refused("expired", "The assertion's SubjectConfirmationData has no NotOnOrAfter.")
            end = _check_window(data.not_before, data.not_on_or_after, "assertion", now)
        except Refused as refused:
            problem = problem or refused
            continue
        expiry = max(expiry, end) if expiry and end else (end or expiry)
        problem = None
        break
    if problem is not None:
        raise problem
    if not assertion.authn_statement:
        raise Refused("authn_statement", "The assertion has no AuthnStatement.")
    return response, expiry or now


def _first(values: Mapping[str, list[Any]], names: tuple[str, ...]) -> str | None:
    for name in names:
        for value in values.get(name) or ():
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def _identity(connection: SsoConnection, verified: Any) -> SsoIdentity:
    config = connection.config
    ava: dict[str, list[Any]] = verified.ava or {}
    name_id = verified.name_id
    subject = (name_id.text or "").strip()
    if len(subject) > 512:
        raise Refused("subject", "The NameID is longer than 512 characters.")
    if name_id.format == NAMEID_FORMAT_TRANSIENT:
        # a transient NameID changes at every sign-in (Core 8.3.8): no account can be found by it
        raise Refused(
            "subject",
            "The identity provider sent a transient NameID; configure a persistent or emailAddress NameID.",
        )
    email = None
    if config.get("email_attribute"):
        email = _first(ava, (config["email_attribute"],))
    if email is None and name_id.format == NAMEID_FORMAT_EMAILADDRESS:
        email = subject
    if email is None and not config.get("email_attribute"):
        email = _first(ava, EMAIL_ATTRIBUTES)
    if email is None or "@" not in email or len(email) > 320:
        raise Refused(
            "email",
            "The assertion carries no email address (a NameID in the emailAddress format, or the "
            "connection's email attribute).",
        )
    groups_names = (config["groups_attribute"],) if config.get("groups_attribute") else GROUP_ATTRIBUTES
    groups = tuple(
        dict.fromkeys(str(v).strip() for name in groups_names for v in ava.get(name) or () if str(v).strip())
    )
    amr: tuple[str, ...] = ()
    for statement in verified.assertion.authn_statement:
        context = statement.authn_context
        ref = (
            (context.authn_context_class_ref.text or "").strip()
            if context and context.authn_context_class_ref
            else ""
        )
        amr += AMR_OF_CLASS.get(ref, ())
    return SsoIdentity(
        subject=subject,
        email=email.lower(),
        name=_first(ava, NAME_ATTRIBUTES),
        groups=groups,
        attributes={name: tuple(str(v) for v in values) for name, values in ava.items()},
        amr=tuple(dict.fromkeys(amr)),
    )


def verify_response(connection: SsoConnection, saml_response: str, request_id: str) -> VerifiedAssertion:
    """Check the IdP's ``SAMLResponse`` (base64, HTTP-POST binding) against the connection and
    the request it must answer (see the module's doc for each rule).

    Raises:
        Refused: every failed rule, with its reason.
        ErrorPage: 503, ``xmlsec1`` is missing.
    """
    if len(saml_response) > RESPONSE_MAX_CHARS:
        raise Refused("malformed", "The SAMLResponse is too large.", 400)
    compact = "".join(saml_response.split())
    try:
        xml = base64.b64decode(compact, validate=True)
    except (ValueError, binascii.Error):
        raise Refused("malformed", "The SAMLResponse is not base64.", 400) from None
    _check_metadata_current_refused(connection.config)
    unverified, expiry = _precheck(connection, xml, request_id)
    client = Saml2Client(config=_sp_config(connection))
    try:
        verified = client.parse_authn_request_response(
            compact,
            BINDING_HTTP_POST,
            outstanding={request_id: "/"},
            conv_info={"remote_addr": request.remote_addr},
        )
    except SignatureError:
        raise Refused(
            "signature", "The assertion's signature does not verify with the identity provider's certificate."
        ) from None
    except Exception as exc:  # pysaml2 raises many types; every one is a refusal
        if "signature" in str(exc).lower() or "signed" in type(exc).__name__.lower():
            raise Refused(
                "signature",
                "The assertion's signature does not verify with the identity provider's certificate.",
            ) from None
        raise Refused("invalid", f"The assertion did not verify ({type(exc).__name__}).") from None
    if verified is None or verified.assertion is None or verified.name_id is None:
        raise Refused("invalid", "The assertion did not verify.")
    assertion = unverified.assertion[0]
    if (
        verified.assertion.id != assertion.id
        or (verified.name_id.text or "").strip() != assertion.subject.name_id.text.strip()
    ):
        raise Refused("invalid", "The verified assertion is not the one the Response carries.")
    return VerifiedAssertion(_identity(connection, verified), verified.assertion.id, expiry)


def _check_metadata_current_refused(config: Mapping[str, Any]) -> None:
    until = config.get("valid_until")
    if until and datetime.fromisoformat(until) <= datetime.now(UTC):
        raise Refused(
            "metadata_expired",
            "The identity provider's metadata has expired; ask an administrator to update it.",
        )


def first_use(connection: SsoConnection, assertion_id: str, expires_at: datetime) -> bool:
    """Mark the assertion id used at this connection until ``expires_at`` plus the skew; False
    when it was used before (Profiles 4.1.4.5).

    Raises:
        RedisUnavailable: Redis cannot be reached (the sign-in is refused: fail closed).
    """
    digest = hashlib.sha256(assertion_id.encode()).hexdigest()[:40]
    key = TenantKeys(connection.tenant_id).seen_assertion(connection.id, digest)
    until = int((max(expires_at, datetime.now(UTC)) + timedelta(seconds=CLOCK_SKEW_SECONDS)).timestamp()) + 1
    return bool(services().redis_guard.call("sso", lambda r: r.set(key, "1", nx=True, exat=until), key=key))


# --- routes ---------------------------------------------------------------------------------------


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.after_request
def _headers(response: Response) -> Response:
    if response.mimetype == "text/html":
        return security_headers(response)
    return response


@bp.errorhandler(ErrorPage)
def _error_page(err: ErrorPage):
    return pages.error_page(err.title, err.detail, err.status)


def _connection(connection_id: uuid.UUID) -> SsoConnection | None:
    connection = db.session().get(SsoConnection, connection_id)
    if connection is None or connection.type != "saml" or not connection.enabled or not connection.config:
        return None
    return connection


def _refuse(connection: SsoConnection, reason: str, detail: str, status: int) -> ErrorPage:
    """Record ``sso.login_failed`` in the connection's tenant
    (:func:`saas.auth.sso.login.record_login_failure`) and return the page to raise."""
    sso_login.record_login_failure(
        connection.tenant_id, connection.id, reason, {"protocol": "saml", "detail": detail[:300]}
    )
    return ErrorPage("Single sign-on failed", detail, status)


@bp.get("/sso/saml/<uuid:connection_id>/metadata")
def metadata(connection_id: uuid.UUID):
    """The SP's metadata (give it, or its URL, to the IdP); 404 for an unknown or disabled connection."""
    connection = _connection(connection_id)
    if connection is None:
        abort(404)
    response = Response(sp_metadata(connection), 200, mimetype=METADATA_MEDIA_TYPE)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get("/sso/saml/<uuid:connection_id>/login")
def login(connection_id: uuid.UUID):
    """An SP-initiated sign-in: ``next`` (a path of this service) is where the browser goes once
    signed in, ``login_hint`` an email the IdP may prefill."""

    connection = _connection(connection_id)
    if connection is None:
        raise ErrorPage("Single sign-on not available", "This sign-in link is not valid.", 404)
    next_url = request.args.get("next") or "/oauth/tenant"
    if not next_url.startswith("/") or next_url.startswith("//") or "\\" in next_url or len(next_url) > 2048:
        raise ErrorPage("Single sign-on not available", "The next parameter must be a path of this service.")
    hint = request.args.get("login_hint") or None
    if hint is not None and len(hint) > 320:
        hint = None
    try:
        return sso_login.start_login(connection, next_url, hint)
    except RedisUnavailable:
        raise ErrorPage(
            "Single sign-on unavailable", "Sign-in cannot start right now. Try again shortly.", 503
        ) from None


@bp.post("/sso/saml/<uuid:connection_id>/acs")
def acs(connection_id: uuid.UUID):
    """The AssertionConsumerService (HTTP-POST binding, Bindings 3.5): ``SAMLResponse`` and
    ``RelayState`` form fields. See the module's doc for what is checked."""

    connection = _connection(connection_id)
    if connection is None:
        raise ErrorPage("Single sign-on failed", "This sign-in address is not valid.", 404)
    tenant = db.session().get(Tenant, connection.tenant_id)
    if tenant is None or tenant.status != "active" or tenant.deleted_at is not None:
        raise _refuse(connection, "tenant_inactive", "This organisation cannot sign in right now.", 403)
    saml_response = request.form.get("SAMLResponse") or ""
    if not saml_response:
        raise _refuse(connection, "malformed", "The identity provider sent no SAMLResponse.", 400)
    try:
        transaction = take_transaction(request.form.get("RelayState"))
    except RedisUnavailable:
        raise ErrorPage(
            "Single sign-on unavailable", "Sign-in cannot finish right now. Start again shortly.", 503
        ) from None
    if transaction is None:
        raise _refuse(
            connection,
            "transaction",
            "This sign-in expired or was already used (unknown RelayState); start again from the sign-in "
            "page.",
            400,
        )
    if transaction.connection_id != connection.id or "request_id" not in transaction.data:
        raise _refuse(connection, "transaction", "This answer belongs to another sign-in; start again.", 400)
    try:
        verified = verify_response(connection, saml_response, str(transaction.data["request_id"]))
        if not first_use(connection, verified.assertion_id, verified.expires_at):
            raise Refused("replayed", "This assertion was already used; start again from the sign-in page.")
    except Refused as refused:
        raise _refuse(connection, refused.reason, refused.detail, refused.status) from None
    except RedisUnavailable:
        raise ErrorPage(
            "Single sign-on unavailable", "Sign-in cannot finish right now. Start again shortly.", 503
        ) from None
    return sso_login.complete_login(transaction, verified.identity)
