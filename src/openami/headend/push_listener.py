"""The push listener: where meters deliver event notifications (IEC 62056-47 frames), over TCP and UDP.

It never answers (the wire contract): it reads wrapper frames and hands each notification to the
event pipeline (``headend.events``), which authenticates, stores and publishes. What it refuses
itself (bad framing, an APDU above the size limit, wrong wPorts, a connection that sends half a frame
and stops) becomes a refusal the pipeline records as a security event; the connection is closed.

UDP (``PushSettings.udp``, the same port number): each datagram is one frame (a Push Setup with
transport service 1). Nothing to accept, no task per connection and no handshake on the meter's
side, which is what lets one process take a storm of last gasps. A datagram cannot wait, so when the
pipeline's queue is full it is dropped and counted (``PipelineStats.dropped``); the kernel's receive
buffer (``udp_receive_buffer_bytes``) absorbs bursts while the event loop is busy. Authenticity does
not depend on the transport: the pipeline verifies every notification's tag and counter either way.

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
import sys
import time
from typing import Any

import structlog

from openami.headend.events import EventPipeline, Refusal
from openami.protocols.dlms.errors import DecodeError
from openami.protocols.dlms.push import PUSH_DEST_WPORT
from openami.protocols.dlms.wrapper import WrapperFramer, decode_datagram
from openami.settings import PushSettings

__all__ = ["PushListener"]

_log = structlog.get_logger("openami.headend.push")
_READ_SIZE = 4096
_SO_RCVBUFFORCE_LINUX = 33  # <asm-generic/socket.h>; Python's socket module does not export it
_DROP_WARNING_EVERY_S = 5.0  # a full queue under a UDP flood is logged at most this often


class PushListener:
    """Accepts meters' push connections and feeds their frames to an :class:`EventPipeline`."""

    def __init__(self, pipeline: EventPipeline, settings: PushSettings) -> None:
        self._pipeline = pipeline
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._datagrams: asyncio.DatagramTransport | None = None
        self._warned_at = -_DROP_WARNING_EVERY_S
        self.accepted = 0  # connections served since start
        self.datagrams = 0  # UDP datagrams received since start

    @property
    def address(self) -> tuple[str, int]:
        """Where meters should push (the bound host and port; port 0 in the settings picks one)."""
        if self._sock is None:
            raise RuntimeError("the push listener is not started")
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def udp_address(self) -> tuple[str, int] | None:
        """Where meters may push datagrams (the TCP port's number), or None without UDP."""
        if self._datagrams is None:
            return None
        host, port = self._datagrams.get_extra_info("sockname")[:2]
        return str(host), int(port)

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self._settings.host else socket.AF_INET
        sock = socket.create_server(
            (self._settings.host, self._settings.port), family=family, backlog=self._settings.backlog
        )
        sock.setblocking(False)
        self._sock = sock
        self._accepting = asyncio.create_task(self._accept_loop(sock), name="push-accept")
        if self._settings.udp:
            await self._start_udp(family, self.address)
        _log.info("headend.push.listening", host=self.address[0], port=self.address[1], udp=self._settings.udp)

    async def _start_udp(self, family: socket.AddressFamily, address: tuple[str, int]) -> None:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            _size_receive_buffer(sock, self._settings.udp_receive_buffer_bytes)
            sock.bind(address)
        except OSError:
            sock.close()
            await self.stop()
            raise
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        self._datagrams, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), sock=sock)

    async def stop(self) -> None:
        """Stop accepting, close open connections (frames already queued are kept)."""
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
            self._accepting = None
        if self._datagrams is not None:
            self._datagrams.close()
            self._datagrams = None
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

    # -- UDP ---------------------------------------------------------------------------------------

    def datagram(self, data: bytes, peer: str) -> None:
        """One datagram: one frame, queued without waiting; refused or dropped otherwise."""
        self.datagrams += 1
        pipeline = self._pipeline
        try:
            frame = decode_datagram(data, max_apdu_length=self._settings.max_frame_bytes)
        except DecodeError:
            self._offer_refusal(peer, "malformed-frame")
            return
        if frame.dest_wport != PUSH_DEST_WPORT:
            self._offer_refusal(peer, "wrong-wport")
            return
        if not pipeline.offer_push(frame.apdu, received_at=pipeline.received_now(), peer=peer):
            self._dropped()

    def _offer_refusal(self, peer: str, reason: str) -> None:
        refusal = Refusal("push.unknown-source", None, {"reason": reason, "peer": peer, "transport": "udp"})
        if not self._pipeline.offer_refusal(refusal):
            self._dropped()

    def _dropped(self) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _DROP_WARNING_EVERY_S:
            self._warned_at = now
            _log.warning("headend.push.datagrams-dropped", total=self._pipeline.stats.dropped)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, listener: PushListener) -> None:
        self._listener = listener

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._listener.datagram(data, str(addr[0]))

    def error_received(self, exc: Exception) -> None:  # e.g. an ICMP error for an earlier datagram: harmless
        _log.debug("headend.push.udp-error", error=type(exc).__name__)


def _size_receive_buffer(sock: socket.socket, size: int) -> None:
    """Ask for ``size`` bytes of kernel buffer: beyond ``net.core.rmem_max`` only with CAP_NET_ADMIN
    (SO_RCVBUFFORCE, Linux); otherwise the kernel grants what the limit allows. What was granted is logged."""
    force = getattr(socket, "SO_RCVBUFFORCE", _SO_RCVBUFFORCE_LINUX if sys.platform == "linux" else None)
    forced = False
    if force is not None:
        with contextlib.suppress(PermissionError):
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            forced = True
    if not forced:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    _log.info("headend.push.udp-buffer", requested=size, granted=granted)
