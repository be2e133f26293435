"""The outage engine: last gasps in, located and confirmed outages out, restoration verified.

It subscribes to ``METER_EVENTS`` and keeps the grid (``db.topology.load_grid``) and the open outages
in memory. The steps (docs/outages.md):

1. **Group.** Last gasps (POWER_DOWN) of meters not already in an open outage wait until ``quiet_s``
   pass without a new one, or ``settle_s`` after the first; a storm's group (``storm_gasps``) up to
   ``storm_settle_s``, unless two provisional inferences ``storm_check_s`` apart agree before.
2. **Locate.** ``outage_inference.infer`` names the most likely failed devices.
3. **Momentary.** A device whose every gasping meter already reported power back (within
   ``momentary_s``) is recorded as a momentary outage, not as an outage.
4. **Confirm.** Up to ``ping_sample`` meters inside each suspected device that sent no gasp, and as
   many around it (under its parent), are pinged (``headend.ping``); answers and silences are new
   observations and the inference runs again (``confirm_rounds``).
5. **Open.** One outage per device, with every meter below it (inferred, not only those that
   gasped), its premises and critical-care premises. An open outage below a new one becomes its child.
6. **Restore.** POWER_UP marks meters back. ``restore_quiet_s`` after the last power-up (at most
   ``restore_settle_s`` after the first) the meters that did not report are pinged; those still dark
   are listed, and where they make up a device (a transformer that stays dark after its feeder came
   back) a child outage is opened. Power back within ``momentary_s`` of the start makes it momentary.
   While the event pipeline still holds queued notifications (power-ups not yet seen) verification
   waits for them (at most ``_BACKLOG_WAIT_MAX_S``), and all outages due at once are verified with
   one round of pings, written in transactions of ~5,000 affected meters.

Every change to an outage is written whole in one transaction and published on ``OUTAGES_CHANGED`` (the OMS feed).
Events are de-duplicated on (meter, code, meter time) and may arrive in any order: a power-up older
than the meter's last gasp does not end it, a gasp older than its power-up is momentary.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import structlog
from sqlalchemy.engine import Connection, Engine

from openami.bus.base import Bus, Unsubscribe
from openami.bus.topics import METER_EVENTS, OUTAGES_CHANGED
from openami.db import outages as repo
from openami.db import topology as topology_repo
from openami.db.engine import bulk_writes, let_waiting_writers_in
from openami.db.outages import AffectedMeter, NewOutage, OutageRecord
from openami.domain.meter_events import EventCode, MeterEvents
from openami.domain.outages import DeviceKind, OutageChanged, OutageState
from openami.headend.collector import Collector
from openami.headend.ping import ping_many
from openami.runtime import collector_paused
from openami.services.outage_inference import Device, Grid, InferenceParameters, Suspect, infer
from openami.settings import OutageSettings
from openami.waiting import wait_until_set

__all__ = ["OutageEngine", "Pinger", "changed"]

_log = structlog.get_logger("openami.outages")
Pinger = Callable[[int], Awaitable[bool]]
Answered = Callable[[int, bool], None]  # told each meter's answer as it comes
_SEEN_MAX = 200_000  # remembered event identities for de-duplication
_RELOAD_AFTER_S = 30.0  # a gasp from a meter outside the loaded grid reloads it, at most this often
_ROWS_PER_TRANSACTION = 1_000  # affected meters written per transaction on SQLite (see _write_chunked)
_PG_ROWS_PER_TRANSACTION = 25_000  # on PostgreSQL, whose writers do not queue at one lock (see _write_chunked)
_T = TypeVar("_T")
_BACKLOG_WAIT_MAX_S = 60.0  # verification waits for queued events at most this long past its due time
# late gasps (of meters already in an open outage) are flagged at most this often: a storm's arrive in
# every event batch for seconds after its decision, and each flush is a transaction and a published
# change per outage (133 in the storm benchmark); flushing every second, the storm's slowest commands
# fell in those flushes. They change counts and flags of outages already located, and a verification
# flushes them first.
_LATE_GASPS_EVERY_S = 5.0
_STORM_GROWTH = 1.1  # a storm's group is decided early once it grew this much with its devices unchanged


async def _ping_each(pinger: Pinger, meters: Sequence[int], on_answer: Answered | None) -> list[bool]:
    async def one(meter: int) -> bool:
        answered = await pinger(meter)
        if on_answer is not None:
            on_answer(meter, answered)
        return answered

    return list(await asyncio.gather(*(one(m) for m in meters)))


def changed(record: OutageRecord, change: str, at: datetime) -> OutageChanged:
    """The OMS feed's message for one change of an outage."""
    return OutageChanged(
        outage_id=record.id, version=record.version, change=change, state=record.state,
        device_kind=record.device_kind, device_id=record.device_id, area=record.area, parent_id=record.parent_id,
        started_at=record.started_at, restored_at=record.restored_at, meters=record.meters, premises=record.premises,
        critical_care=record.critical_care, last_gasps=record.last_gasps, still_dark=record.still_dark, at=at,
    )  # fmt: skip


@dataclass(slots=True)
class _Open:
    """An open outage as the engine follows it."""

    id: int
    device: Device
    meters: set[int]
    started_at: datetime
    restored: set[int] = field(default_factory=set)
    first_up: float | None = None  # loop time of the first power-up
    last_up: float | None = None
    latest_up: int | None = None  # latest power-up, meter time (epoch s: a storm brings 54,000 of them)
    started_s: float = field(init=False)  # started_at as epoch s, to compare power-ups with

    def __post_init__(self) -> None:
        self.started_s = self.started_at.timestamp()

    @property
    def restored_at(self) -> datetime | None:
        return None if self.latest_up is None else datetime.fromtimestamp(self.latest_up, UTC)


