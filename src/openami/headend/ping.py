"""Is a meter powered? Associate, read its clock, release: the outage engine's confirmation and
restoration verification.

A ping holds the meter's session lock (``Collector.meter_lock``: a meter serves one session at a
time) and uses fresh invocation counters (``Collector.reserve_block``), recorded afterwards so that no
counter is ever used twice. A round of pings (:func:`ping_many`, the outage engine's) reserves every
meter's block in one transaction first, and the pings record theirs in group commits of their own
(``CounterStore.record(background=True)``): one by one, a round's hundreds of reservations and records
went through the same group commits as on-demand reads. Pings have their own small pool of slots
per collector (``PING_SLOTS``, of which ``PING_SESSIONS`` past the connect), apart from collection
and from the command slots, so an outage storm's pings never hold up a switch command.

The sessions themselves (connect, associate, read, release) run on an event loop of their own, in a
thread (``_session_loop``): on the platform's loop a storm's pings put their many steps in the queue
ahead of every step of every command and on-demand read (the loop runs its ready callbacks in turn),
and the storm's slowest commands all fell in its round of pings (0.15-0.22 s against ~0.03 s). In a
thread they share the interpreter by its switch interval (``runtime.GIL_SWITCH_INTERVAL_S``, 0.2 ms)
instead. What a ping shares with the rest of the head-end (the meter's session lock, the counters)
stays on the platform's loop.

Any answer from the meter counts as "powered", even a refused association or a failed
authentication (a meter that refuses is a meter with power; the collector reports such failures when
it reads). Only silence (timeout, connection refused or reset) counts as dark.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from openami.headend.collector import Collector
from openami.headend.counters import ReservedBlock
from openami.protocols.dlms.client import ClientSettings, DlmsClient
from openami.protocols.dlms.errors import DlmsError
from openami.protocols.dlms.obis import CLOCK
from openami.protocols.dlms.session_errors import ConnectionClosedError, DlmsTimeoutError
from openami.runtime import loop_in_thread

__all__ = ["PING_SESSIONS", "PING_SLOTS", "ping", "ping_many"]

PING_SLOTS = 256
"""Pings in flight at once per collector; most of a storm's wait for a meter that does not answer."""
PING_SESSIONS = 32
"""Of those, how many are past the TCP connect at once (associating, reading, releasing). 256 at once
(a storm's early pings, up to ``outages.ping_budget`` of them) put hundreds of ready callbacks ahead
of each step of every command and on-demand read when sessions still ran on the platform's loop (a
storm's slowest commands all fell in that round, 0.2-0.6 s against ~0.05 s); on their own loop they
still share the interpreter with it. A dark meter whose connect times out waits in ``PING_SLOTS``
only, so silence still costs ``ping_timeout_s`` per 256 meters, not per 32 (docs/benchmarks.md, ninth
session)."""
_START_WAVE = 16
"""Pings started per turn of the event loop. A ping's first step (its client, socket and connect) takes
~0.15 ms, and a loop turn runs every step that was ready when it began: a round's 256 first steps at
once were one turn of ~40 ms that every command and on-demand read in flight waited for (storm
benchmark, eleventh session)."""
_log = structlog.get_logger("openami.headend")


@dataclass(frozen=True, slots=True)
class _Slots:
    pings: asyncio.Semaphore
    sessions: asyncio.Semaphore


_slots: weakref.WeakKeyDictionary[Collector, _Slots] = weakref.WeakKeyDictionary()


def _slots_of(collector: Collector) -> _Slots:
    slots = _slots.get(collector)
    if slots is None:
        slots = _slots[collector] = _Slots(asyncio.Semaphore(PING_SLOTS), asyncio.Semaphore(PING_SESSIONS))
    return slots


