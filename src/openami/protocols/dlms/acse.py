"""ACSE APDUs for DLMS/COSEM associations (IEC 62056-5-3 clause 8, ISO/IEC 8650-1), BER encoded.

    AARQ-apdu ::= [APPLICATION 0] IMPLICIT SEQUENCE {
        application-context-name [1], calling-AP-title [6] OPTIONAL,
        sender-acse-requirements [10] IMPLICIT OPTIONAL, mechanism-name [11] IMPLICIT OPTIONAL,
        calling-authentication-value [12] EXPLICIT OPTIONAL, user-information [30] EXPLICIT OPTIONAL }
    AARE-apdu ::= [APPLICATION 1] IMPLICIT SEQUENCE {
        application-context-name [1], result [2], result-source-diagnostic [3],
        responding-AP-title [4] OPTIONAL, responder-acse-requirements [8] IMPLICIT OPTIONAL,
        mechanism-name [9] IMPLICIT OPTIONAL, responding-authentication-value [10] EXPLICIT OPTIONAL,
        user-information [30] EXPLICIT OPTIONAL }
    RLRQ-apdu / RLRE-apdu ::= [APPLICATION 2 / 3] IMPLICIT SEQUENCE {
        reason [0] IMPLICIT OPTIONAL, user-information [30] EXPLICIT OPTIONAL }

AP titles are system titles (``[n] { OCTET STRING }``), authentication values a GraphicString in
``[0]`` (LLS password, HLS challenge), user-information an OCTET STRING holding the xDLMS
InitiateRequest/Response (plain or glo-ciphered bytes, left to the caller). Fields we do not use
(protocol-version, called-AP-title, implementation-information...) are skipped when decoding.
The xDLMS initiate APDUs are in ``xdlms`` and re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Self, cast

from openami.protocols.dlms.ber import BerReader, decode_integer, encode_integer, tlv
from openami.protocols.dlms.errors import DecodeError, EncodeError
from openami.protocols.dlms.xdlms import (
    ConfirmedServiceError,
    Conformance,
    InitiateErrorReason,
    InitiateRequest,
    InitiateResponse,
    decode_xdlms_initiate,
)

__all__ = [
    "AARE",
    "AARQ",
    "RLRE",
    "RLRQ",
    "AcseServiceProviderDiagnostic",
    "AcseServiceUserDiagnostic",
    "ApplicationContext",
    "AssociationResult",
    "ConfirmedServiceError",
    "Conformance",
    "DiagnosticSource",
    "InitiateErrorReason",
    "InitiateRequest",
    "InitiateResponse",
    "Mechanism",
    "ReleaseRequestReason",
    "ReleaseResponseReason",
    "decode_xdlms_initiate",
]

_CONTEXT_PREFIX = bytes.fromhex("608574050801")  # 2.16.756.5.8.1 (DLMS UA application contexts)
_MECHANISM_PREFIX = bytes.fromhex("608574050802")  # 2.16.756.5.8.2 (authentication mechanisms)


class ApplicationContext(IntEnum):
    """application-context-name: last arc of ``2.16.756.5.8.1.x`` (Green Book 9.4.2.2.2)."""

    LN = 1
    SN = 2
    LN_CIPHERING = 3
    SN_CIPHERING = 4


class Mechanism(IntEnum):
    """mechanism-name: last arc of ``2.16.756.5.8.2.x`` (authentication mechanism id)."""

    NONE = 0
    LLS = 1
    HLS = 2
    HLS_MD5 = 3
    HLS_SHA1 = 4
    HLS_GMAC = 5
    HLS_SHA256 = 6
    HLS_ECDSA = 7


class AssociationResult(IntEnum):
    """Association-result of the AARE."""

    ACCEPTED = 0
    REJECTED_PERMANENT = 1
    REJECTED_TRANSIENT = 2


class DiagnosticSource(IntEnum):
    """Which CHOICE of Associate-source-diagnostic carries the diagnostic."""

    ACSE_SERVICE_USER = 1
    ACSE_SERVICE_PROVIDER = 2


class AcseServiceUserDiagnostic(IntEnum):
    """acse-service-user diagnostics (ISO/IEC 8650-1 plus the DLMS authentication values)."""

    NULL = 0
    NO_REASON_GIVEN = 1
    APPLICATION_CONTEXT_NAME_NOT_SUPPORTED = 2
    CALLING_AP_TITLE_NOT_RECOGNIZED = 3
    CALLING_AP_INVOCATION_IDENTIFIER_NOT_RECOGNIZED = 4
    CALLING_AE_QUALIFIER_NOT_RECOGNIZED = 5
    CALLING_AE_INVOCATION_IDENTIFIER_NOT_RECOGNIZED = 6
    CALLED_AP_TITLE_NOT_RECOGNIZED = 7
    CALLED_AP_INVOCATION_IDENTIFIER_NOT_RECOGNIZED = 8
    CALLED_AE_QUALIFIER_NOT_RECOGNIZED = 9
    CALLED_AE_INVOCATION_IDENTIFIER_NOT_RECOGNIZED = 10
    AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNISED = 11
    AUTHENTICATION_MECHANISM_NAME_REQUIRED = 12
    AUTHENTICATION_FAILURE = 13
    AUTHENTICATION_REQUIRED = 14


class AcseServiceProviderDiagnostic(IntEnum):
    """acse-service-provider diagnostics."""

    NULL = 0
    NO_REASON_GIVEN = 1
    NO_COMMON_ACSE_VERSION = 2


class ReleaseRequestReason(IntEnum):
    NORMAL = 0
    URGENT = 1
    USER_DEFINED = 30


class ReleaseResponseReason(IntEnum):
    NORMAL = 0
    NOT_FINISHED = 1
    USER_DEFINED = 30


# --------------------------------------------------------------------------------------------
# Field helpers (encode / decode one ACSE field)


def _context_name(context: int) -> bytes:
    return tlv(0xA1, tlv(0x06, _CONTEXT_PREFIX + _arc(context)))


def _arc(value: int) -> bytes:
    if not 0 <= value <= 0x7F:
        raise EncodeError(f"object identifier arc {value} is not 0-127")
    return bytes((value,))


def _known(enum: type[IntEnum], value: int) -> int:
    """The enum member for a known value (readable reprs), else the plain int (a lookup, not a call)."""
    return cast(int, enum._value2member_map_.get(value, value))


def _read_context_name(reader: BerReader, start: int, stop: int) -> int:
    oid_start, oid_stop = reader.inner(start, stop).expect(0x06, "application-context-name OID")
    return _known(
        ApplicationContext, _read_arc(reader.buf, oid_start, oid_stop, _CONTEXT_PREFIX, "application context")
    )


def _read_arc(buf: bytes, start: int, stop: int, prefix: bytes, what: str) -> int:
    oid = buf[start:stop]
    if len(oid) != len(prefix) + 1 or not oid.startswith(prefix):
        raise DecodeError(f"unknown {what} name {oid.hex()}", offset=start, expected=f"{prefix.hex()}xx")
    return oid[-1]


def _ap_title(tag: int, title: bytes) -> bytes:
    return tlv(tag, tlv(0x04, title))


def _read_ap_title(reader: BerReader, start: int, stop: int) -> bytes:
    inner_start, inner_stop = reader.inner(start, stop).expect(0x04, "AP-title octet string")
    return reader.buf[inner_start:inner_stop]


def _auth_value(tag: int, value: bytes) -> bytes:
    return tlv(tag, tlv(0x80, value))


def _read_auth_value(reader: BerReader, start: int, stop: int) -> bytes:
    inner_start, inner_stop = reader.inner(start, stop).expect(0x80, "authentication-value charstring")
    return reader.buf[inner_start:inner_stop]


def _user_information(data: bytes) -> bytes:
    return tlv(0xBE, tlv(0x04, data))


def _read_user_information(reader: BerReader, start: int, stop: int) -> bytes:
    inner_start, inner_stop = reader.inner(start, stop).expect(0x04, "user-information octet string")
    return reader.buf[inner_start:inner_stop]


def _acse_requirements(tag: int) -> bytes:
    return tlv(tag, b"\x07\x80")  # BIT STRING {authentication(0)}: 7 unused bits, bit 0 set


def _read_acse_requirements(buf: bytes, start: int, stop: int) -> bool:
    if stop - start < 2:
        raise DecodeError("ACSE-requirements too short", offset=start, expected="unused-bits byte and bits")
    return bool(buf[start + 1] & 0x80)


def _read_small_integer(reader: BerReader, start: int, stop: int) -> int:
    inner_start, inner_stop = reader.inner(start, stop).expect(0x02, "INTEGER")
    return decode_integer(reader.buf[inner_start:inner_stop], inner_start)


def _read_diagnostic(reader: BerReader, start: int, stop: int) -> tuple[int, int]:
    """Associate-source-diagnostic: (1 user / 2 provider, diagnostic value)."""
    choice, choice_start, choice_stop = reader.inner(start, stop).read()
    if choice not in (0xA1, 0xA2):
        raise DecodeError(f"diagnostic choice 0x{choice:02X}", offset=start, expected="0xA1 or 0xA2")
    source = choice & 0x1F
    value = _read_small_integer(reader, choice_start, choice_stop)
    if source == DiagnosticSource.ACSE_SERVICE_USER:
        return DiagnosticSource(source), _known(AcseServiceUserDiagnostic, value)
    return DiagnosticSource(source), _known(AcseServiceProviderDiagnostic, value)


def _open(buf: bytes | bytearray | memoryview, tag: int, name: str) -> BerReader:
    """A reader over the fields of the APDU in ``buf`` (which must be exactly one TLV of ``tag``)."""
    data = bytes(buf)
    outer = BerReader(data)
    start, stop = outer.expect(tag, name)
    if stop != len(data):
        raise DecodeError(f"{len(data) - stop} bytes after the {name}", offset=stop, expected="end of APDU")
    return outer.inner(start, stop)


def _check_bytes(name: str, value: bytes | None) -> None:
    if value is not None and not isinstance(value, bytes):
        raise EncodeError(f"{name} must be bytes")


# --------------------------------------------------------------------------------------------
# APDUs


@dataclass(frozen=True, slots=True)
class AARQ:
    """A-ASSOCIATE request (tag 0x60). ``calling_authentication_value`` is secret (no repr)."""

    application_context: int = ApplicationContext.LN
    calling_ap_title: bytes | None = None
    authentication: bool = False
    """sender-acse-requirements with the authentication bit (present when a mechanism is used)."""
    mechanism: int | None = None
    calling_authentication_value: bytes | None = field(default=None, repr=False)
    user_information: bytes | None = None

    TAG = 0x60

    def encode(self) -> bytes:
        """BER encoding in the order of the ASN.1 definition."""
        _check_bytes("calling_ap_title", self.calling_ap_title)
        _check_bytes("calling_authentication_value", self.calling_authentication_value)
        _check_bytes("user_information", self.user_information)
        parts = [_context_name(self.application_context)]
        if self.calling_ap_title is not None:
            parts.append(_ap_title(0xA6, self.calling_ap_title))
        if self.authentication:
            parts.append(_acse_requirements(0x8A))
        if self.mechanism is not None:
            parts.append(tlv(0x8B, _MECHANISM_PREFIX + _arc(self.mechanism)))
        if self.calling_authentication_value is not None:
            parts.append(_auth_value(0xAC, self.calling_authentication_value))
        if self.user_information is not None:
            parts.append(_user_information(self.user_information))
        return tlv(self.TAG, b"".join(parts))

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> Self:
        """Decode one AARQ filling ``buf``; DecodeError if malformed or without a context name."""
        reader = _open(buf, cls.TAG, "AARQ")
        fields: dict[str, object] = {}
        while not reader.at_end():
            tag, start, stop = reader.read()
            if tag == 0xA1:
                fields["application_context"] = _read_context_name(reader, start, stop)
            elif tag == 0xA6:
                fields["calling_ap_title"] = _read_ap_title(reader, start, stop)
            elif tag == 0x8A:
                fields["authentication"] = _read_acse_requirements(reader.buf, start, stop)
            elif tag == 0x8B:
                fields["mechanism"] = _known(
                    Mechanism, _read_arc(reader.buf, start, stop, _MECHANISM_PREFIX, "mechanism")
                )
            elif tag == 0xAC:
                fields["calling_authentication_value"] = _read_auth_value(reader, start, stop)
            elif tag == 0xBE:
                fields["user_information"] = _read_user_information(reader, start, stop)
        if "application_context" not in fields:
            raise DecodeError("AARQ without application-context-name", offset=0, expected="field [1]")
        return cls(**fields)  # type: ignore[arg-type]  # keys and types set just above


@dataclass(frozen=True, slots=True)
class AARE:
    """A-ASSOCIATE response (tag 0x61). ``responding_authentication_value`` is secret (no repr)."""

    result: int = AssociationResult.ACCEPTED
    diagnostic: int = AcseServiceUserDiagnostic.NULL
    diagnostic_source: int = DiagnosticSource.ACSE_SERVICE_USER
    application_context: int = ApplicationContext.LN
    responding_ap_title: bytes | None = None
    authentication: bool = False
    """responder-acse-requirements with the authentication bit."""
    mechanism: int | None = None
    responding_authentication_value: bytes | None = field(default=None, repr=False)
    user_information: bytes | None = None

    TAG = 0x61

    def encode(self) -> bytes:
        """BER encoding in the order of the ASN.1 definition."""
        _check_bytes("responding_ap_title", self.responding_ap_title)
        _check_bytes("responding_authentication_value", self.responding_authentication_value)
        _check_bytes("user_information", self.user_information)
        if self.diagnostic_source not in (1, 2):
            raise EncodeError(f"diagnostic source {self.diagnostic_source} is not 1 (user) or 2 (provider)")
        parts = [
            _context_name(self.application_context),
            tlv(0xA2, tlv(0x02, encode_integer(self.result))),
            tlv(0xA3, tlv(0xA0 | self.diagnostic_source, tlv(0x02, encode_integer(self.diagnostic)))),
        ]
        if self.responding_ap_title is not None:
            parts.append(_ap_title(0xA4, self.responding_ap_title))
        if self.authentication:
            parts.append(_acse_requirements(0x88))
        if self.mechanism is not None:
            parts.append(tlv(0x89, _MECHANISM_PREFIX + _arc(self.mechanism)))
        if self.responding_authentication_value is not None:
            parts.append(_auth_value(0xAA, self.responding_authentication_value))
        if self.user_information is not None:
            parts.append(_user_information(self.user_information))
        return tlv(self.TAG, b"".join(parts))

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> Self:
        """Decode one AARE filling ``buf``; DecodeError if malformed or missing a mandatory field."""
        reader = _open(buf, cls.TAG, "AARE")
        fields: dict[str, object] = {}
        while not reader.at_end():
            tag, start, stop = reader.read()
            if tag == 0xA1:
                fields["application_context"] = _read_context_name(reader, start, stop)
            elif tag == 0xA2:
                fields["result"] = _known(AssociationResult, _read_small_integer(reader, start, stop))
            elif tag == 0xA3:
                fields["diagnostic_source"], fields["diagnostic"] = _read_diagnostic(reader, start, stop)
            elif tag == 0xA4:
                fields["responding_ap_title"] = _read_ap_title(reader, start, stop)
            elif tag == 0x88:
                fields["authentication"] = _read_acse_requirements(reader.buf, start, stop)
            elif tag == 0x89:
                fields["mechanism"] = _known(
                    Mechanism, _read_arc(reader.buf, start, stop, _MECHANISM_PREFIX, "mechanism")
                )
            elif tag == 0xAA:
                fields["responding_authentication_value"] = _read_auth_value(reader, start, stop)
            elif tag == 0xBE:
                fields["user_information"] = _read_user_information(reader, start, stop)
        for name, number in (("application_context", 1), ("result", 2), ("diagnostic", 3)):
            if name not in fields:
                raise DecodeError(f"AARE without {name}", offset=0, expected=f"field [{number}]")
        return cls(**fields)  # type: ignore[arg-type]  # keys and types set just above


def _encode_release(tag: int, reason: int | None, user_information: bytes | None) -> bytes:
    _check_bytes("user_information", user_information)
    parts = []
    if reason is not None:
        parts.append(tlv(0x80, encode_integer(reason)))
    if user_information is not None:
        parts.append(_user_information(user_information))
    return tlv(tag, b"".join(parts))


def _decode_release(buf: bytes | bytearray | memoryview, tag: int, name: str) -> tuple[int | None, bytes | None]:
    reader = _open(buf, tag, name)
    reason: int | None = None
    user_information: bytes | None = None
    while not reader.at_end():
        field_tag, start, stop = reader.read()
        if field_tag == 0x80:
            reason = decode_integer(reader.buf[start:stop], start)
        elif field_tag == 0xBE:
            user_information = _read_user_information(reader, start, stop)
    return reason, user_information


@dataclass(frozen=True, slots=True)
class RLRQ:
    """A-RELEASE request (tag 0x62)."""

    reason: int | None = ReleaseRequestReason.NORMAL
    user_information: bytes | None = None

    TAG = 0x62

    def encode(self) -> bytes:
        return _encode_release(self.TAG, self.reason, self.user_information)

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> Self:
        return cls(*_decode_release(buf, cls.TAG, "RLRQ"))


@dataclass(frozen=True, slots=True)
class RLRE:
    """A-RELEASE response (tag 0x63); the normal one encodes as ``63 03 80 01 00``."""

    reason: int | None = ReleaseResponseReason.NORMAL
    user_information: bytes | None = None

    TAG = 0x63

    def encode(self) -> bytes:
        return _encode_release(self.TAG, self.reason, self.user_information)

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> Self:
        return cls(*_decode_release(buf, cls.TAG, "RLRE"))
