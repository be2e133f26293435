"""A test push destination: an asyncio TCP server that keeps every frame meters send it (it never answers)."""

from __future__ import annotations

import asyncio
import socketserver
import threading
import time
from collections.abc import Callable, Sequence

from openami.protocols.dlms.push import DecodedPush, decode_push


class FrameSink:
    """Listens on 127.0.0.1 (ephemeral port); ``frames`` are the bytes of each connection, in arrival order."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FrameSink:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # the meter writes one frame and closes
        if data:
            self.frames.append(data)
        writer.close()

    async def wait_for(self, count: int, timeout_s: float = 20.0) -> list[bytes]:
        """Poll until at least ``count`` frames arrived (AssertionError at the deadline)."""
        deadline = time.monotonic() + timeout_s
        while len(self.frames) < count:
            assert time.monotonic() < deadline, f"{len(self.frames)} of {count} pushes arrived"
            await asyncio.sleep(0.02)
        return list(self.frames)


class Decoder:
    """Opens pushes like the head-end would: keys by system title, counters strictly increasing per meter."""

    def __init__(self, keys: dict[bytes, tuple[bytes, bytes]]) -> None:
        self._keys = keys
        self.last: dict[bytes, int] = {}

    def keys_for(self, title: bytes) -> Sequence[tuple[bytes, bytes]]:
        return [self._keys[title]] if title in self._keys else []

    def __call__(self, frame: bytes) -> DecodedPush:
        last: Callable[[bytes], int] = lambda title: self.last.get(title, -1)  # noqa: E731
        decoded = decode_push(frame, keys_for=self.keys_for, last_counter_for=last)
        self.last[decoded.system_title] = decoded.invocation_counter
        return decoded


class ThreadedFrameSink:
    """``FrameSink`` on its own thread, for fixtures that outlive one test's event loop."""

    def __init__(self) -> None:
        frames: list[bytes] = []
        lock = threading.Lock()

        class _Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                chunks = []
                while chunk := self.request.recv(65536):
                    chunks.append(chunk)
                if chunks:
                    with lock:
                        frames.append(b"".join(chunks))

        self._frames = frames
        self._lock = lock

        class _Server(socketserver.ThreadingTCPServer):
            request_queue_size = 1024  # a last-gasp storm: the default backlog of 5 would drop most of it
            daemon_threads = True

        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="push-sink")
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def frames(self) -> list[bytes]:
        with self._lock:
            return list(self._frames)

    async def wait_for(self, count: int, timeout_s: float = 30.0) -> list[bytes]:
        deadline = time.monotonic() + timeout_s
        while len(frames := self.frames) < count:
            assert time.monotonic() < deadline, f"{len(frames)} of {count} pushes arrived"
            await asyncio.sleep(0.05)
        return frames

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
