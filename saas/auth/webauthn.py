"""Passkeys and security keys (W3C Web Authentication Level 2) with the ``webauthn`` library.

* Relying party: the RP id is ``WEBAUTHN_RP_ID``, else the host of ``SAAS_ISSUER``; the origins a
  ceremony may come from are ``WEBAUTHN_ORIGINS``, else the issuer's origin (section 5.1.4.1
  and 13.4.9: the RP id is a registrable suffix of the origin's host, checked by the browser).
* Ceremonies: every options answer carries a ``ceremony_id``; its 256-bit challenge lives in
  Redis for :data:`CHALLENGE_TTL_SECONDS` under the SHA-256 of that id, with its purpose
  (``register``, ``login``, ``mfa``) and, except for a passwordless login without an email,
  the user it is for. It is taken with ``GETDEL``: single use, whatever the outcome
  (section 13.4.3).
* Stored (:class:`~saas.auth.models.WebAuthnCredential`): the credential id, the COSE public key,
  the signature counter, AAGUID, transports, the BE/BS flags (section 6.1), a name. No
  attestation statement is asked for (``attestation: none``).
* Counters (section 6.1.1, section 7.2 step 21): when the stored or the presented counter is
  non-zero and the presented one is not greater, the authenticator may be cloned: the
  assertion is refused, the credential disabled (it signs in no more until its owner deletes
  it) and ``webauthn.clone_detected`` audited. The check runs after the signature verified,
  so only a holder of the private key can trigger it.
* ``amr`` (RFC 8176 section 2): ``hwk`` for a device-bound key, ``swk`` for a synced one (the
  backup-eligible flag, section 6.1.3), ``user`` (user presence is always required), and
  ``mfa`` when the authenticator verified the user (UV: possession plus a PIN or biometric).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import webauthn
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url, options_to_json
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from saas.actions import ActionContext
from saas.audit import AuditAction
from saas.auth.accounts import audit_account_event
from saas.auth.errors import MfaUnavailable
from saas.auth.models import WebAuthnCredential
from saas.db import EarlyCommit, commit_early, utcnow
from saas.errors import AppError, Conflict, ErrorCode, NotFound
from saas.identity.models import User
from saas.security import random_token, token_hash
from saas.services import services

#: how long a ceremony's challenge lives (also the ``timeout`` given to the browser, in ms)
CHALLENGE_TTL_SECONDS = 300
_CEREMONY_PREFIX = "saas:auth:webauthn:ceremony:"
_TRANSPORTS = frozenset(t.value for t in AuthenticatorTransport)
RP_NAME = "SaaS"


class WebAuthnChallengeInvalid(AppError):
    status, code, title = 400, ErrorCode.WEBAUTHN_CHALLENGE_INVALID, "Invalid WebAuthn ceremony"


class WebAuthnRegistrationFailed(AppError):
    status, code, title = 400, ErrorCode.WEBAUTHN_REGISTRATION_FAILED, "Passkey registration failed"


class WebAuthnFailed(AppError):
    status, code, title = 401, ErrorCode.WEBAUTHN_FAILED, "Passkey sign-in failed"


class WebAuthnCredentialExists(Conflict):
    code, title = ErrorCode.WEBAUTHN_CREDENTIAL_EXISTS, "Passkey already registered"


# --- relying party -------------------------------------------------------------------------------


def rp_id() -> str:
    """The RP id (section 5.1.4.1): ``WEBAUTHN_RP_ID``, else the host of ``SAAS_ISSUER``."""
    settings = services().settings
    return settings.webauthn_rp_id or (urlsplit(settings.issuer).hostname or "localhost")


def origins() -> list[str]:
    """The origins accepted in ``clientDataJSON`` (section 7.1 step 9): ``WEBAUTHN_ORIGINS``,
    else the origin (scheme, host, port) of ``SAAS_ISSUER``."""
    settings = services().settings
    if settings.webauthn_origins:
        return list(settings.webauthn_origins)
    parts = urlsplit(settings.issuer)
    return [f"{parts.scheme}://{parts.netloc}"]


def user_handle(user_id: uuid.UUID) -> bytes:
    """The user handle (section 14.6.1: opaque, no personal data): the user id's 16 bytes."""
    return user_id.bytes


# --- ceremonies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ceremony:
    """What a ``ceremony_id`` stands for (taken from Redis, so used up)."""

    purpose: str  # register | login | mfa
    challenge: bytes
    user_id: uuid.UUID | None


