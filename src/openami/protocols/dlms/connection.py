"""What both sans-IO association machines share: the NEED_DATA marker and the state table.

STYLE.md pattern 1: each role's association is a table ``{state: {event_type: next_state}}``; an
event that is not in the table for the current state is a protocol error (ProtocolStateError). The
client machine is in ``client_connection``, the server machine in ``server_connection``; both only
take bytes and return bytes or events, so the same code runs over asyncio, in tests and in
benchmarks. Association phases follow IEC 62056-5-3 clause 9.4 (AA establishment, data
communication, release).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final, Generic, TypeVar

from openami.protocols.dlms.errors import ProtocolStateError

__all__ = ["NEED_DATA", "EncodedData", "NeedData", "StateMachine"]


class NeedData(enum.Enum):
    """Sentinel type: the connection needs more bytes before it can produce the next event."""

    NEED_DATA = "need-data"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA

S = TypeVar("S", bound=enum.Enum)


class EncodedData(bytes):
    """A value already A-XDR encoded, tag included (IEC 62056-6-2 ``Data``), kept as bytes.

    On hot paths the encoder and decoder are skipped: a server object (a profile buffer, a
    pre-encoded profile row) returns one and the server splices it into the GET answer as it is; a
    client asks for one (``raw=True``) and decodes it with a specialised decoder. It must never be
    passed to ``axdr.encode``, which would send it as an octet-string.
    """

    __slots__ = ()


class StateMachine(Generic[S]):
    """Apply a transition table; ``fire`` raises ProtocolStateError for an event not allowed now."""

    def __init__(self, table: Mapping[S, Mapping[type, S]], initial: S) -> None:
        self.table = table
        self.state = initial

    def allows(self, event_type: type) -> bool:
        return event_type in self.table.get(self.state, {})

    def fire(self, event_type: type) -> S:
        """Move to the state the table gives for ``event_type``; returns the new state."""
        try:
            self.state = self.table[self.state][event_type]
        except KeyError:
            raise ProtocolStateError(f"{event_type.__name__} is not allowed in state {self.state.name}") from None
        return self.state
