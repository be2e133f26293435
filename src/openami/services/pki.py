"""PKI services: the CA's unit of work for the CLI, HTTPS for the API server, and authentication of
requests by a verified client certificate (docs/security.md "PKI and TLS", docs/adr/0004).

Issuance writes the requester's files inside the transaction that registers and audits the
certificate: if writing fails nothing is recorded, and if the commit fails the files are removed,
so a private key exists only for a certificate the registry knows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from sqlalchemy.engine import Engine

from openami.db.tables import pki_crls
from openami.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from openami.security import audit, events, identity
from openami.security import pki as ca_core
from openami.security.keystore import MasterKeyProvider, master_key_provider
from openami.security.pki import CaFiles, CertificateRequest
from openami.security.pki_files import create_private_file, output_path, replace_public_file
from openami.security.pki_registry import (
    CertificateRecord,
    Profile,
    RevocationReason,
    find_certificate,
    fingerprint,
    list_certificates,
)
from openami.security.policy import RequestScope
from openami.security.tls import RENEW_BEFORE, ServerContexts, is_loopback
from openami.services.context import Platform
from openami.services.pki_server import server_tls_files
from openami.settings import Settings

__all__ = [
    "CertificateRecord",
    "CertificateRequest",
    "IssuedFiles",
    "PlainHttpRefused",
    "Profile",
    "RevocationReason",
    "ServerTls",
    "authenticate_certificate",
    "ca_files",
    "export_crl",
    "init_ca",
    "issue",
    "list_certificates_of",
    "prepare_server_tls",
    "revoke",
]


class PlainHttpRefused(InvalidInput):
    code = "plain-http-refused"


@dataclass(frozen=True, slots=True)
class IssuedFiles:
    record: CertificateRecord
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class ServerTls:
    """What the API server needs for HTTPS: a context per new connection, the CA certificate
    clients must trust, and where handshake refusals are recorded."""

    contexts: ServerContexts
    ca_cert_file: Path
    handshake_timeout_s: float
    engine: Engine
    now: Callable[[], datetime]

    def record_refusal(self, peer: str | None, reason: str) -> None:
        """A client certificate refused in the TLS handshake: security event ``api.bad-certificate``."""
        details: dict[str, str | int | float | bool | None] = {"peer": peer, "stage": "tls-handshake", "reason": reason}
        with self.engine.begin() as conn:
            events.raise_event(conn, "api.bad-certificate", now=self.now(), details=details)


def ca_files(settings: Settings) -> CaFiles:
    return CaFiles(settings.tls.ca_dir or settings.data_dir / "pki")


def init_ca(
    engine: Engine, settings: Settings, *, now: datetime, actor: str, common_name: str = "openami utility CA"
) -> x509.Certificate:
    """Create the CA (Conflict if one exists); returns its certificate."""
    keystore = master_key_provider(settings)
    with engine.begin() as conn:
        ca = ca_core.init_ca(conn, ca_files(settings), keystore, now=now, actor=actor, common_name=common_name)
    return ca.certificate


def issue(
    engine: Engine, settings: Settings, request: CertificateRequest, out_dir: Path, *, now: datetime, actor: str
) -> IssuedFiles:
    """Issue a certificate and hand its key over once: ``<out_dir>/<name>.key.pem`` (0600) and
    ``<name>.crt.pem``, where name is the client's name or the profile. Existing files are never
    overwritten (Conflict) and names that would leave ``out_dir`` are refused (InvalidInput)."""
    base = request.common_name if request.profile is Profile.CLIENT else request.profile.value
    cert_file = output_path(out_dir, f"{base}.crt.pem")
    key_file = output_path(out_dir, f"{base}.key.pem")
    for path in (cert_file, key_file):
        if path.exists() or path.is_symlink():
            raise Conflict(f"{path} already exists; refusing to overwrite it")
    ca = ca_core.load_ca(ca_files(settings), master_key_provider(settings))
    written: list[Path] = []
    try:
        with engine.begin() as conn:
            issued = ca_core.issue_certificate(conn, ca, request, now=now, actor=actor)
            create_private_file(key_file, issued.private_key_pem())
            written.append(key_file)
            create_private_file(cert_file, issued.certificate_pem(), mode=0o644)
            written.append(cert_file)
    except BaseException:
        for path in written:  # the certificate was not recorded: its key must not survive
            path.unlink(missing_ok=True)
        raise
    return IssuedFiles(issued.record, cert_file, key_file)


def revoke(
    engine: Engine, settings: Settings, serial: str, reason: RevocationReason, *, now: datetime, actor: str
) -> CertificateRecord:
    """Revoke and publish the new CRL (the API server's next handshake uses it)."""
    ca = ca_core.load_ca(ca_files(settings), master_key_provider(settings))
    with engine.begin() as conn:
        return ca_core.revoke_certificate(conn, ca, serial, reason, now=now, actor=actor)


def list_certificates_of(engine: Engine, profile: Profile | None = None) -> list[CertificateRecord]:
    with engine.connect() as conn:
        return list_certificates(conn, profile=profile)


def renew_crl(engine: Engine, settings: Settings, keystore: MasterKeyProvider, *, now: datetime) -> None:
    """Sign and publish a fresh CRL (same revocations, new next update)."""
    ca = ca_core.load_ca(ca_files(settings), keystore)
    with engine.begin() as conn:
        ca_core.publish_crl(conn, ca, now=now)


def export_crl(engine: Engine, settings: Settings, out_file: Path, *, now: datetime, overwrite: bool = False) -> int:
    """Write the newest CRL (PEM) to ``out_file``, signing a fresh one first if it has expired;
    returns its CRL number. Refuses an existing file unless ``overwrite``."""
    if out_file.is_dir() or not out_file.parent.is_dir():
        raise InvalidInput(f"{out_file} must be a file in an existing directory")
    if (out_file.exists() or out_file.is_symlink()) and not overwrite:
        raise Conflict(f"{out_file} already exists; refusing to overwrite it (use --force)")
    with engine.connect() as conn:
        row = conn.execute(pki_crls.select().order_by(pki_crls.c.number.desc()).limit(1)).mappings().one_or_none()
    if row is None:
        raise NotFound("no CRL was published: run `openami pki init`")
    if row["next_update"] <= now:
        renew_crl(engine, settings, master_key_provider(settings), now=now)
        return export_crl(engine, settings, out_file, now=now, overwrite=True)
    pem = x509.load_der_x509_crl(bytes(row["der"])).public_bytes(serialization.Encoding.PEM)
    if overwrite:
        replace_public_file(out_file, pem)
    else:
        create_private_file(out_file, pem, mode=0o644)
    return int(row["number"])


def prepare_server_tls(platform: Platform) -> ServerTls | None:
    """Decide how the API is served: None for plain HTTP (only ever on a loopback address), else
    HTTPS with a certificate of the utility CA, creating the CA and issuing the server certificate
    on first run. Raises PlainHttpRefused for plain HTTP on any other address."""
    settings, host = platform.settings, platform.settings.api.host
    mode = settings.tls.mode
    if mode == "http" or (mode == "auto" and is_loopback(host)):
        if not is_loopback(host):
            raise PlainHttpRefused(
                f"refusing to serve plain HTTP on {host}, which is not a loopback address: "
                "set OPENAMI_TLS__MODE=https (or auto), or listen on 127.0.0.1"
            )
        return None
    files = ca_files(settings)
    now = platform.now()
    if not files.exists():
        with platform.engine.begin() as conn:
            ca_core.init_ca(conn, files, platform.keystore, now=now, actor="system:platform")
    with platform.engine.begin() as conn:
        tls_files = server_tls_files(conn, settings, platform.keystore, files, now=now)
    crl_next = x509.load_pem_x509_crl(files.crl.read_bytes()).next_update_utc if files.crl.exists() else None
    if crl_next is None or crl_next - now < RENEW_BEFORE:
        renew_crl(platform.engine, settings, platform.keystore, now=now)

    def renew() -> None:
        renew_crl(platform.engine, settings, platform.keystore, now=platform.now())

    contexts = ServerContexts(tls_files, settings.tls.client_auth, renew_crl=renew, clock=platform.now)
    return ServerTls(contexts, files.cert, settings.tls.handshake_timeout_s, platform.engine, platform.now)


def authenticate_certificate(platform: Platform, certificate_pem: str, *, method: str, path: str) -> RequestScope:
    """The scope of a request authenticated by a client certificate the TLS handshake verified.

    The registry is checked on every request (issued by this CA as a client certificate, not
    revoked, in its validity window), which also covers kept-alive connections opened before a
    revocation; then the certificate must be registered to a system client (``identity``). Every
    outcome is audited; refusals raise ``api.bad-certificate`` and Unauthenticated.
    """
    now = platform.now()
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
    except ValueError:
        certificate = None
    digest = fingerprint(certificate) if certificate is not None else "malformed"
    common_name = _common_name(certificate)
    details: dict[str, str | int | float | bool | None] = {
        "method": method[:16],
        "path": "".join(ch if ch.isprintable() else "?" for ch in path[:200]),
        "fingerprint": digest,
    }
    with platform.engine.connect() as conn:
        found = None if certificate is None else find_certificate(conn, fingerprint=digest)
        problem = _problem(found, now)
        if problem is not None:
            events.raise_event(conn, "api.bad-certificate", now=now, details={**details, "reason": problem})
            conn.commit()
            raise Unauthenticated(f"the client certificate is refused: {problem}")
        assert found is not None
        try:
            principal = identity.principal_for_certificate(conn, common_name, digest, now=now)
        except Unauthenticated:
            conn.commit()  # the refusal was audited in conn
            raise
        entry = audit.AuditEntry(
            principal.actor, "auth.certificate", "ok", resource=f"certificate:{found.serial}", details=details
        )
        audit.record(conn, entry, now=now)
        conn.commit()
    return principal.scope()


def _common_name(certificate: x509.Certificate | None) -> str:
    if certificate is None:
        return ""
    attributes = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attributes[0].value) if attributes else ""


def _problem(found: CertificateRecord | None, now: datetime) -> str | None:
    if found is None:
        return "not issued by this CA"
    if found.profile is not Profile.CLIENT:
        return f"a {found.profile.value} certificate, not a client certificate"
    status = found.status(now)
    return None if status == "valid" else status
