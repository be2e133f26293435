"""The switch command queue: takes due commands to the meters and records what they answered (docs/switch.md).

One ``CommandQueue`` per platform process (``Platform.commands``, started by ``services.switch.start_queue``).
Each look at the queue claims due commands (queued → sent) in one transaction, highest priority first,
one per meter, in counter order per meter; each goes through ``headend.commands.CommandExecutor`` (its
own slots: commands never wait behind a collection run); outcomes that arrive meanwhile are recorded
in the same transaction as the next claim. A meter that does not answer is tried again with backoff until the command's
validity ends; then it expires with the reason. Every status change is audited in the transaction
that makes it and published on ``bus.topics.COMMANDS_CHANGED``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from openami.bus.topics import COMMANDS_CHANGED
from openami.db import commands as repo
from openami.db import counters as counter_repo
from openami.db.commands import CommandRow
from openami.db.tables import meters
from openami.domain.commands import CommandChanged
from openami.errors import MeterCommunicationError, NotFound
from openami.headend.commands import CommandExecutor, CommandOutcome, SessionEnd
from openami.headend.counters import ReservedBlock, reserve_ahead
from openami.protocols.dlms.signed_command import Confirmation, Envelope, LimitParameters, Refusal, SignedCommand
from openami.security import audit
from openami.security import command_authority as authority_core
from openami.services.context import Platform
from openami.services.switch import (
    _CLOCK_SKEW,
    _SIGNED,
    _SYSTEM,
    _WAITING,
    CommandView,
    _move,
    _view,
    ensure_authority,
    wait_until_set,
)

__all__ = ["CommandQueue", "Waiting"]

_log = structlog.get_logger("openami.services")
_T = TypeVar("_T")


_COALESCE_S = 0.02
"""Outcomes that arrive within _COALESCE_S of a look's start wait for the next look together. A new (or
cancelled) command does not: it starts the next look at once, or it would wait up to _COALESCE_S whenever
it came just after another command's look (in a storm, where sessions and submissions jitter, a third of
the slowest commands waited 10-19 ms for their claim; docs/benchmarks.md, fifteenth session)."""
_BUSY_TICK_S = 0.05
"""While looks come busy (two or more claims and outcomes each), one starts at most every _BUSY_TICK_S,
whatever arrives: each look is a write transaction whose fixed cost (begin, commit, SQLite reloading the
pages another connection changed) is most of a command's queue CPU, so more outcomes and claims share one
(50 commands a second: ~0.85 -> ~0.5 transactions and 1.7 -> 1.2 ms of the queue's CPU per command, ~+0.05 s
per command). One command at a time (idle) is claimed at once, its outcome recorded by a look 20 ms
after its claim's."""
_Step = Callable[..., CommandView]  # an outcome's recording step: (queue, conn, row, *args, now=) -> view
_Outcome = tuple[_Step, CommandRow, tuple[Any, ...], "asyncio.Future[CommandView]", SessionEnd | None]


class _Unrecorded(Exception):
    """The outcome of a session could not be recorded (with its counters): the command stays "sent"."""


class Waiting:
    """The waiters for one command's final status: ``event`` is set once this process recorded it, and
    ``view`` is then the command as recorded (so no waiter reads it again)."""

    __slots__ = ("event", "view")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.view: CommandView | None = None


