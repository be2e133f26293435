"""Signed switch and limiter commands: the command authority signs, the meter verifies, the head-end carries.

A command travels as the parameter of method 1 (``execute``) of openami's manufacturer-specific
Signed Command Gateway (class 200, 0.128.96.3.10.255): ``structure {octet-string envelope,
octet-string signature}``. The envelope is itself A-XDR (IEC 62056-6-2 ``Data``)::

    structure {
        unsigned            version            -- 1
        octet-string        target             -- the meter's system title (8 bytes) or 8 x 0xFF
        enum                command            -- Command
        long64-unsigned     counter            -- strictly increasing, one sequence per authority
        date-time           not_before         -- UTC (deviation 0), whole seconds
        date-time           not_after
        structure {double-long-unsigned threshold_w, double-long-unsigned duration_s, boolean emergency}
          | null-data       limit              -- present for SET_LIMIT only
    }

The signature is ECDSA P-256 with SHA-256 over the envelope's bytes exactly as carried, written raw
as r || s (32 bytes each, big-endian), the form DLMS uses for its own ECDSA signatures (Green Book,
Security Suite 1). The meter checks, in this order: the envelope is well formed, the signature
verifies under the pinned authority key, the target is its own system title (or the broadcast
target for the ignore-disconnects commands only), the validity window holds and the counter is
above the last one it accepted. The first failed check is the refusal reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Self, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from openami.protocols.dlms import axdr
from openami.protocols.dlms.axdr import (
    CosemDateTime,
    Data,
    DoubleLongUnsigned,
    Enum,
    Float64,
    Long64Unsigned,
    Structure,
    Unsigned,
)
from openami.protocols.dlms.errors import DecodeError, DlmsError, EncodeError

__all__ = [
    "BROADCAST_COMMANDS",
    "BROADCAST_TARGET",
    "ENVELOPE_VERSION",
    "SIGNATURE_LENGTH",
    "Command",
    "CommandRefused",
    "Confirmation",
    "Envelope",
    "LimitParameters",
    "Refusal",
    "RefusalRecord",
    "SignedCommand",
    "authority_fingerprint",
    "certificate_der_from_pem",
    "decode_envelope",
    "encode_envelope",
    "public_key_from_certificate",
    "sign_envelope",
    "signature_from_der",
    "signature_to_der",
    "verify_signed_command",
]

BROADCAST_TARGET = b"\xff" * 8
"""The target of an envelope meant for every meter that verifies it (ignore-disconnects mode only)."""
ENVELOPE_VERSION = 1
SIGNATURE_LENGTH = 64
"""Raw r || s of ECDSA P-256."""
_TITLE_LENGTH = 8
_COORDINATE = 32
_ENVELOPE_FIELDS = 7
_T = TypeVar("_T")


class Command(IntEnum):
    DISCONNECT = 1
    RECONNECT = 2  # close at once
    ARM_RECONNECT = 3  # ready for the customer to close with the button
    SET_LIMIT = 4
    CANCEL_LIMIT = 5
    IGNORE_DISCONNECTS_ON = 6
    IGNORE_DISCONNECTS_OFF = 7


BROADCAST_COMMANDS = frozenset({Command.IGNORE_DISCONNECTS_ON, Command.IGNORE_DISCONNECTS_OFF})
"""The only commands a broadcast envelope may carry: none of them can open a switch."""


class Refusal(IntEnum):
    BAD_SIGNATURE = 1
    WRONG_METER = 2
    EXPIRED = 3
    NOT_YET_VALID = 4
    REPLAYED = 5  # the counter is not above the last accepted one (a replay or an older command)
    MALFORMED = 6
    IGNORING_DISCONNECTS = 7
    NOT_SUPPORTED = 8  # the meter has no authority certificate pinned


class CommandRefused(DlmsError):
    """The meter refused a signed command; ``reason`` says why, ``counter`` is the envelope's (if readable)."""

    def __init__(self, reason: Refusal, message: str, *, counter: int | None = None) -> None:
        super().__init__(f"{reason.name}: {message}")
        self.reason = reason
        self.counter = counter