class OutageEngine:
    """One per platform; ``start`` inside the event loop, ``stop`` before the bus closes."""

    def __init__(
        self,
        engine: Engine,
        bus: Bus,
        collector: Collector,
        settings: OutageSettings,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        pinger: Pinger | None = None,
        backlog: Callable[[], int] = lambda: 0,
    ) -> None:
        self._engine = engine
        self._backlog = backlog
        self._bus = bus
        self._settings = settings
        self._now = now
        self._ping_round: Callable[[Sequence[int], Answered | None], Awaitable[list[bool]]] = (
            (lambda meters, heard: ping_many(collector, meters, timeout_s=settings.ping_timeout_s, on_answer=heard))
            if pinger is None
            else (lambda meters, heard: _ping_each(pinger, meters, heard))
        )
        self._params = InferenceParameters(settings.min_delivery, settings.spurious, settings.device_prior)
        self.grid = Grid({}, {}, {})
        self._places: dict[int, topology_repo.MeterPlace] = {}
        self._pending: dict[int, int] = {}  # meter -> last gasp's meter time, not decided yet
        self._group_first: float | None = None
        self._group_last = 0.0
        # a storm group's last provisional inference, and the group's size when it first named those devices
        self._provisional: tuple[set[Device], int] | None = None
        self._checked_at = 0.0  # loop time when that inference began
        self._observed: dict[int, bool] = {}  # the pending group's early pings: meter -> answered
        self._early: asyncio.Task[None] | None = None  # those pings, while they run
        self._back: dict[int, int] = {}  # meter -> latest power-up's meter time
        self._late_gasps: dict[int, set[int]] = {}  # outage -> meters whose gasp came after it opened
        self._late_flushed_at = 0.0  # loop time of the last flush of _late_gasps and _late_ups
        # meter -> verified outages that list it still dark, with their start (epoch s), and the
        # power-ups that came after their verification: outage -> meter -> meter time
        self._still_dark: dict[int, list[tuple[int, float]]] = {}
        self._late_ups: dict[int, dict[int, int]] = {}
        self._open: dict[int, _Open] = {}
        # meter -> the open outages it is in (never empty): tuples of ints, which the cyclic collector
        # stops tracking after one look, where 50,000 sets were walked by every older pass
        self._member: dict[int, tuple[int, ...]] = {}
        self._seen: OrderedDict[tuple[int, int, int], None] = OrderedDict()
        self._wake = asyncio.Event()
        self._reload = True
        self._loaded_at = -_RELOAD_AFTER_S
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Unsubscribe | None = None
        self.decisions = 0  # groups decided (for tests and metrics)
        self.last_decision: dict[str, float] = {}  # where the last decision's time went (s), also logged
        self.checks = 0  # provisional inferences of storm groups (for tests and metrics)

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self._reload = False
        self._unsubscribe = self._bus.subscribe(METER_EVENTS, self.handle)
        self._task = asyncio.create_task(self._run(), name="outage-engine")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in (self._task, self._early):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def reload_grid(self) -> None:
        """The topology changed: reload it before the next decision."""
        self._reload = True
        self._wake.set()

    def _load(self) -> None:
        self._loaded_at = time.monotonic()
        with self._engine.connect() as conn:
            snapshot = topology_repo.load_grid(conn)
            opened = repo.open_outages(conn)
        self._places = {p.meter_id: p for p in snapshot.meters}
        self.grid = Grid(
            {p.meter_id: p.transformer_id for p in snapshot.meters}, snapshot.transformers, snapshot.feeders
        )
        self._open.clear()
        self._member.clear()
        for record, meters in opened:
            state = _Open(
                record.id, (record.device_kind, record.device_id), {m.meter_id for m in meters}, record.started_at
            )
            state.restored = {m.meter_id for m in meters if m.state == "restored"}
            self._track(state)

    def _track(self, state: _Open) -> None:
        self._open[state.id] = state
        for meter in state.meters:
            self._join(meter, state.id)

    def _join(self, meter: int, outage_id: int) -> None:
        outages = self._member.get(meter, ())
        if outage_id not in outages:
            self._member[meter] = (*outages, outage_id)

    def _follow(self, state: _Open) -> None:
        """Track a newly opened outage; power-ups that arrived while it was being confirmed count."""
        self._track(state)
        early = self._back_since(state)
        if early:
            state.restored |= early
            state.latest_up = max(self._back[m] for m in early)
            state.first_up = state.last_up = asyncio.get_running_loop().time()

    def forget(self, outage_id: int) -> None:
        """An outage closed by hand: no longer followed."""
        self._untrack(outage_id)

    def _untrack(self, outage_id: int) -> None:
        state = self._open.pop(outage_id, None)
        for meter in state.meters if state else ():
            rest = tuple(o for o in self._member.get(meter, ()) if o != outage_id)
            if rest:
                self._member[meter] = rest
            else:
                self._member.pop(meter, None)

    # -- events in -----------------------------------------------------------------------------------------

    async def handle(self, batch: MeterEvents) -> None:
        """The METER_EVENTS handler: only power events matter here; returns at once (the loop decides)."""
        loop_now = asyncio.get_running_loop().time()
        oldest = self._now().timestamp() - self._settings.max_event_age_s
        for event in batch.events:
            if event.code not in (EventCode.POWER_DOWN, EventCode.POWER_UP) or event.meter_time < oldest:
                continue
            identity = (event.meter_id, int(event.code), event.meter_time)
            if identity in self._seen:
                continue
            self._seen[identity] = None
            if len(self._seen) > _SEEN_MAX:
                self._seen.popitem(last=False)
            if event.code == EventCode.POWER_DOWN:
                self._gasp(event.meter_id, event.meter_time, loop_now)
            else:
                self._power_up(event.meter_id, event.meter_time, loop_now)
        self._wake.set()

    def _gasp(self, meter: int, meter_time: int, loop_now: float) -> None:
        if self._back.get(meter, -1) >= meter_time and meter not in self._pending:
            return  # a gasp older than the power-up already seen: that interruption is over
        outages = self._member.get(meter)
        if outages:
            for outage_id in outages:
                self._late_gasps.setdefault(outage_id, set()).add(meter)
            return
        self._pending[meter] = max(meter_time, self._pending.get(meter, meter_time))
        if self._group_first is None:
            self._group_first = loop_now
        self._group_last = loop_now

    def _power_up(self, meter: int, meter_time: int, loop_now: float) -> None:
        self._back[meter] = max(meter_time, self._back.get(meter, meter_time))
        if meter in self._still_dark:  # listed still dark by a verification, it reports power after all
            for outage_id, started_s in self._still_dark.pop(meter):
                if meter_time >= started_s:
                    self._late_ups.setdefault(outage_id, {})[meter] = meter_time
        for outage_id in self._member.get(meter, ()):
            state = self._open[outage_id]
            if meter in state.restored or meter_time < state.started_s:
                continue  # a power-up from before this outage began (out of order) does not end it
            state.restored.add(meter)
            state.first_up = state.first_up if state.first_up is not None else loop_now
            state.last_up = loop_now
            state.latest_up = meter_time if state.latest_up is None else max(state.latest_up, meter_time)

    # -- the loop ------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await wait_until_set(self._wake, self._next_due())
            self._wake.clear()
            try:
                await self._step()
            except Exception:  # noqa: BLE001 - the engine must outlive one failed step; it is logged
                _log.exception("outages.step.failed")

    def _next_due(self) -> float:
        now = asyncio.get_running_loop().time()
        dues = [0.5]
        if self._group_first is not None:
            dues.append(self._group_due() - now)
            check = self._check_due()
            if check is not None:
                dues.append(check - now)
        dues += [self._restore_due(s) - now for s in self._open.values() if s.first_up is not None]
        if self._late_gasps or self._late_ups:
            dues.append(self._late_flushed_at + _LATE_GASPS_EVERY_S - now)
        return max(0.01, min(dues))

    def _group_due(self) -> float:
        """``quiet_s`` after the group's last gasp, at most ``settle_s`` after its first; a storm's group
        (``storm_gasps`` or more, still arriving) waits up to ``storm_settle_s``: its devices are big,
        and a decision on the first share of their gasps names hundreds of small ones instead."""
        assert self._group_first is not None
        settings = self._settings
        settle = settings.storm_settle_s if len(self._pending) >= settings.storm_gasps else settings.settle_s
        return min(self._group_last + settings.quiet_s, self._group_first + max(settle, settings.settle_s))

    def _check_due(self) -> float | None:
        """When a storm's group is next inferred provisionally: from ``settle_s`` after its first gasp,
        every ``storm_check_s``; None for a group that is not a storm."""
        assert self._group_first is not None
        settings = self._settings
        if len(self._pending) < settings.storm_gasps or settings.storm_check_s <= 0:
            return None
        return max(self._group_first + settings.settle_s, self._checked_at + settings.storm_check_s)

    def _restore_due(self, state: _Open) -> float:
        assert state.first_up is not None
        assert state.last_up is not None
        return min(state.last_up + self._settings.restore_quiet_s, state.first_up + self._settings.restore_settle_s)

    async def _step(self) -> None:
        if self._reload:
            self._reload = False
            await asyncio.to_thread(self._load)
        now = asyncio.get_running_loop().time()
        late = self._late_gasps or self._late_ups
        if late and (now >= self._late_flushed_at + _LATE_GASPS_EVERY_S or self._verifications_due(now)):
            self._late_flushed_at = now
            await self._flush_late_gasps()
            await self._flush_late_ups()
        if self._group_first is not None:
            check = self._check_due()
            if check is not None and now >= min(check, self._group_due()):
                await self._check_storm(decide=now >= self._group_due())
            elif now >= self._group_due():
                await self._decide(dict(self._pending))
        due = self._verifications_due(now)
        if due:
            await self._verify(due)

    def _verifications_due(self, now: float) -> list[_Open]:
        due = [s for s in self._open.values() if s.first_up is not None and now >= self._restore_due(s)]
        if due and self._backlog() > 0:  # power-ups may still wait in the event queue: pinging them wastes time
            due = [s for s in due if now >= self._restore_due(s) + _BACKLOG_WAIT_MAX_S]
        return due

    async def _publish(self, records: Iterable[tuple[OutageRecord, str]]) -> None:
        at = self._now()
        for record, change in records:
            await self._bus.publish(OUTAGES_CHANGED, changed(record, change, at))

    async def _flush_late_gasps(self) -> None:
        late, self._late_gasps = self._late_gasps, {}
        await self._update_each(
            {k: v for k, v in late.items() if k in self._open},
            lambda conn, outage_id, meters: repo.set_last_gasp(conn, outage_id, sorted(meters), now=self._now()),
        )

    async def _flush_late_ups(self) -> None:
        """Meters a verification listed still dark that reported power since: restored (by push), and
        their outages' still-dark counts lowered."""
        late, self._late_ups = self._late_ups, {}

        def restore(conn: Connection, outage_id: int, ups: dict[int, int]) -> OutageRecord | None:
            at = datetime.fromtimestamp(max(ups.values()), UTC)
            return repo.restore_still_dark(conn, outage_id, sorted(ups), restored_at=at, now=self._now())

        await self._update_each(late, restore)

    async def _update_each(
        self, late: dict[int, _T], update: Callable[[Connection, int, _T], OutageRecord | None]
    ) -> None:
        """``update`` each outage of ``late`` and publish what changed, an outage a transaction, as a bulk
        writer like the records: a storm's late gasps in one transaction held commands and on-demand
        reads up to 0.26 s at SQLite's write lock (~27 ms an outage)."""
        if not late:
            return

        def write_one(conn: Connection, item: tuple[int, _T]) -> list[tuple[OutageRecord, str]]:
            updated = update(conn, *item)
            return [] if updated is None else [(updated, "updated")]

        write = functools.partial(self._write_chunked, list(late.items()), lambda _i: 1, write_one, per_transaction=1)
        await self._publish(await asyncio.to_thread(write))

    # -- deciding a group --------------------------------------------------------------------------------------

    async def _check_storm(self, *, decide: bool) -> None:
        """Infer a storm's group as it stands; when the devices named are those every check named since
        the group was a tenth smaller (at least one check, ``storm_check_s`` before), the picture has
        stopped changing: decide on these gasps now rather than waiting out ``storm_settle_s`` (the
        gasps still to come join the outages opened, as late gasps). With ``decide`` (the window is
        over) the decision follows whatever this inference names.

        Devices named by two inferences running are pinged at once, while the group still gathers
        (``_ping_early``): the decision then finds them confirmed instead of pinging after it."""
        gasps = dict(self._pending)
        # the next check is due storm_check_s after this one began, not after it ended: in a storm an
        # inference takes 0.15-0.2 s (the CPU is busy), and counted from its end the checks came every
        # ~0.42 s, the decision ~0.4 s later than the picture allowed
        self._checked_at = asyncio.get_running_loop().time()
        await self._ensure_grid(gasps)
        explained = self._explained()
        dark, alive = self._with_observed(gasps)
        seen = len(self._observed)
        suspects = await self._infer(dark, alive, explained)
        self.checks += 1
        devices = _devices(suspects)
        previous = self._provisional
        same = previous is not None and devices == previous[0]
        # the group's size when these devices were first named, at this check or at the checks before
        # that all named them: the growth is counted over the whole run, not between two checks only
        # (a large storm's gasps add less than a tenth a check, and the picture stopped changing long
        # before the settle window ran out: the benchmark's groups all waited it out)
        named_at = previous[1] if previous is not None and same else len(gasps)
        self._provisional = (devices, named_at)
        # the same devices while the group grew by a tenth: new gasps no longer change the picture (a
        # picture that holds only because the gasps stalled, e.g. a busy network, proves nothing)
        stable = same and len(gasps) >= named_at * _STORM_GROWTH
        if stable or decide:
            await self._decide(gasps, _Inferred(explained, suspects, seen))
        elif previous is not None and (self._early is None or self._early.done()):
            named_twice = [s for s in suspects if (s.kind, s.id) in previous[0]]
            self._early = asyncio.create_task(self._ping_early(named_twice, dark, alive, explained))

    def _with_observed(self, gasps: dict[int, int]) -> tuple[set[int], set[int]]:
        """``dark`` and ``alive`` from the gasps and the group's early pings."""
        answered = {m for m, up in self._observed.items() if up}
        return set(gasps) | (self._observed.keys() - answered), answered

    async def _ping_early(self, suspects: list[Suspect], dark: set[int], alive: set[int], explained: set[int]) -> None:
        """Ping samples of ``suspects`` (within the group's ``ping_budget``) into ``_observed``, each
        answer as it comes: the storm's next checks infer with those already in (a round waits for its
        slowest meter, ~1 s in the benchmark, while the answers that rule devices in or out come
        first). A round that fails only leaves fewer observations (the decision pings what it still
        lacks)."""
        pinged = set(self._observed)
        order = self._samples(suspects, dark, alive, explained, pinged, self._settings.ping_budget - len(pinged))
        if not order:
            return
        try:
            await self._ping_round(order, self._observed.__setitem__)
        except Exception:  # noqa: BLE001 - logged; what answered before the failure is observed
            _log.exception("outages.early_pings.failed")

    async def _ensure_grid(self, gasps: dict[int, int]) -> None:
        if any(m not in self._places for m in gasps) and time.monotonic() - self._loaded_at > _RELOAD_AFTER_S:
            await asyncio.to_thread(self._load)  # meters imported since the grid was loaded

    def _explained(self) -> set[int]:
        """Meters already in an open outage: dark, but needing no new explanation."""
        return set(self._member)

    def _take(self, gasps: dict[int, int]) -> None:
        """``gasps`` leave the pending group; gasps that came while they were inferred form the next."""
        for meter, meter_time in gasps.items():
            if self._pending.get(meter) == meter_time:
                del self._pending[meter]
        self._group_first = asyncio.get_running_loop().time() if self._pending else None
        self._provisional = None

    async def _decide(self, gasps: dict[int, int], inferred: _Inferred | None = None) -> None:
        """Locate, confirm and record the outages behind ``gasps``; ``inferred`` is a provisional
        inference of exactly these gasps, reused unless early pings answered after it began."""
        loop = asyncio.get_running_loop()
        group_age = 0.0 if self._group_first is None else loop.time() - self._group_first
        self._take(gasps)
        self.decisions += 1
        started = time.perf_counter()
        observed = await self._observations()
        timings = {"early_pings_s": time.perf_counter() - started}  # durations of the steps, in order
        dark, alive = self._with_observed(gasps)
        self._observed = {}
        if inferred is None or inferred.observed != len(observed):
            await self._ensure_grid(gasps)
            explained = self._explained()
            initial = await self._infer(dark, alive, explained)
        else:
            explained, initial = inferred.explained, inferred.suspects
        timings["inference_s"] = time.perf_counter() - started - sum(timings.values())
        gasped = set(gasps)
        back = {m for m, t in gasps.items() if self._back.get(m, -1) >= t}
        confirm = [s for s in initial if not self._all_back(s, gasped, back)]
        pings = [len(observed), sum(observed.values())]
        pinged = set(observed)
        for _ in range(self._settings.confirm_rounds):
            asked = await self._confirm(confirm, dark, alive, explained, pings, pinged)
            if not asked:
                break
            before = _devices(confirm)
            again = await self._infer(dark - back, alive, explained)
            confirm = [s for s in again if not self._all_back(s, gasped, back)]
            if _devices(confirm) == before:
                break  # the answers confirmed every suspect: another round would only ask more of the same
        # a device whose gasping meters all came back (by push, or answering a ping) was a momentary outage
        darkened = {m for s in confirm for m in self._meters_of(s)}
        momentary = [
            s for s in initial
            if self._all_back(s, gasped, back | alive) and not darkened.intersection(self._meters_of(s))
        ]  # fmt: skip
        timings["confirmation_s"] = time.perf_counter() - started - sum(timings.values())
        await self._record(momentary, confirm, gasps, back | alive, alive, pings, timings)
        timings["total_s"] = time.perf_counter() - started
        timings["group_age_s"] = group_age  # since the group's first gasp, when the decision began
        self.last_decision = {name: round(seconds, 3) for name, seconds in timings.items()}
        _log.info("outages.decided", gasps=len(gasps), pings=pings[0], **self.last_decision)

    async def _infer(self, dark: set[int], alive: set[int], explained: set[int]) -> list[Suspect]:
        """The most likely failed devices; in a worker thread (a storm's inference takes the CPU for a
        while, and commands and on-demand reads share the event loop), on copies of what may change."""
        located = await asyncio.to_thread(
            infer, self.grid, dark | explained, set(alive), explained=set(explained), params=self._params
        )
        unplaced = [m for m in dark if m not in self._places and m not in alive]  # meters outside the grid
        return located + [Suspect(DeviceKind.METER, str(m), 1, 1, 0.0) for m in sorted(unplaced)]

    def _all_back(self, suspect: Suspect, gasped: set[int], back: set[int]) -> bool:
        """Whether every meter of the device that sent a last gasp has power again."""
        mine = [m for m in self._meters_of(suspect) if m in gasped]
        return bool(mine) and all(m in back for m in mine)

    def _meters_of(self, suspect: Suspect) -> tuple[int, ...]:
        return self.grid.meters((suspect.kind, suspect.id))

    async def _observations(self) -> dict[int, bool]:
        """The group's early pings, once a round still running has answered (the decision would ask
        the same meters itself)."""
        early, self._early = self._early, None
        if early is not None:
            await early
        return dict(self._observed)

    async def _confirm(
        self,
        suspects: list[Suspect],
        dark: set[int],
        alive: set[int],
        explained: set[int],
        pings: list[int],
        pinged: set[int],
    ) -> bool:
        """Ping samples inside and around each suspect; adds to ``dark``/``alive``/``pinged``; False if
        nothing (more) to ask."""
        budget = self._settings.ping_budget - len(pinged)
        order = self._samples(suspects, dark, alive, explained, pinged, budget)
        if not order:
            return False
        answers = await self._ping_round(order, None)
        for meter, answered in zip(order, answers, strict=True):
            (alive if answered else dark).add(meter)
            if answered:
                dark.discard(meter)
        pinged.update(order)
        pings[0] += len(order)
        pings[1] += sum(answers)
        return True

    def _samples(
        self,
        suspects: list[Suspect],
        dark: set[int],
        alive: set[int],
        explained: set[int],
        pinged: set[int],
        budget: int,
    ) -> list[int]:
        """Meters to ping: up to ``ping_sample`` inside each suspected device and as many around it (under
        its parent), counting those of ``pinged`` already there; the biggest devices first, at most
        about ``budget``."""
        rng = random.Random(len(dark))  # noqa: S311 - sampling, not security
        wanted: set[int] = set()
        seen = self._pinged_below(pinged)
        sample = self._settings.ping_sample

        def fresh(meter: int) -> bool:
            return meter not in dark and meter not in alive and meter not in explained

        for suspect in sorted(suspects, key=lambda s: (-s.size, -s.dark, s.id)):  # the biggest devices first
            if len(wanted) >= budget:
                break  # a storm's many small suspects: the rest stand on their last gasps alone
            inside = self._meters_of(suspect)
            if suspect.kind == DeviceKind.METER:
                wanted.update(m for m in inside if m not in alive and m not in pinged)
                continue
            device = (suspect.kind, suspect.id)
            wanted.update(_pick(rng, inside, sample - seen.get(device, 0), fresh))
            parent = self.grid.parent(device)
            if parent is not None:  # around: under the parent, not under the suspect
                more = sample - (seen.get(parent, 0) - seen.get(device, 0))
                around = functools.partial(self._fresh_around, fresh, device)
                wanted.update(_pick(rng, self.grid.meters(parent), more, around))
        return sorted(wanted - alive)

    def _fresh_around(self, fresh: Callable[[int], bool], device: Device, meter: int) -> bool:
        return fresh(meter) and not self._below(meter, device)

    def _below(self, meter: int, device: Device) -> bool:
        """Whether ``meter`` is below ``device`` (a transformer, feeder or substation)."""
        transformer = self.grid.meter_transformer.get(meter)
        return transformer is not None and device in self.grid.path_of(transformer)

    def _pinged_below(self, pinged: set[int]) -> dict[Device, int]:
        """How many of ``pinged`` are below each device: counted once from the few pinged meters, not by
        walking every suspect's and every parent's meters (a substation has thousands)."""
        counts: dict[Device, int] = {}
        for meter in pinged:
            transformer = self.grid.meter_transformer.get(meter)
            for device in self.grid.path_of(transformer) if transformer is not None else ():
                counts[device] = counts.get(device, 0) + 1
        return counts

    async def _record(
        self,
        momentary: list[Suspect],
        confirmed: list[Suspect],
        gasps: dict[int, int],
        back: set[int],
        alive: set[int],
        pings: list[int],
        timings: dict[str, float],
    ) -> None:
        """Write the outages (``timings``: how long building their rows and writing them took is added)."""
        below = self._open_below()
        opening = [s for s in confirmed if not any(m in alive for m in self._meters_of(s))]  # else a ping answered

        def write_momentary(conn: Connection, prepared: repo.PreparedOutage) -> list[tuple[OutageRecord, str]]:
            return [(repo.prepared_record(prepared, repo.insert_prepared(conn, prepared)), "momentary")]

        def write_open(conn: Connection, prepared: repo.PreparedOutage) -> list[tuple[OutageRecord, str]]:
            record = repo.prepared_record(prepared, repo.insert_prepared(conn, prepared))
            return [(record, "opened"), *self._adopt(conn, record, below)]

        def write() -> list[tuple[OutageRecord, str]]:
            with collector_paused():  # the rows are freed on return, before collection resumes
                return build_and_write()

        def build_and_write() -> list[tuple[OutageRecord, str]]:
            # the rows are built first: inside the transactions only the database's work holds the write lock
            started = time.perf_counter()
            items = [
                (self._prepare(s, gasps, back, OutageState.MOMENTARY, (0, 0)), write_momentary) for s in momentary
            ] + [(self._prepare(s, gasps, set(), OutageState.OPEN, (pings[0], pings[1])), write_open) for s in opening]
            built = time.perf_counter()
            timings["rows_built_s"] = built - started
            done = self._write_chunked(items, lambda item: len(item[0].rows), lambda conn, item: item[1](conn, item[0]))
            timings["rows_written_s"] = time.perf_counter() - built
            return done

        results = await asyncio.to_thread(write)
        # the gasps that came during the decision wait the usual interval too: flushed at once, they were
        # a second burst of writes (a transaction per outage) right behind the decision's, while a
        # storm's gasps and commands still arrive
        self._late_flushed_at = asyncio.get_running_loop().time()
        for record, change in results:
            if change == "opened":
                meters = set(self._meters_of(_suspect_of(record)))
                self._follow(_Open(record.id, (record.device_kind, record.device_id), meters, record.started_at))
                _log.info("outages.opened", outage_id=record.id, device=f"{record.device_kind}:{record.device_id}")
                # a storm opens hundreds, tens of thousands of meters: commands and reads run in between
                # (gasps meanwhile wait in _pending, power-ups in _back: both are counted below and in _follow)
                await asyncio.sleep(0)
        self._pending_to_late()
        await self._publish(results)

    def _pending_to_late(self) -> None:
        """Gasps that arrived while a decision ran, from meters in the outages it opened, are those
        outages' late gasps (recorded as such), not a new group to explain."""
        for meter in [m for m in self._pending if self._member.get(m)]:
            for outage_id in self._member[meter]:
                self._late_gasps.setdefault(outage_id, set()).add(meter)
            del self._pending[meter]
        if not self._pending:
            self._group_first = None

    def _prepare(
        self,
        suspect: Suspect,
        gasps: dict[int, int],
        back: set[int],
        state: OutageState,
        pings: tuple[int, int],
    ) -> repo.PreparedOutage:
        meters = self._meters_of(suspect)
        times = [gasps[m] for m in meters if m in gasps]
        started = datetime.fromtimestamp(min(times), UTC) if times else self._now()
        restored_at = None
        if state == OutageState.MOMENTARY:  # the latest power-up, or now when pings found them back
            pushed = [self._back[m] for m in meters if m in gasps and m in self._back]
            restored_at = datetime.fromtimestamp(max(pushed), UTC) if pushed else self._now()
        affected = [self._affected(m, m in gasps, m in back) for m in meters]
        if state == OutageState.MOMENTARY:  # the meters that said nothing came back with the others
            affected = [
                a if a.state != "dark" else a._replace(state="restored", restored_by="inferred") for a in affected
            ]
        area = self.grid.area((suspect.kind, suspect.id))
        outage = NewOutage(
            suspect.kind, suspect.id, area, state, started, "last-gasps", restored_at=restored_at,
            pings_sent=pings[0], pings_answered=pings[1],
        )  # fmt: skip
        return repo.prepare_outage(self._engine.dialect, outage, affected, now=self._now())

    def _affected(self, meter: int, gasped: bool, back: bool) -> AffectedMeter:
        place = self._places.get(meter)
        state, by, at = "dark", None, None
        if back:
            pushed = self._back.get(meter)
            by = "push" if pushed is not None else "ping"
            at = datetime.fromtimestamp(pushed, UTC) if pushed is not None else self._now()
            state = "restored"
        if place is None:
            return AffectedMeter(meter, state, gasped, restored_at=at, restored_by=by)
        return AffectedMeter(meter, state, gasped, place.premise_id, place.critical_care, at, by)

    def _open_below(self) -> dict[Device, list[int]]:
        """For every device above an open outage's device, the open outages below it."""
        below: dict[Device, list[int]] = {}
        for state in self._open.values():
            for ancestor in self.grid.ancestors(state.device):
                below.setdefault(ancestor, []).append(state.id)
        return below

    def _adopt(
        self, conn: Connection, record: OutageRecord, below: dict[Device, list[int]]
    ) -> list[tuple[OutageRecord, str]]:
        """Open outages of devices below the new one become its children (nested outages)."""
        done = []
        for outage_id in below.get((record.device_kind, record.device_id), ()):
            child = repo.get_outage(conn, outage_id)
            if child.parent_id is None:
                done.append((repo.change(conn, outage_id, now=self._now(), parent_id=record.id), "nested"))
        return done

    def _write_chunked(
        self,
        items: Sequence[_T],
        rows_of: Callable[[_T], int],
        write_one: Callable[[Connection, _T], list[tuple[OutageRecord, str]]],
        *,
        per_transaction: int = _ROWS_PER_TRANSACTION,
    ) -> list[tuple[OutageRecord, str]]:
        """Write ``items`` in transactions of about ``per_transaction`` affected meters: each item
        (an outage and its meters) is whole in one transaction, and a storm's thousands of outages
        never hold the database's write lock for long while a switch command or an on-demand read
        waits for it. As a bulk writer (``db.engine.bulk_writes``): at SQLite's write lock commands and
        reads go first (control traffic before outage bookkeeping; a bulk writer waits at most
        ``BULK_PATIENCE_S`` for them), and one that starts waiting meanwhile gets the lock after the
        item being written (``db.engine.let_waiting_writers_in``).

        PostgreSQL has no such lock (its writers lock rows, and commands and reads touch none of these),
        while each commit waits for its WAL to reach the disk: transactions of at least
        ``_PG_ROWS_PER_TRANSACTION`` there (a storm's 54,000 affected meters offline, durable cluster:
        0.38 s in 3 transactions against 0.43 s in 55, medians of 3)."""
        if self._engine.dialect.name == "postgresql":
            per_transaction = max(per_transaction, _PG_ROWS_PER_TRANSACTION)
        done: list[tuple[OutageRecord, str]] = []
        start = 0
        while start < len(items):
            end, rows = start, 0
            while end < len(items) and (end == start or rows + rows_of(items[end]) <= per_transaction):
                rows += rows_of(items[end])
                end += 1
            with bulk_writes(), self._engine.begin() as conn:
                for item in items[start:end]:
                    done += write_one(conn, item)
                    let_waiting_writers_in(conn)  # each item stands on its own: a waiting command goes first
            start = end
        return done

    # -- restoration -------------------------------------------------------------------------------------------

    async def _verify(self, states: list[_Open]) -> None:
        """Ping the meters of ``states`` that did not report back, all at once; list those still dark,
        open child outages for devices that stay dark; each verification is written whole (``_write_chunked``).

        Verifying outages together matters in a storm: a feeder-level outage restores hundreds of
        devices' outages within seconds, and one round of pings for all of them takes what one takes."""
        for state in states:
            self._untrack(state.id)
            await asyncio.sleep(0)  # hundreds of outages, tens of thousands of meters: commands run in between
        silent = {state.id: sorted(state.meters - state.restored) for state in states}
        everyone = sorted(set().union(*silent.values()))
        answers = await self._ping_round(everyone, None)
        answered = {m for m, ok in zip(everyone, answers, strict=True) if ok}
        for meter in answered:  # back in every other open outage too
            for other in self._member.get(meter, ()):
                self._open[other].restored.add(meter)
        restored = {state.id: set(state.restored) for state in states}  # power-ups keep coming meanwhile
        found = await asyncio.to_thread(  # a storm's restoration infers for hundreds of outages: off the loop
            lambda: [self._still_dark_below(state, silent[state.id], answered, restored[state.id]) for state in states]
        )
        plans = [
            _Verification(state, len(silent[state.id]), back, still, [s for s in below if not self._followed(s)])
            for state, (back, still, below) in zip(states, found, strict=True)
        ]

        now = self._now()

        def write() -> list[tuple[OutageRecord, str]]:
            return self._write_chunked(
                plans, lambda plan: len(plan.state.meters), lambda conn, plan: self._write_verification(conn, plan, now)
            )

        results = await asyncio.to_thread(write)
        still_of = {plan.state.id: plan.still for plan in plans}
        for plan in plans:  # a meter listed still dark that reports power later is taken off the list
            for meter in plan.still:
                self._still_dark.setdefault(meter, []).append((plan.state.id, plan.state.started_s))
        for record, change in results:
            if change == "opened" and record.parent_id is not None:
                still = still_of[record.parent_id]
                self._track(_Open(record.id, (record.device_kind, record.device_id), set(), record.started_at))
                self._open[record.id].meters = set(self._meters_of(_suspect_of(record))) & still
                for meter in self._open[record.id].meters:
                    self._join(meter, record.id)
        for plan in plans:
            _log.info("outages.restored", outage_id=plan.state.id, still_dark=len(plan.still))
        await self._publish(results)

    def _still_dark_below(
        self, state: _Open, silent: list[int], answered: set[int], restored: set[int]
    ) -> tuple[set[int], set[int], list[Suspect]]:
        """Of ``silent``, the meters back and those still dark, and the devices below the outage that
        stay dark (any thread: it reads only the grid and its arguments)."""
        back = answered.intersection(silent)
        still = set(silent) - back
        suspects = infer(self.grid, still, restored | back, params=self._params, within=state.device)
        return back, still, [s for s in suspects if s.kind != DeviceKind.METER]

    def _write_verification(
        self, conn: Connection, plan: _Verification, now: datetime
    ) -> list[tuple[OutageRecord, str]]:
        state, still = plan.state, plan.still
        repo.mark_meters(conn, state.id, sorted(plan.answered), state="restored", restored_by="ping", restored_at=now)
        repo.mark_meters(
            conn, state.id, sorted(state.restored), state="restored", restored_by="push", restored_at=state.restored_at
        )
        repo.mark_meters(conn, state.id, sorted(still), state="still-dark")
        done: list[tuple[OutageRecord, str]] = []
        for suspect in plan.devices:
            meters = [m for m in self._meters_of(suspect) if m in still]
            outage = NewOutage(
                suspect.kind, suspect.id, self.grid.area((suspect.kind, suspect.id)), OutageState.OPEN,
                state.started_at, "verification", parent_id=state.id,
            )  # fmt: skip
            affected = [self._affected(m, False, False) for m in meters]
            child = repo.insert_outage(conn, outage, affected, now=now)
            done.append((repo.get_outage(conn, child), "opened"))
        current = repo.get_outage(conn, state.id)
        restored_at = state.restored_at or now
        quick = not still and (restored_at - state.started_at).total_seconds() <= self._settings.momentary_s
        final = repo.change(
            conn, state.id, now=now, state=OutageState.MOMENTARY if quick else OutageState.RESTORED,
            restored_at=restored_at, verified_at=now, still_dark=len(still),
            pings_sent=current.pings_sent + plan.pinged, pings_answered=current.pings_answered + len(plan.answered),
        )  # fmt: skip
        return [(final, "momentary" if quick else "restored"), *done]

    def _back_since(self, state: _Open) -> set[int]:
        """Meters whose power-up (any, also before this outage's tracking) is newer than the outage's start."""
        start = state.started_at.timestamp()
        return {m for m in state.meters if self._back.get(m, -1) >= start}

    def _followed(self, suspect: Suspect) -> bool:
        """Whether an open outage already follows this device (or one above it)."""
        device = (suspect.kind, suspect.id)
        above = {device, *self.grid.ancestors(device)}
        return any(s.device in above for s in self._open.values())


