"""HTTPS for uvicorn with a fresh TLS context per connection (docs/adr/0004-mutual-tls-and-revocation.md).

uvicorn (0.54) fixes one ``SSLContext`` when it starts listening and does not tell the application
which client certificate a connection presented. So uvicorn listens on plain TCP and this protocol
upgrades each new connection itself with ``loop.start_tls`` using ``ServerContexts.current()``:
the newest CRL is in force from the next handshake on, without a restart. A refused client
certificate (unknown CA, expired, revoked, missing when required) is recorded as the security event
``api.bad-certificate``; the verified certificate is put in the ASGI scope as the TLS extension
(``scope["extensions"]["tls"]["client_cert_chain"]``, PEM, leaf first) for ``auth.py``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, ClassVar

import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

from openami.services.pki import ServerTls

__all__ = ["certificate_refusal", "uvicorn_tls_options"]

_log = structlog.get_logger("openami.api")
_MAX_EARLY_BYTES = 1 << 20  # data decrypted before the protocol took over (pipelined request bytes)
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


def uvicorn_tls_options(server_tls: ServerTls | None) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``: none for plain HTTP, else our HTTP protocol class."""
    if server_tls is None:
        return {}
    protocol = type("OpenAmiTlsProtocol", (_TlsH11Protocol,), {"server_tls": server_tls})
    return {"http": protocol}


def certificate_refusal(exc: BaseException) -> str | None:
    """Why the handshake refused the client's certificate; None when it failed for another reason
    (the client gave up, spoke plain HTTP, or did not trust our certificate)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return str(exc.verify_message or "certificate verify failed")
    if isinstance(exc, ssl.SSLError) and exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "no client certificate"
    return None


def _tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any]:
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
    version = ssl_object.version() if ssl_object is not None else None
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version or ""),
        "cipher_suite": None,
    }


def _with_tls(app: ASGIApp, extension: dict[str, Any]) -> ASGIApp:
    async def app_with_tls(
        scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
    ) -> None:
        if scope.get("type") in ("http", "websocket"):
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": extension}
        await app(scope, receive, send)

    return app_with_tls


class _TlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol behind our own TLS handshake.

    Until the handshake is done the connection is ours alone: nothing reaches uvicorn's request
    handling, and bytes decrypted before ``connection_made`` could be called are replayed after it.
    """

    server_tls: ClassVar[ServerTls]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._early: list[bytes] | None = []  # None once the TLS connection is handed to h11
        self._early_size = 0
        self._early_eof = False
        self._lost = False
        self._handshake: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override] # as uvicorn
        self.connections.add(self)  # so that a graceful shutdown also ends pending handshakes
        self._handshake = self.loop.create_task(self._upgrade(transport))

    async def _upgrade(self, tcp: asyncio.Transport) -> None:
        peername = tcp.get_extra_info("peername")
        peer = str(peername[0]) if peername else None
        try:
            tls = await self.loop.start_tls(
                tcp,
                self,
                self.server_tls.contexts.current(),
                server_side=True,
                ssl_handshake_timeout=self.server_tls.handshake_timeout_s,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            self.connections.discard(self)
            tcp.close()
            await self._report(peer, exc)
            return
        except asyncio.CancelledError:  # shutdown, or too much data before the handshake completed
            self.connections.discard(self)
            tcp.close()
            raise
        if tls is None or self._lost:  # closed while the handshake completed
            self.connections.discard(self)
            return
        super().connection_made(tls)
        self.app = _with_tls(self.app, _tls_extension(tls))
        early, self._early = self._early or [], None
        for data in early:
            super().data_received(data)
        if self._early_eof:
            super().eof_received()

    async def _report(self, peer: str | None, exc: BaseException) -> None:
        reason = certificate_refusal(exc)
        if reason is None:
            _log.debug("api.tls.handshake-failed", peer=peer, error=type(exc).__name__)
            return
        _log.warning("api.tls.bad-certificate", peer=peer, reason=reason)
        try:
            await asyncio.to_thread(self.server_tls.record_refusal, peer, reason)
        except Exception:  # noqa: BLE001 - a connection's boundary: the refusal stands even if recording fails
            _log.exception("api.tls.refusal-not-recorded", peer=peer, reason=reason)

    def data_received(self, data: bytes) -> None:
        if self._early is None:
            super().data_received(data)
            return
        self._early.append(data)
        self._early_size += len(data)
        if self._early_size > _MAX_EARLY_BYTES and self._handshake is not None:
            self._handshake.cancel()

    def eof_received(self) -> None:
        if self._early is None:
            super().eof_received()
        else:
            self._early_eof = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._early is None:
            super().connection_lost(exc)
            return
        self._lost = True
        self.connections.discard(self)  # lost during the handshake: nothing of h11 to clean up

    def shutdown(self) -> None:
        if self._early is None:
            super().shutdown()
        elif self._handshake is not None:
            self._handshake.cancel()

    def pause_writing(self) -> None:
        if self._early is None:
            super().pause_writing()

    def resume_writing(self) -> None:
        if self._early is None:
            super().resume_writing()
