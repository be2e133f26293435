"""The push listener and event pipeline in a process of their own (``push.process``).

In an outage storm the notifications cost the platform process most of a core: receiving the
datagrams, verifying and decrypting each, storing the events. That is CPU a switch command and an
on-demand read then wait for. With ``push.process`` the listener and pipeline run in a child process
(``python -c "from openami.services.push_process import main; main()"``, started and stopped
with the platform), and the
platform keeps everything that reacts to events (outage engine, off-switch guard, revenue
protection): the child sends each batch of events it stored, and the platform publishes it on its
bus exactly as its own pipeline would have. Event-log rows read on collection still go through the
platform's own pipeline.

Keys: the child unwraps the meters' keys at start, again when the platform reloads its targets
(``reload_targets``; :meth:`PushProcess.reloaded` waits for it), and whenever the meter keys in the
database change (checked every ``_KEY_CHECK_S``): a rotation's new keys verify pushes, and retired
ones stop being accepted, within about that long. Replay protection needs no coordination: only the
child verifies pushes, with the counters it loaded from the database at start.

The two processes talk over a socket pair only they hold, in length-prefixed pickles (both ends are
this code; the settings, with their secrets, never appear on a command line). If the child exits
unexpectedly the platform logs ``headend.push.process-exited`` and runs on without pushes (the
meters' event logs, read on collection, still deliver their events).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pickle
import socket
import struct
import subprocess
import sys
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from openami import logging as oam_logging
from openami.bus.base import Bus, Handler, T, Topic, Unsubscribe
from openami.bus.topics import METER_EVENTS
from openami.db.checkpoints import WalCheckpointer
from openami.db.engine import create_engine
from openami.db.tables import meter_keys
from openami.domain.meter_events import MeterEvents
from openami.headend.events import EventPipeline, PipelineStats
from openami.headend.push_listener import PushListener
from openami.headend.reader import MeterTarget
from openami.runtime import switch_threads_often, tune_gc
from openami.security.keystore import master_key_provider
from openami.services.meters import load_targets
from openami.settings import Settings

__all__ = ["PushProcess", "PushProcessError"]

_log = structlog.get_logger("openami.headend.push")
_HEADER = struct.Struct(">I")
_START_TIMEOUT_S = 120.0  # unwrapping 100,000 meters' keys takes a while on a busy machine
_STOP_TIMEOUT_S = 60.0
_REPORT_S = 0.25  # how often the child reports its counters (the outage engine's backlog check reads them)
_KEY_CHECK_S = 1.0
# imported, not run as __main__: what the child pickles must name this module's classes
_CHILD = "from openami.services.push_process import main; main()"


class PushProcessError(RuntimeError):
    """The child did not come up (it says why: e.g. the push port is taken)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Snapshot:
    stats: PipelineStats
    queued: int
    accepted: int
    datagrams: int