@dataclass(frozen=True, slots=True)
class LimitParameters:
    """A demand limit: trip when demand stays above ``threshold_w`` for ``duration_s`` seconds.

    ``emergency`` selects the Limiter's emergency threshold (an emergency profile) instead of the
    normal one.
    """

    threshold_w: int
    duration_s: int
    emergency: bool = False

    def __post_init__(self) -> None:
        for name in ("threshold_w", "duration_s"):
            value = getattr(self, name)
            if type(value) is bool or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
                raise EncodeError(f"limit {name} {value!r} is not an integer 0..4294967295")
        if self.threshold_w == 0:
            raise EncodeError("limit threshold_w must be above 0 W")


def _whole_seconds_utc(name: str, value: datetime) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise EncodeError(f"envelope {name} must be a timezone-aware datetime")
    return value.astimezone(UTC).replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the authority signs. Times are kept in UTC whole seconds (what the wire carries)."""

    target: bytes
    command: Command
    counter: int
    not_before: datetime
    not_after: datetime
    limit: LimitParameters | None = None
    version: int = ENVELOPE_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.target, bytes) or len(self.target) != _TITLE_LENGTH:
            raise EncodeError("envelope target must be an 8-byte system title")
        if not isinstance(self.command, Command):
            raise EncodeError(f"envelope command {self.command!r} is not a Command")
        if type(self.counter) is not int or not 0 <= self.counter <= 0xFFFFFFFFFFFFFFFF:
            raise EncodeError(f"envelope counter {self.counter!r} is not a uint64")
        if self.version != ENVELOPE_VERSION:
            raise EncodeError(f"envelope version {self.version!r} is not supported")
        # Frozen: normalise through object.__setattr__ so equality matches the decoded form.
        object.__setattr__(self, "not_before", _whole_seconds_utc("not_before", self.not_before))
        object.__setattr__(self, "not_after", _whole_seconds_utc("not_after", self.not_after))
        if self.not_after < self.not_before:
            raise EncodeError("envelope not_after is before not_before")
        if (self.command is Command.SET_LIMIT) != (self.limit is not None):
            raise EncodeError("an envelope carries limit parameters exactly when the command is SET_LIMIT")
        if self.target == BROADCAST_TARGET and self.command not in BROADCAST_COMMANDS:
            raise EncodeError(f"{self.command.name} cannot be broadcast")


def encode_envelope(envelope: Envelope) -> bytes:
    """The envelope's A-XDR bytes: exactly what is signed."""
    limit: Data = None
    if envelope.limit is not None:
        limit = Structure(
            (
                DoubleLongUnsigned(envelope.limit.threshold_w),
                DoubleLongUnsigned(envelope.limit.duration_s),
                envelope.limit.emergency,
            )
        )
    return axdr.encode(
        Structure(
            (
                Unsigned(envelope.version),
                envelope.target,
                Enum(envelope.command),
                Long64Unsigned(envelope.counter),
                CosemDateTime.from_datetime(envelope.not_before),
                CosemDateTime.from_datetime(envelope.not_after),
                limit,
            )
        )
    )


def _malformed(message: str, expected: str) -> DecodeError:
    return DecodeError(f"signed-command envelope: {message}", offset=0, expected=expected)


def _field(value: Data, kind: type[_T], name: str) -> _T:
    # Exact A-XDR types: a bool is an int in Python, and Unsigned is not Enum on the wire.
    if type(value) is not kind:
        raise _malformed(f"{name} is {type(value).__name__}", kind.__name__)
    return value


def _instant(value: Data, name: str) -> datetime:
    try:
        return _field(value, CosemDateTime, name).to_datetime()
    except DecodeError:
        raise
    except DlmsError:
        raise _malformed(f"{name} is not a concrete instant", "a date-time with deviation") from None


def _decode_limit(value: Data) -> LimitParameters | None:
    if value is None:
        return None
    fields = _field(value, Structure, "limit")
    if len(fields) != 3:
        raise _malformed(f"limit has {len(fields)} fields", "3 fields")
    try:
        return LimitParameters(
            int(_field(fields[0], DoubleLongUnsigned, "threshold_w")),
            int(_field(fields[1], DoubleLongUnsigned, "duration_s")),
            _field(fields[2], bool, "emergency"),
        )
    except EncodeError as exc:
        raise _malformed(str(exc), "a valid limit") from None


