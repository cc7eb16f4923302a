"""A real SAML 2.0 identity provider for the tests: pysaml2's ``saml2.server.Server`` behind a
small threaded WSGI app on a free loopback port.

* its own RSA key and self-signed certificate, made here with ``cryptography`` (files in a
  temporary directory: pysaml2 hands them to ``xmlsec1``);
* ``GET /metadata``: its metadata (one ``IDPSSODescriptor``, HTTP-Redirect and HTTP-POST
  ``SingleSignOnService``, the signing certificate);
* ``GET /sso/redirect`` and ``POST /sso/post``: the SingleSignOnService. It authenticates
  :attr:`SamlIdp.user` without asking (a test IdP) and answers with a signed ``<Response>`` by
  HTTP-POST: an auto-submitting HTML form, so a browser carries it to the SP's ACS (SAML 2.0
  Bindings section 3.5).

:meth:`SamlIdp.respond` builds the same answer without HTTP; its ``fault`` (or
:attr:`SamlIdp.fault` for the HTTP endpoints) makes the IdP misbehave: ``unsigned``,
``other_key`` (signed by a key the metadata does not name, its certificate in ``KeyInfo``),
``wrong_audience``, ``wrong_recipient``, ``wrong_destination``, ``expired``,
``wrong_in_response_to``, ``wrong_issuer``, ``response_signed_only`` (the ``<Response>`` signed,
the assertion not), ``tampered`` (the signed assertion's NameID changed afterwards), ``sha1``
(signed with RSA-SHA1), ``wrapped`` and ``wrapped_new_id`` (XML Signature Wrapping: a forged
assertion for another user carrying the signature, the signed original moved inside its
``ds:Signature`` as a ``ds:Object``; with the original's ``ID`` or a new one), ``denied`` (a
``Responder`` status, no assertion), ``transient`` (a transient NameID). Otherwise it signs
the assertion with RSA-SHA256.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import time_machine
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.config import IdPConfig
from saml2.metadata import create_metadata_string
from saml2.pack import http_form_post_message
from saml2.saml import (
    NAME_FORMAT_URI,
    NAMEID_FORMAT_EMAILADDRESS,
    NAMEID_FORMAT_PERSISTENT,
    NAMEID_FORMAT_TRANSIENT,
    NameID,
)
from saml2.samlp import STATUS_RESPONDER
from saml2.server import Server
from saml2.xmldsig import DIGEST_SHA1, DIGEST_SHA256, SIG_RSA_SHA1, SIG_RSA_SHA256

FAULTS = (
    "unsigned",
    "other_key",
    "wrong_audience",
    "wrong_recipient",
    "wrong_destination",
    "expired",
    "wrong_in_response_to",
    "wrong_issuer",
    "response_signed_only",
    "tampered",
    "sha1",
    "wrapped",
    "wrapped_new_id",
    "denied",
    "transient",
)


def make_key_pair(directory: Path, name: str, common_name: str) -> tuple[Path, Path]:
    """An RSA-2048 key and a self-signed certificate valid for a year, as PEM files."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = directory / f"{name}.key", directory / f"{name}.crt"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


@dataclass
class User:
    """Who the IdP signs in: ``name_id`` in the emailAddress format, and the attributes."""

    email: str = "ada@saml.example"
    #: the NameID: ``email`` in the emailAddress format unless ``persistent_id`` is set
    persistent_id: str | None = None
    attributes: dict[str, list[str]] = field(
        default_factory=lambda: {
            "mail": ["ada@saml.example"],
            "displayName": ["Ada Lovelace"],
            "groups": ["engineering", "admins"],
        }
    )


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _server(base: str, entity_id: str, key_file: Path, cert_file: Path) -> Server:
    config = IdPConfig()
    config.load(
        {
            "entityid": entity_id,
            "xmlsec_binary": "/usr/bin/xmlsec1",
            "key_file": str(key_file),
            "cert_file": str(cert_file),
            "accepted_time_diff": 60,
            "allow_unknown_attributes": True,
            "service": {
                "idp": {
                    "name": "Test IdP",
                    "endpoints": {
                        "single_sign_on_service": [
                            (f"{base}/sso/redirect", BINDING_HTTP_REDIRECT),
                            (f"{base}/sso/post", BINDING_HTTP_POST),
                        ]
                    },
                    "name_id_format": [
                        NAMEID_FORMAT_EMAILADDRESS,
                        NAMEID_FORMAT_PERSISTENT,
                        NAMEID_FORMAT_TRANSIENT,
                    ],
                    "sign_response": False,
                    "sign_assertion": True,
                    "want_authn_requests_signed": False,
                    "policy": {
                        "default": {
                            "lifetime": {"minutes": 5},
                            "attribute_restrictions": None,
                            "name_form": NAME_FORMAT_URI,
                        }
                    },
                }
            },
            "metadata": {},
        }
    )
    return Server(config=config)


