"""The outage engine on both databases, driven by METER_EVENTS on an in-process bus.

Last gasps are published as the head-end would; pings go through the engine's one seam (``pinger``),
answered from the set of meters that have power in each scenario. Partial last gasps (30 %) still
locate the right device; momentary, nested, duplicated and out-of-order events; restoration
verification lists the meters still dark and opens a child outage for a transformer that stays dark.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from openami.bus.topics import METER_EVENTS, OUTAGES_CHANGED
from openami.db import outages as repo
from openami.db.outages import OutageRecord
from openami.domain.meter_events import EventCode, MeterEvent, MeterEvents
from openami.domain.outages import OutageChanged
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services.bootstrap import build_platform, stop_platform
from openami.services.context import Platform
from openami.services.outage import OutageEngine
from openami.services.topology import import_topology
from openami.settings import OutageSettings, Settings

from .grid import METERS_PER_TRANSFORMER, add_grid_meters, feeder_meters, grid_csv, meters_of

OPERATOR = RequestScope("user:ops", frozenset({Role.AMI_OPERATOR}), frozenset({ALL_SCOPES}))
FAST = OutageSettings(
    quiet_s=0.2, settle_s=0.6, momentary_s=2.0, ping_timeout_s=0.2, restore_quiet_s=0.2, restore_settle_s=1.0
)


@dataclass
class World:
    platform: Platform
    engine: OutageEngine
    ids: list[int]
    powered: set[int]
    feed: list[OutageChanged] = field(default_factory=list)
    pinged: list[int] = field(default_factory=list)
    pinged_undecided: list[int] = field(default_factory=list)  # pinged while no group had been decided yet
    queued: int = 0  # what the engine is told waits in the event pipeline
    on_ping: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # run (once) at the next ping

    async def events(self, code: EventCode, meters: Iterable[int], meter_time: int | None = None) -> None:
        stamp = int(time.time()) if meter_time is None else meter_time
        batch = tuple(MeterEvent(m, code, stamp, time.time(), "push") for m in meters)
        await self.platform.bus.publish(METER_EVENTS, MeterEvents(batch))

    def power_off(self, meters: Iterable[int]) -> None:
        self.powered.difference_update(meters)

    def power_on(self, meters: Iterable[int]) -> None:
        self.powered.update(meters)


@pytest.fixture
def outage_settings(request: pytest.FixtureRequest) -> OutageSettings:
    """FAST, or what a test gives with ``@pytest.mark.parametrize("outage_settings", [...], indirect=True)``."""
    return getattr(request, "param", FAST)


@pytest.fixture
async def world(engine: Engine, tmp_path: Path, outage_settings: OutageSettings) -> AsyncIterator[World]:
    platform = build_platform(Settings(data_dir=tmp_path, outages=outage_settings), engine=engine)
    ids = add_grid_meters(engine)
    import_topology(platform, OPERATOR, grid_csv())
    powered = set(ids)
    holder: list[World] = []

    async def pinger(meter: int) -> bool:
        holder[0].pinged.append(meter)
        if holder[0].engine.decisions == 0:
            holder[0].pinged_undecided.append(meter)
        while holder[0].on_ping:
            await holder[0].on_ping.pop()()
        return meter in powered

    outages = OutageEngine(
        engine, platform.bus, platform.collector, outage_settings, pinger=pinger, backlog=lambda: holder[0].queued
    )
    w = World(platform, outages, ids, powered)
    holder.append(w)

    async def listen(message: OutageChanged) -> None:
        w.feed.append(message)

    platform.bus.subscribe(OUTAGES_CHANGED, listen)
    await outages.start()
    try:
        yield w
    finally:
        await outages.stop()
        await stop_platform(platform)


async def _until(check: object, what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _outages(w: World, *states: str) -> list[OutageRecord]:
    with w.platform.engine.connect() as conn:
        return sorted(repo.list_outages(conn, states=states), key=lambda o: o.id)


def _devices(records: list[OutageRecord]) -> set[tuple[str, str]]:
    return {(str(r.device_kind), r.device_id) for r in records}


def _share(meters: list[int], share: float, seed: int) -> list[int]:
    rng = random.Random(seed)
    chosen = [m for m in meters if rng.random() < share]
    return chosen or meters[:1]


async def test_a_feeder_fault_with_30_percent_of_last_gasps_opens_one_feeder_outage_with_every_meter(
    world: World,
) -> None:
    feeder = feeder_meters(world.ids, "SS1-F2")
    world.power_off(feeder)
    gasps = _share(feeder, 0.3, 5)
    await world.events(EventCode.POWER_DOWN, gasps)
    await _until(lambda: _outages(world, "open"), "an open outage")
    (outage,) = _outages(world, "open")
    assert _devices([outage]) == {("feeder", "SS1-F2")}
    assert outage.area == "SS1"
    assert (outage.meters, outage.premises, outage.last_gasps) == (len(feeder), len(feeder), len(gasps))
    assert outage.critical_care == sum(1 for i, m in enumerate(world.ids, 1) if m in feeder and i % 25 == 0)
    assert outage.pings_sent > 0  # confirmed inside and around
    with world.platform.engine.connect() as conn:
        affected = repo.affected_meters(conn, outage.id)
    assert sorted(m.meter_id for m in affected) == sorted(feeder)  # inferred, not only those that gasped
    assert sum(m.last_gasp for m in affected) == len(gasps)
    await _until(lambda: world.feed, "the feed's message")
    assert [(m.change, m.outage_id, m.device_id) for m in world.feed] == [("opened", outage.id, "SS1-F2")]


async def test_a_transformer_fault_is_the_transformer_and_two_on_different_feeders_are_two_outages(
    world: World,
) -> None:
    one, two = meters_of(world.ids, "SS1-F1-T2"), meters_of(world.ids, "SS2-F2-T5")
    world.power_off(one + two)
    await world.events(EventCode.POWER_DOWN, one[:2] + two[3:5])
    await _until(lambda: len(_outages(world, "open")) == 2, "two open outages")
    assert _devices(_outages(world, "open")) == {("transformer", "SS1-F1-T2"), ("transformer", "SS2-F2-T5")}


async def test_a_momentary_interruption_is_recorded_as_momentary_not_as_an_outage(world: World) -> None:
    meters = meters_of(world.ids, "SS2-F1-T1")
    now = int(time.time())
    await world.events(EventCode.POWER_DOWN, meters[:4], now)
    await world.events(EventCode.POWER_UP, meters[:4], now + 1)  # back within the momentary threshold
    await _until(lambda: _outages(world, "momentary"), "a momentary record")
    assert _outages(world, "open") == []
    (momentary,) = _outages(world, "momentary")
    assert _devices([momentary]) == {("transformer", "SS2-F1-T1")}
    assert momentary.restored_at is not None


async def test_duplicated_and_out_of_order_events_make_one_outage_and_an_old_power_up_does_not_end_it(
    world: World,
) -> None:
    meters = meters_of(world.ids, "SS1-F1-T4")
    world.power_off(meters)
    now = int(time.time())
    await world.events(EventCode.POWER_UP, meters[:1], now - 60)  # the end of an earlier interruption, late
    for _ in range(3):  # the same last gasps three times (push and event log, redelivery)
        await world.events(EventCode.POWER_DOWN, meters[:3], now)
    await _until(lambda: _outages(world, "open"), "an open outage")
    await asyncio.sleep(FAST.settle_s * 2)  # nothing else may be opened from the duplicates
    (outage,) = _outages(world, "open")
    assert (outage.device_id, outage.last_gasps) == ("SS1-F1-T4", 3)
    assert world.engine.decisions == 1


async def test_restoration_verification_lists_meters_still_dark_and_opens_a_child_for_a_dark_transformer(
    world: World,
) -> None:
    feeder = feeder_meters(world.ids, "SS2-F1")
    stays_dark = meters_of(world.ids, "SS2-F1-T3")
    left_out = meters_of(world.ids, "SS2-F1-T5")[0]  # one meter that does not come back
    world.power_off(feeder)
    # the fault happened 30 s ago (meter time): longer than a momentary interruption
    await world.events(EventCode.POWER_DOWN, _share(feeder, 0.3, 9), int(time.time()) - 30)
    await _until(lambda: _outages(world, "open"), "the feeder outage")
    (feeder_outage,) = _outages(world, "open")

    back = [m for m in feeder if m not in stays_dark and m != left_out]
    world.power_on(back)
    reporting = back[: len(back) // 2]  # half of them report power back; verification pings the rest
    await world.events(EventCode.POWER_UP, reporting)
    await _until(lambda: repo_state(world, feeder_outage.id) == "restored", "the restoration verification")
    with world.platform.engine.connect() as conn:
        restored = repo.get_outage(conn, feeder_outage.id)
        meters = {m.meter_id: m for m in repo.affected_meters(conn, feeder_outage.id)}
        children = repo.children(conn, feeder_outage.id)
    assert restored.still_dark == len(stays_dark) + 1
    assert sorted(m for m, a in meters.items() if a.state == "still-dark") == sorted([*stays_dark, left_out])
    assert {meters[m].restored_by for m in reporting} == {"push"}
    assert {meters[m].restored_by for m in back if m not in reporting} == {"ping"}
    (child_id,) = children
    with world.platform.engine.connect() as conn:
        child = repo.get_outage(conn, child_id)
    assert (str(child.device_kind), child.device_id, str(child.state)) == ("transformer", "SS2-F1-T3", "open")
    assert child.meters == METERS_PER_TRANSFORMER
    await _until(lambda: [m.change for m in world.feed if m.outage_id == feeder_outage.id][-1] == "restored", "feed")

    world.power_on([left_out])  # it reports power after the verification: off the still-dark list
    await world.events(EventCode.POWER_UP, [left_out])
    await _until(lambda: _record(world, feeder_outage.id).still_dark == len(stays_dark), "the late power-up")
    with world.platform.engine.connect() as conn:
        late = {m.meter_id: m for m in repo.affected_meters(conn, feeder_outage.id)}[left_out]
    assert (late.state, late.restored_by) == ("restored", "push")
    await _until(lambda: [m.change for m in world.feed if m.outage_id == feeder_outage.id][-1] == "updated", "feed")

    world.power_on(stays_dark)  # the transformer is repaired: its power-ups close the child
    await world.events(EventCode.POWER_UP, stays_dark)
    await _until(lambda: repo_state(world, child_id) == "restored", "the child's restoration")
    await _until(lambda: _record(world, feeder_outage.id).still_dark == 0, "the parent's list emptied")


async def test_verification_waits_for_queued_events_then_verifies_every_due_outage_in_one_round(
    world: World,
) -> None:
    feeders = [feeder_meters(world.ids, "SS1-F1"), feeder_meters(world.ids, "SS2-F1")]
    every = [m for meters in feeders for m in meters]
    world.power_off(every)
    await world.events(EventCode.POWER_DOWN, _share(every, 0.3, 4), int(time.time()) - 30)
    await _until(lambda: len(_outages(world, "open")) == 2, "the two feeder outages")
    opened = _outages(world, "open")
    world.pinged.clear()
    world.queued = 500  # power-ups still wait in the pipeline's queue
    world.power_on(every)
    await world.events(EventCode.POWER_UP, [meters[0] for meters in feeders])  # one from each feeder so far
    await asyncio.sleep(FAST.restore_settle_s * 2)
    assert world.pinged == []  # due long ago, but the silent meters' power-ups may be queued: nobody pinged
    assert {str(o.state) for o in _outages(world, "open")} == {"open"}
    await world.events(EventCode.POWER_UP, [m for meters in feeders for m in meters[1:-1]])  # the queue drains
    await world.platform.bus.drain()  # the engine has seen them before it hears the queue is empty
    world.queued = 0
    await _until(lambda: all(repo_state(world, o.id) == "restored" for o in opened), "both verifications")
    assert sorted(world.pinged) == sorted(meters[-1] for meters in feeders)  # only the silent ones, once each


# quiet_s 0.5: a busy CI; no provisional inferences (storm_check_s 0): the group waits out storm_settle_s
STORMY = FAST.model_copy(update={"storm_gasps": 10, "storm_settle_s": 2.0, "quiet_s": 0.5, "storm_check_s": 0})


@pytest.mark.parametrize(("outage_settings", "groups"), [(FAST, 2), (STORMY, 1)], indirect=["outage_settings"])
async def test_a_storm_group_waits_for_storm_settle_s_while_its_gasps_still_arrive(world: World, groups: int) -> None:
    first, second = feeder_meters(world.ids, "SS1-F1"), feeder_meters(world.ids, "SS2-F1")
    world.power_off(first + second)
    gasping = first + second  # one feeder's gasps, then the other's
    started = int(time.time()) - 30
    for i in range(0, len(gasping), 3):  # for ~1.2 s: longer than settle_s, never quiet_s apart
        await world.events(EventCode.POWER_DOWN, gasping[i : i + 3], started)
        await asyncio.sleep(1.2 / (len(gasping) / 3))
    feeders = {("feeder", "SS1-F1"), ("feeder", "SS2-F1")}
    await _until(lambda: feeders <= _devices(_outages(world, "open")), "the two feeder outages")
    await asyncio.sleep(STORMY.storm_settle_s)
    # a storm: one group; otherwise the first feeder's gasps are decided before the second's arrive
    assert world.engine.decisions == groups if groups == 1 else world.engine.decisions >= groups
    assert _devices([o for o in _outages(world, "open") if o.parent_id is None]) == feeders


# a storm that would wait 20 s (neither quiet_s nor storm_settle_s passes), were it not for the checks
CHECKED = FAST.model_copy(update={"storm_gasps": 10, "storm_settle_s": 20.0, "quiet_s": 20.0, "storm_check_s": 0.25})
FEEDERS = {("feeder", "SS1-F1"), ("feeder", "SS2-F1")}


async def _gasp_on(world: World, meters: list[int], *, per_check: int = 4) -> None:
    """After each provisional inference, ``per_check`` more gasps of ``meters`` (the storm still
    arriving; 4: the group grows by over a tenth a check), until both feeders' outages are open."""

    def opened() -> bool:
        return _devices(_outages(world, "open")) >= FEEDERS

    sent = 0
    while not opened():
        await _until(functools.partial(_checked_after, world, world.engine.checks, opened), "a check")
        await world.events(EventCode.POWER_DOWN, meters[sent : sent + per_check])
        sent += per_check


