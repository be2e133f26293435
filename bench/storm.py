"""`openami bench storm --meters N`: a feeder-level outage storm, its location and restoration, and commands meanwhile.

The fleet runs in worker processes (one per 5,000 meters), pushing to the platform's listener and
pinning its command authority; the platform runs in this process with everything
``start_platform`` starts (push listener and event pipeline, outage engine, command queue, guard,
prepayment, revenue protection). Steps:

1. baseline: on-demand reads and disconnect/reconnect commands on probe meters of healthy feeders,
   started at fixed rates (``--read-rate``, ``--command-rate``: an open loop) for ``--baseline-s``
   seconds, to time them on a quiet platform, after ``--warmup-s`` seconds of the same probes that
   are not counted (the slowest baseline probes of earlier runs all fell in its first ~1.5 s, just
   after the fleet's import and the start-up collection of the frozen heap: 0.15-0.22 s against
   0.03-0.06 s later, which made the baseline p99 a measure of the warm-up);
2. storm: every other feeder of the grid (``--fail-share`` of them, never all feeders of a
   substation) loses power at once; ``--last-gasp-share`` of its meters get a last gasp out (the
   simulator's deterministic choice per meter), each after a random delay of up to ``--spread-s``
   seconds (the Push Setup's randomisation: how a network delivers a storm). Meanwhile the same
   probes run again. Measured: from the first last gasp stored to the moment the top-level open
   outages are exactly the failed feeders (``located_s``);
3. restoration: the failed feeders get power back (``--restore-share`` of their meters; the rest
   stay dark; power-up pushes spread the same way); measured: from the restore to every outage
   verified (``restoration_verified_s``), and whether the still-dark lists name exactly the meters
   left out. The probes keep running from the failure until restoration is verified.

Prints ONE JSON object on stdout (times in seconds; p50/p99 of reads and commands, baseline and
during the storm, and their ratio); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import gc
import json
import logging
import math
import os
import random
import resource
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))  # _common
sys.path.insert(0, str(BENCH_DIR.parent))  # tests/pg.py for a private PostgreSQL

from _common import command_bench_settings  # noqa: E402
from openami import logging as oam_logging  # noqa: E402
from openami.bus.topics import OUTAGES_CHANGED  # noqa: E402
from openami.cli import loop  # noqa: E402
from openami.db import outages as outage_repo  # noqa: E402
from openami.db.engine import create_engine  # noqa: E402
from openami.db.meters import meter_ids_by_serial  # noqa: E402
from openami.db.migrations import upgrade  # noqa: E402
from openami.db.tables import meter_events, outages  # noqa: E402
from openami.domain.meter_events import EventCode  # noqa: E402
from openami.domain.outages import OutageChanged  # noqa: E402
from openami.errors import MeterCommunicationError, OpenAmiError  # noqa: E402
from openami.headend.events import PipelineStats  # noqa: E402
from openami.security import command_authority  # noqa: E402
from openami.security.keystore import master_key_provider  # noqa: E402
from openami.security.policy import ALL_SCOPES, RequestScope, Role  # noqa: E402
from openami.services import switch as switch_services  # noqa: E402
from openami.services.bootstrap import build_platform, reload_targets, start_platform, stop_platform  # noqa: E402
from openami.services.context import Platform  # noqa: E402
from openami.services.meters import import_commissioning  # noqa: E402
from openami.services.pki import ca_files  # noqa: E402
from openami.services.push_process import PushProcess  # noqa: E402
from openami.services.switch import CommandRequest  # noqa: E402
from openami.settings import (  # noqa: E402
    CollectionSettings,
    PushSettings,
)
from openami.sim.fleet import MAX_METERS_PER_PROCESS, PUSH_TRANSPORTS, Fleet, FleetConfig, build_fleet  # noqa: E402
from openami.sim.runner import FleetHandle, start_fleet_processes  # noqa: E402
from openami.sim.scenarios import last_gasp_chosen, restore_chosen  # noqa: E402

OPERATOR = RequestScope("bench:operator", frozenset({Role.AMI_OPERATOR}), frozenset({ALL_SCOPES}))
_API_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="api")


_RESTORE_MARGIN_S = 1.5
"""Power comes back this long after ``momentary_s`` from the first gasp: more than meter times' 1 s
resolution, so that no failed feeder's outage can read as momentary."""


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(name: str, values: Sequence[float]) -> dict[str, float]:
    return {f"{name}_p50_s": round(_quantile(values, 0.5), 4), f"{name}_p99_s": round(_quantile(values, 0.99), 4)}


