"""TLS server contexts for the API: HTTPS with a certificate of the utility CA and, for mutual TLS,
client certificates verified by the ``ssl`` module against that CA and its newest CRL.

``ServerContexts.current()`` is asked for a context at every new connection (docs/adr/0004): it
returns the context built from the CRL file as it is now, rebuilding it when the file changed
(one ``stat`` per connection; ``pki.publish_crl`` replaces the file atomically, so a new inode or
mtime marks a new CRL) and renewing the CRL first when it is about to pass its next update.
Session tickets and TLS 1.3 resumption are off: a resumed session would skip the certificate
(and so the revocation) check.
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import structlog
from cryptography import x509

__all__ = ["ClientAuth", "ServerContexts", "TlsFiles", "build_server_context", "is_loopback"]

ClientAuth = Literal["none", "optional", "required"]
RENEW_BEFORE = timedelta(days=2)  # renew the CRL this long before its next update
_RETRY_RENEWAL = timedelta(minutes=1)
_log = structlog.get_logger("openami.security")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); false for any other name or
    for the wildcard addresses (0.0.0.0, ::), which listen on every interface."""
    if host.strip().lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The files a server context is built from. ``key_password`` decrypts the server key (None:
    the key is not encrypted)."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    crl_file: Path
    key_password: bytes | None = None


def build_server_context(files: TlsFiles, client_auth: ClientAuth) -> ssl.SSLContext:
    """A server context: TLS 1.2+, no session tickets or resumption, the server certificate; with
    client authentication, only the CA in ``files.ca_file`` is trusted (not the system store) and the
    leaf certificate is checked against the CRL in ``files.crl_file`` (which must exist: fail closed).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.num_tickets = 0  # TLS 1.3: no tickets, so no resumption that would skip verification
    context.load_cert_chain(files.cert_file, files.key_file, password=files.key_password)
    if client_auth != "none":
        context.verify_mode = ssl.CERT_REQUIRED if client_auth == "required" else ssl.CERT_OPTIONAL
        context.load_verify_locations(cafile=files.ca_file)
        context.load_verify_locations(cafile=files.crl_file)  # PEM CRLs load through cafile only
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_X509_STRICT
    return context


def _signature(path: Path) -> tuple[int, int, int, int]:
    info = path.stat()
    return (info.st_ino, info.st_mtime_ns, info.st_size, info.st_dev)


class ServerContexts:
    """The newest server context, per connection.

    ``renew_crl`` (optional) publishes a fresh CRL; it is called in a background thread once the
    loaded CRL is within ``RENEW_BEFORE`` of its next update, and synchronously if it has passed it
    (a handshake against an expired CRL would fail: renewing first keeps mutual TLS working and the
    check fail-closed if renewal fails).
    """

    def __init__(
        self,
        files: TlsFiles,
        client_auth: ClientAuth,
        *,
        renew_crl: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.files = files
        self.client_auth = client_auth
        self._renew_crl = renew_crl
        self._clock = clock
        self._lock = threading.Lock()
        self._renewing = False
        self._next_renewal_attempt = datetime.min.replace(tzinfo=UTC)
        self._signature: tuple[int, int, int, int] | None = None
        self._next_update: datetime | None = None
        self._context = self._build()

    @property
    def crl_next_update(self) -> datetime | None:
        return self._next_update

    def current(self) -> ssl.SSLContext:
        """The context for a new connection (rebuilt first if the CRL file changed)."""
        if self.client_auth == "none":
            return self._context
        now = self._clock()
        if self._next_update is not None and now >= self._next_update - RENEW_BEFORE:
            self._renew(synchronous=now >= self._next_update)
        try:
            signature = _signature(self.files.crl_file)
        except OSError:
            signature = None  # keep the last good context; the CRL file is being replaced or was removed
        if signature is not None and signature != self._signature:
            with self._lock:
                if signature != self._signature:
                    self._context = self._build()
        return self._context

    def _build(self) -> ssl.SSLContext:
        signature = None if self.client_auth == "none" else _signature(self.files.crl_file)
        context = build_server_context(self.files, self.client_auth)
        if signature is not None:
            crl = x509.load_pem_x509_crl(self.files.crl_file.read_bytes())
            self._next_update = crl.next_update_utc
        self._signature = signature
        return context

    def _renew(self, *, synchronous: bool) -> None:
        if self._renew_crl is None:
            return
        with self._lock:
            now = self._clock()
            if self._renewing or now < self._next_renewal_attempt:
                return
            self._renewing = True
            self._next_renewal_attempt = now + _RETRY_RENEWAL
        if synchronous:
            self._run_renewal()
        else:
            threading.Thread(target=self._run_renewal, name="openami-crl-renewal", daemon=True).start()

    def _run_renewal(self) -> None:
        assert self._renew_crl is not None
        try:
            self._renew_crl()
        except Exception:  # noqa: BLE001 - a thread's boundary: log it, retry after _RETRY_RENEWAL
            _log.exception("pki.crl.renewal-failed")
        finally:
            with self._lock:
                self._renewing = False
