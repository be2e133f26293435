"""Collection: reads many meters with bounded concurrency, retries with backoff, and on-demand reads.

Every attempt's outcome is recorded: a good read publishes its ``CollectedReadings`` on the bus
(the MDM validates and stores it) once the session's invocation counters are durable; a meter that
still fails after its retries gets a communication-error record naming the step and the cause.
On-demand reads have their own slots, so they never queue behind a bulk collection.

A meter whose key rotation is uncertain (``MeterTarget.pending``) is read with the pending keys
first and its active keys second; which worked settles the rotation (``headend.keys``). Key
rotation uses :meth:`Collector.meter_lock` and :meth:`Collector.reserve_block`, so its sessions
never overlap a read of the same meter and never reuse a counter.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.engine import Engine

from openami.bus.base import Bus
from openami.bus.topics import READINGS_COLLECTED
from openami.db import collection as runs_repo
from openami.db import comm_errors
from openami.db import meter_events as events_repo
from openami.db import readings as readings_repo
from openami.db.meter_events import EventRow
from openami.domain.messages import CollectedReadings
from openami.errors import AssociationRejected, AuthenticationFailed, MeterCommunicationError, NotFound
from openami.headend import keys as key_rotation
from openami.headend.counters import CounterStore, ReservedBlock
from openami.headend.events import EventPipeline
from openami.headend.reader import (
    INTERVAL_S,
    EventLogState,
    MeterSecurityFailure,
    MeterTarget,
    ProfileLayout,
    ReadResult,
    SessionCounters,
    read_meter,
)
from openami.security import events as security_events
from openami.settings import CollectionSettings

_log = structlog.get_logger("openami.headend")


@dataclass(slots=True)
class RunSummary:
    run_id: int
    expected: int
    received: int = 0
    failed: int = 0
    values: int = 0
    session_s: list[float] = field(default_factory=list)
    reported: tuple[int, int] = (0, 0)  # received, failed already written to the run's row


ProgressCallback = Callable[[int, int], None]  # (received, failed)


class Collector:
    """The head-end's reading engine; one per process, sharing one CounterStore and one Bus."""

    def __init__(
        self,
        engine: Engine,
        bus: Bus,
        targets: dict[int, MeterTarget],
        *,
        client_system_title: bytes,
        settings: CollectionSettings,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_demand_slots: int = 8,
    ) -> None:
        self._engine = engine
        self._bus = bus
        self.targets = targets
        self._client_system_title = client_system_title
        self._settings = settings
        self._now = now
        self.counters = CounterStore(engine, now=now)
        self._bulk_slots = asyncio.Semaphore(settings.concurrency)
        self._on_demand_slots = asyncio.Semaphore(on_demand_slots)
        self._layouts: dict[int, ProfileLayout] = {}  # learnt once per meter (per process)
        self._last_block: dict[int, int] = {}  # first client IC of the newest block used per meter
        self._locks: dict[int, asyncio.Lock] = {}
        self._settling: set[asyncio.Task[None]] = set()  # on-demand reads' counter commits, then publications
        self.events: EventPipeline | None = None  # set by the platform: event-log reads go there
        self._event_logs: dict[int, EventLogState] = {}  # per meter, seeded by _since (per process)

    async def close(self) -> None:
        await self.counters.close()  # commits what on-demand reads left to settle
        await asyncio.gather(*self._settling, return_exceptions=True)

    # -- bulk collection ---------------------------------------------------------------------------

    async def collect(
        self, meter_ids: Sequence[int], *, kind: str = "scheduled", progress: ProgressCallback | None = None
    ) -> RunSummary:
        """Read every meter in ``meter_ids`` once (with retries); returns the run's summary."""
        started = self._now()
        run_id = await asyncio.to_thread(self._start_run, kind, started, len(meter_ids))
        summary = RunSummary(run_id, len(meter_ids))
        since = await asyncio.to_thread(self._since, meter_ids, started)
        versions = {m: self.targets[m].key_version for m in meter_ids}
        reserved = await self.counters.reserve_many(list(meter_ids), versions)

        async def one(meter_id: int) -> None:
            async with self._bulk_slots:
                ok = await self._read_with_retries(meter_id, since[meter_id], run_id, summary, reserved.pop(meter_id))
            if ok:
                summary.received += 1
            else:
                summary.failed += 1
            if progress is not None:
                progress(summary.received, summary.failed)

        reporter = asyncio.create_task(self._report_progress(summary))
        try:
            await asyncio.gather(*(one(m) for m in meter_ids))
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        await asyncio.to_thread(self._finish_run, summary)
        _log.info(
            "headend.collection.finished",
            run_id=run_id,
            expected=summary.expected,
            received=summary.received,
            failed=summary.failed,
        )
        return summary

    def _start_run(self, kind: str, started: datetime, expected: int) -> int:
        with self._engine.begin() as conn:
            return runs_repo.start_run(
                conn, window_start=started, window_end=started, expected=expected, started_at=started, kind=kind
            )

    async def _report_progress(self, summary: RunSummary, every_s: float = 2.0) -> None:
        """Keep the run's received/failed counts current for the API while it runs."""
        while True:
            await asyncio.sleep(every_s)
            await asyncio.to_thread(self._write_progress, summary)

    def _write_progress(self, summary: RunSummary) -> None:
        received, failed = summary.received - summary.reported[0], summary.failed - summary.reported[1]
        if received or failed:
            with self._engine.begin() as conn:
                runs_repo.record_progress(conn, summary.run_id, received=received, failed=failed)
            summary.reported = (summary.reported[0] + received, summary.reported[1] + failed)

    def _finish_run(self, summary: RunSummary) -> None:
        self._write_progress(summary)
        with self._engine.begin() as conn:
            runs_repo.finish_run(conn, summary.run_id, finished_at=self._now())

    def _since(self, meter_ids: Sequence[int], now: datetime) -> dict[int, int]:
        """Where each meter's read starts: its first missing or estimated interval, within catch-up."""
        floor = int((now - timedelta(days=self._settings.catch_up_days)).timestamp())
        with self._engine.connect() as conn:
            last_actual = readings_repo.last_actual_interval_ends(conn, meter_ids)
            first_estimate = readings_repo.first_estimated_interval_ends(conn, meter_ids, floor)
        if self.events is not None:
            self._seed_event_logs(meter_ids, floor)
        since: dict[int, int] = {}
        for meter_id in meter_ids:
            start = last_actual.get(meter_id) or floor
            estimate = first_estimate.get(meter_id)
            if estimate is not None:  # a gap filled by an estimate: read it again, the actual may be there now
                start = min(start, estimate - INTERVAL_S)
            since[meter_id] = max(floor, start)
        return since

    def _seed_event_logs(self, meter_ids: Sequence[int], floor: int) -> None:
        """Where each meter's event-log read starts the first time: its newest logged event stored, or
        the catch-up limit. Later reads start where the previous one ended (kept in memory)."""
        missing = [m for m in meter_ids if m not in self._event_logs]
        if not missing:
            return
        with self._engine.connect() as conn:
            newest = events_repo.newest_log_times(conn, missing)
        for meter_id in missing:
            self._event_logs[meter_id] = EventLogState(read_to=max(floor, newest.get(meter_id, floor)))

    async def _read_with_retries(
        self,
        meter_id: int,
        since: int,
        run_id: int | None,
        summary: RunSummary,
        counters: tuple[int, int | None] | None = None,
    ) -> bool:
        """Read with retries; ``counters`` is a block reserved for the first attempt (later ones reserve anew)."""
        attempts = self._settings.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                readings, elapsed = await self._read_once(meter_id, since, counters if attempt == 1 else None)
            except (AuthenticationFailed, AssociationRejected) as exc:
                await asyncio.to_thread(self._record_error, meter_id, exc, run_id)
                return False  # retrying would be refused again (and could lock the meter out)
            except MeterCommunicationError as exc:
                self._layouts.pop(meter_id, None)  # learn the profile layout again on the next attempt
                if attempt == attempts:
                    await asyncio.to_thread(self._record_error, meter_id, exc, run_id)
                    return False
                await asyncio.sleep(self._backoff(attempt))
                continue
            summary.values += readings.value_count
            summary.session_s.append(elapsed)
            return True
        return False

    def _backoff(self, attempt: int) -> float:
        base = self._settings.backoff_s * (2 ** (attempt - 1))
        return float(base * (0.5 + random.random()))  # noqa: S311 - jitter, not security

    def _record_error(self, meter_id: int, exc: MeterCommunicationError, run_id: int | None) -> None:
        """A communication-error record; a meter-side security failure is also a security event (same transaction)."""
        _log.warning("headend.read.failed", meter_id=meter_id, step=exc.step, error=exc.code)
        now = self._now()
        with self._engine.begin() as conn:
            comm_errors.record_comm_error(conn, meter_id, exc.step, exc.message, occurred_at=now, run_id=run_id)
            if isinstance(exc, MeterSecurityFailure):
                security_events.raise_event(conn, exc.kind, now=now, meter_id=meter_id, details={"step": exc.step})

    async def _read_once(
        self,
        meter_id: int,
        since: int,
        counters: tuple[int, int | None] | None = None,
        *,
        record_later: bool = False,
    ) -> tuple[CollectedReadings, float]:
        """One session; sessions with the same meter never overlap (a meter serves one at a time).

        A block reserved ahead (for a whole run) is used only while no later block has been used
        with that meter, e.g. by an on-demand read in between: the meter would refuse it as a replay.
        ``record_later`` (an on-demand read): return the readings as soon as the meter has answered;
        the session's counters are committed behind the meter's lock, which is released only then (the
        next session with the meter starts from them), and the readings are published after that, as
        always (a storm measured the record's group commit and its wait for SQLite's write lock as a
        third of an on-demand read).
        """
        loop = asyncio.get_running_loop()
        lock = self.meter_lock(meter_id)
        await lock.acquire()
        release = True
        try:
            target = self.targets[meter_id]
            if counters is None or counters[0] < self._last_block.get(meter_id, -1):
                counters = await self.counters.reserve(meter_id, key_version=target.key_version)
            client_ic, server_ic = counters
            self._last_block[meter_id] = client_ic
            started = loop.time()

            async def read(target: MeterTarget, counters: SessionCounters) -> ReadResult:
                return await read_meter(
                    target,
                    layout=self._layouts.get(meter_id),
                    event_log=self._event_logs.get(meter_id) if self.events is not None else None,
                    client_system_title=self._client_system_title,
                    counters=counters,
                    since=since,
                    until=int(self._now().timestamp()),
                    timeout_s=self._settings.timeout_s,
                    now=self._now,
                )

            if target.pending is None:
                result = await read(target, SessionCounters(client_ic, server_ic))
            else:  # keys may have changed in the meter: try the pending ones first, settle the rotation
                result, target = await key_rotation.read_settling(
                    self._engine, target, SessionCounters(client_ic, server_ic), read, now=self._now
                )
                self.targets[meter_id] = target
            elapsed = loop.time() - started
            self._layouts[meter_id] = result.layout
            if result.event_log is not None and self._hand_on_events(meter_id, result):
                self._event_logs[meter_id] = result.event_log
            recorded = self.counters.record(
                meter_id,
                client_ic_next=result.counters.client_ic_next,
                server_ic_last=result.counters.server_ic_last,
                key_version=target.key_version,
            )
            if record_later:
                settling = loop.create_task(self._settle(recorded, lock, meter_id, result.readings))
                self._settling.add(settling)
                settling.add_done_callback(self._settling.discard)
                release = False
            else:
                await recorded
        finally:
            if release:
                lock.release()
        if not record_later:
            await self._bus.publish(READINGS_COLLECTED, result.readings)
        return result.readings, elapsed

    async def _settle(
        self, recorded: asyncio.Future[None], lock: asyncio.Lock, meter_id: int, readings: CollectedReadings
    ) -> None:
        """An on-demand read's end: its counters committed, the meter free for its next session, its
        readings published. Counters that fail to commit cost nothing unsafe (every session reserves its
        counters ahead of use, so none is used twice), but its readings are then not published: the
        next collection reads them again."""
        try:
            await recorded
        except Exception as exc:  # noqa: BLE001 - the caller has its readings; this is logged, not raised
            _log.error("headend.counters.record-failed", meter_id=meter_id, error=type(exc).__name__)
            return
        finally:
            lock.release()
        await self._bus.publish(READINGS_COLLECTED, readings)

    def _hand_on_events(self, meter_id: int, result: ReadResult) -> bool:
        """Give the event-log rows to the event pipeline without waiting; False when its queue is full
        (an event storm): the meter's log position is then kept, so the next session reads them again."""
        if not result.events:
            return True
        if self.events is None:
            return False
        received = result.readings.read_at.timestamp()
        rows = [EventRow(meter_id, e.code, e.meter_time, received, "log", e.value) for e in result.events]
        return self.events.offer_log(rows)

    @property
    def client_system_title(self) -> bytes:
        """The head-end's own system title, for other sessions with meters (commands, pings)."""
        return self._client_system_title

    def meter_lock(self, meter_id: int) -> asyncio.Lock:
        """Held for every session with the meter: a meter serves one at a time."""
        lock = self._locks.get(meter_id)
        if lock is None:
            lock = self._locks[meter_id] = asyncio.Lock()
        return lock

    async def reserve_block(
        self, meter_id: int, key_version: int, *, reserved: ReservedBlock | None = None
    ) -> SessionCounters:
        """Fresh counters for a session outside collection (hold :meth:`meter_lock`); blocks reserved
        earlier for this meter (a run's) are then no longer used: the meter has seen newer counters.
        ``reserved``: a block reserved ahead for this session, used if still current (no later block used
        with the meter, no counter of it recorded since, same key version); a fresh one otherwise."""
        if (
            reserved is not None
            and reserved.key_version == key_version
            and reserved.client_ic_next > self._last_block.get(meter_id, -1)
            and self.counters.unchanged_since(meter_id, reserved.mark)
        ):
            self._last_block[meter_id] = reserved.client_ic_next
            return SessionCounters(reserved.client_ic_next, reserved.server_ic_last)
        client_ic, server_ic = await self.counters.reserve(meter_id, key_version=key_version)
        self._last_block[meter_id] = client_ic
        return SessionCounters(client_ic, server_ic)

    # -- on demand -----------------------------------------------------------------------------------

    async def read_on_demand(self, meter_id: int, *, hours: int = 24) -> CollectedReadings:
        """Read one meter now (last ``hours`` of profile); raises NotFound or MeterCommunicationError."""
        if meter_id not in self.targets:
            raise NotFound(f"meter {meter_id} is not registered")
        since = int((self._now() - timedelta(hours=hours)).timestamp())
        async with self._on_demand_slots:
            try:
                readings, _ = await self._read_once(meter_id, since, record_later=True)
            except MeterCommunicationError as exc:
                self._layouts.pop(meter_id, None)
                await asyncio.to_thread(self._record_error, meter_id, exc, None)
                raise
        return readings
