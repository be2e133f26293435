"""The registry of certificates the utility CA issued (table ``pki_certificates``): what, to whom,
valid when, revoked when and why. Every change is audited in the caller's transaction."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from sqlalchemy.engine import Connection

from openami.db.tables import pki_certificates as certs
from openami.errors import Conflict, InvalidInput, NotFound
from openami.security.audit import AuditEntry, record

__all__ = [
    "CertificateRecord",
    "Profile",
    "RevocationReason",
    "find_certificate",
    "fingerprint",
    "list_certificates",
    "mark_revoked",
    "normalize_serial",
    "register",
    "revoked_entries",
]

Details = dict[str, str | int | float | bool | None]


class Profile(StrEnum):
    CA = "ca"
    SERVER = "server"
    CLIENT = "client"
    COMMAND_AUTHORITY = "command-authority"


class RevocationReason(StrEnum):
    """RFC 5280 5.3.1 reasons that make sense for this CA (no certificateHold: revocation is final)."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "key-compromise"
    AFFILIATION_CHANGED = "affiliation-changed"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessation-of-operation"
    PRIVILEGE_WITHDRAWN = "privilege-withdrawn"

    @property
    def flag(self) -> x509.ReasonFlags:
        return x509.ReasonFlags[self.name.lower()]


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    """A registry row: what was issued, to whom, and whether it was revoked."""

    serial: str  # upper-case hex, no leading zeros
    profile: Profile
    subject: str
    common_name: str
    not_before: datetime
    not_after: datetime
    fingerprint: str  # SHA-256 of the DER, lower-case hex
    issued_at: datetime
    revoked_at: datetime | None
    revocation_reason: RevocationReason | None

    def status(self, now: datetime) -> str:
        """``revoked``, ``expired``, ``not-yet-valid`` or ``valid``."""
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.not_after:
            return "expired"
        return "not-yet-valid" if now < self.not_before else "valid"


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, lower-case hex (the form ``system_clients`` stores)."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def normalize_serial(text: str) -> str:
    """Upper-case hex without leading zeros; accepts ``0x``, colons and lower case. InvalidInput otherwise."""
    cleaned = text.strip().removeprefix("0x").removeprefix("0X").replace(":", "")
    if not cleaned or len(cleaned) > 40 or not re.fullmatch(r"[0-9A-Fa-f]+", cleaned):
        raise InvalidInput(f"{text[:60]!r} is not a certificate serial number (up to 40 hex digits)")
    return format(int(cleaned, 16), "X")


def register(
    conn: Connection, certificate: x509.Certificate, profile: Profile, *, now: datetime, actor: str
) -> CertificateRecord:
    """Record a certificate the CA just signed and audit it as ``pki.issue``."""
    serial = format(certificate.serial_number, "X")
    common_name = str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    subject = certificate.subject.rfc4514_string()[:255]
    values = {
        "serial": serial,
        "profile": profile.value,
        "subject": subject,
        "common_name": common_name,
        "not_before": certificate.not_valid_before_utc,
        "not_after": certificate.not_valid_after_utc,
        "fingerprint": fingerprint(certificate),
        "issued_at": now,
        "revoked_at": None,
        "revocation_reason": None,
    }
    conn.execute(sa.insert(certs).values(**values))
    details: Details = {
        "profile": profile.value,
        "subject": subject,
        "fingerprint": fingerprint(certificate),
        "not_after": certificate.not_valid_after_utc.isoformat(),
    }
    entry = AuditEntry(actor, "pki.issue", "ok", resource=f"certificate:{serial}", details=details)
    record(conn, entry, now=now)
    return _record(values)


def mark_revoked(
    conn: Connection, serial: str, reason: RevocationReason, *, now: datetime, actor: str
) -> CertificateRecord:
    """Mark a certificate revoked and audit it as ``pki.revoke`` (the caller publishes the CRL).

    Raises InvalidInput (malformed serial, or the CA's own certificate), NotFound, Conflict (already
    revoked).
    """
    found = find_certificate(conn, serial=normalize_serial(serial))
    if found is None:
        raise NotFound(f"no certificate with serial {normalize_serial(serial)} was issued by this CA")
    if found.profile is Profile.CA:
        raise InvalidInput("the CA certificate cannot be revoked by itself; retire the CA instead")
    updated = conn.execute(
        sa.update(certs)
        .where(certs.c.serial == found.serial, certs.c.revoked_at.is_(None))
        .values(revoked_at=now, revocation_reason=reason.value)
    )
    if updated.rowcount != 1:
        raise Conflict(f"certificate {found.serial} is already revoked")
    details: Details = {"profile": found.profile.value, "subject": found.subject, "reason": reason.value}
    record(
        conn, AuditEntry(actor, "pki.revoke", "ok", resource=f"certificate:{found.serial}", details=details), now=now
    )
    revoked = find_certificate(conn, serial=found.serial)
    assert revoked is not None
    return revoked


def revoked_entries(conn: Connection) -> list[tuple[int, datetime, RevocationReason]]:
    """(serial, revocation time, reason) of every revoked certificate, oldest revocation first."""
    rows = conn.execute(
        sa.select(certs.c.serial, certs.c.revoked_at, certs.c.revocation_reason)
        .where(certs.c.revoked_at.is_not(None))
        .order_by(certs.c.revoked_at, certs.c.serial)
    ).all()
    return [
        (int(serial, 16), _datetime(at), RevocationReason(str(reason or "unspecified"))) for serial, at, reason in rows
    ]


def list_certificates(conn: Connection, *, profile: Profile | None = None) -> list[CertificateRecord]:
    """Every certificate the CA issued (its own first), oldest first."""
    query = sa.select(certs).order_by(certs.c.issued_at, certs.c.serial)
    if profile is not None:
        query = query.where(certs.c.profile == profile.value)
    return [_record(row) for row in conn.execute(query).mappings()]


def find_certificate(
    conn: Connection, *, serial: str | None = None, fingerprint: str | None = None
) -> CertificateRecord | None:
    """The registry row with this serial (normalised hex) or SHA-256 fingerprint, or None."""
    if (serial is None) == (fingerprint is None):
        raise ValueError("give exactly one of serial and fingerprint")
    column, value = (certs.c.serial, serial) if serial is not None else (certs.c.fingerprint, fingerprint)
    row = conn.execute(sa.select(certs).where(column == value)).mappings().one_or_none()
    return None if row is None else _record(row)


def _record(row: Mapping[Any, Any]) -> CertificateRecord:
    reason, revoked_at = row["revocation_reason"], row["revoked_at"]
    return CertificateRecord(
        serial=str(row["serial"]),
        profile=Profile(str(row["profile"])),
        subject=str(row["subject"]),
        common_name=str(row["common_name"]),
        not_before=_datetime(row["not_before"]),
        not_after=_datetime(row["not_after"]),
        fingerprint=str(row["fingerprint"]),
        issued_at=_datetime(row["issued_at"]),
        revoked_at=None if revoked_at is None else _datetime(revoked_at),
        revocation_reason=None if reason is None else RevocationReason(str(reason)),
    )


def _datetime(value: object) -> datetime:
    assert isinstance(value, datetime)
    return value
