"""xDLMS initiate APDUs carried in the ACSE user-information (IEC 62056-5-3 clause 9.5, A-XDR encoded).

    InitiateRequest ::= SEQUENCE {                -- tag 1
        dedicated-key OCTET STRING OPTIONAL, response-allowed BOOLEAN DEFAULT TRUE,
        proposed-quality-of-service [0] IMPLICIT Integer8 OPTIONAL,
        proposed-dlms-version-number Unsigned8, proposed-conformance Conformance,
        client-max-receive-pdu-size Unsigned16 }
    InitiateResponse ::= SEQUENCE {               -- tag 8
        negotiated-quality-of-service [0] IMPLICIT Integer8 OPTIONAL,
        negotiated-dlms-version-number Unsigned8, negotiated-conformance Conformance,
        server-max-receive-pdu-size Unsigned16, vaa-name ObjectName }
    Conformance ::= [APPLICATION 31] IMPLICIT BIT STRING (SIZE(24))   -- 5F 1F 04 00 xx xx xx
    ConfirmedServiceError ::= CHOICE { initiateError [1] ServiceError, ... }   -- tag 14

A-XDR OPTIONAL and DEFAULT fields are preceded by a presence byte (00 absent/default, 01 present).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Self

from openami.protocols.dlms.axdr import decode_length, encode_length
from openami.protocols.dlms.errors import DecodeError, EncodeError

__all__ = [
    "DLMS_VERSION",
    "VAA_NAME_LN",
    "ConfirmedServiceError",
    "Conformance",
    "InitiateErrorReason",
    "InitiateRequest",
    "InitiateResponse",
    "decode_xdlms_initiate",
]

DLMS_VERSION = 6
VAA_NAME_LN = 0x0007
"""The VAA name an LN-referencing server answers with."""

_CONFORMANCE_TAG = b"\x5f\x1f\x04\x00"  # [APPLICATION 31], 4 content bytes, 0 unused bits


class Conformance(IntFlag):
    """The 24-bit conformance block; bit n of the BIT STRING is ``1 << (23 - n)`` here.

    Bit numbers (IEC 62056-5-3, clause 9.5 "Conformance"): 1 general-protection, 2
    general-block-transfer, 3 read, 4 write, 5 unconfirmed-write, 8 attribute0-supported-with-set,
    9 priority-mgmt-supported, 10 attribute0-supported-with-get, 11 block-transfer-with-get-or-read,
    12 block-transfer-with-set-or-write, 13 block-transfer-with-action, 14 multiple-references,
    15 information-report, 16 data-notification, 17 access, 18 parameterized-access, 19 get,
    20 set, 21 selective-access, 22 event-notification, 23 action.
    """

    GENERAL_PROTECTION = 1 << 22
    GENERAL_BLOCK_TRANSFER = 1 << 21
    READ = 1 << 20
    WRITE = 1 << 19
    UNCONFIRMED_WRITE = 1 << 18
    ATTRIBUTE0_SUPPORTED_WITH_SET = 1 << 15
    PRIORITY_MGMT_SUPPORTED = 1 << 14
    ATTRIBUTE0_SUPPORTED_WITH_GET = 1 << 13
    BLOCK_TRANSFER_WITH_GET_OR_READ = 1 << 12
    BLOCK_TRANSFER_WITH_SET_OR_WRITE = 1 << 11
    BLOCK_TRANSFER_WITH_ACTION = 1 << 10
    MULTIPLE_REFERENCES = 1 << 9
    INFORMATION_REPORT = 1 << 8
    DATA_NOTIFICATION = 1 << 7
    ACCESS = 1 << 6
    PARAMETERIZED_ACCESS = 1 << 5
    GET = 1 << 4
    SET = 1 << 3
    SELECTIVE_ACCESS = 1 << 2
    EVENT_NOTIFICATION = 1 << 1
    ACTION = 1 << 0


class InitiateErrorReason(IntEnum):
    """ServiceError ``initiate`` values (why an InitiateRequest was refused)."""

    OTHER = 0
    DLMS_VERSION_TOO_LOW = 1
    INCOMPATIBLE_CONFORMANCE = 2
    PDU_SIZE_TOO_SHORT = 3
    REFUSED_BY_THE_VDE_HANDLER = 4


def _conformance(value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFF:
        raise EncodeError(f"conformance 0x{value:X} does not fit 24 bits")
    return _CONFORMANCE_TAG + value.to_bytes(3, "big")


def _u16(name: str, value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise EncodeError(f"{name} {value} is not 0-65535")
    return value.to_bytes(2, "big")


def _optional_int8(value: int | None) -> bytes:
    if value is None:
        return b"\x00"
    if not -128 <= value <= 127:
        raise EncodeError(f"quality of service {value} is not an Integer8")
    return b"\x01" + value.to_bytes(1, "big", signed=True)


class _Reader:
    """Bounds-checked reads over an xDLMS APDU (DecodeError names the field)."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise DecodeError(f"truncated {what}", offset=self.pos, expected=f"{n} bytes of {what}")
        data = self.buf[self.pos : end]
        self.pos = end
        return data

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def optional_int8(self, what: str) -> int | None:
        if not self.byte(f"{what} presence"):
            return None
        return int.from_bytes(self.take(1, what), "big", signed=True)

    def conformance(self) -> Conformance:
        at = self.pos
        if self.take(4, "conformance header") != _CONFORMANCE_TAG:
            raise DecodeError("bad conformance block header", offset=at, expected="5F 1F 04 00")
        return Conformance(int.from_bytes(self.take(3, "conformance bits"), "big"))

    def end(self, what: str) -> None:
        if self.pos != len(self.buf):
            raise DecodeError(f"{len(self.buf) - self.pos} bytes after the {what}", offset=self.pos, expected="end")