class SamlIdp:
    """The IdP (see the module's doc). ``SamlIdp()`` starts it; :meth:`close` stops it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="saml-idp-")
        directory = Path(self._dir.name)
        self._httpd = make_server(host, 0, self._wsgi, server_class=_ThreadingServer, handler_class=_Quiet)
        self.base = f"http://{host}:{self._httpd.server_port}"
        self.entity_id = f"{self.base}/metadata"
        self.key_file, self.cert_file = make_key_pair(directory, "idp", "test-idp")
        self.other_key_file, self.other_cert_file = make_key_pair(directory, "other", "test-idp")
        self.server = _server(self.base, self.entity_id, self.key_file, self.cert_file)
        #: an IdP with the same entity id whose key the SP never saw
        self.impostor = _server(self.base, self.entity_id, self.other_key_file, self.other_cert_file)
        self.user = User()
        self.fault: str | None = None
        #: every SAMLResponse sent (base64), newest last
        self.sent: list[str] = []
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._dir.cleanup()

    # --- metadata ---------------------------------------------------------------------------

    def metadata(self, valid_until: str | None = None, *, post_only: bool = False) -> str:
        """The IdP's metadata XML (``valid_until``: an ISO 8601 instant for ``validUntil``;
        ``post_only``: no HTTP-Redirect SingleSignOnService)."""
        xml = create_metadata_string(None, config=self.server.config, valid=None, sign=False).decode()
        # the prefixes IdPs publish (ElementTree writes ns0:, ns1:...)
        for prefix, name in (("ns0", "md"), ("ns1", "alg"), ("ns2", "ds")):
            xml = xml.replace(f"<{prefix}:", f"<{name}:").replace(f"</{prefix}:", f"</{name}:")
            xml = xml.replace(f"xmlns:{prefix}=", f"xmlns:{name}=")
        xml = '<?xml version="1.0" encoding="UTF-8"?>\n' + xml
        if post_only:
            xml = re.sub(r'<md:SingleSignOnService Binding="[^"]+HTTP-Redirect"[^>]*/>', "", xml)
        if valid_until:
            xml = re.sub(
                r"<md:EntityDescriptor ", f'<md:EntityDescriptor validUntil="{valid_until}" ', xml, count=1
            )
        return xml

    def trust_sp(self, sp_metadata_xml: str) -> None:
        """Load an SP's metadata (the ACS URL its responses go to)."""
        for server in (self.server, self.impostor):
            server.metadata.load("inline", sp_metadata_xml)

    # --- single sign-on ---------------------------------------------------------------------

    def respond(
        self,
        saml_request: str,
        binding: str = BINDING_HTTP_REDIRECT,
        relay_state: str = "",
        fault: str | None = None,
    ) -> tuple[str, str, str]:
        """Answer an AuthnRequest as the IdP would: ``(acs_url, SAMLResponse, RelayState)``."""
        if fault not in (None, *FAULTS):
            raise ValueError(f"unknown fault {fault!r}")
        request = self.server.parse_authn_request(saml_request, binding).message
        sp_entity_id = request.issuer.text
        acs_url = (
            request.assertion_consumer_service_url
            or self.server.metadata.assertion_consumer_service(sp_entity_id, BINDING_HTTP_POST)[0]["location"]
        )
        server = self.impostor if fault == "other_key" else self.server
        in_response_to = "id-not-the-request" if fault == "wrong_in_response_to" else request.id
        destination = f"{acs_url}-elsewhere" if fault == "wrong_destination" else acs_url
        kwargs: dict[str, Any] = {}
        if fault == "wrong_recipient":
            kwargs["farg"] = Server.update_farg(in_response_to, "https://sp.elsewhere.example/acs")
        if fault == "transient":
            name_id = NameID(
                format=NAMEID_FORMAT_TRANSIENT, text="_" + base64.b16encode(os.urandom(8)).decode()
            )
        elif self.user.persistent_id:
            name_id = NameID(format=NAMEID_FORMAT_PERSISTENT, text=self.user.persistent_id)
        else:
            name_id = NameID(format=NAMEID_FORMAT_EMAILADDRESS, text=self.user.email)
        args = {
            "identity": dict(self.user.attributes),
            "in_response_to": in_response_to,
            "destination": destination,
            "sp_entity_id": sp_entity_id,
            "name_id": name_id,
            "authn": {"class_ref": "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"},
            "sign_assertion": fault not in ("unsigned", "response_signed_only"),
            "sign_response": fault == "response_signed_only",
            "sign_alg": SIG_RSA_SHA1 if fault == "sha1" else SIG_RSA_SHA256,
            "digest_alg": DIGEST_SHA1 if fault == "sha1" else DIGEST_SHA256,
        }
        if fault == "wrong_issuer":
            args["issuer"] = self._issuer("https://idp.elsewhere.example/metadata")
        policy = server.config.getattr("policy", "idp")
        if fault == "wrong_audience":
            original = policy.conditions

            def conditions(_sp_entity_id: str) -> Any:
                return original("https://sp.elsewhere.example/metadata")

            policy.conditions = conditions
        if fault == "denied":  # the IdP refuses the user: a Responder/RequestDenied status
            error = server.create_error_response(
                request.id, acs_url, (STATUS_RESPONDER, "The user is not assigned to this application")
            )
            self.sent.append(base64.b64encode(str(error).encode()).decode())
            return acs_url, self.sent[-1], relay_state
        try:
            if fault == "expired":  # issued 10 minutes ago, valid for 5
                with time_machine.travel(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10), tick=True):
                    response = server.create_authn_response(**args, **kwargs)
            else:
                response = server.create_authn_response(**args, **kwargs)
        finally:
            policy.__dict__.pop("conditions", None)
        xml = str(response)
        if fault == "tampered":  # changed after signing: the digest no longer matches
            xml = xml.replace(self.user.email, "eve@saml.example")
        if fault in ("wrapped", "wrapped_new_id"):
            xml = _wrap(xml, self.user.email, new_id=fault == "wrapped_new_id")
        self.sent.append(base64.b64encode(xml.encode()).decode())
        return acs_url, self.sent[-1], relay_state

    def _issuer(self, entity_id: str):
        from saml2.saml import NAMEID_FORMAT_ENTITY, Issuer

        return Issuer(text=entity_id, format=NAMEID_FORMAT_ENTITY)

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metadata":
            start_response("200 OK", [("Content-Type", "application/samlmetadata+xml")])
            return [self.metadata().encode()]
        if path in ("/sso/redirect", "/sso/post"):
            if path == "/sso/post":
                size = int(environ.get("CONTENT_LENGTH") or 0)
                params = parse_qs(environ["wsgi.input"].read(size).decode())
                binding = BINDING_HTTP_POST
            else:
                params = parse_qs(environ.get("QUERY_STRING", ""))
                binding = BINDING_HTTP_REDIRECT
            saml_request = params.get("SAMLRequest", [""])[0]
            relay_state = params.get("RelayState", [""])[0]
            try:
                acs_url, saml_response, relay_state = self.respond(
                    saml_request, binding, relay_state, self.fault
                )
            except Exception as exc:  # a test IdP: say what went wrong
                start_response("400 Bad Request", [("Content-Type", "text/plain")])
                return [f"IdP error: {exc!r}".encode()]
            page = http_form_post_message(
                base64.b64decode(saml_response).decode(), acs_url, relay_state=relay_state, typ="SAMLResponse"
            )
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [page["data"].encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]


