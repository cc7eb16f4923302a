"""Verified domains: a tenant proves it controls a DNS domain by publishing a TXT record.

The flow (docs/auth.md, "Verified domains"):

1. :func:`claim_domain` normalises the name (:func:`normalize_domain`) and stores a pending
   claim with a random token; the answer is the record to publish,
   ``_saas-challenge.<domain> TXT "saas-domain-verification=<token>"`` (RFC 1035 section 3.3.14).
2. :func:`verify_domain` looks the TXT record up with dnspython, through the resolvers of
   ``DNS_NAMESERVERS`` (the system resolver by default), and marks the claim verified when one
   of the record's strings is exactly the expected value.

A domain belongs to at most one tenant: a domain another tenant verified cannot be claimed or
verified (409 ``domain_taken``); of several pending claims, the first to verify wins (the
partial unique index of :class:`~saas.identity.models.VerifiedDomain`, race-safe). Re-checking
verified domains later (the record removed, the domain sold) is not done yet.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import uuid
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.name
import dns.nameserver
import dns.resolver
import idna
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from saas.actions import ActionContext
from saas.audit import AuditAction
from saas.db import tenant_row, tenant_rows, utcnow
from saas.errors import AppError, Conflict, ErrorCode, ServiceUnavailable, ValidationError
from saas.identity.models import VerifiedDomain
from saas.security import random_token

CHALLENGE_PREFIX = "_saas-challenge"
VALUE_PREFIX = "saas-domain-verification="
#: RFC 1035 section 2.3.4: a name is at most 255 octets on the wire, 253 characters as text
MAX_NAME = 253
MAX_LABEL = 63
_LDH = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")


class DomainNotVerified(AppError):
    status, code, title = 422, ErrorCode.DOMAIN_NOT_VERIFIED, "Domain not verified"


@dataclass(frozen=True)
class Challenge:
    """The TXT record a claim asks for: ``name`` (no trailing dot) and ``value``."""

    name: str
    value: str
    type: str = "TXT"


def _invalid(message: str) -> ValidationError:
    return ValidationError({"domain": [message]})


def normalize_domain(raw: Any) -> str:
    """A domain as stored: lowercase A-labels (IDNA 2008 with UTS 46 mapping, RFC 5891), no
    trailing dot, at least two labels, each 1..63 letters, digits or inner hyphens (RFC 1035
    section 2.3.1, RFC 5890), a top-level label that is not all digits, and short enough that
    ``_saas-challenge.<domain>`` fits in 253 characters.

    Raises:
        ValidationError: 422 with ``errors.domain``: not a string, an IP address, a single
            label, too long, or a bad label.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise _invalid("Expected a domain name such as example.com.")
    text = raw.strip().rstrip(".")
    if len(text) > 4 * MAX_NAME:  # before any IDNA work on a huge string
        raise _invalid(f"Too long: a domain name has at most {MAX_NAME} characters.")
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        pass
    else:
        raise _invalid("An IP address is not a domain name.")
    if "." not in text:
        raise _invalid("A domain needs at least two labels (example.com, not example).")
    try:
        ascii_name = idna.encode(text, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise _invalid(f"Not a valid internationalised domain name: {exc}.") from None
    labels = ascii_name.split(".")
    if len(labels) < 2:
        raise _invalid("A domain needs at least two labels (example.com, not example).")
    for label in labels:
        if not label or len(label) > MAX_LABEL or not _LDH.match(label):
            raise _invalid(f"Bad label {label!r}: 1 to 63 letters, digits or inner hyphens.")
    if labels[-1].isdigit():
        raise _invalid("The top-level label cannot be all digits.")
    if len(ascii_name) + len(CHALLENGE_PREFIX) + 1 > MAX_NAME:
        raise _invalid(
            f"Too long: {CHALLENGE_PREFIX}.<domain> must fit in {MAX_NAME} characters "
            f"(the domain in {MAX_NAME - len(CHALLENGE_PREFIX) - 1})."
        )
    return ascii_name


def challenge_for(domain: VerifiedDomain) -> Challenge:
    """The record ``domain``'s claim is proved with."""
    return Challenge(name=f"{CHALLENGE_PREFIX}.{domain.domain}", value=f"{VALUE_PREFIX}{domain.token}")


def to_public(domain: VerifiedDomain) -> dict[str, Any]:
    """The API shape: ``id``, ``domain``, ``status`` (``pending`` | ``verified``), ``verified_at``,
    ``created_at`` and ``record`` (``type``, ``name``, ``value``: what to publish)."""
    c = challenge_for(domain)
    return {
        "id": domain.id,
        "domain": domain.domain,
        "status": "verified" if domain.verified_at else "pending",
        "verified_at": domain.verified_at,
        "created_at": domain.created_at,
        "record": {"type": c.type, "name": c.name, "value": c.value},
    }


def list_domains(session: Session, tenant_id: uuid.UUID) -> list[VerifiedDomain]:
    """The tenant's domains, oldest first."""
    return tenant_rows(session, VerifiedDomain, tenant_id, VerifiedDomain.created_at, VerifiedDomain.domain)


def get_domain(session: Session, tenant_id: uuid.UUID, domain_id: uuid.UUID) -> VerifiedDomain:
    """The tenant's domain ``domain_id``.

    Raises:
        NotFound: no such domain in this tenant (another tenant's is the same 404).
    """
    return tenant_row(session, VerifiedDomain, tenant_id, domain_id, noun="domain")


def _verified_elsewhere(session: Session, tenant_id: uuid.UUID, domain: str) -> bool:
    return (
        session.scalar(
            select(VerifiedDomain.id).where(
                VerifiedDomain.domain == domain,
                VerifiedDomain.verified_at.is_not(None),
                VerifiedDomain.tenant_id != tenant_id,
            )
        )
        is not None
    )


def _taken(domain: str) -> Conflict:
    return Conflict(
        f"{domain} is verified by another tenant.", code=ErrorCode.DOMAIN_TAKEN, title="Domain taken"
    )


def claim_domain(ctx: ActionContext, tenant_id: uuid.UUID, raw_domain: Any) -> VerifiedDomain:
    """Claim a domain for the context's tenant: a pending row with a new token (256 random bits),
    audited ``domain.claimed``.

    Raises:
        ValidationError: 422, the name is not a domain (:func:`normalize_domain`).
        Conflict: ``domain_already_claimed`` (this tenant has it, pending or verified),
            ``domain_taken`` (another tenant has verified it).
    """
    session = ctx.session
    domain = normalize_domain(raw_domain)
    if _verified_elsewhere(session, tenant_id, domain):
        raise _taken(domain)
    row = VerifiedDomain(
        tenant_id=tenant_id,
        domain=domain,
        token=random_token(32),
        created_by=ctx.principal.user_id if ctx.principal else None,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        raise Conflict(
            f"This tenant has claimed {domain} already.",
            code=ErrorCode.DOMAIN_ALREADY_CLAIMED,
            title="Domain already claimed",
        ) from None
    ctx.record(
        AuditAction.DOMAIN_CLAIMED,
        tenant_id=tenant_id,
        target_type="domain",
        target_id=row.id,
        data={"domain": domain},
    )
    return row


def resolver_for(nameservers: tuple[tuple[str, int], ...], timeout: float) -> dns.resolver.Resolver:
    """A dnspython resolver on ``nameservers`` ((address, port) pairs; empty: the system's
    ``/etc/resolv.conf``), answering within ``timeout`` seconds in all."""
    resolver = dns.resolver.Resolver(configure=not nameservers)
    if nameservers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers]
    resolver.lifetime = timeout
    resolver.timeout = timeout
    resolver.cache = None
    return resolver


def txt_values(resolver: dns.resolver.Resolver, name: str) -> list[str]:
    """The TXT records of ``name``, each its character-strings joined (RFC 7208 section 3.3
    reads a long value split into 255-octet strings the same way). Empty: no such name or no
    TXT record (NXDOMAIN, NODATA).

    Raises:
        ServiceUnavailable: ``dns_unavailable``, the resolvers timed out or all failed (SERVFAIL).
    """
    try:
        answer = resolver.resolve(dns.name.from_text(name), "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise ServiceUnavailable(
            "The DNS resolvers did not answer; nothing changed. Try again later.",
            code=ErrorCode.DNS_UNAVAILABLE,
            title="DNS unavailable",
        ) from exc
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]