def _checked_after(world: World, checks: int, opened: Callable[[], bool]) -> bool:
    return world.engine.checks > checks or opened()


@pytest.mark.parametrize("outage_settings", [CHECKED], indirect=True)
async def test_a_storm_group_is_decided_once_two_provisional_inferences_name_the_same_devices(world: World) -> None:
    meters = feeder_meters(world.ids, "SS1-F1") + feeder_meters(world.ids, "SS2-F1")
    world.power_off(meters)
    first = _share(meters, 0.4, 3)
    started = time.monotonic()
    await world.events(EventCode.POWER_DOWN, first)
    await _gasp_on(world, [m for m in meters if m not in first])
    # settle_s (0.6 s) and a check or two later, not the 20 s of the storm's settle window or quiet time
    assert time.monotonic() - started < CHECKED.quiet_s / 2
    assert world.engine.decisions == 1
    assert _devices(_outages(world, "open")) == FEEDERS


@pytest.mark.parametrize("outage_settings", [CHECKED], indirect=True)
async def test_a_storm_group_growing_by_less_than_a_tenth_a_check_is_decided_once_it_grew_a_tenth_in_all(
    world: World,
) -> None:
    meters = feeder_meters(world.ids, "SS1-F1") + feeder_meters(world.ids, "SS2-F1")
    world.power_off(meters)
    first = _share(meters, 0.4, 3)
    started = time.monotonic()
    await world.events(EventCode.POWER_DOWN, first)
    await _gasp_on(world, [m for m in meters if m not in first], per_check=1)  # under a tenth of the group a check
    assert len(first) > 10
    assert time.monotonic() - started < CHECKED.quiet_s / 2  # not the storm's 20 s settle window
    assert world.engine.decisions == 1
    assert _devices(_outages(world, "open")) == FEEDERS