def decode_envelope(data: bytes) -> Envelope:
    """Read an envelope; raises DecodeError (and nothing else) on anything malformed or inconsistent."""
    fields = _field(axdr.decode_all(data), Structure, "envelope")
    if len(fields) != _ENVELOPE_FIELDS:
        raise _malformed(f"{len(fields)} fields", f"{_ENVELOPE_FIELDS} fields")
    version = int(_field(fields[0], Unsigned, "version"))
    if version != ENVELOPE_VERSION:
        raise _malformed(f"version {version}", f"version {ENVELOPE_VERSION}")
    command_code = int(_field(fields[2], Enum, "command"))
    if command_code not in Command._value2member_map_:
        raise _malformed(f"unknown command {command_code}", "a Command")
    try:
        return Envelope(
            target=_field(fields[1], bytes, "target"),
            command=Command(command_code),
            counter=int(_field(fields[3], Long64Unsigned, "counter")),
            not_before=_instant(fields[4], "not_before"),
            not_after=_instant(fields[5], "not_after"),
            limit=_decode_limit(fields[6]),
            version=version,
        )
    except EncodeError as exc:
        raise _malformed(str(exc), "a consistent envelope") from None


def signature_from_der(der: bytes) -> bytes:
    """A DER ``ECDSA-Sig-Value`` (what ``cryptography`` produces) as raw r || s (64 bytes)."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(_COORDINATE, "big") + s.to_bytes(_COORDINATE, "big")


def signature_to_der(raw: bytes) -> bytes:
    """Raw r || s (64 bytes) as DER, for ``cryptography``'s verify; EncodeError on another length."""
    if len(raw) != SIGNATURE_LENGTH:
        raise EncodeError(f"ECDSA P-256 signature of {len(raw)} bytes, expected {SIGNATURE_LENGTH}")
    return encode_dss_signature(int.from_bytes(raw[:_COORDINATE], "big"), int.from_bytes(raw[_COORDINATE:], "big"))


@dataclass(frozen=True, slots=True)
class SignedCommand:
    """An envelope's bytes and the authority's raw ECDSA signature over them."""

    envelope: bytes
    signature: bytes

    def to_parameters(self) -> Structure:
        """The ``execute`` ACTION parameter: ``structure {octet-string envelope, octet-string signature}``."""
        return Structure((self.envelope, self.signature))

    @classmethod
    def from_parameters(cls, value: Data) -> Self:
        """Read the ACTION parameter; raises DecodeError when it is not the two octet-strings."""
        fields = _field(value, Structure, "execute parameter")
        if len(fields) != 2:
            raise _malformed(f"execute parameter has {len(fields)} fields", "2 octet-strings")
        return cls(_field(fields[0], bytes, "envelope"), _field(fields[1], bytes, "signature"))


