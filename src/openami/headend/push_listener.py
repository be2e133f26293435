"""The push listener: a TCP server meters open to deliver event notifications (IEC 62056-47 frames).

It never answers (the wire contract): it reads wrapper frames and hands each notification to the
event pipeline (``headend.events``), which authenticates, stores and publishes. What it refuses
itself (bad framing, an APDU above the size limit, wrong wPorts, a connection that sends half a frame
and stops) becomes a refusal the pipeline records as a security event; the connection is closed.

Bounded everywhere: at most ``max_connections`` connections are served at once (the accept loop
waits for a free slot, further meters wait in the kernel's listen backlog and their TCP stack
retries), each frame is at most ``max_frame_bytes``, an idle connection is closed after
``idle_timeout_s``, and a full pipeline queue makes the reader wait, so TCP flow control slows the
meters down rather than anything being dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import structlog

from openami.headend.events import EventPipeline, Refusal
from openami.protocols.dlms.errors import DecodeError
from openami.protocols.dlms.push import PUSH_DEST_WPORT
from openami.protocols.dlms.wrapper import WrapperFramer
from openami.settings import PushSettings

__all__ = ["PushListener"]

_log = structlog.get_logger("openami.headend.push")
_READ_SIZE = 4096


class PushListener:
    """Accepts meters' push connections and feeds their frames to an :class:`EventPipeline`."""

    def __init__(self, pipeline: EventPipeline, settings: PushSettings) -> None:
        self._pipeline = pipeline
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.accepted = 0  # connections served since start

    @property
    def address(self) -> tuple[str, int]:
        """Where meters should push (the bound host and port; port 0 in the settings picks one)."""
        if self._sock is None:
            raise RuntimeError("the push listener is not started")
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self._settings.host else socket.AF_INET
        sock = socket.create_server(
            (self._settings.host, self._settings.port), family=family, backlog=self._settings.backlog
        )
        sock.setblocking(False)
        self._sock = sock
        self._accepting = asyncio.create_task(self._accept_loop(sock), name="push-accept")
        _log.info("headend.push.listening", host=self.address[0], port=self.address[1])

    async def stop(self) -> None:
        """Stop accepting, close open connections (frames already queued are kept)."""
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
            self._accepting = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()  # no free slot: stop accepting, the backlog holds the rest
            try:
                conn, peer = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except OSError as exc:  # e.g. out of file descriptors: wait a little, keep serving
                self._slots.release()
                _log.warning("headend.push.accept-failed", error=type(exc).__name__)
                await asyncio.sleep(0.1)
                continue
            self.accepted += 1
            task = asyncio.create_task(self._serve(conn, str(peer[0])))
            self._connections.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        self._slots.release()

    async def _serve(self, conn: socket.socket, peer: str) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        framer = WrapperFramer(max_apdu_length=self._settings.max_frame_bytes)
        try:
            while True:
                try:
                    data = await asyncio.wait_for(loop.sock_recv(conn, _READ_SIZE), self._settings.idle_timeout_s)
                except (TimeoutError, OSError):
                    data = b""
                if not data:
                    if framer.buffered:
                        await self._refuse(peer, "truncated")
                    return
                if not await self._frames(framer, data, peer):
                    return
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    async def _frames(self, framer: WrapperFramer, data: bytes, peer: str) -> bool:
        """Queue every complete frame in ``data``; False when the connection must be closed."""
        try:
            framer.feed(data)
            while (frame := framer.next_frame()) is not None:
                if frame.dest_wport != PUSH_DEST_WPORT:
                    await self._refuse(peer, "wrong-wport")
                    return False
                await self._pipeline.submit_push(frame.apdu, received_at=self._pipeline.received_now(), peer=peer)
        except DecodeError:  # a wrong version or a length above the limit: no resynchronising
            await self._refuse(peer, "malformed-frame")
            return False
        return True

    async def _refuse(self, peer: str, reason: str) -> None:
        _log.warning("headend.push.refused", peer=peer, reason=reason)
        await self._pipeline.submit_refusal(Refusal("push.unknown-source", None, {"reason": reason, "peer": peer}))