def verify_domain(
    ctx: ActionContext, domain: VerifiedDomain, resolver: dns.resolver.Resolver
) -> VerifiedDomain:
    """Look up the claim's TXT record and mark the domain verified (``verified_at`` now, audited
    ``domain.verified``) when one record is exactly the expected value. A verified domain is
    returned as it is.

    Raises:
        DomainNotVerified: 422 ``domain_not_verified``, no record or none with the value; the
            problem carries the ``record`` expected and the values ``found``. Nothing changes.
        Conflict: ``domain_taken``, another tenant verified the domain first.
        ServiceUnavailable: ``dns_unavailable`` (:func:`txt_values`); nothing changes.
    """
    if domain.verified_at is not None:
        return domain
    session = ctx.session
    if _verified_elsewhere(session, domain.tenant_id, domain.domain):
        raise _taken(domain.domain)
    expected = challenge_for(domain)
    found = txt_values(resolver, expected.name)
    if not any(hmac.compare_digest(v.encode(), expected.value.encode()) for v in found):
        raise DomainNotVerified(
            f"No TXT record {expected.name} with the value {expected.value} was found."
            + (" The records found have other values." if found else ""),
            extra={
                "record": {"type": expected.type, "name": expected.name, "value": expected.value},
                "found": [v[:255] for v in found[:10]],
            },
        )
    try:
        with session.begin_nested():
            domain.verified_at = utcnow()
            session.flush()
    except IntegrityError:
        session.refresh(domain)
        raise _taken(domain.domain) from None
    ctx.record(
        AuditAction.DOMAIN_VERIFIED,
        tenant_id=domain.tenant_id,
        target_type="domain",
        target_id=domain.id,
        data={"domain": domain.domain},
    )
    return domain


def delete_domain(ctx: ActionContext, domain: VerifiedDomain) -> None:
    """Delete the claim (pending or verified), audited ``domain.deleted``."""
    data = {"domain": domain.domain, "was_verified": domain.verified_at is not None}
    ctx.session.delete(domain)
    ctx.session.flush()
    ctx.record(
        AuditAction.DOMAIN_DELETED,
        tenant_id=domain.tenant_id,
        target_type="domain",
        target_id=domain.id,
        data=data,
    )
