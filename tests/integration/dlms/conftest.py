"""Fixtures for DLMS/COSEM over real loopback sockets: a simulated meter server and raw sessions.

- ``meter``: a SimulatedMeter (serial OAM00000042, 30 days of profile, fixed keys below);
- ``meter_port``: the port (on 127.0.0.1, ephemeral) of a server serving ``meter``;
- ``management`` / ``public``: ClientSettings factories for that port;
- ``raw_session``: a factory of :class:`RawSession` (a real TCP connection driven by a sans-IO
  ClientConnection, which can also send hand-made APDUs to test the server's refusals).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from openami.protocols.dlms.aio import open_stream
from openami.protocols.dlms.client import ClientSettings
from openami.protocols.dlms.client_connection import Associate, ClientConnection
from openami.protocols.dlms.connection import NEED_DATA
from openami.protocols.dlms.session_errors import ConnectionClosedError
from openami.protocols.dlms.wrapper import WrapperFramer, encode_wrapper
from openami.sim.meter import MeterConfig, SimulatedMeter, close_servers, serve_meter

GUEK = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
GAK = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")
SERVER_TITLE = bytes.fromhex("4F414D0000000042")
CLIENT_TITLE = bytes.fromhex("4F50454E414D4901")
SERIAL = "OAM00000042"


@pytest.fixture
def meter() -> SimulatedMeter:
    return SimulatedMeter(MeterConfig(SERIAL, SERVER_TITLE, GUEK, GAK, profile_days=30))


@pytest.fixture
async def meter_port(meter: SimulatedMeter) -> AsyncIterator[int]:
    server = await serve_meter(meter, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        await close_servers([server])


@pytest.fixture
def management(meter_port: int) -> Callable[..., ClientSettings]:
    def settings(**overrides: object) -> ClientSettings:
        base = ClientSettings.management(
            "127.0.0.1", meter_port, system_title=CLIENT_TITLE, guek=GUEK, gak=GAK, timeout_s=5.0
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    return settings


@pytest.fixture
def public(meter_port: int) -> Callable[..., ClientSettings]:
    def settings(**overrides: object) -> ClientSettings:
        return replace(ClientSettings.public("127.0.0.1", meter_port, timeout_s=5.0), **overrides)  # type: ignore[arg-type]

    return settings


class RawSession:
    """A TCP connection to the meter driven by hand: frames in, frames out, with a deadline."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.connection = ClientConnection(settings)
        self.framer = WrapperFramer()
        self.stream = None

    async def open(self) -> RawSession:
        self.stream = await open_stream(self.settings.host, self.settings.port, connect_timeout_s=5.0)
        return self

    async def associate(self) -> object:
        """Run the association (HLS included) through the sans-IO client; returns its event."""
        assert self.stream is not None
        self.stream.write(self.connection.send(Associate()))
        deadline = self.stream.deadline(5.0)
        while (event := self.connection.next_event()) is NEED_DATA:
            if out := self.connection.data_to_send():
                self.stream.write(out)
            self.connection.receive_data(await self.stream.read(deadline))
        return event

    def write(self, data: bytes) -> None:
        assert self.stream is not None
        self.stream.write(data)

    async def exchange(self, apdu: bytes) -> bytes:
        """Send one APDU in a wrapper frame and return the APDU of the answer frame."""
        self.write(encode_wrapper(self.settings.client_sap, self.settings.server_address, apdu))
        return await self.read_apdu()

    async def read_apdu(self) -> bytes:
        assert self.stream is not None
        deadline = self.stream.deadline(5.0)
        while (frame := self.framer.next_frame()) is None:
            self.framer.feed(await self.stream.read(deadline))
        return frame.apdu

    async def closed_by_peer(self) -> bool:
        """True when the meter closes the connection (within 5 s) without sending anything."""
        assert self.stream is not None
        deadline = self.stream.deadline(5.0)
        try:
            data = await self.stream.read(deadline)
        except ConnectionClosedError:
            return True
        return not data

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


@pytest.fixture
async def raw_session() -> AsyncIterator[Callable[[ClientSettings], asyncio.Future[RawSession]]]:
    sessions: list[RawSession] = []

    async def open_session(settings: ClientSettings) -> RawSession:
        session = await RawSession(settings).open()
        sessions.append(session)
        return session

    yield open_session  # type: ignore[misc]
    for session in sessions:
        session.close()
