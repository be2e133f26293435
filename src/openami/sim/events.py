"""A simulated meter's event log (0.0.99.98.0.255) and its push channel to the head-end.

The log is a bounded FIFO Profile Generic buffer of ``{clock, event code, value}`` rows, readable by
range like the load profile. Pushes follow the contract's wire format (``protocols.dlms.push``): over
TCP one connection per notification, the frame written, the connection closed; over UDP one datagram
per notification (the Push Setup's transport service 1), which nobody acknowledges, so it is sent once
and a lost one is only found when the head-end reads the event log. The head-end never answers. A
meter's pushes leave one after the other, in the order their invocation counters were taken, because
the listener refuses a counter that is not above the last one it accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Callable

from openami.protocols.dlms import obis
from openami.protocols.dlms.axdr import Float64, LongUnsigned
from openami.protocols.dlms.cosem import CaptureObject, Data, ListProfileSource, ProfileGeneric
from openami.protocols.dlms.cosem.push_setup import TransportService
from openami.sim.meter_profile import encode_clock

__all__ = ["EVENT_LOG_ENTRIES", "EVENT_VALUE", "EventLog", "PushChannel", "send_datagram", "send_push"]

EVENT_LOG_ENTRIES = 1000
EVENT_VALUE = obis.EVENT_VALUE
PUSH_TIMEOUT_S = 5.0

Entry = tuple[int, int, float | None]
"""(meter time epoch s, event code, value)."""


class EventLog:
    """What a meter recorded, newest last, at most ``entries_max`` of them (the oldest fall out).

    ``entries`` is the plain list (for tests and scenario code); ``objects()`` the COSEM objects that
    serve it: the log profile and the last event's code and value.
    """

    def __init__(self, entries_max: int = EVENT_LOG_ENTRIES) -> None:
        self.entries_max = entries_max
        self.entries: list[Entry] = []
        self._buffer = ListProfileSource(entries_max, clock_column=0)

    def append(self, epoch: int, code: int, value: float | None) -> None:
        self.entries.append((epoch, code, value))
        del self.entries[: max(0, len(self.entries) - self.entries_max)]
        self._buffer.capture((encode_clock(epoch), LongUnsigned(code), None if value is None else Float64(value)))

    def _last(self, column: int) -> LongUnsigned | Float64 | None:
        if not self.entries:
            return None
        _, code, value = self.entries[-1]
        if column == 1:
            return LongUnsigned(code)
        return None if value is None else Float64(value)

    def objects(self) -> list[Data | ProfileGeneric]:
        capture = [
            CaptureObject(8, obis.CLOCK, 2),
            CaptureObject(1, obis.EVENT_CODE, 2),
            CaptureObject(1, EVENT_VALUE, 2),
        ]
        return [
            ProfileGeneric(
                obis.EVENT_LOG,
                capture_objects=capture,
                capture_period=0,  # asynchronous: a row per event
                source=self._buffer,
                profile_entries=self.entries_max,
            ),
            Data(obis.EVENT_CODE, source=lambda: self._last(1)),
            Data(EVENT_VALUE, source=lambda: self._last(2)),
        ]


async def send_push(host: str, port: int, frame: bytes, *, timeout_s: float = PUSH_TIMEOUT_S) -> bool:
    """Open a connection, write one frame, close; False when the destination cannot be reached."""
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(frame)
                await writer.drain()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return True


_datagram_sockets: dict[int, socket.socket] = {}  # address family -> this process's one UDP socket


def send_datagram(host: str, port: int, frame: bytes) -> bool:
    """Send one frame as a UDP datagram from the process's shared socket; False when the kernel
    refuses it at once (no route, the socket's buffer full). Delivery is never confirmed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = _datagram_sockets.get(family)
    if sock is None:
        sock = _datagram_sockets[family] = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
    try:
        sock.sendto(frame, (host, port))
    except OSError:
        return False
    return True


Destination = tuple[TransportService, str, int]


class PushChannel:
    """One meter's outgoing notifications, sent in order on the running event loop.

    ``start_delay_s()`` (the Push Setup's randomisation_start_interval, drawn per notification)
    spreads a storm; ``retries``/``repetition_delay_s`` follow the Push Setup. ``sent``/``failed``
    count notifications; ``idle()`` waits for everything queued so far.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random(0)  # noqa: S311 - spreading pushes, not a secret
        self._last: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.failed = 0

    def submit(
        self,
        frame: bytes | Callable[[], bytes],
        destination: Destination,
        *,
        randomisation_s: int = 0,
        retries: int = 0,
        repetition_delay_s: float = 0.0,
    ) -> bool:
        """Queue ``frame`` (or what makes it, called when it leaves) for ``destination``; False (nothing
        queued) when no event loop runs here."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        delay = self._rng.uniform(0, randomisation_s) if randomisation_s else 0.0
        task = loop.create_task(self._send(self._last, frame, destination, delay, retries, repetition_delay_s))
        self._last = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _send(
        self,
        previous: asyncio.Task[None] | None,
        make: bytes | Callable[[], bytes],
        destination: Destination,
        delay: float,
        retries: int,
        repetition_delay_s: float,
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # keep counter order; the previous one's outcome does not matter
        if delay:
            await asyncio.sleep(delay)
        frame = make() if callable(make) else make
        transport, host, port = destination
        if transport is TransportService.UDP:  # unacknowledged: one try, and "sent" only means it left
            if send_datagram(host, port, frame):
                self.sent += 1
            else:
                self.failed += 1
            return
        for attempt in range(retries + 1):
            if await send_push(host, port, frame):
                self.sent += 1
                return
            if attempt < retries:
                await asyncio.sleep(repetition_delay_s)
        self.failed += 1

    async def idle(self) -> None:
        """Wait until every notification queued so far has been sent or given up."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))
