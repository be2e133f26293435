"""Scenarios through the control channel of a fleet in worker processes, and transformer check meters.

600 meters on two feeders in two worker processes, a check meter per transformer (they sit after the
customers' meters, so the first feeder's meters and their check meters live in different workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from openami.domain.meter_events import EventCode
from openami.protocols.dlms.client import ClientSettings, DlmsClient
from openami.protocols.dlms.session_errors import ConnectionClosedError, DlmsTimeoutError
from openami.sim import control
from openami.sim.fleet import Fleet, FleetConfig, SimMeter, build_fleet
from openami.sim.loadshape import LoadModel
from openami.sim.meter import MeterConfig, SimulatedMeter, close_servers, serve_meter
from openami.sim.meter_profile import LoadFunction
from openami.sim.runner import ControlError, FleetHandle, LocalFleetControl, run_fleet_in_process, start_fleet_processes
from openami.sim.scenarios import last_gasp_chosen, meters_of, restore_chosen
from openami.sim.supply import CheckLoad, SupplyLoad

from .push_listener import Decoder, FrameSink, ThreadedFrameSink

HEADEND_TITLE = b"OPENAMI1"
LOAD_PROFILE = "1.0.99.1.0.255"
COUNTERS: dict[str, int] = {}


@pytest.fixture(scope="module")
def sink() -> Iterator[ThreadedFrameSink]:
    listener = ThreadedFrameSink()
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def running(sink: ThreadedFrameSink) -> Iterator[FleetHandle]:
    config = FleetConfig(
        meters=600, seed=1, port=0, days=1, flaky_fraction=0.0, drift_fraction=0.0, check_meters=True,
        push_host="127.0.0.1", push_port=sink.port,
    )  # fmt: skip
    with start_fleet_processes(config, processes=2, timeout=120) as handle:
        yield handle


@contextlib.asynccontextmanager
async def associated(meter: SimMeter, timeout_s: float = 10.0) -> AsyncIterator[DlmsClient]:
    client = DlmsClient(
        ClientSettings.management(
            meter.host, meter.port, system_title=HEADEND_TITLE, guek=meter.guek, gak=meter.gak, timeout_s=timeout_s,
            invocation_counter=COUNTERS.get(meter.serial, 0),
        )
    )  # fmt: skip
    try:
        async with client:
            yield client
    finally:
        COUNTERS[meter.serial] = client.client_invocation_counter + 1


async def answers(meter: SimMeter) -> bool:
    try:
        async with associated(meter, timeout_s=3.0) as client:
            await client.read_clock()
    except (ConnectionClosedError, DlmsTimeoutError):
        return False
    return True


def check_meter_of(fleet: Fleet, transformer: str) -> SimMeter:
    return next(m for m in fleet.check_meters if m.check_for_transformer == transformer)


async def test_feeder_fault_darkens_its_meters_and_a_30_percent_share_push_last_gasps_then_partial_restoration(
    running: FleetHandle, sink: ThreadedFrameSink
) -> None:
    fleet = running.fleet
    faulted, healthy = fleet.topology.feeders[0].id, fleet.topology.feeders[1].id
    downstream = meters_of(fleet, feeder=faulted)
    params = {"last_gasp_share": 0.3, "seed": 11}
    gasping = {fleet.meters[i].system_title for i in downstream if last_gasp_chosen(fleet.meters[i].serial, params)}
    assert 0.2 < len(gasping) / len(downstream) < 0.4
    decode = Decoder({m.system_title: (m.guek, m.gak) for m in fleet.meters})
    before = len(sink.frames)

    assert await asyncio.to_thread(running.control, "power-fail", downstream, **params) == len(downstream)

    pushes = [decode(f) for f in (await sink.wait_for(before + len(gasping)))[before:]]
    assert {p.system_title for p in pushes} == gasping
    assert {e.code for p in pushes for e in p.events} == {EventCode.POWER_DOWN}
    sample = [fleet.meters[i] for i in downstream[:: len(downstream) // 5]]
    assert not any(await asyncio.gather(*(answers(m) for m in sample)))
    faulted_transformer = fleet.topology.service_points[downstream[0]].transformer_id
    assert not await answers(check_meter_of(fleet, faulted_transformer))  # the whole transformer is dark
    other = meters_of(fleet, feeder=healthy)[0]
    assert await answers(fleet.meters[other])
    assert await answers(check_meter_of(fleet, fleet.topology.service_points[other].transformer_id))

    restore = {"restore_share": 0.9, "seed": 11}
    back = [i for i in downstream if restore_chosen(fleet.meters[i].serial, restore)]
    assert 0 < len(downstream) - len(back) < len(downstream) // 4
    before = len(sink.frames)
    assert await asyncio.to_thread(running.control, "power-restore", downstream, **restore) == len(downstream)
    pushes = [decode(f) for f in (await sink.wait_for(before + len(back)))[before:]]
    assert {p.system_title for p in pushes} == {fleet.meters[i].system_title for i in back}
    assert {e.code for p in pushes for e in p.events} == {EventCode.POWER_UP}
    left_dark = next(i for i in downstream if i not in back)
    assert await answers(fleet.meters[back[0]])
    assert not await answers(fleet.meters[left_dark])


async def test_workers_refuse_unknown_operations_and_bad_parameters(running: FleetHandle) -> None:
    with pytest.raises(ControlError, match="unknown simulator operation"):
        await asyncio.to_thread(running.control, "melt", [0, 599])
    with pytest.raises(ControlError, match="tamper kind"):
        await asyncio.to_thread(running.control, "tamper", [599], kind="glue")
    assert await asyncio.to_thread(running.control, "tamper", [599], kind="cover") == 1


async def test_check_meter_registers_the_sum_of_its_transformer_s_meters(running: FleetHandle) -> None:
    fleet = running.fleet
    healthy = fleet.topology.feeders[1].id
    transformer = fleet.topology.service_points[meters_of(fleet, feeder=healthy)[0]].transformer_id
    check = check_meter_of(fleet, transformer)
    members = [fleet.meters[i] for i in meters_of(fleet, transformer=transformer)]
    assert sorted(i for i, _, _ in check.members) == [m.index for m in members]
    deltas = await asyncio.gather(*(day_deltas(m) for m in (check, *members)))
    check_deltas, member_deltas = deltas[0], deltas[1:]
    common = set(check_deltas).intersection(*member_deltas)
    assert len(common) >= 90
    for end in common:
        summed = tuple(sum(d[end][k] for d in member_deltas) for k in (0, 1))
        assert check_deltas[end] == summed, end


async def day_deltas(meter: SimMeter) -> dict[object, tuple[int, int]]:
    """(import Wh, export Wh) per 15-minute interval over the last day, by interval end."""
    async with associated(meter) as client:
        end = await client.read_clock()
        rows = await client.read_profile(LOAD_PROFILE, end - timedelta(days=1), end)
    return {
        row.clock: (int(row.values[0]) - int(prev.values[0]), int(row.values[1]) - int(prev.values[1]))
        for prev, row in itertools.pairwise(rows)
    }


async def test_bypass_lowers_what_the_meter_registers_while_the_check_meter_keeps_the_full_load() -> None:
    local = LocalFleetControl()
    stop = asyncio.Event()
    ready: asyncio.Future[Fleet] = asyncio.get_running_loop().create_future()
    config = FleetConfig(meters=40, seed=3, port=0, single_address=True, days=1, check_meters=True, flaky_fraction=0)
    task = asyncio.create_task(run_fleet_in_process(config, stop, ready, control=local))
    try:
        fleet = await ready
        transformer = fleet.topology.transformers[0].id
        members = meters_of(fleet, transformer=transformer)
        thief = local.hosted.meters[members[0]]
        check = local.hosted.meters[check_meter_of(fleet, transformer).index]
        now = int(thief.clock.time().timestamp())
        next_end = now - now % 900 + 900
        honest = thief.supply(next_end)
        assert local.control("bypass", [members[0]], fraction=0.6) == 1
        registered = thief.supply(next_end)
        assert registered[0] == int(honest[0] * 0.4)
        truth = [local.hosted.meters[i].supply.true_load(next_end) for i in members]
        assert check.supply(next_end) == (sum(t[0] for t in truth), sum(t[1] for t in truth))
        assert check.supply(next_end)[0] > sum(local.hosted.meters[i].supply(next_end)[0] for i in members)
    finally:
        stop.set()
        await task


async def test_momentary_outage_pushes_last_gasp_then_restoration_and_tamper_and_sag_are_pushed() -> None:
    local = LocalFleetControl()
    stop = asyncio.Event()
    ready: asyncio.Future[Fleet] = asyncio.get_running_loop().create_future()
    async with FrameSink() as sink:
        config = FleetConfig(
            meters=12, seed=4, port=0, single_address=True, days=1, flaky_fraction=0, drift_fraction=0,
            push_host="127.0.0.1", push_port=sink.port,
        )  # fmt: skip
        task = asyncio.create_task(run_fleet_in_process(config, stop, ready, control=local))
        try:
            fleet = await ready
            decode = Decoder({m.system_title: (m.guek, m.gak) for m in fleet.meters})
            meter = local.hosted.meters[3]
            assert local.control("momentary", [3], seconds=0.3) == 1
            assert not meter.powered
            frames = await sink.wait_for(2)
            assert meter.powered
            assert await answers(fleet.meters[3])
            assert local.control("tamper", [5], kind="magnetic") == 1
            assert local.control("voltage", [5], volts=185.5) == 1
            frames = await sink.wait_for(4)
        finally:
            stop.set()
            await task
    pushes = [decode(f) for f in frames]
    assert [(p.system_title, [(e.code, e.value) for e in p.events]) for p in pushes] == [
        (fleet.meters[3].system_title, [(EventCode.POWER_DOWN, None)]),
        (fleet.meters[3].system_title, [(EventCode.POWER_UP, None)]),
        (fleet.meters[5].system_title, [(EventCode.MAGNETIC_FIELD, None)]),
        (fleet.meters[5].system_title, [(EventCode.VOLTAGE_SAG, 185.5)]),
    ]


async def test_bypassed_meter_registers_less_over_the_wire_while_the_check_meter_reads_the_full_load() -> None:
    """Members and check meter on one injected clock, read with the DLMS client before and after 30 minutes."""
    fleet = build_fleet(FleetConfig(meters=20, seed=8, port=0, check_meters=True, flaky_fraction=0, drift_fraction=0))
    spec = fleet.check_meters[0]
    members = [fleet.meters[i] for i, _, _ in spec.members]
    clock = MovableClock()
    meters = [SimulatedMeter(_config(m, LoadModel(m.load)), now=clock) for m in members]
    truth = CheckLoad([(i, serial, SupplyLoad(LoadModel(load))) for i, serial, load in spec.members])
    check = SimulatedMeter(_config(spec, truth), now=clock)
    servers = [await serve_meter(m, "127.0.0.1", 0) for m in (check, *meters)]
    try:
        control.apply({0: meters[0]}, {"op": "bypass", "meters": [0], "fraction": 0.6})
        start = clock.now
        clock.now += timedelta(minutes=30)
        addresses = [s.sockets[0].getsockname()[:2] for s in servers]
        readings = [
            await interval_deltas(address, m, start) for address, m in zip(addresses, (spec, *members), strict=True)
        ]
    finally:
        await close_servers(servers)
    check_deltas, member_deltas = readings[0], readings[1:]
    assert len(check_deltas) == 2  # the two intervals that ended after the bypass began
    for end, (imported, _) in check_deltas.items():
        true_thief = LoadModel(members[0].load)(int(end.timestamp()))[0]
        assert member_deltas[0][end][0] == int(true_thief * 0.4)
        honest = sum(d[end][0] for d in member_deltas[1:])
        assert imported == honest + true_thief  # the check meter still sees what the bypass carries
        assert imported > sum(d[end][0] for d in member_deltas)


class MovableClock:
    def __init__(self) -> None:
        now = datetime.now(UTC).replace(microsecond=0)
        self.now = now - timedelta(seconds=now.timestamp() % 900 - 60)  # a minute into an interval

    def __call__(self) -> datetime:
        return self.now


def _config(spec: SimMeter, load: LoadFunction) -> MeterConfig:
    return MeterConfig(spec.serial, spec.system_title, spec.guek, spec.gak, profile_days=1, load=load)


async def interval_deltas(address: tuple[str, int], spec: SimMeter, since: datetime) -> dict[datetime, tuple[int, int]]:
    """Import/export per interval ending after ``since``, read over DLMS (the row before gives the base)."""
    host, port = address
    client = DlmsClient(
        ClientSettings.management(host, port, system_title=HEADEND_TITLE, guek=spec.guek, gak=spec.gak, timeout_s=5.0)
    )
    async with client:
        end = await client.read_clock()
        rows = await client.read_profile(LOAD_PROFILE, since - timedelta(minutes=15), end)
    return {
        row.clock: (int(row.values[0]) - int(prev.values[0]), int(row.values[1]) - int(prev.values[1]))
        for prev, row in itertools.pairwise(rows)
    }
