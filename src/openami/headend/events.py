"""The event pipeline: a bounded queue with its own workers between the wire and the database.

Pushed notifications (from ``headend.push_listener``) and event-log entries (from collection) wait
in one bounded queue. Workers take them in batches: each notification is authenticated with its
meter's keys (``protocols.dlms.push.decode_push``: registered system title, tag under the active or
pending keys, invocation counter above the last accepted one), the events are stored in one
transaction (``db.meter_events.store_events``: de-duplicated on meter, code and meter time, impossible
ones refused with a reason) together with the new push counters and a security event for every
refusal, and only the events the database really inserted are published on ``METER_EVENTS``.

A full queue makes ``submit_*`` wait, so the listener stops reading its sockets (TCP backpressure
reaches the meters) instead of dropping notifications; commands and on-demand reads never enter
this queue, so a storm of last gasps cannot delay them beyond the CPU the workers share.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from openami.bus.base import Bus
from openami.bus.topics import METER_EVENTS
from openami.db import meter_events as events_repo
from openami.db.engine import bulk_writes, let_waiting_writers_in
from openami.db.meter_events import EventRow, StoreOutcome
from openami.domain.meter_events import EventCode, MeterEvent, MeterEvents
from openami.errors import OpenAmiError
from openami.headend.reader import MeterTarget
from openami.protocols.dlms.errors import AuthenticationTagError, DlmsError, ReplayError
from openami.protocols.dlms.push import DecodedPush, UnknownSourceError, decode_push, push_system_title
from openami.security import events as security_events
from openami.settings import PushSettings

__all__ = ["EventPipeline", "PipelineStats", "Refusal"]

_log = structlog.get_logger("openami.headend.events")
_STORE_ATTEMPTS = 3
_MAX_REFUSAL_EVENTS = 50  # security events per kind and batch; more are counted in one summary event
_YIELD_EVERY = 64  # notifications decoded between yields to the event loop (about 2-3 ms of CPU)
_ROWS_PER_TURN = 100
"""Events stored between two chances to hand SQLite's write lock to a waiting command or on-demand read
(``db.engine.let_waiting_writers_in``): about 2 ms of holding it, where a whole batch of 500 held it up
to 37 ms in a storm."""
Detail = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class _Pushed:
    apdu: bytes
    received_at: float
    peer: str


@dataclass(frozen=True, slots=True)
class _Logged:
    rows: tuple[EventRow, ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Something refused before or while decoding: becomes one security event, nothing is stored."""

    kind: str  # "push.unknown-source", "meter.bad-tag", "meter.replay"
    meter_id: int | None
    details: Mapping[str, Detail]


_Item = _Pushed | _Logged | Refusal


@dataclass(slots=True)
class PipelineStats:
    """Running totals since start (for tests, benchmarks and the log)."""

    received: int = 0  # notifications and log batches taken from the queue
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0  # authenticated events refused by storage (unknown meter, impossible time)
    dropped: int = 0  # datagrams offered while the queue was full (UDP cannot wait)
    refused: dict[str, int] = field(default_factory=dict)  # security-event kind -> count
    store_failures: int = 0


@dataclass(slots=True)
class _Batch:
    rows: list[EventRow] = field(default_factory=list)
    counters: dict[tuple[int, int], int] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)
    committed: int = 0  # rows whose part is committed (a retry goes on from there)
    outcome: StoreOutcome = field(default_factory=StoreOutcome)  # of the committed rows


class _TitleIndex:
    """System title → meter id over the collector's targets, rebuilt when the target dict changes."""

    def __init__(self, targets: Callable[[], Mapping[int, MeterTarget]]) -> None:
        self._targets = targets
        self._source: Mapping[int, MeterTarget] | None = None
        self._size = -1
        self._index: dict[bytes, int] = {}

    def lookup(self, title: bytes) -> MeterTarget | None:
        targets = self._targets()
        if targets is not self._source or len(targets) != self._size:
            self._index = {t.system_title: m for m, t in targets.items()}
            self._source, self._size = targets, len(targets)
        meter_id = self._index.get(title)
        return None if meter_id is None else targets.get(meter_id)


