"""``push.process``: the listener and pipeline in a child process. Pushes from a meter imported after
start are accepted once the child has noticed the new keys by itself (no reload asked); forged and
replayed datagrams are refused there and recorded as security events; what the child stored is
published on the platform's bus exactly once; stopping the platform ends the child."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.bus.topics import METER_EVENTS
from openami.db import tables as t
from openami.domain.meter_events import EventCode, MeterEvents
from openami.protocols.dlms.push import PushedEvent, encode_push
from openami.services.bootstrap import build_platform, start_platform, stop_platform
from openami.services.meters import import_commissioning
from openami.services.push_process import PushProcess
from openami.settings import PushSettings, Settings

GUEK, GAK = bytes(range(16)), bytes(range(16, 32))
TITLE = bytes.fromhex("4F414D00000000A1")
DEADLINE_S = 30.0


def _meter_document() -> dict[str, Any]:
    meter = {
        "serial": "PUSHPROC01", "kind": "electric", "customer_class": "residential", "host": "127.0.0.1", "port": 1,
        "system_title": TITLE.hex().upper(), "model": "test", "firmware": "1.0", "service_point_id": None,
        "keys": {"guek": GUEK.hex(), "gak": GAK.hex()},
    }  # fmt: skip
    return {"format": "openami-commissioning", "version": 1, "meters": [meter]}


def _push(counter: int, *, key: bytes | None = None, code: EventCode = EventCode.COVER_OPENED) -> bytes:
    return encode_push(
        [PushedEvent(datetime.now(UTC).replace(microsecond=0), int(code))], system_title=TITLE,
        invocation_counter=counter, guek=key or GUEK, gak=key or GAK, sequence=counter, meter_time=datetime.now(UTC),
    )  # fmt: skip


def _stored(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(t.meter_events)).scalar_one())


def _security_kinds(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [str(k) for k in conn.execute(sa.select(t.security_events.c.kind)).scalars()]


async def test_the_push_process_stores_forwards_and_refuses_like_the_platform(engine: Engine, tmp_path: Path) -> None:
    platform = build_platform(Settings(data_dir=tmp_path, push=PushSettings(port=0, process=True)), engine=engine)
    published: list[MeterEvents] = []

    async def on_events(batch: MeterEvents) -> None:
        published.append(batch)

    platform.bus.subscribe(METER_EVENTS, on_events)
    await start_platform(platform)
    front = platform.push_listener
    assert isinstance(front, PushProcess)
    assert front.udp_address is not None
    child = front.pid
    assert child is not None
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    try:
        import_commissioning(engine, platform.keystore, _meter_document(), now=datetime.now(UTC))  # no reload asked
        counter = 0
        deadline = loop.time() + DEADLINE_S
        while _stored(engine) == 0:  # refused as unknown until the child has seen the new keys
            assert loop.time() < deadline, "the push process never accepted the new meter's keys"
            counter += 1
            udp.sendto(_push(counter), front.udp_address)
            await asyncio.sleep(0.2)
        udp.sendto(_push(counter), front.udp_address)  # the accepted counter again: a replay
        udp.sendto(_push(counter + 1, key=bytes(16)), front.udp_address)  # not under the meter's keys
        udp.sendto(_push(counter + 2, code=EventCode.MAGNETIC_FIELD), front.udp_address)
        while _stored(engine) < 2 or front.stats.refused.get("meter.bad-tag", 0) < 1:
            assert loop.time() < deadline, f"{front.stats}"
            await asyncio.sleep(0.05)
    finally:
        udp.close()
        await stop_platform(platform)
    assert front.stats.refused.get("meter.replay") == 1
    assert front.stats.refused.get("meter.bad-tag") == 1
    assert front.stats.refused.get("push.unknown-source", 0) == counter - 1  # those sent before the keys arrived
    assert front.stats.stored == _stored(engine) == 2
    kinds = _security_kinds(engine)
    assert kinds.count("meter.replay") == 1
    assert kinds.count("meter.bad-tag") == 1
    codes = sorted(int(e.code) for batch in published for e in batch.events)
    assert codes == sorted([int(EventCode.COVER_OPENED), int(EventCode.MAGNETIC_FIELD)])  # each stored one, once
    assert platform.push_listener is None
    assert front.pid is None  # the child has exited


def _nice_of_threads(pid: int) -> set[int]:
    """The nice value of every thread of ``pid`` (Linux keeps one per thread: field 19 of its stat)."""
    tasks = Path(f"/proc/{pid}/task")
    return {int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]) for task in tasks.iterdir()}


async def test_the_push_process_runs_below_the_platform_at_its_configured_nice(engine: Engine, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, push=PushSettings(port=0, process=True, process_nice=7))
    platform = build_platform(settings, engine=engine)
    await start_platform(platform)
    try:
        front = platform.push_listener
        assert isinstance(front, PushProcess)
        assert front.pid is not None
        assert _nice_of_threads(front.pid) == {min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)}  # its threads too
    finally:
        await stop_platform(platform)
