"""The API server's own certificate: the configured files, or one issued by the utility CA on first
run and issued again when it no longer fits (names changed, revoked, expiring within 30 days).

The auto-issued key is kept like the CA's: PKCS#8 encrypted under a random passphrase that the
master key wraps (``server.key.pass``); the ``ssl`` module gets the passphrase in memory.
"""

from __future__ import annotations

import ipaddress
import socket
import stat
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from sqlalchemy.engine import Connection

from openami.errors import InvalidInput
from openami.security import pki as ca_core
from openami.security.keystore import MasterKeyProvider
from openami.security.pki import CaFiles, CertificateRequest
from openami.security.pki_files import create_private_file, read_wrapped_passphrase, write_wrapped_passphrase
from openami.security.pki_registry import Profile, RevocationReason, find_certificate, fingerprint
from openami.security.tls import TlsFiles, is_loopback
from openami.settings import Settings

__all__ = ["SERVER_COMMON_NAME", "server_names", "server_tls_files"]

SERVER_COMMON_NAME = "openami-api"
RENEW_WITHIN = timedelta(days=30)
_KEY_PURPOSE = "server-key"
_ACTOR = "system:platform"


def server_names(settings: Settings) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(DNS names, IP addresses) the server certificate must cover: the listen address (this host's
    names when listening on every interface), ``localhost`` on loopback, and ``tls.server_names``."""
    host = settings.api.host.strip().strip("[]")
    derived: list[str] = []
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - recognising the wildcard address, not binding to it
        derived += [socket.gethostname(), socket.getfqdn()]
    if is_loopback(host):
        derived += ["localhost", "127.0.0.1", "::1"]
    dns: list[str] = []
    ips: list[str] = []
    for name, explicit in [
        (host, True),
        *((n, True) for n in settings.tls.server_names),
        *((n, False) for n in derived),
    ]:
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            if name and name.lower() not in dns and (explicit or ca_core.is_dns_name(name)):
                dns.append(name.lower())
            continue
        if not address.is_unspecified and str(address) not in ips:
            ips.append(str(address))
    return tuple(dns), tuple(ips)


def server_tls_files(
    conn: Connection, settings: Settings, keystore: MasterKeyProvider, files: CaFiles, *, now: datetime
) -> TlsFiles:
    """The files to serve HTTPS with, issuing the server certificate first if needed (in ``conn``)."""
    configured = settings.tls
    if configured.cert_file is not None or configured.key_file is not None:
        if configured.cert_file is None or configured.key_file is None:
            raise InvalidInput("set both tls.cert_file and tls.key_file, or neither (then the CA issues one)")
        mode = stat.S_IMODE(configured.key_file.stat().st_mode)
        if mode & 0o077:
            raise InvalidInput(f"{configured.key_file} is accessible by group or others (mode {mode:04o}): chmod 600")
        return TlsFiles(configured.cert_file, configured.key_file, files.cert, files.crl)
    cert_file = files.directory / "server.crt.pem"
    key_file = files.directory / "server.key.pem"
    passphrase_file = files.directory / "server.key.pass"
    dns, ips = server_names(settings)
    if not _fits(conn, cert_file, dns, ips, now):
        ca = ca_core.load_ca(files, keystore)
        _retire(conn, ca, cert_file, now)
        for path in (cert_file, key_file, passphrase_file):
            path.unlink(missing_ok=True)
        request = CertificateRequest(Profile.SERVER, SERVER_COMMON_NAME, dns_names=dns, ip_addresses=ips)
        issued = ca_core.issue_certificate(conn, ca, request, now=now, actor=_ACTOR)
        passphrase = write_wrapped_passphrase(passphrase_file, keystore, _KEY_PURPOSE)
        create_private_file(key_file, issued.private_key_pem(passphrase))
        create_private_file(cert_file, issued.certificate_pem(), mode=0o644)
    password = read_wrapped_passphrase(passphrase_file, keystore, _KEY_PURPOSE)
    return TlsFiles(cert_file, key_file, files.cert, files.crl, key_password=password)


def _load(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _fits(conn: Connection, cert_file: Path, dns: tuple[str, ...], ips: tuple[str, ...], now: datetime) -> bool:
    certificate = _load(cert_file)
    if certificate is None:
        return False
    found = find_certificate(conn, fingerprint=fingerprint(certificate))
    if found is None or found.status(now) != "valid" or found.not_after - now < RENEW_WITHIN:
        return False
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_ips = {str(address) for address in san.get_values_for_type(x509.IPAddress)}
    return set(dns) <= set(san.get_values_for_type(x509.DNSName)) and set(ips) <= have_ips


def _retire(conn: Connection, ca: ca_core.CertificateAuthority, cert_file: Path, now: datetime) -> None:
    """Revoke the server certificate being replaced (superseded), if it is still valid."""
    certificate = _load(cert_file)
    found = None if certificate is None else find_certificate(conn, fingerprint=fingerprint(certificate))
    if found is not None and found.revoked_at is None:
        ca_core.revoke_certificate(conn, ca, found.serial, RevocationReason.SUPERSEDED, now=now, actor=_ACTOR)
