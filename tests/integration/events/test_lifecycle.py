"""start_platform/stop_platform run the event pipeline and the push listener; a taken port does not stop
the platform (events then come from the meters' logs) but leaves it without a listener, also when the
listener would run in a process of its own (``push.process``: the child says why and exits)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from openami.services.bootstrap import build_platform, start_platform, stop_platform
from openami.settings import PushSettings, Settings


async def test_the_pipeline_and_listener_start_and_stop_with_the_platform(engine: Engine, tmp_path: Path) -> None:
    platform = build_platform(Settings(data_dir=tmp_path, push=PushSettings(port=0)), engine=engine)
    await start_platform(platform)
    try:
        assert platform.events is not None
        assert platform.collector.events is platform.events
        assert platform.push_listener is not None
        host, port = platform.push_listener.address
        assert host == "127.0.0.1"
        assert port > 0
        with socket.create_connection((host, port), timeout=5):
            pass
    finally:
        await stop_platform(platform)
    assert platform.events is None
    assert platform.push_listener is None
    assert platform.collector.events is None


@pytest.mark.parametrize("process", [False, True], ids=["in-process", "push-process"])
async def test_a_taken_port_leaves_the_platform_running_without_a_listener(
    engine: Engine, tmp_path: Path, process: bool
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(data_dir=tmp_path, push=PushSettings(port=port, process=process))
        platform = build_platform(settings, engine=engine)
        await start_platform(platform)
        try:
            assert platform.push_listener is None
            assert platform.events is not None  # event-log reads still go through the pipeline
        finally:
            await stop_platform(platform)


async def test_the_listener_can_be_disabled(engine: Engine, tmp_path: Path) -> None:
    platform = build_platform(Settings(data_dir=tmp_path, push=PushSettings(enabled=False)), engine=engine)
    await start_platform(platform)
    try:
        assert platform.push_listener is None
        assert platform.events is not None
    finally:
        await stop_platform(platform)