def _start(purpose: str, challenge: bytes, user_id: uuid.UUID | None) -> str:
    ceremony_id = random_token()
    value = {
        "purpose": purpose,
        "challenge": bytes_to_base64url(challenge),
        "user_id": str(user_id) if user_id else None,
    }
    try:
        services().redis.set(
            _CEREMONY_PREFIX + token_hash(ceremony_id), json.dumps(value), ex=CHALLENGE_TTL_SECONDS
        )
    except RedisError:
        raise MfaUnavailable("Passkeys cannot be used right now; retry.") from None
    return ceremony_id


def take_ceremony(ceremony_id: str | None, purpose: str, user_id: uuid.UUID | None = None) -> Ceremony:
    """Use up the ceremony (``GETDEL``): it must exist, be of ``purpose`` and, when ``user_id``
    is given, be that user's.

    Raises:
        WebAuthnChallengeInvalid: 400, unknown, expired, used, another purpose or another user.
        MfaUnavailable: 503, Redis cannot be reached.
    """
    if not isinstance(ceremony_id, str) or not 0 < len(ceremony_id) <= 200:
        raise WebAuthnChallengeInvalid("The ceremony_id is missing.")
    try:
        raw = services().redis.getdel(_CEREMONY_PREFIX + token_hash(ceremony_id))
    except RedisError:
        raise MfaUnavailable("Passkeys cannot be used right now; retry.") from None
    data = json.loads(raw) if raw else None
    if data is None or data.get("purpose") != purpose:
        raise WebAuthnChallengeInvalid("The ceremony is unknown, has expired or was used already.")
    owner = uuid.UUID(data["user_id"]) if data.get("user_id") else None
    if user_id is not None and owner != user_id:
        raise WebAuthnChallengeInvalid("The ceremony is unknown, has expired or was used already.")
    return Ceremony(purpose, base64url_to_bytes(data["challenge"]), owner)


def _options(ceremony_id: str, options: Any) -> dict[str, Any]:
    return {"ceremony_id": ceremony_id, "publicKey": json.loads(options_to_json(options))}


def user_credentials(
    session: Session, user_id: uuid.UUID, *, usable: bool = False
) -> list[WebAuthnCredential]:
    query = select(WebAuthnCredential).where(WebAuthnCredential.user_id == user_id)
    if usable:
        query = query.where(WebAuthnCredential.disabled_at.is_(None))
    return list(session.scalars(query.order_by(WebAuthnCredential.created_at)))


def has_passkey(session: Session, user_id: uuid.UUID) -> bool:
    """Whether the user has a usable (not disabled) credential."""
    return (
        session.scalars(
            select(WebAuthnCredential.id).where(
                WebAuthnCredential.user_id == user_id, WebAuthnCredential.disabled_at.is_(None)
            )
        ).first()
        is not None
    )


def _descriptor(row: WebAuthnCredential) -> PublicKeyCredentialDescriptor:
    transports = [AuthenticatorTransport(t) for t in (row.transports or []) if t in _TRANSPORTS]
    return PublicKeyCredentialDescriptor(id=row.credential_id, transports=transports or None)


# --- registration (section 7.1) ------------------------------------------------------------------


def registration_options(session: Session, user: User) -> dict[str, Any]:
    """``{"ceremony_id", "publicKey": PublicKeyCredentialCreationOptionsJSON}`` (section 5.4):
    ES256/EdDSA/RS256..., ``attestation: none``, ``residentKey`` and ``userVerification``
    preferred, the user's credentials in ``excludeCredentials`` (section 5.4.3), and the
    ``credProps`` extension."""
    challenge = webauthn.helpers.generate_challenge()
    options = webauthn.generate_registration_options(
        rp_id=rp_id(),
        rp_name=RP_NAME,
        user_id=user_handle(user.id),
        user_name=user.email,
        user_display_name=user.name or user.email,
        challenge=challenge,
        timeout=CHALLENGE_TTL_SECONDS * 1000,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
        exclude_credentials=[_descriptor(c) for c in user_credentials(session, user.id)],
    )
    out = _options(_start("register", challenge, user.id), options)
    # the credProps extension (section 10.4) tells whether a resident key was made
    out["publicKey"]["extensions"] = {"credProps": True}
    return out


