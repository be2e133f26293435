"""The MDM's ingest consumer: reads from the bus → VEE → one storage transaction per batch.

Assumption (issue 3): only authenticated readings arrive here. The head-end verifies every
response's GMAC/GCM tag and invocation counter and drops the values of a meter whose
authentication failed (recording a communication error instead), so nothing unauthenticated is
ever validated or stored.

On the bus side, VEE runs as each read arrives and the validated rows collect into a batch; a
batch is written (in a worker thread, one transaction) when it holds ``batch_values`` values or
``max_delay_s`` after its first read, while the next batch is already being validated. A batch is
split into ``lanes`` by meter id (2 on PostgreSQL, where the server's work per row is the bottleneck
and two connections put both cores to it; 1 on SQLite, which has one writer): each lane has at most
one write in flight, so a meter's reads are stored in the order they arrived, and a full batch waits
for its lanes (backpressure onto the bus). Each lane's part is its own transaction: a read is stored
whole or not at all, a batch may be stored in parts.

Durability: ``handle`` returns before its read is stored. A read lost before it is stored (crash,
failed write) is not lost for good: the head-end collects every interval since the meter's last
stored actual value, so its next read brings the data again; storage is idempotent, so a read that
arrives twice stores nothing new.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy import Connection, Engine

from openami.bus import READINGS_COLLECTED, READINGS_STORED, Bus, BusClosed, Unsubscribe
from openami.db import readings as storage
from openami.db.engine import bulk_writes
from openami.db.registers import RegisterRow, write_registers
from openami.domain.messages import CollectedReadings, ReadingsStored
from openami.mdm.vee import SOURCE_METER, UNUSABLE, History, MeterState, Row, VeeResult, history_window, validate
from openami.settings import VeeSettings

log = structlog.get_logger(__name__)

BATCH_VALUES = 300_000
"""Values per batch when reads come faster than ``max_delay_s`` lets a batch fill (a backlog). Each
batch costs a fixed amount on top of its values (PostgreSQL: a classifying query, savepoints and a
commit per lane; both: the lanes wait for each other once). 300,000 instead of 100,000, 10 M values
with the machine shared: 8-25 % more values/s on PostgreSQL, ~5 % on SQLite; on a quiet machine no
difference beyond the noise (docs/benchmarks.md)."""

SQLITE_CHUNK_VALUES = 20_000
"""Values per SQLite transaction: ~50 ms of holding the write lock, so a switch command's write waits
no longer than that (a commit in WAL mode costs ~1 ms, so smaller transactions cost little)."""

Validated = tuple[CollectedReadings, VeeResult]


@dataclass(slots=True)
class BatchResult:
    """What one batch did: storage counts, VEE counts and one ``ReadingsStored`` per stored read."""

    inserted: int = 0
    superseded: int = 0
    unchanged: int = 0
    values: int = 0
    estimated: int = 0
    flagged: int = 0
    stored: list[ReadingsStored] = field(default_factory=list)

    def add(self, other: BatchResult) -> None:
        self.inserted += other.inserted
        self.superseded += other.superseded
        self.unchanged += other.unchanged
        self.values += other.values
        self.estimated += other.estimated
        self.flagged += other.flagged
        self.stored += other.stored


class Ingestor:
    """Validates and stores collected reads; keeps each meter's VEE state in memory.

    ``ingest_batch`` is the synchronous core (the caller owns the transaction); ``ingest`` wraps it in
    one transaction of ``engine``; ``handle``/``flush``/``close`` are the asynchronous bus side.
    Meter VEE states (typical values, last register) advance as reads are validated; they are
    advisory, so a write that fails afterwards does no harm by leaving them advanced.
    """

    def __init__(
        self,
        engine: Engine,
        settings: VeeSettings,
        *,
        bus: Bus | None = None,
        batch_values: int = BATCH_VALUES,
        max_delay_s: float = 0.5,
        lanes: int | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.bus = bus
        self.batch_values = batch_values
        self.max_delay_s = max_delay_s
        self._states: dict[int, MeterState] = {}
        self._batch: list[Validated] = []
        self._batch_values = 0
        self._lock = asyncio.Lock()
        default_lanes = 2 if engine.dialect.name == "postgresql" else 1
        self._writing: list[asyncio.Task[BatchResult] | None] = [None] * max(1, lanes or default_lanes)
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- synchronous core ----------------------------------------------------------------------------

    def ingest_batch(self, conn: Connection, messages: Sequence[CollectedReadings]) -> BatchResult:
        """Run VEE on every read and write all rows through ``conn``; the caller commits.

        Raises what storage raises (NotFound for an unknown meter, InvalidInput, driver errors); the
        caller's rollback then leaves nothing of the batch stored.
        """
        validated = []
        for msg in messages:
            vee = validate(msg, self.settings, self._states.get(msg.meter_id))
            if vee.missing and (window := history_window(msg, self.settings)):
                vee = validate(msg, self.settings, self._states.get(msg.meter_id), _history(conn, msg.meter_id, window))
            self._states[msg.meter_id] = vee.state
            validated.append((msg, vee))
        return _write(conn, validated)

    def ingest(self, messages: Sequence[CollectedReadings]) -> BatchResult:
        """``ingest_batch`` in one transaction: all of the batch is stored, or nothing of it."""
        with self.engine.begin() as conn:
            return self.ingest_batch(conn, messages)

    def forget(self, meter_id: int) -> None:
        """Drop a meter's remembered VEE state (e.g. after a meter exchange)."""
        self._states.pop(meter_id, None)

    def _load_history(self, meter_id: int, window: tuple[int, int]) -> History:
        with self.engine.connect() as conn:
            return _history(conn, meter_id, window)

    def _write_transaction(self, validated: list[Validated]) -> BatchResult:
        """Write a batch; on SQLite in transactions of about ``SQLITE_CHUNK_VALUES`` values, each yielding
        the write lock to every other writer of the process that waits for it (``bulk_writes``)."""
        if self.engine.dialect.name != "sqlite":
            with self.engine.begin() as conn:
                return _write(conn, validated)
        result = BatchResult()
        with bulk_writes():
            for chunk in _chunks(validated, SQLITE_CHUNK_VALUES):
                with self.engine.begin() as conn:
                    result.add(_write(conn, chunk))
        return result

    # --- asynchronous bus side -----------------------------------------------------------------------

    def subscribe(self, bus: Bus) -> Unsubscribe:
        """Consume ``READINGS_COLLECTED`` from ``bus`` and publish ``READINGS_STORED`` on it."""
        self.bus = bus
        return bus.subscribe(READINGS_COLLECTED, self.handle)

    async def handle(self, msg: CollectedReadings) -> None:
        """Validate one read and add it to the batch; hand a full batch to the writer."""
        vee = validate(msg, self.settings, self._states.get(msg.meter_id))
        if vee.missing and (window := history_window(msg, self.settings)):  # rare: fetch history, validate again
            history = await asyncio.to_thread(self._load_history, msg.meter_id, window)
            vee = validate(msg, self.settings, self._states.get(msg.meter_id), history)
        self._states[msg.meter_id] = vee.state
        self._batch.append((msg, vee))
        self._batch_values += msg.value_count
        if self._batch_values >= self.batch_values:
            await self._submit()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_delay_s, self._submit_soon)

    async def flush(self) -> BatchResult | None:
        """Write what is buffered and wait until it is stored; the last write of each lane, summed, or None."""
        await self._submit()
        writing = [task for task in self._writing if task is not None]
        if not writing:
            return None
        total = BatchResult()
        for result in await asyncio.gather(*writing):
            total.add(result)
        return total

    async def close(self) -> None:
        """Store what is buffered; call after the bus has drained."""
        await self.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks)

    async def _submit(self) -> None:
        """Start writing the current batch, each lane's part once that lane's previous write has finished."""
        async with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            batch, self._batch, self._batch_values = self._batch, [], 0
            for lane, part in enumerate(_split(batch, len(self._writing))):
                if not part:
                    continue
                if (previous := self._writing[lane]) is not None:
                    await previous
                self._writing[lane] = asyncio.create_task(self._store(part))

    def _submit_soon(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self._submit())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store(self, batch: list[Validated]) -> BatchResult:
        """Write a batch; if that fails retry each read alone, so one bad read cannot hold back the rest.

        Reads that still fail are logged and dropped (the head-end's catch-up brings them again).
        Publishes ``ReadingsStored`` for every stored read.
        """
        try:
            result = await asyncio.to_thread(self._write_transaction, batch)
        except Exception:  # an unusable read or storage trouble: isolate, then give up per read
            log.warning("mdm.ingest.batch_failed", reads=len(batch), exc_info=True)
            result = BatchResult()
            for read in batch:
                try:
                    result.add(await asyncio.to_thread(self._write_transaction, [read]))
                except Exception:  # logged; the head-end's catch-up re-reads it
                    log.exception("mdm.ingest.read_dropped", meter_id=read[0].meter_id)
        if self.bus is not None:
            try:
                for stored in result.stored:
                    await self.bus.publish(READINGS_STORED, stored)
            except BusClosed:
                log.info("mdm.ingest.not_announced", reads=len(result.stored), reason="bus closed")
        return result