class Probes:
    """On-demand reads and disconnect/reconnect pairs on meters the storm does not touch."""

    def __init__(self, platform: Platform, read_ids: Sequence[int], switch_ids: Sequence[int]) -> None:
        self.platform = platform
        self.read_ids = list(read_ids)
        self.switch_ids = list(switch_ids)
        self.failures = 0
        self.slowest: dict[str, float] = {}  # where the slowest command's time went
        self.splits: list[tuple[float, float, float, float]] = []  # each command's submit, queued, meter, rest
        self.timeline: list[tuple[str, float, float]] = []  # (kind, wall-clock start, seconds) of each probe
        self.command_steps: list[tuple[float, float, float, float, float, float]] = []  # start, took, the 4 steps

    async def read(self, meter_id: int, into: list[float]) -> None:
        started = time.perf_counter()
        try:
            await self.platform.collector.read_on_demand(meter_id, hours=1)
        except MeterCommunicationError:
            self.failures += 1
            return
        took = time.perf_counter() - started
        into.append(took)
        self.timeline.append(("read", time.time() - took, took))

    async def command(self, meter_id: int, command: str, into: list[float]) -> None:
        started = time.perf_counter()
        request = CommandRequest(meter_id, command, valid_for_s=60)
        submit = functools.partial(switch_services.submit, self.platform, OPERATOR, request)
        try:
            view = await asyncio.get_running_loop().run_in_executor(_API_THREADS, submit)
        except OpenAmiError:  # e.g. the previous command of this meter is still in flight
            self.failures += 1
            return
        submitted = time.perf_counter()
        done = await switch_services.wait_for(self.platform, view.id, 90)
        if done.status != "confirmed":
            self.failures += 1
            return
        took = time.perf_counter() - started
        into.append(took)
        self.timeline.append(("command", time.time() - took, took))
        if not (done.sent_at and done.confirmed_at):
            return
        submit, queued = submitted - started, (done.sent_at - done.created_at).total_seconds()
        meter = (done.confirmed_at - done.sent_at).total_seconds()
        self.splits.append((submit, queued, meter, took - submit - queued - meter))
        self.command_steps.append((time.time() - took, took, *self.splits[-1]))
        if took > self.slowest.get("total_s", 0.0):
            self.slowest = {"total_s": round(took, 3), "submit_s": round(submit, 3), "queued_s": round(queued, 3),
                            "meter_s": round(meter, 3)}  # fmt: skip

    def take_splits(self, phase: str) -> dict[str, float]:
        """Where the commands' time went since the last call: p50 and p90 of each step (submit: the
        caller's transaction; queued: until the queue claimed it; meter: the session; rest: until the
        waiter heard of the outcome), so that a slower phase shows which step grew."""
        splits, self.splits = self.splits, []
        figures: dict[str, float] = {}
        for i, step in enumerate(("submit", "queued", "meter", "rest")):
            values = [s[i] for s in splits]
            figures |= {f"{step}_p{q}_s": round(_quantile(values, q / 100), 4) for q in (50, 90)}
        return {f"command_{phase}_{k}": v for k, v in figures.items()}

    async def run(
        self, reads: list[float], commands: list[float], stop: Callable[[], bool], *, read_rate: float,
        command_rate: float,
    ) -> None:  # fmt: skip
        """On-demand reads at ``read_rate`` a second and switch commands at ``command_rate``, each started
        on its schedule whatever the earlier ones are doing, until ``stop()``: an open loop, so that a
        stall delays no later probe's start and the p99 sees every probe a stall catches (one probe
        after the other, as sessions 1-7 ran them, issues fewer while the platform is slow: coordinated
        omission). A command goes to the next switch meter with none in flight; reads go round their
        meters (two reads of one meter take turns at its session lock, as a real head-end's would)."""
        loop = asyncio.get_running_loop()
        started, n_reads, n_commands = loop.time(), 0, 0
        busy: set[int] = set()
        states: dict[int, str] = {}  # meter -> the command it gets next
        running: set[asyncio.Task[None]] = set()

        def spawn(probe: Awaitable[None]) -> None:
            task = asyncio.ensure_future(probe)
            running.add(task)
            task.add_done_callback(running.discard)

        async def command(meter_id: int) -> None:
            busy.add(meter_id)
            try:
                await self.command(meter_id, states.get(meter_id, "disconnect"), commands)
            finally:
                states[meter_id] = "reconnect" if states.get(meter_id, "disconnect") == "disconnect" else "disconnect"
                busy.discard(meter_id)

        while not stop():
            next_read, next_command = started + n_reads / read_rate, started + n_commands / command_rate
            wait = min(next_read, next_command) - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if next_read <= next_command:
                spawn(self.read(self.read_ids[n_reads % len(self.read_ids)], reads))
                n_reads += 1
                continue
            free = [m for m in self.switch_ids if m not in busy]
            if free:  # every switch meter still busy: this slot is skipped (and counted as a failure)
                spawn(command(free[n_commands % len(free)]))
            else:
                self.failures += 1
            n_commands += 1
        await asyncio.gather(*running)


def _innermost(frame: Any, depth: int) -> str:
    frames = traceback.extract_stack(frame)[-depth:]
    return " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))


