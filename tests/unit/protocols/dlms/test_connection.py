"""The sans-IO association machines, client against server in memory (IEC 62056-5-3 9.4, Green Book 9.2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from openami.protocols.dlms.apdu import (
    AttributeDescriptor,
    DataAccessResult,
    GetRequestNext,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseNormal,
    GetResponseWithList,
    SetRequestNormal,
    SetResponseNormal,
    decode_apdu,
)
from openami.protocols.dlms.client import range_access
from openami.protocols.dlms.client_connection import (
    Associate,
    Associated,
    AssociationRejected,
    ClientConnection,
    ClientSettings,
    ClientState,
    Release,
    Released,
    Response,
)
from openami.protocols.dlms.connection import NEED_DATA, StateMachine
from openami.protocols.dlms.cosem import CaptureObject
from openami.protocols.dlms.errors import AuthenticationTagError, ProtocolStateError, ReplayError
from openami.protocols.dlms.obis import ACTIVE_EXPORT, ACTIVE_IMPORT, CLOCK, LOAD_PROFILE, SERIAL
from openami.protocols.dlms.server import ServerSession
from openami.protocols.dlms.server_connection import ServerState
from openami.protocols.dlms.wrapper import WrapperFramer, encode_wrapper
from openami.sim.meter import MeterConfig, SimulatedMeter

GUEK = bytes(range(16))
GAK = bytes(range(16, 32))
CLIENT_TITLE = b"OPENAMI1"
NOW = datetime(2026, 3, 1, 12, 7, tzinfo=UTC)


class Wire:
    """A client connection and a server session joined in memory; counts the frames each way."""

    def __init__(self, settings: ClientSettings, meter: SimulatedMeter, *, chunk: int = 0) -> None:
        self.client = ClientConnection(settings, challenge=b"C" * 16)
        self.server = meter.session()
        self.chunk = chunk  # >0: deliver the server's bytes in pieces of this size
        self.frames_to_server = 0
        self.frames_to_client = 0

    def run(self, data: bytes) -> object:
        while True:
            self.frames_to_server += _count_frames(data)
            answer = self.server.receive_data(data)
            self.frames_to_client += _count_frames(answer)
            pieces = [answer[i : i + self.chunk] for i in range(0, len(answer), self.chunk)] if self.chunk else [answer]
            for piece in pieces:
                self.client.receive_data(piece)
            event = self.client.next_event()
            if event is not NEED_DATA:
                return event
            data = self.client.data_to_send()
            assert data, "the client waits for an answer the server did not send"

    def request(self, request: object) -> object:
        event = self.run(self.client.send(request))  # type: ignore[arg-type]
        assert isinstance(event, Response)
        return event.apdu


def _count_frames(data: bytes) -> int:
    framer = WrapperFramer()
    framer.feed(data)
    count = 0
    while framer.next_frame() is not None:
        count += 1
    return count


@pytest.fixture
def meter() -> SimulatedMeter:
    return SimulatedMeter(MeterConfig("OAM00000001", b"OAM\x00\x00\x00\x00\x01", GUEK, GAK), now=lambda: NOW)


def management(**overrides: object) -> ClientSettings:
    options = {"system_title": CLIENT_TITLE, "guek": GUEK, "gak": GAK, **overrides}
    return ClientSettings.management("meter", 4059, **options)  # type: ignore[arg-type]


def test_state_table_refuses_events_not_allowed_now() -> None:
    connection = ClientConnection(ClientSettings.public("meter", 4059))
    with pytest.raises(ProtocolStateError):
        connection.send(GetRequestNormal(AttributeDescriptor(8, CLOCK, 2)))
    with pytest.raises(ProtocolStateError):
        connection.send(Release())
    connection.send(Associate())
    with pytest.raises(ProtocolStateError):
        connection.send(Associate())


def test_state_machine_names_the_refused_event() -> None:
    machine = StateMachine({ClientState.IDLE: {Associate: ClientState.AWAITING_AARE}}, ClientState.IDLE)
    with pytest.raises(ProtocolStateError, match="Release is not allowed in state IDLE"):
        machine.fire(Release)


def test_management_association_runs_hls_four_pass(meter: SimulatedMeter) -> None:
    wire = Wire(management(), meter)
    event = wire.run(wire.client.send(Associate()))
    assert isinstance(event, Associated)
    assert event.server_system_title == b"OAM\x00\x00\x00\x00\x01"
    assert wire.frames_to_server == 2  # AARQ, then pass 3 (ciphered ACTION)
    assert wire.server.state is ServerState.ASSOCIATED
    assert wire.client.client_invocation_counter == 3  # initiate, f(StoC), the ciphered action
    assert wire.client.server_invocation_counter >= 1


def test_public_association_needs_no_security(meter: SimulatedMeter) -> None:
    wire = Wire(ClientSettings.public("meter", 4059), meter)
    assert isinstance(wire.run(wire.client.send(Associate())), Associated)
    answer = wire.request(GetRequestNormal(AttributeDescriptor(8, CLOCK, 2)))
    assert isinstance(answer, GetResponseNormal)
    assert isinstance(answer.result, bytes)
    assert len(answer.result) == 12


def test_96_row_profile_spans_three_blocks_at_pdu_1024(meter: SimulatedMeter) -> None:
    wire = Wire(management(), meter)
    wire.run(wire.client.send(Associate()))
    end = NOW.replace(minute=0)
    access = range_access(CaptureObject(8, CLOCK, 2), end - timedelta(hours=23, minutes=45), end)
    before = wire.frames_to_client
    answer = wire.request(GetRequestNormal(AttributeDescriptor(7, LOAD_PROFILE, 2), access))
    assert isinstance(answer, GetResponseNormal)
    assert len(answer.result) == 96
    assert wire.frames_to_client - before == 3


def test_blocks_reassemble_whatever_the_tcp_split(meter: SimulatedMeter) -> None:
    wire = Wire(management(max_pdu_size=128), meter, chunk=7)
    wire.run(wire.client.send(Associate()))
    assert wire.client.max_pdu_size == 128
    access = range_access(CaptureObject(8, CLOCK, 2), NOW - timedelta(hours=6), NOW)
    answer = wire.request(GetRequestNormal(AttributeDescriptor(7, LOAD_PROFILE, 2), access))
    assert isinstance(answer, GetResponseNormal)
    assert len(answer.result) == 24


def test_get_with_list_too_long_for_one_pdu_comes_in_blocks(meter: SimulatedMeter) -> None:
    wire = Wire(management(max_pdu_size=128), meter)
    wire.run(wire.client.send(Associate()))
    items = tuple((AttributeDescriptor(3, name, 2), None) for name in (ACTIVE_IMPORT, ACTIVE_EXPORT) * 10)
    before = wire.frames_to_client
    answer = wire.request(GetRequestWithList(items))
    assert isinstance(answer, GetResponseWithList)
    assert len(answer.results) == 20
    assert all(isinstance(r, int) for r in answer.results)
    assert wire.frames_to_client - before == 2  # 20 x 6 bytes do not fit 128 bytes once ciphered
    before = wire.frames_to_client
    answer = wire.request(GetRequestWithList(items[:4]))
    assert len(answer.results) == 4  # type: ignore[union-attr]
    assert wire.frames_to_client - before == 1


def test_get_next_without_a_long_get_is_refused(meter: SimulatedMeter) -> None:
    wire = Wire(ClientSettings.public("meter", 4059), meter)
    wire.run(wire.client.send(Associate()))
    answer = wire.server.receive_data(encode_wrapper(16, 1, GetRequestNext(1).encode()))
    block = decode_apdu(answer[8:])
    assert block.result == DataAccessResult.NO_LONG_GET_IN_PROGRESS  # type: ignore[union-attr]


def test_set_and_release(meter: SimulatedMeter) -> None:
    wire = Wire(management(), meter)
    wire.run(wire.client.send(Associate()))
    answer = wire.request(SetRequestNormal(AttributeDescriptor(1, SERIAL, 2), "OTHER"))
    assert answer == SetResponseNormal(DataAccessResult.READ_WRITE_DENIED)
    event = wire.run(wire.client.send(Release()))
    assert event == Released(0)
    assert wire.server.state is ServerState.IDLE
    assert wire.client.state is ClientState.RELEASED


def test_wrong_key_is_rejected_and_the_client_can_retry(meter: SimulatedMeter) -> None:
    wire = Wire(management(gak=bytes(16)), meter)
    event = wire.run(wire.client.send(Associate()))
    assert event == AssociationRejected(1, 1, 1)
    assert wire.client.state is ClientState.REJECTED


def test_tampered_server_answer_is_refused_by_the_client(meter: SimulatedMeter) -> None:
    wire = Wire(management(), meter)
    wire.run(wire.client.send(Associate()))
    answer = bytearray(wire.server.receive_data(wire.client.send(GetRequestNormal(AttributeDescriptor(1, SERIAL, 2)))))
    answer[-3] ^= 0x40
    wire.client.receive_data(bytes(answer))
    with pytest.raises(AuthenticationTagError):
        wire.client.next_event()


def test_replayed_server_answer_is_refused_by_the_client(meter: SimulatedMeter) -> None:
    wire = Wire(management(), meter)
    wire.run(wire.client.send(Associate()))
    request = GetRequestNormal(AttributeDescriptor(1, SERIAL, 2))
    first = wire.server.receive_data(wire.client.send(request))
    wire.client.receive_data(first)
    assert isinstance(wire.client.next_event(), Response)
    wire.server.receive_data(wire.client.send(request))
    wire.client.receive_data(first)  # an attacker replays the earlier answer
    with pytest.raises(ReplayError):
        wire.client.next_event()


def test_frame_for_another_client_is_a_protocol_error(meter: SimulatedMeter) -> None:
    wire = Wire(ClientSettings.public("meter", 4059), meter)
    wire.client.send(Associate())
    wire.client.receive_data(encode_wrapper(1, 1, b"\x61\x00"))
    with pytest.raises(ProtocolStateError):
        wire.client.next_event()


def test_server_session_closes_on_unknown_sap_and_on_a_second_peer(meter: SimulatedMeter) -> None:
    session = meter.session()
    assert session.receive_data(encode_wrapper(99, 1, b"\x60\x00")) == b""
    assert session.closed
    session = ServerSession(meter.server_config)
    wire_client = ClientConnection(ClientSettings.public("meter", 4059))
    assert session.receive_data(wire_client.send(Associate()))
    assert session.receive_data(encode_wrapper(1, 1, b"\x62\x00")) == b""
    assert session.closed