class CommandQueue:
    """Sends due commands to the meters and records what they answered (one per platform process)."""

    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._settings = platform.settings.switch
        self.executor = CommandExecutor(platform.collector, slots=self._settings.slots, now=platform.now)
        self._wake = asyncio.Event()
        self._submitted = asyncio.Event()  # a new or cancelled command since the last look began
        self._final: dict[int, Waiting] = {}  # command id -> its waiters
        self._open: set[int] = set()  # submitted here, not final yet: their final status is published here
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="switch-db")
        self._outcomes: list[_Outcome] = []  # recorded by the next look at the queue, with its claim
        self._busy: set[int] = set()  # meters with a command on its way
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_recovery = 0.0  # loop time of the next look for commands left "sent" by a stopped process
        self._next_expiry = 0.0  # loop time of the next look for commands whose validity ended
        # Due commands are looked for every poll_s, and at once after a submission or when the last look
        # left some (busy meter, no free slot): not when only outcomes arrived, which make none due.
        self._look = True
        self._next_look = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._runner = self._loop.create_task(self._run(), name="switch.queue")

    async def stop(self) -> None:
        tasks = [t for t in (self._runner, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pool.shutdown(wait=True)

    def submitted(self, views: Sequence[CommandView]) -> None:
        """New or cancelled commands (from any thread): publish them and look at the queue now."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        self._open.update(view.id for view in views if not view.final)  # before the caller can wait for one

        def notify() -> None:
            for view in views:
                self._publish(view, view.created_at if view.status != "cancelled" else view.updated_at)
            self._look = True
            self._wake.set()
            self._submitted.set()

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            notify()
        else:
            loop.call_soon_threadsafe(notify)

    async def db(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking database call on the queue's own threads: commands never wait in the default
        pool behind collection and ingest work (docs/switch.md, "The queue")."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(function, *args))

    def waiting(self, command_id: int) -> Waiting:
        """Woken, with the command as recorded, once this process records its final status (``wait_for``)."""
        waiting = self._final.get(command_id)
        if waiting is None:
            waiting = self._final[command_id] = Waiting()
        return waiting

    def in_flight_here(self, command_id: int) -> bool:
        """Submitted in this process and not final yet: its final status will be published here (unless
        another process's queue takes it, which ``wait_for``'s periodic read covers)."""
        return command_id in self._open

    def settled_elsewhere(self, command_id: int) -> None:
        """``wait_for`` read it final without this process publishing it: stop tracking it."""
        self._open.discard(command_id)

    def _publish(self, view: CommandView, at: datetime) -> None:
        message = _changed(view, at)
        task = asyncio.get_running_loop().create_task(self._platform.bus.publish(COMMANDS_CHANGED, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if view.final:
            self._open.discard(view.id)
            waiting = self._final.pop(view.id, None)
            if waiting is not None:
                waiting.view = view
                waiting.event.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        was_busy = False
        while True:
            started, handled = loop.time(), 0
            try:
                handled = await self._tick()
            except Exception as exc:  # noqa: BLE001 - the worker must survive a database hiccup
                _log.error("switch.queue.error", error=type(exc).__name__, detail=str(exc)[:200])
            # wake-ups coming together make one look, not one each; only a load that lasts (two busy looks
            # in a row) waits for _BUSY_TICK_S: two commands crossing by chance do not
            busy = handled >= 2
            busy_until = started + _BUSY_TICK_S if busy and was_busy else 0.0
            was_busy = busy
            if busy_until:
                await asyncio.sleep(max(_COALESCE_S, busy_until - loop.time()))
            else:  # outcomes gather for _COALESCE_S from the look's start; a new command is claimed at once
                await wait_until_set(self._submitted, started + _COALESCE_S - loop.time())
            await wait_until_set(self._wake, self._settings.poll_s)
            self._wake.clear()
            self._submitted.clear()

    async def _tick(self) -> int:
        """One look at the queue; returns how many commands it claimed and outcomes it recorded."""
        loop = asyncio.get_running_loop()
        if loop.time() >= self._next_recovery:
            self._next_recovery = loop.time() + self._settings.stale_sent_s / 4
            await self.db(self._recover_stale)
            self._look = True  # it may have queued some again
        if loop.time() >= self._next_expiry:
            self._next_expiry = loop.time() + self._settings.poll_s
            for view in await self.db(self._expire_overdue):
                self._publish(view, view.updated_at)
        outcomes, self._outcomes = self._outcomes, []
        free = self._settings.slots * 8 - len(self._busy)  # claimed ahead: sessions wait for a slot, not a claim
        look = (self._look or loop.time() >= self._next_look) and free > 0
        if not look and not outcomes:
            return 0
        if look:  # cleared before the claim: a submission arriving during it asks for the next look
            self._look, self._next_look = False, loop.time() + self._settings.poll_s
        store = self._platform.collector.counters
        mark = store.mark()  # before the claim reserves its sessions' counters
        try:
            claimed, views, left = await self.db(
                self._write, outcomes, free if look else 0, frozenset(self._busy), mark
            )
        except Exception:
            self._look = self._look or look
            if outcomes:  # a failed claim must not take the outcomes with it: they get a transaction of their own
                await self._record_alone(outcomes)
            raise
        self._look = self._look or left
        store.completed(end.meter_id for *_, end in outcomes if end is not None)
        for (*_, future, _end), view in zip(outcomes, views, strict=True):
            if not future.done():
                future.set_result(view)
        for row, reserved in claimed:
            self._busy.add(row.meter_id)
            self._publish(_view(row), row.updated_at)
            task = loop.create_task(self._send(row, reserved), name=f"switch.command.{row.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(outcomes) + len(claimed)

    def _write(
        self, outcomes: list[_Outcome], limit: int, busy: frozenset[int], mark: int
    ) -> tuple[list[tuple[CommandRow, ReservedBlock]], list[CommandView], bool]:
        """One look at the queue in ONE transaction: claim up to ``limit`` due commands (none: 0), then
        record the outcomes that arrived since the last look (a write transaction costs more CPU than its
        statements: one per look, not one for the claim and one for the outcomes). The claim goes first:
        it may take the authority's counter, which every writer takes before the audit chain's head.
        Also returns whether the claim left due commands behind (see ``_claim``)."""
        now = self._platform.now()
        ends = [end for *_, end in outcomes if end is not None]
        with self._platform.engine.begin() as conn:
            if limit > 0:
                claimed, left = self._claim(conn, limit, busy, mark, now, ends)
            else:
                claimed, left = [], False
                _counter_writes(conn, ends, (), mark, now)
            views = [step(self, conn, row, *args, now=now) for step, row, args, _, _ in outcomes]
        return claimed, views, left

    def _claim(
        self,
        conn: Connection,
        limit: int,
        busy: frozenset[int],
        mark: int,
        now: datetime,
        ends: Sequence[SessionEnd],
    ) -> tuple[list[tuple[CommandRow, ReservedBlock]], bool]:
        """Move up to ``limit`` due commands queued → sent in ``conn`` (one write, however many): highest
        priority first, one per meter not already busy, in counter order per meter. Each comes with its
        session's invocation counters, reserved here (the store's ``mark`` taken before this transaction),
        and the counters of the sessions in ``ends`` are recorded here: no write transactions of the
        counter store for a command. Also returns whether due commands may be left (for a busy meter,
        beyond the limit, or taken meanwhile by another process): the next look then comes with the
        next wake-up, not after poll_s."""
        claimed: list[tuple[CommandRow, ReservedBlock]] = []
        taken = set(busy)
        picked: list[tuple[CommandRow, int | None]] = []
        due = repo.due_commands_with_highest_sent(conn, now=now, limit=limit + len(busy))
        for row, highest_sent in due:
            if row.meter_id not in taken:  # one command at a time per meter
                taken.add(row.meter_id)
                picked.append((row, highest_sent))
        picked = picked[:limit]
        # Locks in the order every writer takes them, or two could deadlock on PostgreSQL: invocation
        # counter rows in meter order (the counter store's order; key activation takes a meter's before the
        # audit chain's head), then the authority's counter row before the audit chain's head (submit's
        # order; every _move appends to it).
        reserved = _counter_writes(conn, ends, [row.meter_id for row, _ in picked], mark, now)
        # Overtaken: the meter was already sent a higher counter than this command's.
        fresh = {
            row.id: authority_core.take_counter(conn)
            for row, highest_sent in picked
            if highest_sent is not None and highest_sent > row.counter
        }
        for row, _ in picked:
            sending = self._mark_sent(conn, row, fresh.get(row.id), now)
            if sending is not None:
                claimed.append((sending, reserved[row.meter_id]))
        return claimed, len(claimed) < len(due) or len(due) >= limit + len(busy)

    def _expire_overdue(self) -> list[CommandView]:
        now = self._platform.now()
        expired = []
        with self._platform.engine.begin() as conn:
            for row in repo.overdue_commands(conn, now=now):
                why = "its validity ended before it could be sent"
                if row.attempts and row.failure_reason:  # tried: the meter never answered
                    why = f"the meter did not answer before the command expired ({row.failure_reason})"
                moved = _move(conn, row, _WAITING, "expired", {"failure_reason": why[:255]}, actor=_SYSTEM, now=now)
                if moved is not None:
                    expired.append(_view(moved))
        return expired

    async def _send(self, sending: CommandRow, reserved: ReservedBlock) -> None:
        """Carry one claimed (sent) command to its meter and record the outcome."""
        row = sending
        settled: list[CommandView] = []  # recorded by settle, while the session held the meter

        async def settle(end: SessionEnd, ended: CommandOutcome | MeterCommunicationError) -> None:
            """The outcome and the session's counters in one transaction (the queue's next), before the meter's
            lock is released: the next session with the meter then reads its counters as this one left them."""
            if isinstance(ended, CommandOutcome) and ended.refusal is Refusal.REPLAYED and row.attempts > 1:
                # decided by a read of the meter's state, a session of its own: the counters go first
                await self.executor.record_counters(end)
                return
            step: _Step = CommandQueue._settle
            args: tuple[Any, ...] = (ended,)
            if isinstance(ended, MeterCommunicationError):
                step, args = CommandQueue._retry_later, (f"{ended.step}: {ended.message}",)
            try:
                settled.append(await self._record(step, row, *args, end=end))
            except Exception as exc:
                raise _Unrecorded(f"{type(exc).__name__}: {exc}") from exc

        try:
            try:
                outcome = await self.executor.execute(
                    row.meter_id, _signed(row), final_read=row.command == "disconnect", reserved=reserved,
                    settle=settle,
                )  # fmt: skip
            except NotFound as exc:
                view = await self._record(CommandQueue._finish_failed, row, exc.message, None)
            except MeterCommunicationError as exc:
                view = settled[0] if settled else await self._record(CommandQueue._retry_later, row,
                                                                     f"{exc.step}: {exc.message}")  # fmt: skip
            except DBAPIError as exc:  # e.g. a deadlock victim reserving counters: nothing half-done, try again
                why = f"database: {type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__}"
                view = settled[0] if settled else await self._record(CommandQueue._retry_later, row, why)
            else:
                if settled:
                    view = settled[0]
                else:
                    if outcome.refusal is Refusal.REPLAYED and row.attempts > 1:
                        outcome = await self._executed_earlier(row, outcome)
                    view = await self._record(CommandQueue._settle, row, outcome)
            self._publish(view, view.updated_at)
        except Exception as exc:  # noqa: BLE001 - left "sent": recovered after switch.stale_sent_s
            _log.error("switch.command.error", command_id=row.id, error=type(exc).__name__, detail=str(exc)[:300])
        finally:
            self._busy.discard(row.meter_id)
            self._wake.set()

    async def _executed_earlier(self, row: CommandRow, refused: CommandOutcome) -> CommandOutcome:
        """A retried command refused as replayed: did an earlier attempt, whose answer was lost, execute it?

        Counters are unique per command, so the meter's last accepted counter being this command's
        means it acted on it: confirm from its state now. Otherwise the refusal stands.
        """
        try:
            state = await self.executor.read_state(row.meter_id)
        except MeterCommunicationError:
            return refused
        if state.last_counter != row.counter or state.output_state is None or state.control_state is None:
            return refused
        confirmation = Confirmation(
            output_state=state.output_state, control_state=state.control_state, voltage_v=state.voltage_v or 0.0,
            current_a=state.current_a or 0.0, load_side_voltage_v=state.load_side_voltage_v or 0.0,
            active_threshold_w=None if state.active_threshold_w is None else int(state.active_threshold_w),
        )  # fmt: skip
        return CommandOutcome(confirmation, detail="confirmed from the meter's state: an earlier answer was lost")

    def _recover_stale(self) -> None:
        """Commands left "sent" by a process that stopped mid-session: queued again (a meter that did
        execute one refuses the resend as replayed, and ``_executed_earlier`` then confirms it)."""
        now = self._platform.now()
        before = now - timedelta(seconds=self._settings.stale_sent_s)
        with self._platform.engine.begin() as conn:
            for row in repo.stale_sent_commands(conn, before=before):
                why = "interrupted while sent (outcome unknown): sent again"
                _move(conn, row, ("sent",), "queued", {"failure_reason": why, "next_attempt_at": now},
                      actor=_SYSTEM, now=now)  # fmt: skip

    def _mark_sent(self, conn: Connection, row: CommandRow, counter: int | None, now: datetime) -> CommandRow | None:
        """queued → sent (attempt counted), in ``conn``; re-signed with the fresh ``counter`` when one was
        taken for it (a later command overtook it: the meter would refuse its own as replayed)."""
        values: dict[str, Any] = {"attempts": row.attempts + 1}
        if counter is not None:
            values |= _resign(conn, self._platform, row, counter, now)
        return _move(conn, row, ("queued",), "sent", values, actor=_SYSTEM, now=now)  # None: taken meanwhile

    async def _record(self, step: _Step, row: CommandRow, *args: Any, end: SessionEnd | None = None) -> CommandView:
        """Record an outcome (and ``end``, the counters its session ended with) at the next look at the queue,
        in its transaction with the claim; outcomes that arrive together share it (group commit): every
        audited write waits for the audit chain's head, so fewer transactions mean less waiting."""
        future: asyncio.Future[CommandView] = asyncio.get_running_loop().create_future()
        self._outcomes.append((step, row, args, future, end))
        self._wake.set()
        return await future

    async def _record_alone(self, outcomes: list[_Outcome]) -> None:
        try:
            views = await self.db(self._apply, outcomes)
        except Exception as exc:  # noqa: BLE001 - each waiter gets the error; the commands stay "sent"
            for *_, future, _end in outcomes:
                if not future.done():
                    future.set_exception(exc)
            return
        self._platform.collector.counters.completed(end.meter_id for *_, end in outcomes if end is not None)
        for (*_, future, _end), view in zip(outcomes, views, strict=True):
            if not future.done():
                future.set_result(view)

    def _apply(self, outcomes: list[_Outcome]) -> list[CommandView]:
        now = self._platform.now()
        with self._platform.engine.begin() as conn:
            _counter_writes(conn, [end for *_, end in outcomes if end is not None], (), 0, now)
            return [step(self, conn, row, *args, now=now) for step, row, args, _, _ in outcomes]

    def _retry_later(self, conn: Connection, row: CommandRow, error: str, *, now: datetime) -> CommandView:
        """The meter did not answer: queued again after a backoff, or expired when that is past its validity."""
        backoff = min(self._settings.max_backoff_s, self._settings.retry_backoff_s * 2 ** max(0, row.attempts - 1))
        retry_at = now + timedelta(seconds=backoff)
        if retry_at > row.not_after:
            why = f"the meter did not answer before the command expired ({error})"[:255]
            moved = _move(conn, row, ("sent",), "expired", {"failure_reason": why}, actor=_SYSTEM, now=now)
        else:
            moved = _move(conn, row, ("sent",), "queued", {"failure_reason": error[:255], "next_attempt_at": retry_at},
                          actor=_SYSTEM, now=now)  # fmt: skip
        return _current(conn, row, moved)

    def _finish_failed(
        self, conn: Connection, row: CommandRow, why: str, refusal: str | None, *, now: datetime
    ) -> CommandView:
        values: dict[str, Any] = {"failure_reason": why[:255]}
        if refusal is not None:
            values["refusal"] = refusal
        return _current(conn, row, _move(conn, row, ("sent",), "failed", values, actor=_SYSTEM, now=now))

    def _settle(self, conn: Connection, row: CommandRow, outcome: CommandOutcome, *, now: datetime) -> CommandView:
        if outcome.confirmation is None:
            refusal = outcome.refusal.name.lower().replace("_", "-") if outcome.refusal is not None else "unknown"
            why = f"refused by the meter: {refusal}" + (f" ({outcome.detail})" if outcome.detail else "")
            return self._finish_failed(conn, row, why, refusal, now=now)
        c = outcome.confirmation
        values: dict[str, Any] = {
            "output_state": c.output_state, "control_state": c.control_state, "voltage_v": c.voltage_v,
            "current_a": c.current_a, "load_side_voltage_v": c.load_side_voltage_v,
            "active_threshold_w": c.active_threshold_w, "failure_reason": None,
        }  # fmt: skip
        if outcome.final_read is not None:
            f = outcome.final_read
            values |= {"final_import_wh": f.import_wh, "final_export_wh": f.export_wh, "final_read_at": f.read_at}
        return _current(conn, row, _move(conn, row, ("sent",), "confirmed", values, actor=_SYSTEM, now=now))