def register(
    ctx: ActionContext, user: User, ceremony_id: str, credential: dict[str, Any], name: str
) -> WebAuthnCredential:
    """Verify an attestation (section 7.1, steps 5-26) and store the credential; audited as
    ``webauthn.registered`` in each of the user's tenants.

    ``credential``: the ``RegistrationResponseJSON`` of ``navigator.credentials.create()``
    (``id``, ``rawId``, ``type``, ``response.clientDataJSON``/``attestationObject``, base64url).

    Raises:
        WebAuthnChallengeInvalid: 400, the ceremony is unknown, used or another user's.
        WebAuthnRegistrationFailed: 400, the attestation does not verify (origin, RP id,
            challenge, flags, format).
        WebAuthnCredentialExists: 409, the credential id is registered already (to anyone).
    """
    session = ctx.session
    ceremony = take_ceremony(ceremony_id, "register", user.id)
    try:
        verified = webauthn.verify_registration_response(
            credential=credential,
            expected_challenge=ceremony.challenge,
            expected_rp_id=rp_id(),
            expected_origin=origins(),
        )
    except (WebAuthnException, ValueError, KeyError, TypeError, AttributeError, binascii.Error) as err:
        raise WebAuthnRegistrationFailed(f"The passkey could not be verified: {err}") from None
    existing = session.scalars(
        select(WebAuthnCredential.id).where(WebAuthnCredential.credential_id == verified.credential_id)
    ).first()
    if existing is not None:
        raise WebAuthnCredentialExists("This passkey is registered already.")
    response = credential.get("response") if isinstance(credential.get("response"), dict) else {}
    transports = [t for t in (response.get("transports") or []) if isinstance(t, str) and t in _TRANSPORTS]
    extensions = credential.get("clientExtensionResults")
    props = extensions.get("credProps") if isinstance(extensions, dict) else None
    row = WebAuthnCredential(
        user_id=user.id,
        credential_id=verified.credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        aaguid=verified.aaguid,
        name=name,
        transports=transports[:8],
        discoverable=bool(isinstance(props, dict) and props.get("rk") is True),
        backup_eligible=verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE,
        backed_up=verified.credential_backed_up,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    audit_account_event(
        session,
        user.id,
        AuditAction.WEBAUTHN_REGISTERED,
        {"credential": str(row.id), "name": name, "aaguid": row.aaguid},
        actor=ctx.actor,
    )
    return row


def to_public(row: WebAuthnCredential) -> dict[str, Any]:
    """The public parts of a credential (never the key): what the list and the export show."""
    return {
        "id": row.id,
        "name": row.name,
        "created_at": row.created_at,
        "last_used_at": row.last_used_at,
        "aaguid": row.aaguid,
        "transports": list(row.transports or []),
        "discoverable": row.discoverable,
        "backup_eligible": row.backup_eligible,
        "backed_up": row.backed_up,
        "disabled": row.disabled_at is not None,
    }


def delete_credential(ctx: ActionContext, user: User, credential_id: str) -> None:
    """Delete one of the user's credentials; audited as ``webauthn.deleted``.

    Raises:
        NotFound: 404, no such credential of this user (another user's is the same answer).
    """
    try:
        cid = uuid.UUID(credential_id)
    except ValueError:
        raise NotFound("No such passkey.") from None
    row = ctx.session.get(WebAuthnCredential, cid)
    if row is None or row.user_id != user.id:
        raise NotFound("No such passkey.")
    ctx.session.delete(row)
    ctx.session.flush()
    audit_account_event(
        ctx.session,
        user.id,
        AuditAction.WEBAUTHN_DELETED,
        {"credential": str(cid), "name": row.name},
        actor=ctx.actor,
    )


# --- authentication (section 7.2) ----------------------------------------------------------------


def _unknown_account(email: str) -> uuid.UUID:
    """A stable id that no user has, for an email without an account: a passwordless ceremony
    bound to it fails at verification like one bound to an account whose passkey is not used."""
    key = hashlib.sha256(services().settings.secret_key.encode() + b"webauthn unknown user").digest()
    return uuid.UUID(bytes=hmac.new(key, email.strip().lower().encode(), hashlib.sha256).digest()[:16])


def authentication_options(
    session: Session, purpose: str, user: User | None = None, email: str | None = None
) -> dict[str, Any]:
    """``{"ceremony_id", "publicKey": PublicKeyCredentialRequestOptionsJSON}`` (section 5.5).

    ``purpose`` ``mfa`` (second factor, ``user`` the one whose login waits): ``allowCredentials``
    lists their passkeys. ``purpose`` ``login`` (passwordless, anyone may ask):
    ``allowCredentials`` is always empty, so only discoverable credentials sign in (section
    5.1.3; the assertion's ``userHandle`` names the user), and the answer is the same whether or
    not ``email`` has an account or passkeys (no enumeration, no credential ids handed out).
    An ``email`` binds the ceremony to its account (``user``), or to an id nobody has when it
    names none: another account's passkey then fails."""
    challenge = webauthn.helpers.generate_challenge()
    allow = (
        [_descriptor(c) for c in user_credentials(session, user.id, usable=True)]
        if purpose == "mfa" and user
        else []
    )
    bound = user.id if user else (_unknown_account(email) if email else None)
    options = webauthn.generate_authentication_options(
        rp_id=rp_id(),
        challenge=challenge,
        timeout=CHALLENGE_TTL_SECONDS * 1000,
        allow_credentials=allow,
        user_verification=UserVerificationRequirement.PREFERRED,
    )
    return _options(_start(purpose, challenge, bound), options)


@dataclass(frozen=True)
class Assertion:
    """A verified assertion: the credential (counter updated), its user, and the ``amr`` it
    proves (RFC 8176)."""

    credential: WebAuthnCredential
    user: User
    user_verified: bool
    amr: list[str]


def amr_for(row: WebAuthnCredential, user_verified: bool) -> list[str]:
    """RFC 8176 section 2: ``swk`` (a synced, backup-eligible key) or ``hwk`` (device-bound),
    ``user`` (presence), ``mfa`` when the user was verified (UV)."""
    amr = ["swk" if row.backup_eligible else "hwk", "user"]
    if user_verified:
        amr.append("mfa")
    return amr


def _decode_id(credential: Any) -> bytes | None:
    if not isinstance(credential, dict):
        return None
    raw = credential.get("rawId") or credential.get("id")
    if not isinstance(raw, str) or not 0 < len(raw) <= 1400:
        return None
    try:
        return base64url_to_bytes(raw)
    except (ValueError, binascii.Error):
        return None


def verify_assertion(session: Session, ceremony: Ceremony, credential: Any) -> Assertion:
    """Verify an assertion (section 7.2) against the ceremony: the credential must be known,
    usable, and the ceremony's user's when it has one; ``userHandle``, when sent, must be the
    credential's user (step 6); origin, RP id hash, challenge, UP flag and signature are
    checked by the library (steps 7-20); the counter here (step 21). Updates the counter,
    last use and BS flag.

    Raises:
        WebAuthnFailed: 401, any failure (the same answer for an unknown credential, another
            user's, a bad signature, a wrong origin or RP id); a known credential's failure is
            audited as ``auth.login_failed`` and committed; a counter that did not grow also
            disables the credential (``webauthn.clone_detected``).
    """
    raw_id = _decode_id(credential)
    row = None
    if raw_id is not None:
        row = session.scalars(
            select(WebAuthnCredential).where(WebAuthnCredential.credential_id == raw_id).with_for_update()
        ).first()
    if row is None or row.disabled_at is not None or (ceremony.user_id and row.user_id != ceremony.user_id):
        raise WebAuthnFailed("The passkey is not known here or cannot sign in.")
    user = session.get(User, row.user_id)
    response = credential.get("response") if isinstance(credential.get("response"), dict) else {}
    handle = response.get("userHandle")
    try:
        handle_ok = not handle or base64url_to_bytes(handle) == user_handle(row.user_id)
        if not handle_ok:
            raise WebAuthnException("the userHandle is not the credential's user")
        verified = webauthn.verify_authentication_response(
            credential=credential,
            expected_challenge=ceremony.challenge,
            expected_rp_id=rp_id(),
            expected_origin=origins(),
            credential_public_key=row.public_key,
            credential_current_sign_count=0,  # the counter is checked below, after the signature
        )
    except (WebAuthnException, ValueError, KeyError, TypeError, AttributeError, binascii.Error) as err:
        _failed(session, row, "webauthn_failed", str(err))
        raise WebAuthnFailed("The passkey's answer does not verify.") from None
    if (verified.new_sign_count > 0 or row.sign_count > 0) and verified.new_sign_count <= row.sign_count:
        row.disabled_at = utcnow()
        audit_account_event(
            session,
            row.user_id,
            AuditAction.WEBAUTHN_CLONE_DETECTED,
            {
                "credential": str(row.id),
                "stored_count": row.sign_count,
                "presented_count": verified.new_sign_count,
            },
        )
        _failed(session, row, "webauthn_clone_detected", None)
        raise WebAuthnFailed(
            "The passkey's signature counter went backwards: it may have been cloned, and is disabled."
        )
    row.sign_count = verified.new_sign_count
    row.last_used_at = utcnow()
    row.backed_up = verified.credential_backed_up
    return Assertion(row, user, verified.user_verified, amr_for(row, verified.user_verified))


def _failed(session: Session, row: WebAuthnCredential, reason: str, detail: str | None) -> None:
    """A known credential's failed assertion counts as a failed sign-in of its account."""
    data: dict[str, Any] = {"reason": reason, "credential": str(row.id)}
    if detail:
        data["detail"] = detail[:200]
    audit_account_event(session, row.user_id, AuditAction.AUTH_LOGIN_FAILED, data)
    commit_early(session, EarlyCommit.SIGN_IN_FAILURE)
