"""The MDM's ingest consumer: reads from the bus → VEE → one storage transaction per batch.

Assumption (issue 3): only authenticated readings arrive here. The head-end verifies every
response's GMAC/GCM tag and invocation counter and drops the values of a meter whose
authentication failed (recording a communication error instead), so nothing unauthenticated is
ever validated or stored.

Durability: ``handle`` buffers reads and returns before they are stored; a batch is written when it
holds ``batch_values`` values or ``max_delay_s`` after its first read. A read lost before it is
stored (crash, failed write) is not lost for good: the head-end collects every interval since the
meter's last stored actual value, so its next read brings the data again. Storage is idempotent,
so a read that arrives twice stores nothing new.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy import Connection, Engine

from openami.bus import READINGS_COLLECTED, READINGS_STORED, Bus, Unsubscribe
from openami.db import readings as storage
from openami.db.registers import RegisterRow, write_registers
from openami.domain.messages import CollectedReadings, ReadingsStored
from openami.mdm.vee import SOURCE_METER, UNUSABLE, History, MeterState, Row, history_window, validate
from openami.settings import VeeSettings

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class BatchResult:
    """What one batch did: storage counts, VEE counts and one ``ReadingsStored`` per read."""

    inserted: int = 0
    superseded: int = 0
    unchanged: int = 0
    values: int = 0
    estimated: int = 0
    flagged: int = 0
    stored: list[ReadingsStored] = field(default_factory=list)


class Ingestor:
    """Validates and stores collected reads; keeps each meter's VEE state in memory.

    ``ingest_batch`` is the synchronous core (the caller owns the transaction); ``ingest`` wraps it in
    one transaction of ``engine``; ``handle``/``flush`` are the asynchronous bus side.
    """

    def __init__(
        self,
        engine: Engine,
        settings: VeeSettings,
        *,
        bus: Bus | None = None,
        batch_values: int = 50_000,
        max_delay_s: float = 0.5,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.bus = bus
        self.batch_values = batch_values
        self.max_delay_s = max_delay_s
        self._states: dict[int, MeterState] = {}
        self._pending: list[CollectedReadings] = []
        self._pending_values = 0
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[object]] = set()

    # --- synchronous core ----------------------------------------------------------------------------

    def ingest_batch(self, conn: Connection, messages: Sequence[CollectedReadings]) -> BatchResult:
        """Run VEE on every read and write all rows through ``conn``; the caller commits.

        Raises what storage raises; the caller's rollback then leaves nothing of the batch stored.
        Meter VEE states (typical values, last register) are remembered once the write succeeded;
        they are advisory, so a later rollback that keeps them does no harm.
        """
        result = BatchResult()
        rows: list[Row] = []
        registers: list[RegisterRow] = []
        states: dict[int, MeterState] = {}
        for msg in messages:
            mid = msg.meter_id
            window = history_window(msg, self.settings)
            history = _history(conn, mid, window) if window else None
            vee = validate(msg, self.settings, states.get(mid) or self._states.get(mid), history)
            states[mid] = vee.state
            rows += vee.rows
            registers += _register_rows(msg)
            result.values += vee.counts.values
            result.estimated += vee.counts.estimated
            result.flagged += vee.counts.flagged
            result.stored.append(ReadingsStored(mid, vee.counts, vee.first_end, vee.last_end))
        counts = storage.write_intervals(conn, rows)
        if registers:
            write_registers(conn, registers)
        result.inserted, result.superseded, result.unchanged = counts.inserted, counts.superseded, counts.unchanged
        self._states.update(states)
        return result

    def ingest(self, messages: Sequence[CollectedReadings]) -> BatchResult:
        """``ingest_batch`` in one transaction: all of the batch is stored, or nothing of it."""
        with self.engine.begin() as conn:
            return self.ingest_batch(conn, messages)

    def forget(self, meter_id: int) -> None:
        """Drop a meter's remembered VEE state (e.g. after a meter exchange)."""
        self._states.pop(meter_id, None)

    # --- asynchronous bus side -----------------------------------------------------------------------

    def subscribe(self, bus: Bus) -> Unsubscribe:
        """Consume ``READINGS_COLLECTED`` from ``bus`` and publish ``READINGS_STORED`` on it."""
        self.bus = bus
        return bus.subscribe(READINGS_COLLECTED, self.handle)

    async def handle(self, msg: CollectedReadings) -> None:
        """Buffer one read; write the buffer when it is full (waiting for it: backpressure)."""
        self._pending.append(msg)
        self._pending_values += msg.value_count
        if self._pending_values >= self.batch_values:
            await self.flush()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.max_delay_s, self._flush_soon)

    async def flush(self) -> BatchResult | None:
        """Write every buffered read now; publish ``ReadingsStored`` for each stored read.

        If the batch cannot be written, each read is retried alone, so that one bad read does not
        hold back the others; the reads that still fail are logged and dropped (the head-end's
        catch-up brings their intervals again).
        """
        async with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            batch, self._pending, self._pending_values = self._pending, [], 0
            if not batch:
                return None
            result = await self._store(batch)
        if self.bus is not None:
            for stored in result.stored:
                await self.bus.publish(READINGS_STORED, stored)
        return result

    async def close(self) -> None:
        """Flush what is buffered and wait for deadline flushes in flight."""
        await self.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _store(self, batch: list[CollectedReadings]) -> BatchResult:
        try:
            result = await asyncio.to_thread(self.ingest, batch)
        except Exception:  # an unusable read or storage trouble: isolate, then give up per read
            log.warning("mdm.ingest.batch_failed", reads=len(batch), exc_info=True)
            result = BatchResult()
            for msg in batch:
                try:
                    one = await asyncio.to_thread(self.ingest, [msg])
                except Exception:  # logged; the head-end's catch-up re-reads it
                    log.exception("mdm.ingest.read_dropped", meter_id=msg.meter_id)
                    continue
                _merge(result, one)
        log.debug("mdm.ingest.batch_stored", reads=len(batch), values=result.values, inserted=result.inserted)
        return result

    def _flush_soon(self) -> None:
        self._timer = None
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _merge(into: BatchResult, other: BatchResult) -> None:
    into.inserted += other.inserted
    into.superseded += other.superseded
    into.unchanged += other.unchanged
    into.values += other.values
    into.estimated += other.estimated
    into.flagged += other.flagged
    into.stored += other.stored


def _history(conn: Connection, meter_id: int, window: tuple[int, int]) -> History:
    """Usable stored actual values of one meter in ``window``, per channel (for estimation)."""
    history: dict[int, dict[int, float]] = {}
    for row in storage.read_intervals(conn, meter_id, window[0], window[1]):
        if row.source == SOURCE_METER and not row.quality & UNUSABLE:
            history.setdefault(row.channel, {})[row.interval_end] = row.value
    return history


def _register_rows(msg: CollectedReadings) -> list[RegisterRow]:
    """Register snapshots of a read as storage rows (meter, obis, captured_at, value, unit, received_at)."""
    return [
        (msg.meter_id, r.obis, int(r.captured_at.timestamp()), r.value, r.unit, int(r.received_at.timestamp()))
        for r in msg.registers
    ]
