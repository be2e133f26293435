"""Durable invocation counters for the head-end's DLMS sessions, with group commit.

A restart must never reopen a replay window, in either direction:

- the head-end's own send counter: before a session sends anything it *reserves* a block of
  counters (``client_ic_next`` advanced in the database first), so a crash mid-session can only skip
  counters, never reuse one;
- the meter's counter as last accepted: written before a session's readings are handed on, so a
  meter response recorded before a restart is still refused after it.

Concurrent sessions' reservations and records are grouped into one transaction (group commit):
each caller waits until its own operation is durable, and a busy collection costs one commit per
batch rather than two per meter. Background sessions (the outage engine's pings) record in group
commits of their own, as a bulk writer: a storm's pings never hold up an on-demand read's or a
command's commit.

A caller that writes in a transaction of its own anyway (the switch command queue's claim) may
reserve a session's block there (:func:`reserve_ahead`) and hand it to the session: the session uses
it only if no counter operation on that meter completed here since (:meth:`CounterStore.mark`), so
its ``server_ic_last`` is still the latest; otherwise it reserves afresh.

Counters are per key version (``db.counters``): a caller that passes the GUEK version its session
uses gets the meter's last counter only if it belongs to that version (None, a fresh space,
otherwise), and its record moves the meter's counter only within that version.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.engine import Connection, Engine

from openami.db import counters as counter_repo
from openami.db.engine import bulk_writes

CLIENT_IC_BLOCK = 4096
"""Counters reserved per session; a session uses one per request (a week's profile needs ≈ 40)."""


@dataclass(frozen=True, slots=True)
class ReservedBlock:
    """A session's block reserved ahead in the caller's transaction (:func:`reserve_ahead`), with the
    meter's counters as they were then and the :meth:`CounterStore.mark` taken before it."""

    client_ic_next: int
    server_ic_last: int | None
    key_version: int  # the GUEK version server_ic_last belongs to
    mark: int


def reserve_ahead(conn: Connection, meter_id: int, *, mark: int, now: datetime) -> ReservedBlock:
    """Reserve a session's block in ``conn`` (the caller's write transaction); ``mark``: the store's
    :meth:`CounterStore.mark`, taken before that transaction began."""
    first, stored, version = counter_repo.reserve_session(conn, meter_id, CLIENT_IC_BLOCK, now=now)
    return ReservedBlock(first, stored.server_ic_last, version, mark)


@dataclass(frozen=True, slots=True)
class _Reserve:
    meter_id: int
    future: asyncio.Future[tuple[int, int | None]]
    key_version: int | None = None


@dataclass(frozen=True, slots=True)
class _Record:
    meter_id: int
    client_ic_next: int
    server_ic_last: int | None
    future: asyncio.Future[None]
    key_version: int | None = None


_Op = _Reserve | _Record


@dataclass(slots=True)
class _Lane:
    """Operations waiting for one group commit, and the task that commits them."""

    name: str
    bulk: bool  # written as a bulk writer (db.engine.bulk_writes): every other writer goes first
    ops: list[_Op] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class CounterStore:
    """Reserve and record invocation counters; one per head-end process."""

    def __init__(
        self,
        engine: Engine,
        *,
        flush_interval_s: float = 0.01,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._flush_interval_s = flush_interval_s
        self._now = now
        self._urgent = _Lane("headend.counters", bulk=False)
        self._background = _Lane("headend.counters.background", bulk=True)
        self._completed = 0  # counter operations completed (committed) so far
        self._last_completed: dict[int, int] = {}  # meter -> _completed after its latest one

    def mark(self) -> int:
        """Where the store is now; see :meth:`unchanged_since`."""
        return self._completed

    def unchanged_since(self, meter_id: int, mark: int) -> bool:
        """No counter operation on ``meter_id`` completed after :meth:`mark` returned ``mark`` (one in
        flight then completes after it): what was read of the meter's counters since is still current."""
        return self._last_completed.get(meter_id, 0) <= mark

    def completed(self, meter_ids: Iterable[int]) -> None:
        """Counter operations on ``meter_ids`` were committed (here, or by a caller in its own transaction)."""
        self._completed += 1
        for meter_id in meter_ids:
            self._last_completed[meter_id] = self._completed

    async def start(self) -> None:
        for lane in (self._urgent, self._background):
            self._start(lane)

    def _start(self, lane: _Lane) -> None:
        if lane.task is None:
            lane.task = asyncio.create_task(self._run(lane), name=lane.name)

    async def close(self) -> None:
        """Flush what is queued, then stop."""
        for lane in (self._urgent, self._background):
            if lane.task is not None:
                lane.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
                lane.task = None
            await self._flush(lane)

    async def reserve(self, meter_id: int, *, key_version: int | None = None) -> tuple[int, int | None]:
        """Durably reserve a block; returns (first client IC to use, last server IC accepted or None).

        With ``key_version``, the server IC is the one of that key version (None for another version).
        """
        future: asyncio.Future[tuple[int, int | None]] = asyncio.get_running_loop().create_future()
        self._submit(_Reserve(meter_id, future, key_version))
        return await future

    async def reserve_many(
        self, meter_ids: list[int], key_versions: Mapping[int, int] | None = None
    ) -> dict[int, tuple[int, int | None]]:
        """``reserve`` for a whole collection run in one transaction (one commit for thousands of meters)."""
        reserved = await asyncio.to_thread(self._reserve_many, meter_ids, key_versions or {})
        self.completed(meter_ids)
        return reserved

    def _reserve_many(self, meter_ids: list[int], key_versions: Mapping[int, int]) -> dict[int, tuple[int, int | None]]:
        now = self._now()
        with self._engine.begin() as conn:
            reserved = counter_repo.reserve_client_ics_many(conn, meter_ids, CLIENT_IC_BLOCK, now=now)
        return {
            meter_id: (first, stored.server_ic_last if key_versions.get(meter_id, version) == version else None)
            for meter_id, (first, stored, version) in reserved.items()
        }

    def record(
        self,
        meter_id: int,
        *,
        client_ic_next: int,
        server_ic_last: int | None,
        key_version: int | None = None,
        background: bool = False,
    ) -> asyncio.Future[None]:
        """Make the counters a session ended with durable: the returned future is done once committed
        (await it, or let it complete behind the meter's lock; ``close`` still commits it).

        ``key_version``: the GUEK version the session used (its server IC is ignored for another one).
        ``background``: the session is background work (the outage engine's pings): recorded in group
        commits of their own, written as a bulk writer, so that hundreds of them never make an
        on-demand read or a command wait for their commit.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        op = _Record(meter_id, client_ic_next, server_ic_last, future, key_version)
        self._submit(op, self._background if background else self._urgent)
        return future

    def _submit(self, op: _Op, lane: _Lane | None = None) -> None:
        lane = lane or self._urgent
        lane.ops.append(op)
        self._start(lane)
        lane.wake.set()

    async def _run(self, lane: _Lane) -> None:
        while True:
            await lane.wake.wait()
            await asyncio.sleep(self._flush_interval_s)  # let concurrent sessions join this commit
            lane.wake.clear()
            await self._flush(lane)

    async def _flush(self, lane: _Lane) -> None:
        ops, lane.ops = lane.ops, []
        if not ops:
            return
        try:
            results = await asyncio.to_thread(self._apply, ops, bulk=lane.bulk)
        except Exception as exc:  # noqa: BLE001 - every waiter gets the failure and reports it
            for op in ops:
                if not op.future.done():
                    op.future.set_exception(exc)
            return
        self.completed(op.meter_id for op in ops)
        for op, result in zip(ops, results, strict=True):
            if op.future.done():
                continue
            if isinstance(op, _Reserve):
                op.future.set_result(result)  # type: ignore[arg-type]
            else:
                op.future.set_result(None)

    def _apply(self, ops: list[_Op], *, bulk: bool = False) -> list[tuple[int, int | None] | None]:
        """One transaction: every record in one executemany (counters only move forward), then the
        reservations. Rows are locked in meter order, as a collection's bulk reservation locks them,
        so two such transactions can never deadlock on PostgreSQL."""
        now = self._now()
        records = sorted(
            (op.meter_id, op.client_ic_next, op.server_ic_last, op.key_version) for op in ops if isinstance(op, _Record)
        )
        results: list[tuple[int, int | None] | None] = [None] * len(ops)
        with bulk_writes() if bulk else contextlib.nullcontext(), self._engine.begin() as conn:
            counter_repo.advance_many(conn, records, now=now)
            reserves = sorted((op.meter_id, i) for i, op in enumerate(ops) if isinstance(op, _Reserve))
            for meter_id, i in reserves:
                results[i] = _reserve(conn, meter_id, ops[i].key_version, now)
        return results


def _reserve(conn: Connection, meter_id: int, key_version: int | None, now: datetime) -> tuple[int, int | None]:
    first, stored, stored_version = counter_repo.reserve_session(conn, meter_id, CLIENT_IC_BLOCK, now=now)
    same_key = key_version is None or stored_version == key_version
    return first, stored.server_ic_last if same_key else None