def _idle(frame: Any) -> bool:
    """A thread waiting for work or for a lock (its innermost frame in threading or queue)."""
    return Path(frame.f_code.co_filename).name in ("threading.py", "queue.py", "thread.py", "selectors.py")


class LoopLag:
    """How late the platform's event loop wakes a task asleep for ``tick_s``, phase by phase: every
    probe's session and queue step waits for the loop several times, so a loop late by a few ms at
    each wake-up adds up even when no single stall is long."""

    def __init__(self, tick_s: float = 0.002) -> None:
        self.tick_s = tick_s
        self.lates: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.tick_s)
            self.lates.append(loop.time() - before - self.tick_s)

    def take(self, phase: str) -> dict[str, float]:
        """The lateness since the last call: p50, p99 and max (seconds), and the share of wake-ups 5 ms late."""
        lates, self.lates = self.lates, []
        late = sum(1 for x in lates if x >= 0.005) / len(lates) if lates else float("nan")
        return {f"loop_lag_{phase}_p50_s": round(_quantile(lates, 0.5), 4),
                f"loop_lag_{phase}_p99_s": round(_quantile(lates, 0.99), 4),
                f"loop_lag_{phase}_max_s": round(max(lates, default=float("nan")), 4),
                f"loop_lag_{phase}_5ms_share": round(late, 4)}  # fmt: skip


class Stalls:
    """What the slowest probes waited for: the platform's event loop waking late (a long callback, a
    collector pass, a thread holding the GIL), the cyclic collector's passes, and the CPU each process
    used, each with its wall-clock time."""

    def __init__(self, pids: dict[str, list[int]], *, tick_s: float = 0.005, late_s: float = 0.02) -> None:
        self.pids = pids  # name -> processes whose CPU is summed under it
        self.tick_s, self.late_s = tick_s, late_s
        self.loop_late: list[tuple[float, float]] = []  # (wall-clock start, seconds late)
        self.gc_passes: list[tuple[int, float, float]] = []  # (generation, wall-clock start, seconds)
        self.cpu: list[tuple[float, dict[str, float]]] = []  # (wall-clock, share of a core since the last)
        self.stalled_in: dict[str, list[float]] = {}  # the loop thread's stack while late -> wall-clock samples
        self.count_gc_types = bool(os.environ.get("OPENAMI_BENCH_GC_TYPES"))  # which objects long passes walked
        self.gc_types: list[list[Any]] = []
        self._young: collections.Counter[str] | None = None
        self._gc_started = 0.0
        self._beat = time.perf_counter()

    def _sample_stalls(self, loop_thread: int, stop: threading.Event) -> None:
        """Every 10 ms, while the loop has not ticked for ``late_s``: where the loop's thread is (its
        innermost frames), to name what a stall ran."""
        while not stop.wait(0.01):
            if time.perf_counter() - self._beat < self.tick_s + 0.01:
                continue
            frames = sys._current_frames()
            frame = frames.get(loop_thread)
            if frame is None:
                del frames
                continue
            where = _innermost(frame, 5)
            if "runners.py" in where.split(" < ")[0]:  # in the loop's own C code: which other threads run Python?
                busy = sorted(
                    _innermost(f, 3) for ident, f in frames.items()
                    if ident not in (loop_thread, threading.get_ident()) and not _idle(f)
                )  # fmt: skip
                where += " | threads: " + " ; ".join(busy)
            self.stalled_in.setdefault(where, []).append(time.time())
            del frames, frame  # a frame object kept alive keeps its function's locals alive (a decision's rows)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            if self.count_gc_types and info["generation"] >= 1:  # what the pass is about to walk (costs ms)
                self._young = collections.Counter(type(o).__name__ for o in gc.get_objects(1))
            self._gc_started = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_started
        if took >= 0.005:
            self.gc_passes.append((info["generation"], time.time() - took, took))
            if self._young is not None and took >= 0.015:
                self.gc_types.append([round(took, 3), self._young.most_common(8)])
        self._young = None

    def _cpu_ticks(self) -> dict[str, int]:
        ticks: dict[str, int] = {}
        for name, pids in self.pids.items():
            total = 0
            for pid in pids:
                with contextlib.suppress(OSError):
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    total += int(fields[11]) + int(fields[12])  # utime, stime
            ticks[name] = total
        return ticks

    async def watch(self, cpu_every_s: float = 0.5) -> None:
        gc.callbacks.append(self._on_gc)
        hertz = os.sysconf("SC_CLK_TCK")
        ticks, sampled = self._cpu_ticks(), time.perf_counter()
        stop = threading.Event()
        sampler = threading.Thread(target=self._sample_stalls, args=(threading.get_ident(), stop), daemon=True)
        sampler.start()
        try:
            while True:
                before = time.perf_counter()
                await asyncio.sleep(self.tick_s)
                now = self._beat = time.perf_counter()
                late = now - before - self.tick_s
                if late >= self.late_s:
                    self.loop_late.append((time.time() - late, late))
                if now - sampled >= cpu_every_s:
                    current = self._cpu_ticks()
                    shares = {k: round((current[k] - ticks[k]) / hertz / (now - sampled), 2) for k in current}
                    self.cpu.append((time.time(), shares))
                    ticks, sampled = current, now
        finally:
            gc.callbacks.remove(self._on_gc)
            stop.set()

    def timeline(self, since: float, first: float) -> dict[str, Any]:
        """The longest loop stalls and collector passes and the CPU series, from ``since``, in seconds from
        ``first``."""
        late = sorted((s for s in self.loop_late if s[0] >= since), key=lambda s: -s[1])[:12]
        passes = sorted((p for p in self.gc_passes if p[1] >= since), key=lambda p: -p[2])[:12]
        return {
            "loop_late": [[round(at - first, 2), round(took, 3)] for at, took in late],
            "gc_passes": [[gen, round(at - first, 2), round(took, 3)] for gen, at, took in passes],
            "cpu": [[round(at - first, 1), shares] for at, shares in self.cpu if at >= since],
            "stalled_in": self._stalled_in(since, first),
            "gc_young_types": self.gc_types[:6],
        }

    def _stalled_in(self, since: float, first: float) -> list[list[Any]]:
        """Where the loop's thread was while the loop was late, the most sampled first: how many samples,
        the first few times, the innermost frames."""
        entries = sorted(
            ((where, times) for where, times in self.stalled_in.items() if times[-1] >= since),
            key=lambda entry: -len(entry[1]),
        )
        return [[len(times), [round(t - first, 2) for t in times[:8]], where] for where, times in entries[:15]]