@dataclass(frozen=True, slots=True)
class _Inferred:
    """A provisional inference of a storm's group: the meters it took as explained, the devices it
    named, and how many early pings it knew of."""

    explained: set[int]
    suspects: list[Suspect]
    observed: int


@dataclass(frozen=True, slots=True)
class _Verification:
    """What restoration verification found for one outage, before it is written."""

    state: _Open
    pinged: int
    answered: set[int]  # silent meters that answered a ping
    still: set[int]  # silent meters that did not
    devices: list[Suspect]  # devices below the outage that stay dark: child outages


def _devices(suspects: Iterable[Suspect]) -> set[tuple[DeviceKind, str]]:
    return {(s.kind, s.id) for s in suspects}


def _suspect_of(record: OutageRecord) -> Suspect:
    return Suspect(record.device_kind, record.device_id, record.meters, record.last_gasps, 0.0)


_SCAN_BELOW = 256  # a pool this small is scanned: drawing from it saves nothing
_DRAWS_PER_PICK = 20  # random draws a wanted meter may take before the pool is scanned after all


def _pick(rng: random.Random, pool: Sequence[int], count: int, ok: Callable[[int], bool]) -> list[int]:
    """Up to ``count`` distinct members of ``pool`` for which ``ok`` holds, uniformly at random. A big
    pool (the meters around a feeder: its substation's thousands) is drawn from, a few at a time; the
    storm's first pings listed every substation's meters for each of its dozens of suspects, on the
    event loop (46 ms stalls). The pool is scanned when it is small or draws keep missing."""
    if count <= 0:
        return []
    if len(pool) > _SCAN_BELOW:
        picked: dict[int, None] = {}  # insertion-ordered: the same draws give the same sample
        for _ in range(count * _DRAWS_PER_PICK):
            meter = pool[rng.randrange(len(pool))]
            if meter not in picked and ok(meter):
                picked[meter] = None
                if len(picked) == count:
                    return list(picked)
    eligible = [m for m in pool if ok(m)]
    return rng.sample(eligible, min(count, len(eligible)))