class EventPipeline:
    """Authenticates, stores and publishes meter events; one per platform process."""

    def __init__(
        self,
        engine: Engine,
        bus: Bus,
        targets: Callable[[], Mapping[int, MeterTarget]],
        settings: PushSettings,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._bus = bus
        self._titles = _TitleIndex(targets)
        self._settings = settings
        self._now = now
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=settings.queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._last_counters: dict[tuple[int, int], int] = {}  # (meter, key version) -> last accepted
        self.stats = PipelineStats()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._last_counters = await asyncio.to_thread(self._load_counters)
        self._workers = [asyncio.create_task(self._work(), name=f"event-worker-{i}") for i in range(self.worker_count)]

    @property
    def worker_count(self) -> int:
        """``push.workers``, or by the database: SQLite writes one transaction at a time, and a second
        worker's decoding took the GIL from the first's storing while it held the write lock (a storm's
        holds of over 30 ms: 35 with two workers, 2 with one, at the same ~10,500 events/s)."""
        if self._settings.workers is not None:
            return self._settings.workers
        return 1 if self._engine.dialect.name == "sqlite" else 2

    def _load_counters(self) -> dict[tuple[int, int], int]:
        with self._engine.connect() as conn:
            return events_repo.load_push_counters(conn)

    async def stop(self) -> None:
        """Finish what is queued, then stop the workers."""
        if self._workers:
            await self.drain()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def drain(self) -> None:
        """Wait until everything submitted so far is stored (or refused) and published."""
        await self._queue.join()

    def received_now(self) -> float:
        """A receive time stamp (epoch s with fractions) on the platform's clock."""
        return self._now().timestamp()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # -- input -------------------------------------------------------------------------------------

    async def submit_push(self, apdu: bytes, *, received_at: float, peer: str) -> None:
        """A notification as received (its APDU); waits while the queue is full (backpressure)."""
        await self._queue.put(_Pushed(apdu, received_at, peer))

    def offer_push(self, apdu: bytes, *, received_at: float, peer: str) -> bool:
        """A notification from a UDP datagram: never waits (a datagram cannot be held back); False,
        counted in ``stats.dropped``, when the queue is full."""
        return self._offer(_Pushed(apdu, received_at, peer))

    def offer_refusal(self, refusal: Refusal) -> bool:
        """A refusal found in a datagram; like ``offer_push`` it never waits."""
        return self._offer(refusal)

    def _offer(self, item: _Item) -> bool:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            return False
        return True

    def offer_log(self, rows: Sequence[EventRow]) -> bool:
        """Entries read from a meter's event log on collection (authenticated by the session that read
        them). Never waits, so a push storm cannot hold up a collection or an on-demand read: False when
        the queue is full, and the collector reads those rows again next time."""
        if rows:
            try:
                self._queue.put_nowait(_Logged(tuple(rows)))
            except asyncio.QueueFull:
                return False
        return True

    async def submit_refusal(self, refusal: Refusal) -> None:
        """A refusal found on the wire (bad framing, oversized input): recorded as a security event."""
        await self._queue.put(refusal)

    # -- workers -----------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            items = [await self._queue.get()]
            while len(items) < self._settings.batch_size and not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                await self._process(items)
            except Exception:  # noqa: BLE001 - a worker must survive anything one batch does
                _log.exception("headend.events.batch-failed", items=len(items))
            finally:
                for _ in items:
                    self._queue.task_done()

    async def _process(self, items: Sequence[_Item]) -> None:
        batch = _Batch()
        for n, item in enumerate(items, 1):
            self.stats.received += 1
            if isinstance(item, _Pushed):
                self._open(item, batch)
                if n % _YIELD_EVERY == 0:  # let commands and on-demand reads run between decodes
                    await asyncio.sleep(0)
            elif isinstance(item, _Logged):
                batch.rows.extend(item.rows)
            else:
                batch.refusals.append(item)
        outcome = await self._persist(batch)
        if outcome is None:
            return
        self.stats.stored += len(outcome.stored)
        self.stats.duplicates += outcome.duplicates
        self.stats.rejected += len(outcome.rejected)
        if outcome.stored:
            events = tuple(_message(row) for row in outcome.stored)
            await self._bus.publish(METER_EVENTS, MeterEvents(events))

    def _open(self, item: _Pushed, batch: _Batch) -> None:
        """Authenticate one notification; its events, or one refusal, go into ``batch``."""
        try:
            title = push_system_title(item.apdu)
        except DlmsError:
            batch.refusals.append(Refusal("push.unknown-source", None, {"reason": "malformed", "peer": item.peer}))
            return
        target = self._titles.lookup(title)
        if target is None:
            details = {"reason": "unknown-system-title", "system_title": title.hex().upper(), "peer": item.peer}
            batch.refusals.append(Refusal("push.unknown-source", None, details))
            return
        try:
            decoded, key_version = self._decode(item.apdu, target)
        except ReplayError:
            batch.refusals.append(Refusal("meter.replay", target.meter_id, {"step": "push", "peer": item.peer}))
            return
        except (UnknownSourceError, AuthenticationTagError):
            batch.refusals.append(Refusal("meter.bad-tag", target.meter_id, {"step": "push", "peer": item.peer}))
            return
        except DlmsError as exc:  # verified or not, it is not a notification openami understands
            details = {"step": "push", "reason": "malformed", "error": type(exc).__name__, "peer": item.peer}
            batch.refusals.append(Refusal("meter.bad-tag", target.meter_id, details))
            return
        key = (target.meter_id, key_version)
        self._last_counters[key] = decoded.invocation_counter  # a copy later in this batch is a replay
        batch.counters[key] = max(batch.counters.get(key, -1), decoded.invocation_counter)
        batch.rows.extend(
            EventRow(target.meter_id, e.code, int(e.time.timestamp()), item.received_at, "push", e.value)
            for e in decoded.events
        )

    def _decode(self, apdu: bytes, target: MeterTarget) -> tuple[DecodedPush, int]:
        """Try the active keys, then the pending ones; each key version has its own counter space.

        The tag is verified before the counter is compared: a forged frame with an old counter is a
        bad tag, not a replay (only what the meter's keys vouch for can be a replay of the meter).
        """
        versions = [(target.key_version, target.guek, target.gak)]
        if target.pending is not None:
            versions.append((target.pending.key_version, target.pending.guek, target.pending.gak))
        failure: DlmsError | None = None
        for version, guek, gak in versions:
            try:
                decoded = _decode_with(apdu, (guek, gak))
            except AuthenticationTagError as exc:
                failure = exc
                continue
            last = self._last_counters.get((target.meter_id, version), -1)
            if decoded.invocation_counter <= last:
                raise ReplayError("push invocation counter not above the last accepted one", expected=last + 1)
            return decoded, version
        assert failure is not None
        raise failure

    async def _persist(self, batch: _Batch) -> StoreOutcome | None:
        if not (batch.rows or batch.refusals or batch.counters):
            return StoreOutcome()
        for attempt in range(1, _STORE_ATTEMPTS + 1):
            try:
                return await asyncio.to_thread(self._store, batch)
            except (SQLAlchemyError, OpenAmiError) as exc:  # the database is down or busy: retry, then give up
                self.stats.store_failures += 1
                _log.warning("headend.events.store-failed", attempt=attempt, error=type(exc).__name__)
                if attempt < _STORE_ATTEMPTS:
                    await asyncio.sleep(0.2 * 2**attempt)
        _log.error("headend.events.lost", events=len(batch.rows) - batch.committed, refusals=len(batch.refusals))
        return batch.outcome if batch.committed else None  # what was committed is published all the same

    def _store(self, batch: _Batch) -> StoreOutcome:
        """Events, push counters, a security event per refusal and per unknown meter: one transaction,
        which hands SQLite's write lock to a waiting writer between parts of ``_ROWS_PER_TURN`` events
        (each part with its meters' counters: every commit leaves events and counters agreeing)."""
        moment = self._now()
        now_s = moment.timestamp()
        pending = StoreOutcome()  # of the rows written since the last commit
        with bulk_writes(), self._engine.begin() as conn:  # commands and on-demand reads write first
            first = batch.committed
            commissioned = events_repo.commissioning_times(conn, {row.meter_id for row in batch.rows[first:]})
            # PostgreSQL's writers lock rows, not the database: nothing to hand over, the batch in one part
            per_part = _ROWS_PER_TURN if conn.dialect.name == "sqlite" else max(1, len(batch.rows))
            for start in range(first, len(batch.rows), per_part):
                part = batch.rows[start : start + per_part]
                _add(pending, self._store_part(conn, part, batch.counters, commissioned, now_s))
                if let_waiting_writers_in(conn):  # committed: a retry of this batch starts after this part
                    _add(batch.outcome, pending)
                    pending, batch.committed = StoreOutcome(), start + len(part)
            with_rows = {row.meter_id for row in batch.rows}
            counters = {k: v for k, v in batch.counters.items() if k[0] not in with_rows}
            events_repo.advance_push_counters(conn, counters, now=now_s)
            _raise_refusals(conn, batch.refusals, now=moment)
            outcome = _add(StoreOutcome(), batch.outcome, pending)
            unknown = {r.row.meter_id for r in outcome.rejected if r.reason == "unknown-meter"}
            for meter_id in sorted(unknown):
                details: dict[str, Detail] = {"reason": "unknown-meter", "meter": meter_id}
                security_events.raise_event(conn, "push.unknown-source", now=moment, details=details)
        for refusal in batch.refusals:
            self.stats.refused[refusal.kind] = self.stats.refused.get(refusal.kind, 0) + 1
        if outcome.rejected:
            _log.warning("headend.events.rejected", count=len(outcome.rejected))
        return outcome

    def _store_part(
        self,
        conn: Connection,
        rows: Sequence[EventRow],
        counters: Mapping[tuple[int, int], int],
        commissioned: Mapping[int, float],
        now_s: float,
    ) -> StoreOutcome:
        """Some of a batch's events and the counters of their meters (not of unknown ones)."""
        outcome = events_repo.store_events(
            conn,
            rows,
            now=now_s,
            future_tolerance_s=self._settings.future_tolerance_s,
            commissioning_slack_s=self._settings.commissioning_slack_s,
            commissioned=commissioned,
        )
        meters = {row.meter_id for row in rows}
        mine = {k: v for k, v in counters.items() if k[0] in meters and k[0] in commissioned}
        events_repo.advance_push_counters(conn, mine, now=now_s)
        return outcome


def _add(total: StoreOutcome, *parts: StoreOutcome) -> StoreOutcome:
    """``total`` with what ``parts`` stored, skipped and refused added (in their order)."""
    for part in parts:
        total.stored += part.stored
        total.duplicates += part.duplicates
        total.rejected += part.rejected
    return total


def _raise_refusals(conn: Connection, refusals: Sequence[Refusal], *, now: datetime) -> None:
    """One security event per refusal, at most ``_MAX_REFUSAL_EVENTS`` per kind and batch; the rest of a
    flood is one more event counting them (``suppressed``), so junk cannot make the audit log the
    bottleneck that last gasps queue behind."""
    by_kind: dict[str, list[Refusal]] = {}
    for refusal in refusals:
        by_kind.setdefault(refusal.kind, []).append(refusal)
    for kind, group in by_kind.items():
        for refusal in group[:_MAX_REFUSAL_EVENTS]:
            security_events.raise_event(conn, kind, now=now, meter_id=refusal.meter_id, details=refusal.details)
        if len(group) > _MAX_REFUSAL_EVENTS:
            details: dict[str, Detail] = {"reason": "flood", "suppressed": len(group) - _MAX_REFUSAL_EVENTS}
            security_events.raise_event(conn, kind, now=now, details=details)


def _decode_with(apdu: bytes, keys: tuple[bytes, bytes]) -> DecodedPush:
    """Verify under these keys only; the counter is compared by the caller, after the tag verified."""
    return decode_push(apdu, keys_for=lambda _title: [keys], last_counter_for=lambda _title: -1)


def _message(row: EventRow) -> MeterEvent:
    return MeterEvent(row.meter_id, EventCode(row.code), row.meter_time, row.received_at, row.source, row.value)
