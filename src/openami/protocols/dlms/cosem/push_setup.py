"""Push Setup (class 40) interface class (Blue Book, clause 4.4.8), server role, sans-IO.

Attributes: 2 push_object_list (array of capture_object_definition), 3 send_destination_and_method
``{transport_service enum, destination octet-string, message enum}``, 4 communication_window (array
of ``{start date-time, end date-time}``), 5 randomisation_start_interval (long-unsigned, s),
6 number_of_retries (unsigned), 7 repetition_delay (long-unsigned, s). Method 1 ``push(integer 0)``
asks the device to send a notification now; the object only calls the device's ``on_push``, the
device does the sending (this package has no sockets).

The destination of a TCP or UDP push is ``"host:port"`` in the octet-string (the DLMS UA convention
for transport services 0, TCP, and 1, UDP: the IEC 62056-47 wrapper either way, one frame per UDP
datagram); :func:`parse_destination` splits it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

from openami.protocols.dlms.axdr import Array, Enum, LongUnsigned, Structure, Unsigned
from openami.protocols.dlms.cosem.base import AssociationView, CosemAccessError, CosemObject, Result, Value, as_int
from openami.protocols.dlms.cosem.profile import CaptureObject
from openami.protocols.dlms.errors import DlmsError
from openami.protocols.dlms.obis import Obis

__all__ = ["MessageType", "PushSetup", "TransportService", "parse_destination"]


class TransportService(enum.IntEnum):
    """send_destination_and_method.transport_service (Blue Book 4.4.8)."""

    TCP = 0
    UDP = 1
    FTP = 2
    SMTP = 3
    SMS = 4
    HDLC = 5
    M_BUS = 6
    ZIGBEE = 7


class MessageType(enum.IntEnum):
    """send_destination_and_method.message: how the pushed data is wrapped."""

    A_XDR_APDU = 0  # an xDLMS APDU, A-XDR encoded (the DataNotification openami sends)
    XML_APDU = 1


_IP_TRANSPORTS = frozenset({TransportService.TCP, TransportService.UDP})  # destinations are host:port


def parse_destination(destination: bytes) -> tuple[str, int]:
    """(host, port) of a TCP or UDP destination ``b"host:port"``; DlmsError when it is not one."""
    try:
        text = destination.decode("ascii")
        host, _, port_text = text.rpartition(":")
        port = int(port_text)
    except (UnicodeDecodeError, ValueError):
        raise DlmsError("push destination is not an ASCII host:port") from None
    if not host or not 0 < port <= 0xFFFF:
        raise DlmsError("push destination is not an ASCII host:port")
    return host.strip("[]"), port


_TRANSPORTS = frozenset(int(t) for t in TransportService)
_MESSAGES = frozenset(int(m) for m in MessageType)


class PushSetup(CosemObject):
    """Push setup (class_id 40, version 0); attributes 2-7 writable by a client with full rights.

    ``on_push`` is called by method 1 (and by nobody else here); the device decides what the
    notification carries. An empty ``destination`` means "nowhere to push".
    """

    class_id = 40
    attribute_count = 7
    method_count = 1
    writable = frozenset({2, 3, 4, 5, 6, 7})

    def __init__(
        self,
        logical_name: Obis,
        *,
        push_objects: Sequence[CaptureObject] = (),
        destination: bytes = b"",
        randomisation_start_interval: int = 0,
        number_of_retries: int = 0,
        repetition_delay: int = 0,
        on_push: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(logical_name)
        self.push_objects = tuple(push_objects)
        self.destination = destination
        self.transport = TransportService.TCP
        self.message = MessageType.A_XDR_APDU
        self.communication_window: list[Value] = []
        self.randomisation_start_interval = randomisation_start_interval
        self.number_of_retries = number_of_retries
        self.repetition_delay = repetition_delay
        self.on_push = on_push

    def ip_destination(self) -> tuple[TransportService, str, int] | None:
        """(TCP or UDP, host, port) to push to, or None (no destination, another transport, or unreadable)."""
        if not self.destination or self.transport not in _IP_TRANSPORTS:
            return None
        try:
            host, port = parse_destination(self.destination)
        except DlmsError:
            return None
        return self.transport, host, port

    def _get(self, attribute: int, view: AssociationView, selector: int | None, parameters: Value) -> Value:
        if attribute == 2:
            return Array(o.to_data() for o in self.push_objects)
        if attribute == 3:
            return Structure((Enum(self.transport), self.destination, Enum(self.message)))
        if attribute == 4:
            return Array(self.communication_window)
        if attribute == 5:
            return LongUnsigned(self.randomisation_start_interval)
        if attribute == 6:
            return Unsigned(self.number_of_retries)
        return LongUnsigned(self.repetition_delay)

    def _set(self, attribute: int, value: Value, view: AssociationView) -> None:
        if attribute == 2:
            self.push_objects = tuple(_capture_objects(value))
        elif attribute == 3:
            self._set_destination(value)
        elif attribute == 4:
            self.communication_window = list(_windows(value))
        elif attribute == 5:
            self.randomisation_start_interval = as_int(value, 0, 0xFFFF, "randomisation_start_interval")
        elif attribute == 6:
            self.number_of_retries = as_int(value, 0, 0xFF, "number_of_retries")
        else:
            self.repetition_delay = as_int(value, 0, 0xFFFF, "repetition_delay")

    def _set_destination(self, value: Value) -> None:
        if not (isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], bytes)):
            raise CosemAccessError(Result.TYPE_UNMATCHED, "send_destination_and_method is {enum, octet-string, enum}")
        transport = as_int(value[0], 0, 0xFF, "transport_service")
        message = as_int(value[2], 0, 0xFF, "message")
        if transport not in _TRANSPORTS or message not in _MESSAGES:
            raise CosemAccessError(Result.OTHER_REASON, "transport service or message type not supported")
        if transport in _IP_TRANSPORTS and value[1]:
            try:
                parse_destination(value[1])
            except DlmsError:
                raise CosemAccessError(Result.TYPE_UNMATCHED, "a TCP or UDP destination is host:port") from None
        self.transport = TransportService(transport)
        self.destination = value[1]
        self.message = MessageType(message)

    def _action(self, method: int, parameters: Value, view: AssociationView) -> Value:
        as_int(parameters, -128, 127, "the push parameter")
        if self.on_push is None or self.ip_destination() is None:
            raise CosemAccessError(Result.TEMPORARY_FAILURE, "no push destination")
        self.on_push()
        return None


def _capture_objects(value: Value) -> list[CaptureObject]:
    if not isinstance(value, list):
        raise CosemAccessError(Result.TYPE_UNMATCHED, "push_object_list is an array")
    try:
        return [CaptureObject.from_data(item) for item in value]
    except DlmsError:
        raise CosemAccessError(Result.TYPE_UNMATCHED, "push_object_list holds capture object definitions") from None


def _windows(value: Value) -> list[Value]:
    if not isinstance(value, list) or not all(
        isinstance(w, tuple) and len(w) == 2 and all(isinstance(t, bytes) and len(t) == 12 for t in w) for w in value
    ):
        raise CosemAccessError(Result.TYPE_UNMATCHED, "communication_window is an array of {date-time, date-time}")
    return list(value)
