"""A small fleet in worker processes, read over loopback with the real DLMS client (HLS-GMAC, Suite 0)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from openami.protocols.dlms.client import ClientSettings, DlmsClient, ProfileRow
from openami.protocols.dlms.session_errors import ConnectionClosedError, DlmsTimeoutError
from openami.sim.commissioning import read_commissioning
from openami.sim.fleet import FaultKind, FleetConfig, SimMeter
from openami.sim.loadshape import LoadModel
from openami.sim.runner import FleetHandle, run_fleet_in_process, start_fleet_processes

OPENAMI = str(Path(sys.executable).with_name("openami"))
HEADEND_TITLE = b"OPENAMI1"
LOAD_PROFILE = "1.0.99.1.0.255"
# 20 meters, 3 of them flaky (one of each kind), 2 drifting clocks; OS-chosen ports (never fixed ones)
CONFIG = FleetConfig(meters=20, seed=3, flaky_fraction=0.15, drift_fraction=0.1, port=0, days=3)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetHandle]:
    path = tmp_path_factory.mktemp("fleet") / "commissioning.json"
    with start_fleet_processes(CONFIG, processes=2, commissioning_path=path, timeout=60) as handle:
        yield handle


# the next invocation counter per meter: a meter refuses a counter it has already seen (replay)
COUNTERS: dict[str, int] = {}


def settings(meter: SimMeter, timeout_s: float = 10.0) -> ClientSettings:
    return ClientSettings.management(
        meter.host, meter.port, system_title=HEADEND_TITLE, guek=meter.guek, gak=meter.gak, timeout_s=timeout_s,
        invocation_counter=COUNTERS.get(meter.serial, 0),
    )  # fmt: skip


@contextlib.asynccontextmanager
async def associated(meter: SimMeter, timeout_s: float = 10.0) -> AsyncIterator[DlmsClient]:
    client = DlmsClient(settings(meter, timeout_s))
    try:
        async with client:
            yield client
    finally:
        COUNTERS[meter.serial] = client.client_invocation_counter


async def read_day(meter: SimMeter) -> list[ProfileRow]:
    async with associated(meter) as client:
        end = await client.read_clock()
        return await client.read_profile(LOAD_PROFILE, end - timedelta(days=1), end)


def test_commissioning_file_matches_the_contract_and_is_0600(running: FleetHandle) -> None:
    assert running.commissioning_path is not None
    assert stat.S_IMODE(running.commissioning_path.stat().st_mode) == 0o600
    document = read_commissioning(running.commissioning_path)
    assert document["seed"] == 3
    served = {m.serial: m for m in running.fleet.meters}
    assert [m["serial"] for m in document["meters"]] == list(served)
    for entry in document["meters"]:
        meter = served[entry["serial"]]
        assert (entry["host"], entry["port"]) == (meter.host, meter.port)
        assert entry["port"] != 0  # the ports the workers actually bound
        assert entry["system_title"] == meter.system_title.hex()
        assert entry["keys"] == {"guek": meter.guek.hex(), "gak": meter.gak.hex(), "kek": meter.kek.hex()}
    assert len({(m["host"], m["port"]) for m in document["meters"]}) == 20


def test_fleet_has_every_kind_of_fault(running: FleetHandle) -> None:
    assert {m.fault for m in running.fleet.flaky} == set(FaultKind)
    assert len(running.fleet.drifting) == 2
    assert len(running.pids) == 2
    assert running.alive()


async def test_every_reliable_meter_answers_a_secured_association_and_a_day_of_profile(running: FleetHandle) -> None:
    reliable = [m for m in running.fleet.meters if m.fault is None]
    results = await asyncio.gather(*(read_day(m) for m in reliable))
    for meter, rows in zip(reliable, results, strict=True):
        assert 95 <= len(rows) <= 97, meter.serial
        model = LoadModel(meter.load)
        for previous, row in itertools.pairwise(rows):
            assert row.clock - previous.clock == timedelta(minutes=15)
            delta = (int(row.values[0]) - int(previous.values[0]), int(row.values[1]) - int(previous.values[1]))
            assert delta == model(int(row.clock.timestamp())), f"{meter.serial} at {row.clock}"


async def test_drifting_clocks_are_off_by_their_configured_offset(running: FleetHandle) -> None:
    for meter in running.fleet.drifting:
        async with associated(meter) as client:
            clock = await client.read_clock()
        error = (clock - datetime.now(UTC)).total_seconds()
        assert error == pytest.approx(meter.clock_offset_s, abs=3.0), meter.serial


async def test_slow_meter_answers_late(running: FleetHandle) -> None:
    meter = next(m for m in running.fleet.flaky if m.fault is FaultKind.SLOW)
    started = time.monotonic()
    async with associated(meter, timeout_s=10) as client:
        await client.read_clock()
    assert time.monotonic() - started >= 3 * meter.delay_s  # AARE, HLS reply and the GET each held back


async def test_silent_meter_accepts_the_connection_but_never_answers(running: FleetHandle) -> None:
    meter = next(m for m in running.fleet.flaky if m.fault is FaultKind.SILENT)
    with pytest.raises(DlmsTimeoutError):
        async with associated(meter, timeout_s=1.0):
            pass


async def test_dropping_meter_hangs_up_before_the_profile_is_read(running: FleetHandle) -> None:
    meter = next(m for m in running.fleet.flaky if m.fault is FaultKind.DROP)
    with pytest.raises(ConnectionClosedError):
        await read_day(meter)
    with pytest.raises(ConnectionClosedError):  # every connection, not just the first
        await read_day(meter)


async def test_one_process_api_serves_a_fleet_in_the_caller_s_loop() -> None:
    stop = asyncio.Event()
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_fleet_in_process(FleetConfig(meters=3, seed=5, port=0), stop, ready))
    try:
        fleet = await asyncio.wait_for(ready, timeout=30)
        rows = await read_day(fleet.meters[1])
        assert len(rows) >= 95
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def test_stop_ends_every_worker() -> None:
    handle = start_fleet_processes(FleetConfig(meters=4, port=0), processes=2, timeout=60)
    assert handle.exit_codes == [None, None]
    handle.stop()
    assert handle.exit_codes == [0, 0]
    assert not handle.alive()


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[str], prefix: str, timeout: float = 60.0) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while not (seen and seen[-1].startswith(prefix)):
        seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
    return seen


def _gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)  # polling another process's exit, with a deadline
    return False


def _cli(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    args = [OPENAMI, "sim", "fleet", "--meters", "12", "--base-port", "0", "--out", str(tmp_path / "c.json"), *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_prints_ready_writes_the_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = _cli(tmp_path, "--processes", "2", "--seed", "9")
    try:
        seen = _wait_for(_lines(process), "ready:")
        assert "ready: 12 meters on 127.0.1.1-127.0.1.12" in seen[-1]
        assert seen[-1].rstrip().endswith(str((tmp_path / "c.json").resolve()))
        assert sum(line.startswith("listening: worker pid") for line in seen) == 2
        assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o600
        assert read_commissioning(tmp_path / "c.json")["seed"] == 9
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "stopping" in stderr


def test_workers_do_not_outlive_a_killed_parent(tmp_path: Path) -> None:
    process = _cli(tmp_path)
    try:
        seen = _wait_for(_lines(process), "ready:")
    finally:
        process.kill()
        process.wait(timeout=30)
    pids = [int(line.split()[3].rstrip(":")) for line in seen if line.startswith("listening:")]
    assert pids
    assert all(_gone(pid) for pid in pids)


def test_cli_refuses_an_impossible_fleet(tmp_path: Path) -> None:
    process = _cli(tmp_path, "--single-address", "--base-port", "65530")
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "leaves no room" in stderr


def test_explicit_partitions_serve_the_named_meters_per_process_and_must_name_each_meter_once() -> None:
    config = FleetConfig(meters=4, seed=9, flaky_fraction=0.0, port=0, single_address=True, days=1)
    with pytest.raises(ValueError, match="exactly once"):
        start_fleet_processes(config, partitions=[[0, 1], [1, 2, 3]])
    with pytest.raises(ValueError, match="exactly once"):
        start_fleet_processes(config, partitions=[[0, 1], [3]])
    with start_fleet_processes(config, partitions=[[0, 2, 3], [1]], timeout=60) as handle:
        assert len(handle.pids) == 2
        assert handle.control("power-fail", [1], last_gasp_share=0.0, seed=1) == 1  # the second process's meter

        async def answers() -> list[bool]:
            found = []
            for meter in handle.fleet.meters:
                try:
                    async with associated(meter, timeout_s=1.0):
                        found.append(True)
                except (DlmsTimeoutError, ConnectionClosedError, OSError):
                    found.append(False)
            return found

        assert asyncio.run(answers()) == [True, False, True, True]