def _counter_writes(
    conn: Connection, ends: Sequence[SessionEnd], reserve_for: Sequence[int], mark: int, now: datetime
) -> dict[int, ReservedBlock]:
    """Record the counters sessions ended with and reserve a block for each meter of ``reserve_for``, in
    ``conn`` and in meter order (every writer of counters locks their rows in that order); returns the blocks."""
    records: dict[int, list[tuple[int, int | None, int | None, int | None]]] = {}
    for end in ends:
        records.setdefault(end.meter_id, []).append((end.meter_id, end.client_ic_next, end.server_ic_last,
                                                     end.key_version))  # fmt: skip
    wanted = set(reserve_for)
    reserved: dict[int, ReservedBlock] = {}
    for meter_id in sorted(wanted | set(records)):
        if meter_id in records:
            counter_repo.advance_many(conn, records[meter_id], now=now)
        if meter_id in wanted:
            reserved[meter_id] = reserve_ahead(conn, meter_id, mark=mark, now=now)
    return reserved


def _current(conn: Connection, row: CommandRow, moved: CommandRow | None) -> CommandView:
    """The command after an outcome's transition; read again only when the transition did not apply
    (another process moved it: what it is now is what the waiter should see)."""
    return _view(moved if moved is not None else repo.get_command(conn, row.id))


