"""What a head-end hands the client connection and gets back from it: settings and events.

``ClientSettings`` describes one association with one meter (IEC 62056-5-3 clause 9.4 and the
DLMS UA interoperability profile: management client SAP 1 with HLS-GMAC and Suite 0, public client
SAP 16 without security); the events are what ``ClientConnection.send`` takes and
``ClientConnection.next_event`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self, TypeAlias

from openami.protocols.dlms.acse import Mechanism
from openami.protocols.dlms.apdu import (
    ActionRequestNormal,
    ActionResponseNormal,
    ExceptionResponse,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseNormal,
    GetResponseWithList,
    SetRequestNormal,
    SetResponseNormal,
)
from openami.protocols.dlms.xdlms import Conformance

__all__ = [
    "DEFAULT_CONFORMANCE",
    "Associate",
    "Associated",
    "AssociationRejected",
    "ClientEvent",
    "ClientSettings",
    "Release",
    "Released",
    "Request",
    "Response",
    "ResponseApdu",
]

_MAX_IC = 0xFFFFFFFF

DEFAULT_CONFORMANCE = (
    Conformance.GET
    | Conformance.SET
    | Conformance.ACTION
    | Conformance.SELECTIVE_ACCESS
    | Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ
    | Conformance.MULTIPLE_REFERENCES
)
"""What the client proposes: get, set, action, selective access, GET blocks, with-list."""


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """One client association with one meter. Keys never appear in ``repr``.

    ``invocation_counter`` is the next counter the client uses (persist what the connection
    reports after each session); ``server_invocation_counter`` the last one accepted from the server
    (-1: none yet). ``host``, ``port`` and ``timeout_s`` are for the transport (``DlmsClient``).
    """

    host: str = "127.0.0.1"
    port: int = 4059
    client_sap: int = 16
    server_address: int = 1
    mechanism: Mechanism = Mechanism.NONE
    ciphered: bool = False
    system_title: bytes | None = None
    guek: bytes | None = field(default=None, repr=False)
    gak: bytes | None = field(default=None, repr=False)
    invocation_counter: int = 0
    server_invocation_counter: int = -1
    max_pdu_size: int = 1024
    conformance: Conformance = DEFAULT_CONFORMANCE
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.mechanism not in (Mechanism.NONE, Mechanism.HLS_GMAC):
            raise ValueError("only no authentication or HLS-GMAC (mechanism 5) are supported")
        secured = self.ciphered or self.mechanism is Mechanism.HLS_GMAC
        if secured and (self.system_title is None or len(self.system_title) != 8):
            raise ValueError("ciphering and HLS-GMAC need an 8-byte client system title")
        if secured and (self.guek is None or self.gak is None or len(self.guek) != 16 or len(self.gak) != 16):
            raise ValueError("ciphering and HLS-GMAC need a 16-byte GUEK and a 16-byte GAK")
        if not 0 <= self.invocation_counter <= _MAX_IC:
            raise ValueError("invocation_counter must be 0..2**32-1")
        if not 12 <= self.max_pdu_size <= 0xFFFF:
            raise ValueError("max_pdu_size must be 12..65535")

    @classmethod
    def management(
        cls, host: str, port: int, *, system_title: bytes, guek: bytes, gak: bytes, **options: object
    ) -> Self:
        """Management client SAP 1 → logical device 1, HLS-GMAC and Suite 0 ciphering."""
        return cls(
            host=host,
            port=port,
            client_sap=1,
            mechanism=Mechanism.HLS_GMAC,
            ciphered=True,
            system_title=system_title,
            guek=guek,
            gak=gak,
            **options,  # type: ignore[arg-type]
        )

    @classmethod
    def public(cls, host: str, port: int, **options: object) -> Self:
        """Public client SAP 16 → logical device 1, no security."""
        return cls(host=host, port=port, client_sap=16, **options)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class Associate:
    """Send: open the association (AARQ)."""


@dataclass(frozen=True, slots=True)
class Release:
    """Send: release the association (RLRQ, reason normal)."""


@dataclass(frozen=True, slots=True)
class Associated:
    """The association is established (after HLS passes 3 and 4 when the mechanism needs them)."""

    conformance: Conformance
    max_pdu_size: int
    server_system_title: bytes | None


@dataclass(frozen=True, slots=True)
class AssociationRejected:
    """The AARE rejected the association (``result`` 1 permanent, 2 transient) with its diagnostic."""

    result: int
    diagnostic: int
    diagnostic_source: int


ResponseApdu: TypeAlias = (
    GetResponseNormal | GetResponseWithList | SetResponseNormal | ActionResponseNormal | ExceptionResponse
)


@dataclass(frozen=True, slots=True)
class Response:
    """The answer to the pending request; GET blocks arrive here already reassembled."""

    apdu: ResponseApdu


@dataclass(frozen=True, slots=True)
class Released:
    """The RLRE arrived; the association is over."""

    reason: int | None


Request: TypeAlias = GetRequestNormal | GetRequestWithList | SetRequestNormal | ActionRequestNormal
ClientEvent: TypeAlias = Associated | AssociationRejected | Response | Released