def _require_p256(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> None:
    if not isinstance(key.curve, ec.SECP256R1):
        raise EncodeError(f"command authority key is on {key.curve.name}, expected secp256r1 (P-256)")


def sign_envelope(envelope: Envelope, private_key: ec.EllipticCurvePrivateKey) -> SignedCommand:
    """Encode and sign (ECDSA P-256 / SHA-256). Only the command authority holds ``private_key``."""
    _require_p256(private_key)
    data = encode_envelope(envelope)
    der = private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    return SignedCommand(data, signature_from_der(der))


def public_key_from_certificate(der: bytes) -> ec.EllipticCurvePublicKey:
    """The authority's P-256 public key from its DER certificate; EncodeError if it is not one."""
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError as exc:
        raise EncodeError(f"authority certificate cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise EncodeError("authority certificate does not hold an elliptic-curve key")
    _require_p256(key)
    return key


def certificate_der_from_pem(pem: str | bytes) -> bytes:
    """A PEM certificate (what operators hand around) as the DER a meter pins; EncodeError if unreadable."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        certificate = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise EncodeError(f"authority certificate PEM cannot be read: {exc}") from None
    return certificate.public_bytes(serialization.Encoding.DER)


def authority_fingerprint(certificate_der: bytes) -> bytes:
    """SHA-256 of the pinned certificate's DER (gateway attribute 2)."""
    return hashlib.sha256(certificate_der).digest()


def _check_signature(cmd: SignedCommand, public_key: ec.EllipticCurvePublicKey, counter: int) -> None:
    try:
        public_key.verify(signature_to_der(cmd.signature), cmd.envelope, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CommandRefused(Refusal.BAD_SIGNATURE, "signature does not verify", counter=counter) from None


def _check_target(envelope: Envelope, own_title: bytes) -> None:
    if envelope.target == own_title:
        return
    if envelope.target == BROADCAST_TARGET and envelope.command in BROADCAST_COMMANDS:
        return
    raise CommandRefused(Refusal.WRONG_METER, "envelope is for another meter", counter=envelope.counter)


def verify_signed_command(
    cmd: SignedCommand,
    *,
    public_key: ec.EllipticCurvePublicKey,
    own_title: bytes,
    last_counter: int,
    now: datetime,
) -> Envelope:
    """The meter's check of a signed command; returns the envelope to act on or raises CommandRefused.

    Order (the first failure is the reason): well formed → signature → target → not_before ≤ now ≤
    not_after → counter > ``last_counter``. The caller records the counter only after acting.
    """
    try:
        envelope = decode_envelope(cmd.envelope)
    except DecodeError as exc:
        raise CommandRefused(Refusal.MALFORMED, exc.message) from None
    if len(cmd.signature) != SIGNATURE_LENGTH:
        raise CommandRefused(Refusal.MALFORMED, "signature is not 64 bytes", counter=envelope.counter)
    _check_signature(cmd, public_key, envelope.counter)
    _check_target(envelope, own_title)
    if now < envelope.not_before:
        raise CommandRefused(Refusal.NOT_YET_VALID, "validity window has not begun", counter=envelope.counter)
    if now > envelope.not_after:
        raise CommandRefused(Refusal.EXPIRED, "validity window has ended", counter=envelope.counter)
    if envelope.counter <= last_counter:
        raise CommandRefused(Refusal.REPLAYED, "counter is not above the last accepted", counter=envelope.counter)
    return envelope


@dataclass(frozen=True, slots=True)
class Confirmation:
    """What ``execute`` answers: the switch and limiter state right after the command, measured.

    ``control_state`` is Disconnect Control's (0 disconnected, 1 connected, 2 ready for reconnection).
    """

    output_state: bool
    control_state: int
    voltage_v: float
    current_a: float
    load_side_voltage_v: float
    active_threshold_w: int | None

    def to_data(self) -> Structure:
        """``structure {boolean, enum, float64 V, float64 A, float64 V, double-long-unsigned W | null-data}``."""
        threshold: Data = None if self.active_threshold_w is None else DoubleLongUnsigned(self.active_threshold_w)
        return Structure(
            (
                self.output_state,
                Enum(self.control_state),
                Float64(self.voltage_v),
                Float64(self.current_a),
                Float64(self.load_side_voltage_v),
                threshold,
            )
        )

    @classmethod
    def from_data(cls, value: Data) -> Self:
        """Read the ``execute`` return value; raises DecodeError when it is not a confirmation."""
        fields = _field(value, Structure, "confirmation")
        if len(fields) != 6:
            raise _malformed(f"confirmation has {len(fields)} fields", "6 fields")
        threshold = fields[5]
        return cls(
            output_state=_field(fields[0], bool, "output_state"),
            control_state=int(_field(fields[1], Enum, "control_state")),
            voltage_v=float(_field(fields[2], Float64, "voltage")),
            current_a=float(_field(fields[3], Float64, "current")),
            load_side_voltage_v=float(_field(fields[4], Float64, "load-side voltage")),
            active_threshold_w=None if threshold is None else int(_field(threshold, DoubleLongUnsigned, "threshold")),
        )


@dataclass(frozen=True, slots=True)
class RefusalRecord:
    """Gateway attribute 4: the last refusal, ``structure {long64-unsigned counter | null-data, enum, date-time}``.

    ``counter`` is the refused envelope's own counter, None when the envelope could not be read.
    """

    counter: int | None
    reason: Refusal
    time: datetime

    def to_data(self) -> Structure:
        counter: Data = None if self.counter is None else Long64Unsigned(self.counter)
        return Structure((counter, Enum(self.reason), CosemDateTime.from_datetime(self.time)))

    @classmethod
    def from_data(cls, value: Data) -> Self:
        """Read attribute 4 (not null); raises DecodeError when it is not a refusal record."""
        fields = _field(value, Structure, "refusal record")
        if len(fields) != 3:
            raise _malformed(f"refusal record has {len(fields)} fields", "3 fields")
        reason = int(_field(fields[1], Enum, "reason"))
        if reason not in Refusal._value2member_map_:
            raise _malformed(f"unknown refusal reason {reason}", "a Refusal")
        counter = None if fields[0] is None else int(_field(fields[0], Long64Unsigned, "counter"))
        return cls(counter, Refusal(reason), _instant(fields[2], "time"))