@pytest.mark.parametrize("outage_settings", [CHECKED], indirect=True)
async def test_a_storm_group_whose_gasps_stall_waits_although_two_inferences_agree(world: World) -> None:
    meters = feeder_meters(world.ids, "SS1-F1") + feeder_meters(world.ids, "SS2-F1")
    world.power_off(meters)
    await world.events(EventCode.POWER_DOWN, _share(meters, 0.4, 3))
    await _until(lambda: world.engine.checks >= 4, "four provisional inferences")
    assert world.engine.decisions == 0  # the same picture, but from no new gasps: no evidence it holds
    await _gasp_on(world, [m for m in meters if m not in _share(meters, 0.4, 3)])
    assert world.engine.decisions == 1


@pytest.mark.parametrize("outage_settings", [CHECKED.model_copy(update={"storm_check_s": 0.5})], indirect=True)
async def test_devices_named_by_two_provisional_inferences_are_pinged_before_the_decision_once(world: World) -> None:
    first, second = feeder_meters(world.ids, "SS1-F1"), feeder_meters(world.ids, "SS2-F1")
    world.power_off(first + second)
    early = _share(first, 0.4, 3)
    await world.events(EventCode.POWER_DOWN, early)
    await _until(lambda: world.engine.checks >= 1, "the first provisional inference")
    later = _share(second, 0.4, 4)
    await world.events(EventCode.POWER_DOWN, later)  # the next names more: not stable yet
    await _gasp_on(world, [m for m in first + second if m not in early and m not in later])
    assert world.engine.decisions == 1
    # SS1-F1, named twice running, was pinged while the group still gathered gasps; nobody twice
    assert world.pinged_undecided
    assert set(world.pinged_undecided) <= set(first) | set(feeder_meters(world.ids, "SS1-F2"))  # inside, around
    assert len(world.pinged) == len(set(world.pinged))
    answered = sum(1 for m in world.pinged if m in world.powered)
    for outage in _outages(world, "open"):  # the group's pings, early and late, counted once each
        assert (outage.pings_sent, outage.pings_answered) == (len(world.pinged), answered)


