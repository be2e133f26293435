"""Thin asyncio transports for both roles; the only module of the protocol package with sockets.

Everything protocol-related is sans-IO (``client_connection``, ``server``); this module moves bytes:

- :func:`open_stream` connects a :class:`ClientStream` (write, read with a deadline, close);
- :func:`start_server` listens and gives each TCP connection its own session object
  (``receive_data(bytes) -> bytes`` and ``closed``), so one misbehaving peer only ever closes its
  own connection while the others keep being served;
- :class:`ServerHooks` lets a fleet runner add latency, drop answers or refuse connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, TypeVar, cast

from openami.protocols.dlms.connection import NEED_DATA, NeedData
from openami.protocols.dlms.session_errors import ConnectionClosedError, DlmsTimeoutError

__all__ = ["ClientStream", "SansIoClient", "ServerHooks", "SessionLike", "open_stream", "start_server"]

_E = TypeVar("_E")
_E_co = TypeVar("_E_co", covariant=True)


class SansIoClient(Protocol[_E_co]):
    """The sans-IO side of a client connection (``client_connection.ClientConnection``)."""

    def receive_data(self, data: bytes) -> None: ...

    def next_event(self) -> _E_co | NeedData: ...

    def data_to_send(self) -> bytes: ...


class ClientStream(asyncio.Protocol):
    """A client TCP connection.

    Two ways to use it: :meth:`exchange` (write a request, let a sans-IO connection consume what
    arrives right in ``data_received`` and write its own follow-ups there, such as HLS pass 3 and
    get-request-next, and wake the caller once with the event), or raw :meth:`write` and
    :meth:`read` (whatever arrived, waiting until a deadline) for tests that speak bytes.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._connection: SansIoClient[object] | None = None
        self._pending: asyncio.Future[object] | None = None

    # asyncio.Protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's TCP transports do not subclass it

    def data_received(self, data: bytes) -> None:
        connection = self._connection
        if connection is None:
            self._buffer += data
            self._wake()
            return
        connection.receive_data(data)
        if self._pending is not None:
            self._advance(connection, self._pending)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wake()
        self._fail(ConnectionClosedError("the meter closed the connection"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        pending = self._pending
        if pending is not None and not pending.done():
            self._pending = None
            pending.set_exception(error)

    def _advance(self, connection: SansIoClient[object], pending: asyncio.Future[object]) -> None:
        """Take events out of the connection: its follow-ups are written, its answer ends the exchange."""
        try:
            while True:
                event = connection.next_event()
                if event is not NEED_DATA:
                    break
                follow_up = connection.data_to_send()
                if not follow_up:
                    return
                self.write(follow_up)
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting caller, which closes the connection
            self._pending = None
            if not pending.done():
                pending.set_exception(exc)
            return
        self._pending = None
        if not pending.done():
            pending.set_result(event)

    # the client's side
    @property
    def closed(self) -> bool:
        return self._closed

    async def exchange(self, connection: SansIoClient[_E], data: bytes, timeout_s: float) -> _E:
        """Write ``data`` and return ``connection``'s next event, within ``timeout_s`` (follow-ups included).

        Raises what the connection raises (a DlmsError), DlmsTimeoutError at the deadline and
        ConnectionClosedError when the peer closed. One future and one timer per exchange.
        """
        if self._connection is not connection:
            self._connection = connection
            if self._buffer:
                connection.receive_data(bytes(self._buffer))
                self._buffer.clear()
        self.write(data)
        pending: asyncio.Future[object] = self._loop.create_future()
        self._pending = pending
        self._advance(connection, pending)
        if not pending.done():
            if self._closed:
                self._fail(ConnectionClosedError("the meter closed the connection"))
            else:
                timer = self._loop.call_at(self._loop.time() + timeout_s, self._expire, pending)
                try:
                    await pending
                finally:
                    timer.cancel()
                    if self._pending is pending:
                        self._pending = None
        return cast(_E, pending.result())

    def _expire(self, pending: asyncio.Future[object]) -> None:
        if self._pending is pending:
            self._fail(DlmsTimeoutError("no answer from the meter within the timeout"))

    def deadline(self, timeout_s: float) -> float:
        """The loop time ``timeout_s`` from now (for :meth:`read`)."""
        return self._loop.time() + timeout_s

    def write(self, data: bytes) -> None:
        """Queue bytes for sending; ConnectionClosedError when the connection is gone."""
        if self._closed or self._transport is None:
            raise ConnectionClosedError("the connection to the meter is closed")
        self._transport.write(data)

    async def read(self, deadline: float) -> bytes:
        """Whatever arrived, waiting until ``deadline`` (loop time) at most (raw use, not with ``exchange``).

        Raises DlmsTimeoutError at the deadline, ConnectionClosedError when the peer closed.
        """
        while not self._buffer:
            if self._closed:
                raise ConnectionClosedError("the meter closed the connection")
            delay = deadline - self._loop.time()
            if delay <= 0:
                raise DlmsTimeoutError("no answer from the meter within the timeout")
            self._waiter = self._loop.create_future()
            timer = self._loop.call_later(delay, self._wake)
            try:
                await self._waiter
            finally:
                timer.cancel()
                self._waiter = None
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.close()
        self._closed = True


async def open_stream(host: str, port: int, *, connect_timeout_s: float) -> ClientStream:
    """Connect to ``host:port`` within ``connect_timeout_s`` (DlmsTimeoutError / ConnectionClosedError).

    asyncio sets TCP_NODELAY on its TCP transports, which request/response traffic needs.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_timeout_s):
            _, stream = await loop.create_connection(ClientStream, host, port)
    except TimeoutError:
        raise DlmsTimeoutError(f"could not connect to {host}:{port} within {connect_timeout_s:g} s") from None
    except OSError as exc:
        raise ConnectionClosedError(f"could not connect to {host}:{port}: {exc.strerror or exc}") from None
    return stream


class SessionLike(Protocol):
    """A sans-IO server session: bytes in, bytes out; ``closed`` asks the transport to hang up."""

    def receive_data(self, data: bytes) -> bytes: ...

    @property
    def closed(self) -> bool: ...


class ServerHooks(Protocol):
    """Network conditions a fleet runner injects into a simulated meter's connection."""

    def accept_connection(self) -> bool:
        """False: close a new connection at once (meter offline or unreachable)."""
        ...

    def response_delay(self) -> float | None:
        """Seconds to hold the next answer; None: drop it (a silent meter)."""
        ...


class _ServerConnection(asyncio.Protocol):
    def __init__(self, session: SessionLike, hooks: ServerHooks | None) -> None:
        self._session = session
        self._hooks = hooks
        self._transport: asyncio.Transport | None = None
        self._not_before = 0.0  # delayed answers keep their order

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's TCP transports do not subclass it
        if self._hooks is not None and not self._hooks.accept_connection():
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        try:
            answer = self._session.receive_data(data)
        except Exception:  # noqa: BLE001 - connection boundary: a session bug closes this connection only
            transport.abort()
            return
        if answer:
            self._send(transport, answer)
        if self._session.closed:
            self._close_after_answers(transport)

    def _send(self, transport: asyncio.Transport, answer: bytes) -> None:
        delay = 0.0 if self._hooks is None else self._hooks.response_delay()
        if delay is None:
            return
        if delay <= 0 and self._not_before == 0.0:
            transport.write(answer)
            return
        loop = asyncio.get_running_loop()
        at = max(loop.time() + delay, self._not_before)
        self._not_before = at
        loop.call_at(at, _write_if_open, transport, answer)

    def _close_after_answers(self, transport: asyncio.Transport) -> None:
        if self._not_before:
            asyncio.get_running_loop().call_at(self._not_before, transport.close)
        else:
            transport.close()


def _write_if_open(transport: asyncio.Transport, data: bytes) -> None:
    if not transport.is_closing():
        transport.write(data)


async def start_server(
    session_factory: Callable[[], SessionLike],
    host: str,
    port: int,
    *,
    hooks: ServerHooks | None = None,
    backlog: int = 256,
) -> asyncio.Server:
    """Listen on ``host:port`` (0 = an ephemeral port); each connection gets ``session_factory()``.

    The returned server is already serving; close it with ``server.close()`` then
    ``await server.wait_closed()``.
    """
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _ServerConnection(session_factory(), hooks), host, port, backlog=backlog, reuse_address=True
    )
