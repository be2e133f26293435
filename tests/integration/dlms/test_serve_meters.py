"""Many simulated meters in one event loop, each on its own loopback address (fleet hosting)."""

from __future__ import annotations

import asyncio

from openami.protocols.dlms.client import ClientSettings, DlmsClient
from openami.protocols.dlms.obis import SERIAL
from openami.sim.meter import MeterConfig, SimulatedMeter, close_servers, serve_meters

from .conftest import CLIENT_TITLE, GAK, GUEK


async def test_meters_on_their_own_addresses_answer_as_themselves() -> None:
    meters = [
        SimulatedMeter(MeterConfig(f"OAM0000010{i}", b"OAM\x00\x00\x00\x01" + bytes([i]), GUEK, GAK, profile_days=1))
        for i in range(3)
    ]
    servers = await serve_meters((meter, f"127.0.0.{i + 2}", 0) for i, meter in enumerate(meters))
    try:

        async def serial(i: int) -> object:
            port = servers[i].sockets[0].getsockname()[1]
            settings = ClientSettings.management(
                f"127.0.0.{i + 2}", port, system_title=CLIENT_TITLE, guek=GUEK, gak=GAK, timeout_s=5.0
            )
            async with DlmsClient(settings) as client:
                assert client.server_system_title == meters[i].config.system_title
                return await client.get(SERIAL, 1, 2)

        assert await asyncio.gather(*(serial(i) for i in range(3))) == [f"OAM0000010{i}" for i in range(3)]
    finally:
        await close_servers(servers)