def _by_feeder(fleet: Fleet) -> dict[str, list[int]]:
    """Fleet indices of each feeder's meters, in one pass (``meters_of`` per feeder is a pass each)."""
    topology = fleet.topology
    feeder_of_transformer = {t.id: t.feeder_id for t in topology.transformers}
    feeder_of_point = {p.id: feeder_of_transformer[p.transformer_id] for p in topology.service_points}
    grouped: dict[str, list[int]] = {f.id: [] for f in topology.feeders}
    for i, meter in enumerate(fleet.meters):
        if meter.service_point_id in feeder_of_point:
            grouped[feeder_of_point[meter.service_point_id]].append(i)
    return grouped


def _failed_feeders(fleet: Fleet, share: float) -> list[str]:
    """Every k-th feeder (k from ``share``), but never every feeder of a substation."""
    step = max(1, round(1 / share))
    chosen: list[str] = []
    by_substation: dict[str, list[str]] = {}
    for feeder in fleet.topology.feeders:
        by_substation.setdefault(feeder.substation_id, []).append(feeder.id)
    for feeders in by_substation.values():
        picked = feeders[::step]
        chosen += picked[: len(feeders) - 1] if len(feeders) > 1 else []
    return chosen


def _udp_receive_drops() -> int | None:
    """Datagrams the kernel dropped for a full receive buffer, machine-wide (Linux /proc/net/snmp):
    in this bench only the platform's push listener receives UDP."""
    try:
        lines = [line.split() for line in Path("/proc/net/snmp").read_text(encoding="ascii").splitlines()]
    except OSError:
        return None
    header, values = [line for line in lines if line and line[0] == "Udp:"][:2]
    return int(values[header.index("RcvbufErrors")])


def _first_gasp(platform: Platform, since: float) -> float | None:
    with platform.engine.connect() as conn:
        found = conn.execute(
            sa.select(sa.func.min(meter_events.c.received_at)).where(
                meter_events.c.code == int(EventCode.POWER_DOWN), meter_events.c.received_at >= since
            )
        ).scalar_one_or_none()
    return None if found is None else float(found)


def _gasp_arrival(platform: Platform, since: float) -> dict[str, float]:
    """How the last gasps arrived: seconds from the first to the median, the 90th percentile and the last."""
    e = meter_events.c
    query = sa.select(e.received_at).where(e.code == int(EventCode.POWER_DOWN), e.received_at >= since)
    with platform.engine.connect() as conn:
        times = sorted(float(t) for t in conn.execute(query).scalars())
    if not times:
        return {}
    return {f"gasps_arrived_{name}_s": round(_quantile(times, q) - times[0], 2) for name, q in
            (("p50", 0.5), ("p90", 0.9), ("last", 1.0))}  # fmt: skip


def _list_outages(platform: Platform) -> list[outage_repo.OutageRecord]:
    with platform.engine.connect() as conn:
        return outage_repo.list_outages(conn, limit=1_000_000)


def _open_feeders(platform: Platform) -> tuple[set[str], int]:
    """The feeders among the open top-level outages (nested ones hang below), and how many are open.

    A narrow query: the bench polls this ten times a second in the platform's own process, and must
    not take the CPU it measures."""
    o = outages.c
    query = sa.select(o.device_kind, o.device_id).where(o.state == "open", o.parent_id.is_(None))
    with platform.engine.connect() as conn:
        live = conn.execute(query).all()
    return {device for kind, device in live if kind == "feeder"}, len(live)