class _Link:
    """Length-prefixed pickles over one end of the socket pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._sending = asyncio.Lock()

    async def send(self, message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        async with self._sending:
            self._writer.write(_HEADER.pack(len(data)) + data)
            await self._writer.drain()

    async def receive(self) -> tuple[Any, ...] | None:
        """The next message, or None when the other end has gone."""
        try:
            (size,) = _HEADER.unpack(await self._reader.readexactly(_HEADER.size))
            message: tuple[Any, ...] = pickle.loads(await self._reader.readexactly(size))  # noqa: S301 - our own child
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return message

    def close(self) -> None:
        self._writer.close()


def _spawn(command: list[str], fd: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, pass_fds=(fd,))  # noqa: S603 - this interpreter, this module


def _database_url(engine: Engine) -> str:
    if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
        raise PushProcessError("push.process needs a database file or server, not an in-memory database")
    return engine.url.render_as_string(hide_password=False)


class PushProcess:
    """The platform's side of the child process: its listening address, its counters, start and stop.

    Used where a :class:`PushListener` would be (``Platform.push_listener``)."""

    def __init__(self, settings: Settings, engine: Engine, bus: Bus) -> None:
        self._settings = settings
        self._url = _database_url(engine)
        self._bus = bus
        self._process: subprocess.Popen[bytes] | None = None
        self._link: _Link | None = None
        self._receiving: asyncio.Task[None] | None = None
        self._address: tuple[str, int] | None = None
        self._udp_address: tuple[str, int] | None = None
        self._snapshot = _Snapshot(PipelineStats(), 0, 0, 0)
        self._reload_asked = 0
        self._reload_done = 0
        self._reloads = asyncio.Condition()
        self._stopping = False
        self._sends: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("the push process is not started")
        return self._address

    @property
    def udp_address(self) -> tuple[str, int] | None:
        return self._udp_address

    @property
    def stats(self) -> PipelineStats:
        """The child pipeline's totals as last reported (every ``_REPORT_S`` and with every batch)."""
        return self._snapshot.stats

    @property
    def queued(self) -> int:
        return self._snapshot.queued

    @property
    def accepted(self) -> int:
        return self._snapshot.accepted

    @property
    def datagrams(self) -> int:
        return self._snapshot.datagrams

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self) -> None:
        """Start the child and wait until it listens; PushProcessError when it cannot."""
        ours, theirs = socket.socketpair()
        with theirs:
            command = [sys.executable, "-c", _CHILD, str(theirs.fileno()), str(self._settings.push.process_nice)]
            self._process = await asyncio.to_thread(_spawn, command, theirs.fileno())
        reader, writer = await asyncio.open_connection(sock=ours)
        self._link = _Link(reader, writer)
        await self._link.send(("start", self._settings, self._url, oam_logging.configured_level()))
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                answer = await self._link.receive()
        except TimeoutError:
            answer = None
        if answer is None or answer[0] != "ready":
            reason = "no answer" if answer is None else str(answer[1])
            await self._end_process()
            raise PushProcessError(f"the push process did not start: {reason}")
        _, self._address, self._udp_address = answer
        self._receiving = asyncio.create_task(self._receive(), name="push-process")
        _log.info("headend.push.process", pid=self.pid, host=self._address[0], port=self._address[1])

    def reload_targets(self) -> None:
        """Have the child load the meters' keys again (after an import or a key change)."""
        if self._link is None:
            return
        self._reload_asked += 1
        task = asyncio.get_running_loop().create_task(self._link.send(("reload", self._reload_asked)))
        self._sends.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._sends.discard)

    async def reloaded(self, timeout_s: float = 60.0) -> None:
        """Wait until the child has loaded the targets asked for so far."""
        wanted = self._reload_asked
        async with asyncio.timeout(timeout_s), self._reloads:
            await self._reloads.wait_for(lambda: self._reload_done >= wanted)

    async def stop(self) -> None:
        """Stop listening; what the child has queued is stored and published first."""
        self._stopping = True
        if self._link is not None:
            with contextlib.suppress(ConnectionError):
                await self._link.send(("stop",))
        if self._receiving is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STOP_TIMEOUT_S):
                    await self._receiving
            self._receiving.cancel()
            await asyncio.gather(self._receiving, return_exceptions=True)
            self._receiving = None
        await self._end_process()

    async def _end_process(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
        process, self._process = self._process, None
        if process is None:
            return
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)

    async def _receive(self) -> None:
        assert self._link is not None
        while (message := await self._link.receive()) is not None:
            kind = message[0]
            if kind == "events":
                self._snapshot = message[2]
                await self._bus.publish(METER_EVENTS, message[1])
            elif kind == "stats":
                self._snapshot = message[1]
            elif kind == "reloaded":
                async with self._reloads:
                    self._reload_done = max(self._reload_done, int(message[1]))
                    self._reloads.notify_all()
            elif kind == "stopped":
                self._snapshot = message[1]
                return
        if not self._stopping:
            code = None if self._process is None else self._process.poll()
            _log.error("headend.push.process-exited", pid=self.pid, exit_code=code)


# -- the child --------------------------------------------------------------------------------------------


class _ForwardingBus:
    """The child's bus: what the pipeline publishes goes to the platform."""

    def __init__(self, link: _Link, snapshot: Any) -> None:
        self._link = link
        self._snapshot = snapshot

    async def publish(self, topic: Topic[T], message: T) -> None:
        if topic.name == METER_EVENTS.name and isinstance(message, MeterEvents):
            await self._link.send(("events", message, self._snapshot()))

    def subscribe(self, topic: Topic[T], handler: Handler[T]) -> Unsubscribe:
        raise NotImplementedError("the push process only publishes")

    async def drain(self) -> None:
        return None

    async def close(self) -> None:
        return None