async def test_gasps_arriving_while_a_decision_runs_are_recorded_as_its_outages_late_gasps(world: World) -> None:
    feeder = feeder_meters(world.ids, "SS1-F2")
    world.power_off(feeder)
    first = _share(feeder, 0.3, 5)
    later = [m for m in feeder if m not in first][:4]

    async def gasp_more() -> None:  # while the engine confirms the suspects with pings
        await world.events(EventCode.POWER_DOWN, later)

    world.on_ping.append(gasp_more)
    await world.events(EventCode.POWER_DOWN, first)
    await _until(lambda: _outages(world, "open"), "the feeder outage")
    (outage,) = _outages(world, "open")
    await _until(lambda: _outages(world, "open")[0].last_gasps == len(first) + len(later), "the late gasps")
    with world.platform.engine.connect() as conn:
        gasped = {m.meter_id for m in repo.affected_meters(conn, outage.id) if m.last_gasp}
    assert gasped == set(first) | set(later)
    assert world.engine.decisions == 1  # the late gasps were not a second group to explain


async def test_a_transformer_outage_already_open_becomes_the_child_of_its_feeders_outage(world: World) -> None:
    transformer = meters_of(world.ids, "SS1-F1-T1")
    world.power_off(transformer)
    await world.events(EventCode.POWER_DOWN, transformer[:3])
    await _until(lambda: _outages(world, "open"), "the transformer outage")
    (first,) = _outages(world, "open")
    feeder = feeder_meters(world.ids, "SS1-F1")
    world.power_off(feeder)
    await world.events(EventCode.POWER_DOWN, _share([m for m in feeder if m not in transformer], 0.4, 2))
    await _until(lambda: len(_outages(world, "open")) == 2, "the feeder outage")
    with world.platform.engine.connect() as conn:
        nested = repo.get_outage(conn, first.id)
    parent = next(o for o in _outages(world, "open") if o.id != first.id)
    assert (parent.device_id, nested.parent_id) == ("SS1-F1", parent.id)
    await _until(lambda: "nested" in [m.change for m in world.feed if m.outage_id == first.id], "the nested change")