def _all_restored(platform: Platform, feeders: Sequence[str]) -> bool:
    """Whether the failed feeders have outages and every one of them is restored (verified)."""
    o = outages.c
    query = sa.select(o.state).where(o.device_kind == "feeder", o.device_id.in_(list(feeders)))
    with platform.engine.connect() as conn:
        states = conn.execute(query).scalars().all()
    return bool(states) and all(state == "restored" for state in states)


async def _until(what: str, check: Callable[[], bool], timeout_s: float, console: Console) -> float | None:
    """Poll ``check`` (in a thread: it reads the database) until true; the time it became so, or None."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if await asyncio.to_thread(check):
            return time.time()
        await asyncio.sleep(0.1)
    console.print(f"[red]timed out waiting for {what}[/]")
    return None


def _pushes(platform: Platform) -> tuple[PipelineStats, int] | None:
    """The push pipeline's totals and queue: the push process's (``--push-process``) or the platform's own."""
    if isinstance(platform.push_listener, PushProcess):
        return platform.push_listener.stats, platform.push_listener.queued
    return None if platform.events is None else (platform.events.stats, platform.events.queued)


async def _report_progress(platform: Platform, console: Console, every_s: float = 2.0) -> None:
    """Every few seconds: what the event pipeline took, stored, dropped and has queued (cheap counters)."""
    started = time.perf_counter()
    cpu = time.process_time()
    while (pushes := _pushes(platform)) is not None:
        await asyncio.sleep(every_s)
        stats, queued = pushes
        used, cpu = time.process_time() - cpu, time.process_time()
        console.print(
            f"  t={time.perf_counter() - started:5.1f} s: events received {stats.received:,}, stored {stats.stored:,}, "
            f"dropped {stats.dropped:,}, queued {queued:,}; platform CPU {used / every_s:.0%}"
        )


async def _fail_feeders(handle: FleetHandle, meters: Sequence[int], params: dict[str, Any], spread_s: float) -> None:
    """The feeders' meters lose power together; each last gasp leaves after a random delay of up to
    ``spread_s`` (the Push Setup's randomisation), as a real network delivers a storm's gasps."""
    await asyncio.to_thread(handle.control, "push-randomisation", meters, seconds=max(0, round(spread_s)))
    await asyncio.to_thread(handle.control, "power-fail", meters, **params)