class _Child:
    def __init__(self, link: _Link, settings: Settings, engine: Engine) -> None:
        self.link = link
        self.settings = settings
        self.engine = engine
        self.keystore = master_key_provider(settings)
        self.targets: dict[int, MeterTarget] = {}
        self.pipeline: EventPipeline | None = None
        self.listener: PushListener | None = None
        self.fingerprint: tuple[Any, ...] | None = None

    def snapshot(self) -> _Snapshot:
        pipeline, listener = self.pipeline, self.listener
        stats = PipelineStats() if pipeline is None else dataclasses.replace(pipeline.stats)
        stats.refused = dict(stats.refused)
        return _Snapshot(
            stats,
            0 if pipeline is None else pipeline.queued,
            0 if listener is None else listener.accepted,
            0 if listener is None else listener.datagrams,
        )

    def _keys_fingerprint(self) -> tuple[Any, ...]:
        """How many keys there are and when one last changed state: two scalar subqueries, each answered
        from the ``state_changed_at`` index (migration 0015). As one ``SELECT count(*), max(…)`` it read
        every key row, every second: 20 ms at 200,000 keys, and a sixth of the push process's CPU in a
        storm, while the pushes waited for it."""
        k = meter_keys.c
        count = sa.select(sa.func.count()).select_from(meter_keys).scalar_subquery()
        latest = sa.select(sa.func.max(k.state_changed_at)).scalar_subquery()
        with self.engine.connect() as conn:
            return tuple(conn.execute(sa.select(count, latest)).one())

    def _load(self) -> None:
        self.fingerprint = self._keys_fingerprint()
        self.targets = load_targets(self.engine, self.keystore)

    async def reload(self) -> None:
        await asyncio.to_thread(self._load)
        tune_gc()  # the new targets are long-lived: frozen, so collections do not walk 100,000 of them

    async def watch_keys(self) -> None:
        while True:
            await asyncio.sleep(_KEY_CHECK_S)
            try:
                changed = await asyncio.to_thread(self._keys_fingerprint) != self.fingerprint
                if changed:
                    await self.reload()
            except Exception:  # noqa: BLE001 - the database may be busy or down for a moment: look again
                _log.warning("headend.push.key-check-failed", exc_info=True)

    async def report(self) -> None:
        while True:
            await asyncio.sleep(_REPORT_S)
            await self.link.send(("stats", self.snapshot()))

    async def run(self) -> None:
        await self.reload()
        pipeline = EventPipeline(
            self.engine, _ForwardingBus(self.link, self.snapshot), lambda: self.targets, self.settings.push
        )
        self.pipeline = pipeline
        await pipeline.start()
        listener = PushListener(pipeline, self.settings.push)
        try:
            await listener.start()
        except OSError as exc:
            await pipeline.stop()
            await self.link.send(("failed", f"{type(exc).__name__}: {exc}"))
            return
        self.listener = listener
        await self.link.send(("ready", listener.address, listener.udp_address))
        helpers = [asyncio.create_task(self.watch_keys()), asyncio.create_task(self.report())]
        try:
            while (message := await self.link.receive()) is not None:
                if message[0] == "reload":
                    await self.reload()
                    await self.link.send(("reloaded", message[1]))
                elif message[0] == "stop":
                    break
        finally:
            await listener.stop()
            await pipeline.stop()  # what is queued is stored and forwarded
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            with contextlib.suppress(ConnectionError):
                await self.link.send(("stopped", self.snapshot()))


async def _child_main(fd: int) -> None:
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    link = _Link(reader, writer)
    message = await link.receive()
    if message is None or message[0] != "start":
        return
    _, settings, url, level = message
    oam_logging.configure(level=level)
    engine = create_engine(url)
    checkpoints = WalCheckpointer(engine)  # as the platform's: commits of event batches never checkpoint
    checkpoints.start()
    try:
        await _Child(link, settings, engine).run()
    finally:
        checkpoints.stop()
        engine.dispose()
        link.close()


def main() -> None:
    # Below the platform's priority before any thread starts (threads inherit it): storing a storm's
    # pushes is bulk work, and the platform's commands and on-demand reads get a core first
    # (push.process_nice, docs/events.md).
    if len(sys.argv) > 2 and hasattr(os, "nice"):
        os.nice(int(sys.argv[2]))
    switch_threads_often()  # as the platform's loop runner (openami.cli.loop)
    try:
        import uvloop  # noqa: PLC0415 - optional: not on Windows
    except ImportError:
        asyncio.run(_child_main(int(sys.argv[1])))
    else:
        uvloop.run(_child_main(int(sys.argv[1])))