def _chunks(batch: list[Validated], values: int) -> Iterator[list[Validated]]:
    """Consecutive runs of whole reads holding about ``values`` values each."""
    chunk: list[Validated] = []
    size = 0
    for read in batch:
        chunk.append(read)
        size += read[1].counts.values
        if size >= values:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _split(batch: list[Validated], lanes: int) -> list[list[Validated]]:
    """The batch's reads by lane (meter id modulo lanes), each lane in arrival order."""
    if lanes == 1:
        return [batch]
    parts: list[list[Validated]] = [[] for _ in range(lanes)]
    for read in batch:
        parts[read[0].meter_id % lanes].append(read)
    return parts


def _write(conn: Connection, validated: Sequence[Validated]) -> BatchResult:
    """Write the rows and register snapshots of validated reads through ``conn`` (no commit)."""
    result = BatchResult()
    rows: list[Row] = []
    registers: list[RegisterRow] = []
    for msg, vee in sorted(validated, key=_meter_of):  # key order: the B-tree inserts walk the index once
        rows += vee.rows
        if msg.registers:
            registers += _register_rows(msg)
        counts = vee.counts
        result.values += counts.values
        result.estimated += counts.estimated
        result.flagged += counts.flagged
        result.stored.append(ReadingsStored(msg.meter_id, counts, vee.first_end, vee.last_end))
    written = storage.write_intervals(conn, rows)
    if registers:
        write_registers(conn, registers)
    result.inserted, result.superseded, result.unchanged = written
    return result


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


def _meter_of(read: Validated) -> int:
    return read[0].meter_id