@dataclass(frozen=True, slots=True)
class InitiateRequest:
    """xDLMS InitiateRequest (tag 0x01); ``dedicated_key`` is secret (no repr)."""

    conformance: Conformance
    client_max_receive_pdu_size: int = 0xFFFF
    dlms_version: int = DLMS_VERSION
    dedicated_key: bytes | None = field(default=None, repr=False)
    response_allowed: bool = True
    proposed_quality_of_service: int | None = None

    TAG = 0x01

    def encode(self) -> bytes:
        out = bytearray((self.TAG,))
        if self.dedicated_key is None:
            out.append(0)
        else:
            out += b"\x01" + encode_length(len(self.dedicated_key)) + self.dedicated_key
        out += b"\x00" if self.response_allowed else b"\x01\x00"
        out += _optional_int8(self.proposed_quality_of_service)
        if not 0 <= self.dlms_version <= 255:
            raise EncodeError(f"DLMS version {self.dlms_version} is not an Unsigned8")
        out.append(self.dlms_version)
        out += _conformance(self.conformance)
        out += _u16("client max receive PDU size", self.client_max_receive_pdu_size)
        return bytes(out)

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> Self:
        """Decode exactly one InitiateRequest; DecodeError if malformed."""
        reader = _Reader(bytes(buf))
        if reader.byte("tag") != cls.TAG:
            raise DecodeError("not an InitiateRequest", offset=0, expected="tag 0x01")
        dedicated_key = None
        if reader.byte("dedicated-key presence"):
            length, reader.pos = decode_length(reader.buf, reader.pos)
            dedicated_key = reader.take(length, "dedicated key")
        response_allowed = True
        if reader.byte("response-allowed presence"):
            response_allowed = reader.byte("response-allowed") != 0
        qos = reader.optional_int8("proposed quality of service")
        version = reader.byte("DLMS version")
        conformance = reader.conformance()
        max_pdu = int.from_bytes(reader.take(2, "client max receive PDU size"), "big")
        reader.end("InitiateRequest")
        return cls(conformance, max_pdu, version, dedicated_key, response_allowed, qos)


@dataclass(frozen=True, slots=True)
class InitiateResponse:
    """xDLMS InitiateResponse (tag 0x08)."""

    conformance: Conformance
    server_max_receive_pdu_size: int
    dlms_version: int = DLMS_VERSION
    negotiated_quality_of_service: int | None = None
    vaa_name: int = VAA_NAME_LN

    TAG = 0x08

    def encode(self) -> bytes:
        if not 0 <= self.dlms_version <= 255:
            raise EncodeError(f"DLMS version {self.dlms_version} is not an Unsigned8")
        return (
            bytes((self.TAG,))
            + _optional_int8(self.negotiated_quality_of_service)
            + bytes((self.dlms_version,))
            + _conformance(self.conformance)
            + _u16("server max receive PDU size", self.server_max_receive_pdu_size)
            + _u16("VAA name", self.vaa_name)
        )

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> Self:
        """Decode exactly one InitiateResponse; DecodeError if malformed."""
        reader = _Reader(bytes(buf))
        if reader.byte("tag") != cls.TAG:
            raise DecodeError("not an InitiateResponse", offset=0, expected="tag 0x08")
        qos = reader.optional_int8("negotiated quality of service")
        version = reader.byte("DLMS version")
        conformance = reader.conformance()
        max_pdu = int.from_bytes(reader.take(2, "server max receive PDU size"), "big")
        vaa_name = int.from_bytes(reader.take(2, "VAA name"), "big")
        reader.end("InitiateResponse")
        return cls(conformance, max_pdu, version, qos, vaa_name)


@dataclass(frozen=True, slots=True)
class ConfirmedServiceError:
    """xDLMS ConfirmedServiceError (tag 0x0E): ``0E service error-kind value``.

    ``service`` is the CHOICE naming the failed service (1 = initiateError), ``error`` the
    ServiceError CHOICE (6 = initiate) and ``value`` its enumerated reason (see InitiateErrorReason).
    """

    service: int = 1
    error: int = 6
    value: int = InitiateErrorReason.OTHER

    TAG = 0x0E

    def encode(self) -> bytes:
        for name, number in (("service", self.service), ("error", self.error), ("value", self.value)):
            if not 0 <= number <= 255:
                raise EncodeError(f"ConfirmedServiceError {name} {number} is not 0-255")
        return bytes((self.TAG, self.service, self.error, self.value))

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> Self:
        """Decode exactly one ConfirmedServiceError; DecodeError if malformed."""
        reader = _Reader(bytes(buf))
        if reader.byte("tag") != cls.TAG:
            raise DecodeError("not a ConfirmedServiceError", offset=0, expected="tag 0x0E")
        service, error, value = reader.take(3, "service, error and value")
        reader.end("ConfirmedServiceError")
        return cls(service, error, value)


def decode_xdlms_initiate(
    buf: bytes | bytearray | memoryview,
) -> InitiateRequest | InitiateResponse | ConfirmedServiceError:
    """Decode the (deciphered) xDLMS APDU of an ACSE user-information field by its tag."""
    if not buf:
        raise DecodeError("empty xDLMS APDU", offset=0, expected="tag 0x01, 0x08 or 0x0E")
    tag = buf[0]
    if tag == InitiateRequest.TAG:
        return InitiateRequest.decode(buf)
    if tag == InitiateResponse.TAG:
        return InitiateResponse.decode(buf)
    if tag == ConfirmedServiceError.TAG:
        return ConfirmedServiceError.decode(buf)
    raise DecodeError(f"xDLMS tag 0x{tag:02X}", offset=0, expected="tag 0x01, 0x08 or 0x0E")