async def ping_many(
    collector: Collector,
    meter_ids: Sequence[int],
    *,
    timeout_s: float,
    on_answer: Callable[[int, bool], None] | None = None,
) -> list[bool]:
    """:func:`ping` each meter (at most ``PING_SLOTS`` at once), answers in the order given; the blocks
    of counters are reserved for all of them in one transaction before the first ping. ``on_answer``
    hears each meter's answer as it comes (a round lasts as long as its slowest meter)."""
    versions = {m: collector.targets[m].key_version for m in meter_ids if m in collector.targets}
    reserved = await collector.counters.reserve_many(sorted(versions), versions) if versions else {}
    mark = collector.counters.mark()  # after the reservation: an operation on a meter since makes its block stale
    blocks = {m: ReservedBlock(first, server, versions[m], mark) for m, (first, server) in reserved.items()}

    async def one(meter_id: int) -> bool:
        answered = await ping(collector, meter_id, timeout_s=timeout_s, reserved=blocks.get(meter_id))
        if on_answer is not None:
            on_answer(meter_id, answered)
        return answered

    tasks: list[asyncio.Task[bool]] = []
    try:
        for index, meter_id in enumerate(meter_ids):
            tasks.append(asyncio.ensure_future(one(meter_id)))
            if index % _START_WAVE == _START_WAVE - 1:
                await asyncio.sleep(0)  # the started ones take their first step; commands and reads run too
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


async def ping(collector: Collector, meter_id: int, *, timeout_s: float, reserved: ReservedBlock | None = None) -> bool:
    """True when the meter answers (it has power), False when it stays silent; raises nothing for I/O.

    A meter the head-end does not know is not pinged (False). ``reserved``: a block of counters
    reserved ahead (used only while still current, see ``Collector.reserve_block``).
    """
    target = collector.targets.get(meter_id)
    if target is None:
        return False
    slots = _slots_of(collector)
    async with slots.pings, collector.meter_lock(meter_id):
        counters = await collector.reserve_block(meter_id, target.key_version, reserved=reserved)
        settings = ClientSettings.management(
            target.host,
            target.port,
            system_title=collector.client_system_title,
            guek=target.guek,
            gak=target.gak,
            invocation_counter=counters.client_ic_next,
            server_invocation_counter=-1 if counters.server_ic_last is None else counters.server_ic_last,
            timeout_s=timeout_s,
        )
        client = DlmsClient(settings)
        try:
            await _elsewhere(_session(client, slots.sessions, bound_s=timeout_s * 3))
        except (DlmsTimeoutError, ConnectionClosedError, TimeoutError, OSError):
            answered = False
        except DlmsError:
            answered = True  # it spoke DLMS: it has power, whatever it said
        else:
            answered = True
        finally:
            server_ic = client.server_invocation_counter
            await collector.counters.record(
                meter_id,
                client_ic_next=client.client_invocation_counter,
                server_ic_last=None if server_ic < 0 else server_ic,
                key_version=target.key_version,
                background=True,
            )
    _log.debug("headend.ping", meter_id=meter_id, answered=answered)
    return answered


_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _session_loop() -> asyncio.AbstractEventLoop:
    """The pings' own event loop, started at the first ping of the process."""
    global _loop  # noqa: PLW0603 - one per process, started on first use
    with _loop_lock:
        if _loop is None:
            _loop = loop_in_thread("ping-sessions")
        return _loop


async def _elsewhere(session: Coroutine[Any, Any, None]) -> None:
    """Run ``session`` on the pings' loop and wait for it; cancelled here, it is cancelled there."""
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(session, _session_loop()))


async def _session(client: DlmsClient, sessions: asyncio.Semaphore, *, bound_s: float) -> None:
    """Connect, then associate, read the clock and release within one of ``sessions``. The connect and
    the session are each bounded by ``bound_s``: a silent meter waits in its connect, outside
    ``sessions``, and waiting for a session slot is never taken for silence."""
    async with asyncio.timeout(bound_s):
        await client.open()
    try:
        async with sessions, asyncio.timeout(bound_s):
            await client.associate()
            await client.get(CLOCK, 8, 2)
            await client.close(release=True)
    finally:
        await client.close(release=False)  # after a failure; after the release, the connection is closed already