async def _storm(
    platform: Platform, handle: FleetHandle, ids: dict[str, int], args: argparse.Namespace, console: Console,
    probes: Probes, stalls: Stalls,
) -> dict[str, Any]:  # fmt: skip
    fleet = handle.fleet
    feeders = _failed_feeders(fleet, args.fail_share)
    grouped = _by_feeder(fleet)
    failing = sorted(i for f in feeders for i in grouped[f])
    serials = [m.serial for m in fleet.meters]
    fail_params = {"last_gasp_share": args.last_gasp_share, "seed": 11}
    gasps = sum(1 for i in failing if last_gasp_chosen(serials[i], fail_params))
    restore_params = {"restore_share": args.restore_share, "seed": 12}
    dark = {ids[serials[i]] for i in failing if not restore_chosen(serials[i], restore_params)}  # before the probes
    console.print(f"storm: {len(feeders)} feeders, {len(failing)} meters, {gasps} last gasps over {args.spread_s} s")
    reads: list[float] = []
    commands: list[float] = []
    located: list[float | None] = []
    storm_started = time.time()

    def correct() -> bool:
        open_feeders, live = _open_feeders(platform)
        return open_feeders == set(feeders) and live == len(feeders)

    async def locate() -> None:
        located.append(await _until("the outage records", correct, args.timeout_s, console))

    changes: list[tuple[float, str]] = []  # the OMS feed as it goes: when the engine's writes were done

    async def note_change(message: OutageChanged) -> None:
        changes.append((time.time(), message.change))

    unsubscribe = platform.bus.subscribe(OUTAGES_CHANGED, note_change)
    locator = asyncio.create_task(locate())
    storm_over = asyncio.Event()
    prober = asyncio.create_task(probes.run(reads, commands, storm_over.is_set, **_rates(args)))
    await _fail_feeders(handle, failing, fail_params, args.spread_s)
    await locator
    engine = platform.outages
    if engine is not None:  # the records are written before the engine's decision has ended
        await _until("the decision's end", lambda: bool(engine.last_decision), 30, console)
    first = await asyncio.to_thread(_first_gasp, platform, storm_started)  # the bench's own reads: off the loop
    opened = await asyncio.to_thread(_list_outages, platform)
    kinds: dict[str, int] = {}
    for record in opened:
        nested = "nested" if record.parent_id is not None else "top"
        which = "failed" if record.device_id in set(feeders) else "other"
        key = f"{record.device_kind}:{record.state}:{nested}:{which}"
        kinds[key] = kinds.get(key, 0) + 1
    result: dict[str, Any] = {
        "failed_feeders": len(feeders),
        "outages_by_kind_state": kinds,
        "failed_meters": len(failing),
        "last_gasps_sent": gasps,
        "located_s": None if located[0] is None or first is None else round(located[0] - first, 2),
        "decision": {} if platform.outages is None else platform.outages.last_decision,  # the steps' seconds
    }
    console.print(f"restoration: {len(failing) - len(dark)} meters back, {len(dark)} left dark")
    if first is not None:  # power back within momentary_s of the failure is a momentary outage, by definition
        # meter times are whole seconds: a feeder whose first gasp came a moment after ``first`` and power
        # back 3.5 s later could read 3 s long, momentary (sessions 13-15 saw single feeders end so)
        await asyncio.sleep(max(0.0, first + platform.settings.outages.momentary_s + _RESTORE_MARGIN_S - time.time()))
    await asyncio.to_thread(handle.control, "push-randomisation", failing, seconds=max(0, round(args.spread_s)))
    restore_started = time.time()
    await asyncio.to_thread(handle.control, "power-restore", failing, **restore_params)

    done = await _until("restoration verification", lambda: _all_restored(platform, feeders), args.timeout_s, console)
    if done is None:  # say which failed feeders' outages are not restored
        o = outages.c
        query = sa.select(o.id, o.device_id, o.state, o.parent_id, o.still_dark).where(
            o.device_kind == "feeder", o.device_id.in_(feeders), o.state != "restored"
        )
        with platform.engine.connect() as conn:
            result["not_restored"] = [list(row) for row in conn.execute(query).all()[:10]]
    storm_over.set()
    await prober
    unsubscribe()
    if first is not None:
        result["timeline"] = {
            **_timeline(changes, [p for p in probes.timeline if p[1] >= storm_started], first),
            **stalls.timeline(storm_started, first),
            "slow_commands": _slow_commands([s for s in probes.command_steps if s[0] >= storm_started], first),
        }
    result.update({**_summary("read_storm", reads), **_summary("command_storm", commands),
                   "reads_during_storm": len(reads), "commands_during_storm": len(commands)})  # fmt: skip
    with platform.engine.connect() as conn:
        still = {
            m.meter_id
            for o in outage_repo.list_outages(conn, limit=1_000_000)
            for m in outage_repo.affected_meters(conn, o.id, states=("still-dark",))
        }
    result.update(await asyncio.to_thread(_gasp_arrival, platform, storm_started))
    result.update({
        "restoration_verified_s": None if done is None else round(done - restore_started, 2),
        "left_dark": len(dark),
        "still_dark_listed": len(still),
        "still_dark_correct": still == dark,
    })  # fmt: skip
    return result


def _timeline(
    changes: Sequence[tuple[float, str]], probes: Sequence[tuple[str, float, float]], first: float
) -> dict[str, Any]:
    """Where the storm's time went, in seconds from the first last gasp: the published outage changes
    (a burst of one kind is one write of the engine: its first and last message and how many) and the
    slowest probes with their start, to tell which of the engine's steps they fell in."""
    bursts: list[list[Any]] = []
    for at, change in changes:
        rel = round(at - first, 2)
        if bursts and bursts[-1][0] == change and rel - bursts[-1][2] < 0.5:
            bursts[-1][2], bursts[-1][3] = rel, bursts[-1][3] + 1
        else:
            bursts.append([change, rel, rel, 1])
    slowest = sorted(probes, key=lambda p: -p[2])[:12]
    return {
        "changes": bursts,
        "slow_probes": [[kind, round(start - first, 2), round(took, 3)] for kind, start, took in slowest],
    }


def _slow_commands(steps: Sequence[tuple[float, ...]], first: float, count: int = 8) -> list[list[float]]:
    """The slowest storm commands: start (s from the first last gasp), seconds in all, and the seconds of
    each step (submit, queued, meter, rest: ``Probes.take_splits``), to tell which step a tail comes from."""
    slowest = sorted(steps, key=lambda s: -s[1])[:count]
    return [[round(start - first, 2), *(round(x, 4) for x in rest)] for start, *rest in slowest]


def _threads(pid: int) -> list[int]:
    """Every thread of ``pid`` (Linux applies a priority or a policy to one thread at a time)."""
    try:
        return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return [pid]


def _deprioritise(pid: int, nice: int, *, idle: bool) -> None:
    for tid in _threads(pid):
        os.setpriority(os.PRIO_PROCESS, tid, nice)
        if idle:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))