def _record(world: World, outage_id: int) -> OutageRecord:
    with world.platform.engine.connect() as conn:
        return repo.get_outage(conn, outage_id)


def repo_state(world: World, outage_id: int) -> str:
    with world.platform.engine.connect() as conn:
        return str(repo.get_outage(conn, outage_id).state)


async def test_a_restarted_engine_picks_up_open_outages_and_their_restoration(world: World) -> None:
    meters = meters_of(world.ids, "SS2-F2-T2")
    world.power_off(meters)
    await world.events(EventCode.POWER_DOWN, meters[:3], int(time.time()) - 60)
    await _until(lambda: _outages(world, "open"), "the transformer outage")
    (outage,) = _outages(world, "open")
    await world.engine.stop()

    async def pinger(meter: int) -> bool:
        return meter in world.powered

    restarted = OutageEngine(world.platform.engine, world.platform.bus, world.platform.collector, FAST, pinger=pinger)
    await restarted.start()
    try:
        world.power_on(meters)
        await world.events(EventCode.POWER_UP, meters[:2])  # the others answer the verification's pings
        await _until(lambda: repo_state(world, outage.id) == "restored", "the restoration after a restart")
    finally:
        await restarted.stop()
    with world.platform.engine.connect() as conn:
        assert {m.restored_by for m in repo.affected_meters(conn, outage.id)} == {"push", "ping"}