def _resign(conn: Connection, platform: Platform, row: CommandRow, counter: int, now: datetime) -> dict[str, Any]:
    """A fresh signature under ``counter`` for an unsent command: same meter, command, parameters, window."""
    authority = ensure_authority(platform)
    limit = (
        None if row.threshold_w is None else LimitParameters(row.threshold_w, row.duration_s or 0, bool(row.emergency))
    )
    title = conn.execute(sa.select(meters.c.system_title).where(meters.c.id == row.meter_id)).scalar_one()
    envelope = Envelope(bytes(title), _SIGNED[row.command], counter, row.execute_at - _CLOCK_SKEW, row.not_after, limit)
    signed = authority.sign(envelope)
    details: dict[str, str | int | float | bool | None] = {"command_id": row.id, "previous_counter": row.counter,
                                                           "counter": counter}  # fmt: skip
    audit.record(conn, audit.AuditEntry(_SYSTEM, "switch.resign", "ok", resource=f"meter:{row.meter_id}",
                                        details=details), now=now)  # fmt: skip
    return {"counter": counter, "envelope": signed.envelope, "signature": signed.signature}


def _signed(row: CommandRow) -> SignedCommand:
    return SignedCommand(row.envelope, row.signature)


def _changed(view: CommandView, at: datetime) -> CommandChanged:
    return CommandChanged(
        command_id=view.id, meter_id=view.meter_id, command=view.command, status=view.status, changed_at=at,
        workflow=view.workflow, batch_id=view.batch_id, output_state=view.output_state,
        failure_reason=view.failure_reason,
    )  # fmt: skip
