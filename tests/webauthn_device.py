"""A software passkey for the API tests: ``soft_webauthn.SoftWebauthnDevice`` with the flags a
test chooses (UV, BE/BS) and the JSON shapes of WebAuthn Level 2 section 5.1 (base64url members,
as a browser's ``PublicKeyCredential.toJSON()`` gives them)."""

from __future__ import annotations

import base64
import json
from struct import pack
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fido2 import cbor
from fido2.cose import ES256
from fido2.utils import sha256
from soft_webauthn import SoftWebauthnDevice

ORIGIN = "http://localhost:8000"  # the test settings' SAAS_ISSUER

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def creation_options(public_key: dict) -> dict:
    """The library's options JSON as ``SoftWebauthnDevice.create`` takes them (bytes members)."""
    pk = dict(public_key)
    pk["challenge"] = unb64u(pk["challenge"])
    pk["user"] = {**pk["user"], "id": unb64u(pk["user"]["id"])}
    return {"publicKey": pk}


def request_options(public_key: dict) -> dict:
    return {"publicKey": {**public_key, "challenge": unb64u(public_key["challenge"])}}


class Passkey(SoftWebauthnDevice):
    """One credential. ``uv``: the authenticator verifies the user; ``synced``: BE and BS set."""

    def __init__(self, *, uv: bool = True, synced: bool = False) -> None:
        super().__init__()
        self.uv = uv
        self.synced = synced

    def _flags(self, base: int) -> int:
        flags = base | UP
        if self.uv:
            flags |= UV
        if self.synced:
            flags |= BE | BS
        return flags

    def register(self, public_key: dict, origin: str = ORIGIN, *, keep_id: bool = False) -> dict:
        """``navigator.credentials.create()``: the RegistrationResponseJSON."""
        options = creation_options(public_key)["publicKey"]
        credential_id = self.credential_id
        self.cred_init(options["rp"]["id"], options["user"]["id"])
        if keep_id and credential_id:
            self.credential_id = credential_id
        client_data = json.dumps(
            {"type": "webauthn.create", "challenge": b64u(options["challenge"]), "origin": origin}
        ).encode()
        cose_key = cbor.encode(ES256.from_cryptography_key(self.private_key.public_key()))
        auth_data = (
            sha256(self.rp_id.encode())
            + bytes([self._flags(AT)])
            + pack(">I", self.sign_count)
            + self.aaguid
            + pack(">H", len(self.credential_id))
            + self.credential_id
            + cose_key
        )
        attestation = cbor.encode({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return {
            "id": b64u(self.credential_id),
            "rawId": b64u(self.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64u(client_data),
                "attestationObject": b64u(attestation),
                "transports": ["internal"],
            },
            "clientExtensionResults": {"credProps": {"rk": True}},
        }

    def sign(
        self,
        public_key: dict,
        origin: str = ORIGIN,
        *,
        rp_id: str | None = None,
        counter: int | None = None,
        user_handle: bool = True,
    ) -> dict:
        """``navigator.credentials.get()``: the AuthenticationResponseJSON. ``counter`` forces
        the signature counter (a clone replays an old one); ``rp_id`` signs for another RP."""
        options = request_options(public_key)["publicKey"]
        if counter is None:
            self.sign_count += 1
            counter = self.sign_count
        client_data = json.dumps(
            {"type": "webauthn.get", "challenge": b64u(options["challenge"]), "origin": origin}
        ).encode()
        auth_data = sha256((rp_id or self.rp_id).encode()) + bytes([self._flags(0)]) + pack(">I", counter)
        signature = self.private_key.sign(auth_data + sha256(client_data), ec.ECDSA(hashes.SHA256()))
        response: dict[str, Any] = {
            "clientDataJSON": b64u(client_data),
            "authenticatorData": b64u(auth_data),
            "signature": b64u(signature),
        }
        if user_handle:
            response["userHandle"] = b64u(self.user_handle)
        return {
            "id": b64u(self.credential_id),
            "rawId": b64u(self.credential_id),
            "type": "public-key",
            "response": response,
            "clientExtensionResults": {},
        }