def _probe_sample(fleet: Fleet, args: argparse.Namespace) -> list[int]:
    """Fleet indices of the probe meters: reads first, then commands; all on feeders that do not fail."""
    feeders = set(_failed_feeders(fleet, args.fail_share))
    healthy = sorted(i for f, members in _by_feeder(fleet).items() if f not in feeders for i in members)
    return random.Random(7).sample(healthy, min(len(healthy), args.probes + args.probes // 4))


def _rates(args: argparse.Namespace) -> dict[str, float]:
    return {"read_rate": args.read_rate, "command_rate": args.command_rate}


def _partitions(fleet: Fleet, processes: int, probes: Sequence[int]) -> list[list[int]]:
    """The usual contiguous slices, with the probe meters taken out into a process of their own."""
    taken = set(probes)
    parts = [[m.index for m in part if m.index not in taken] for part in fleet.partitions(processes)]
    return [*parts, sorted(taken)]


async def _run(
    platform: Platform, handle: FleetHandle, sample: Sequence[int], args: argparse.Namespace, console: Console
) -> dict[str, Any]:
    fleet = handle.fleet
    with platform.engine.connect() as conn:
        ids = meter_ids_by_serial(conn, [m.serial for m in fleet.meters])
    read_ids = [ids[fleet.meters[i].serial] for i in sample[: args.probes]]
    switch_ids = [ids[fleet.meters[i].serial] for i in sample[args.probes : args.probes + args.probes // 4]]
    probes = Probes(platform, read_ids, switch_ids)
    if args.warmup_s > 0:  # the first sessions of each probe meter, not counted: see --warmup-s
        console.print(f"warm-up: {args.warmup_s:g} s of probes, not counted")
        ends = time.perf_counter() + args.warmup_s
        await probes.run([], [], lambda: time.perf_counter() > ends, **_rates(args))
        probes.failures, probes.slowest, probes.splits = 0, {}, []
    console.print(f"baseline: {len(read_ids)} on-demand reads and {2 * len(switch_ids)} commands")
    lag = LoopLag()
    lagging = asyncio.create_task(lag.run())
    reads: list[float] = []
    commands: list[float] = []
    ends = time.perf_counter() + args.baseline_s
    await probes.run(reads, commands, lambda: time.perf_counter() > ends, **_rates(args))
    result: dict[str, Any] = {**_summary("read_baseline", reads), **_summary("command_baseline", commands),
                              "reads_baseline": len(reads), "commands_baseline": len(commands),
                              "command_steps": probes.take_splits("baseline"),
                              "loop_lag": lag.take("baseline")}  # fmt: skip
    progress = asyncio.create_task(_report_progress(platform, console))
    push_pid = platform.push_listener.pid if isinstance(platform.push_listener, PushProcess) else None
    sims = handle.pids[:-1] if args.probe_process else handle.pids
    pids = {"platform": [os.getpid()], "push": [] if push_pid is None else [push_pid], "sims": sims,
            "probe_sim": handle.pids[-1:] if args.probe_process else []}  # fmt: skip
    stalls = Stalls(pids)
    watching = asyncio.create_task(stalls.watch())
    drops_before = _udp_receive_drops()
    try:
        result.update(await _storm(platform, handle, ids, args, console, probes, stalls))
    finally:
        progress.cancel()
        watching.cancel()
        lagging.cancel()
    drops_after = _udp_receive_drops()
    if drops_before is not None and drops_after is not None:
        result["udp_kernel_drops"] = drops_after - drops_before
    for kind in ("read", "command"):
        base, storm = result[f"{kind}_baseline_p99_s"], result[f"{kind}_storm_p99_s"]
        result[f"{kind}_p99_ratio"] = round(storm / base, 2) if base and not math.isnan(storm) else None
    result["probe_failures"] = probes.failures
    result["slowest_command"] = probes.slowest
    result["command_steps"] |= probes.take_splits("storm")
    result["loop_lag"] |= lag.take("storm")
    if (pushes := _pushes(platform)) is not None:
        stats = pushes[0]
        result.update({"events_received": stats.received, "events_stored": stats.stored,
                       "events_duplicates": stats.duplicates, "events_rejected": stats.rejected,
                       "events_dropped": stats.dropped})  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="openami bench storm", description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=100_000)
    parser.add_argument("--fail-share", type=float, default=0.5, help="share of the feeders that fail")
    parser.add_argument("--last-gasp-share", type=float, default=0.3, help="share of failing meters whose gasp arrives")
    parser.add_argument("--spread-s", type=float, default=5.0, help="seconds over which the meters go dark")
    parser.add_argument("--restore-share", type=float, default=0.99, help="share of failed meters that come back")
    parser.add_argument("--probes", type=int, default=40, help="meters for on-demand reads (a quarter: commands)")
    parser.add_argument("--read-rate", type=float, default=12.0, help="on-demand reads started a second (open loop)")
    parser.add_argument("--command-rate", type=float, default=8.0, help="switch commands started a second (open loop)")
    parser.add_argument(
        "--baseline-s", type=float, default=20.0,
        help="seconds of probes before the storm (about as long as the storm: p99s of samples of one size)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup-s", type=float, default=5.0,
        help="seconds of probes before the baseline, not counted (first sessions, caches after start-up)",
    )  # fmt: skip
    parser.add_argument("--timeout-s", type=float, default=300.0, help="give up waiting for a stage after this")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--fleet-nice", type=int, default=19,
        help="nice value of the storm's simulator processes: devices elsewhere, they get what CPU is left (probes: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--fleet-idle", action=argparse.BooleanOptionalAction, default=False,
        help="the storm's simulator processes SCHED_IDLE too: they run only on an otherwise idle core",
    )  # fmt: skip
    parser.add_argument("--probe-nice", type=int, default=0, help="nice value of the probe meters' process")
    parser.add_argument(
        "--probe-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve the probe meters from a simulator process of their own, not reniced",
    )
    parser.add_argument(
        "--push-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the push listener and pipeline in a process of their own (push.process), as for a large fleet",
    )
    parser.add_argument("--push-batch", type=int, default=PushSettings().batch_size, help="pushes stored a transaction")
    parser.add_argument(
        "--push-nice", type=int, default=PushSettings().process_nice, help="the push process's nice (push.process_nice)"
    )
    parser.add_argument("--push-workers", type=int, default=None, help="event pipeline workers (default: by database)")
    parser.add_argument("--push-transport", choices=PUSH_TRANSPORTS, default="udp", help="how the meters push")
    args = parser.parse_args()
    console = Console(stderr=True)
    oam_logging.configure(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="openami-bench-storm-") as tmp_name:
        tmp = Path(tmp_name)
        cluster = None
        url = f"sqlite:///{tmp}/bench.sqlite3"
        if args.db == "postgres":
            from tests.pg import PostgresCluster  # noqa: PLC0415

            cluster = PostgresCluster.start(durable=True)
            url = cluster.url("postgres")
        settings = command_bench_settings(
            tmp,
            url,
            collection=CollectionSettings(catch_up_days=1, retries=0, timeout_s=5),
            push=PushSettings(
                port=0,
                process=args.push_process,
                batch_size=args.push_batch,
                workers=args.push_workers,
                process_nice=args.push_nice,
            ),
        )
        engine = create_engine(url)
        upgrade(engine)
        with engine.begin() as conn:
            authority = command_authority.load_or_create(
                conn, master_key_provider(settings), ca_files(settings), now=datetime.now(UTC)
            )
        platform = build_platform(settings, engine=engine)
        loop.tune_gc()

        async def run() -> dict[str, Any]:
            await start_platform(platform)
            handle: FleetHandle | None = None
            try:
                assert platform.push_listener is not None
                host, port = platform.push_listener.address
                config = FleetConfig(meters=args.meters, seed=5, flaky_fraction=0.0, drift_fraction=0.0, days=1, port=0,
                                     authority_certificate_pem=authority.certificate_pem, push_host=host,
                                     push_port=port, push_transport=args.push_transport)  # fmt: skip
                processes = math.ceil(args.meters / MAX_METERS_PER_PROCESS)
                fleet = build_fleet(config)
                sample = _probe_sample(fleet, args)
                parts = _partitions(fleet, processes, sample) if args.probe_process else None
                workers = len(parts) if parts else processes
                console.print(f"starting {args.meters:,} simulated meters in {workers} processes...")
                started = time.perf_counter()
                handle = await asyncio.to_thread(
                    start_fleet_processes, fleet, processes=processes, commissioning_path=tmp / "c.json",
                    partitions=parts,
                )  # fmt: skip
                storm_pids = handle.pids[:-1] if args.probe_process else handle.pids
                for pid in storm_pids:  # the storm's meters stand for devices elsewhere: they get what CPU is left
                    _deprioritise(pid, args.fleet_nice, idle=args.fleet_idle)
                if args.probe_process and args.probe_nice:
                    for tid in _threads(handle.pids[-1]):
                        os.setpriority(os.PRIO_PROCESS, tid, args.probe_nice)
                document = json.loads((tmp / "c.json").read_text(encoding="utf-8"))
                await asyncio.to_thread(
                    import_commissioning, engine, platform.keystore, document, now=datetime.now(UTC)
                )
                reload_targets(platform)
                if isinstance(platform.push_listener, PushProcess):
                    await platform.push_listener.reloaded(timeout_s=300)
                if platform.outages is not None:
                    platform.outages.reload_grid()
                loop.tune_gc()  # as `openami run` after its start: targets and grid are long-lived
                console.print(f"fleet up and imported in {time.perf_counter() - started:.0f} s")
                return {"meters": args.meters, "db": args.db, "push_transport": args.push_transport,
                        "push_process": args.push_process,
                        **await _run(platform, handle, sample, args, console)}  # fmt: skip
            finally:
                await stop_platform(platform)
                if handle is not None:
                    with contextlib.suppress(Exception):
                        handle.stop()

        result = loop.run(run())
        if cluster is not None:
            cluster.stop()
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