def _wrap(xml: str, email: str, *, new_id: bool) -> str:
    """XML Signature Wrapping (Somorovsky et al., USENIX Security 2012): the signed assertion is
    hidden inside the forged one's signature, the forged one (another NameID) where the SP reads."""
    start = xml.index("<ns1:Assertion ")
    end = xml.index("</ns1:Assertion>") + len("</ns1:Assertion>")
    original = xml[start:end]
    forged = original.replace(email, "eve@saml.example")
    if new_id:
        forged = re.sub(r'^(<ns1:Assertion [^>]*?ID=")([^"]+)"', r'\1id-forged"', forged, count=1)
    close = forged.index("</ns2:Signature>")
    forged = forged[:close] + f"<ns2:Object>{original}</ns2:Object>" + forged[close:]
    return xml[:start] + forged + xml[end:]


def add_saml_connection(session: Any, tenant_id: Any, config: dict) -> Any:
    """A SAML connection ``Test IdP`` of the tenant with ``config``, written and committed through
    ``session``, with ``saml.example`` (the IdP's users' domain) verified by the tenant and sent to
    it (the login pipeline trusts an IdP's address only there); its id."""
    from saas.db import utcnow
    from saas.identity.models import SsoConnection, VerifiedDomain

    session.add(VerifiedDomain(tenant_id=tenant_id, domain="saml.example", token="t", verified_at=utcnow()))
    row = SsoConnection(
        tenant_id=tenant_id, type="saml", name="Test IdP", config=config, domains=["saml.example"]
    )
    session.add(row)
    session.commit()
    return row.id


# --- fixtures: import them into the test module (``from tests.saml_idp import idp``) ------------


@pytest.fixture(scope="module")
def idp() -> Iterator[SamlIdp]:
    """The module's IdP, started once and stopped at the module's end."""
    server = SamlIdp()
    yield server
    server.close()


@pytest.fixture()
def private_urls(app, monkeypatch):
    """``SSO_ALLOW_PRIVATE_URLS`` for this test: the test IdP is on http://127.0.0.1."""
    from saas.services import services
    from tests.helpers import replace_services

    settings = services(app).settings.with_overrides(sso_allow_private_urls=True)
    replace_services(monkeypatch, app, settings=settings)
