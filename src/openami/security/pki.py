"""The utility certificate authority (ECDSA P-256, SHA-256): create it, issue certificates, revoke
them and publish CRLs (docs/security.md "PKI and TLS"; the registry is ``pki_registry``).

One tier: a self-signed root (CA:true, pathLen 0, keyCertSign + cRLSign) signs end-entity
certificates directly. A utility wanting an offline root can later make this CA an issuing
intermediate under it; nothing here depends on being the root except ``init_ca``.

The CA directory (0700) holds ``ca.crt.pem`` (public: clients and servers trust it),
``ca.key.pem`` (PKCS#8, encrypted under a random passphrase), ``ca.key.pass`` (that passphrase
wrapped by the master key, see ``pki_files``) and ``crl.pem`` (the newest CRL, replaced atomically
on every revocation). Private keys of issued certificates are returned once and never stored.

Profiles: ``server`` (serverAuth, DNS/IP SANs), ``client`` (clientAuth, CN = the client's name),
``command-authority`` (digitalSignature only, with openami's own EKU, so that TLS refuses it: it
signs switch commands). Serial numbers are 159 bits from ``os.urandom``. Every issuance and
revocation is audited in the caller's transaction.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from sqlalchemy.engine import Connection

from openami.db.tables import pki_crls as crls
from openami.errors import Conflict, InvalidInput, NotFound
from openami.security.keystore import MasterKeyProvider
from openami.security.pki_files import (
    PkiFileError,
    create_private_file,
    ensure_private_dir,
    read_private_file,
    read_wrapped_passphrase,
    replace_public_file,
    write_wrapped_passphrase,
)
from openami.security.pki_registry import (
    CertificateRecord,
    Profile,
    RevocationReason,
    mark_revoked,
    register,
    revoked_entries,
)

__all__ = [
    "COMMAND_SIGNING_EKU",
    "CRL_LIFETIME",
    "CaFiles",
    "CertificateAuthority",
    "CertificateRequest",
    "IssuedCertificate",
    "init_ca",
    "is_dns_name",
    "issue_certificate",
    "load_ca",
    "publish_crl",
    "revoke_certificate",
]

CRL_LIFETIME = timedelta(days=7)
BACKDATE = timedelta(minutes=5)  # not_before slightly in the past: tolerates clock skew between hosts
COMMAND_SIGNING_EKU = ObjectIdentifier("2.25.143616380452834236457113040389311069921")  # UUID arc: openami
DEFAULT_DAYS = {Profile.CA: 3650, Profile.SERVER: 397, Profile.CLIENT: 365, Profile.COMMAND_AUTHORITY: 730}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DNS_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_CA_KEY_PURPOSE = "ca-key"
_EKU = {
    Profile.SERVER: ExtendedKeyUsageOID.SERVER_AUTH,
    Profile.CLIENT: ExtendedKeyUsageOID.CLIENT_AUTH,
    Profile.COMMAND_AUTHORITY: COMMAND_SIGNING_EKU,
}


@dataclass(frozen=True, slots=True)
class CaFiles:
    """Where the CA keeps its files."""

    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "ca.crt.pem"

    @property
    def key(self) -> Path:
        return self.directory / "ca.key.pem"

    @property
    def passphrase(self) -> Path:
        return self.directory / "ca.key.pass"

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"

    def exists(self) -> bool:
        return any(p.exists() or p.is_symlink() for p in (self.cert, self.key, self.passphrase))


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A loaded CA: its certificate and private key (in memory only; never printed)."""

    files: CaFiles
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    """What to issue: ``common_name`` is 1-64 of letters, digits, ``.``, ``_``, ``-`` (a client's
    name); a server certificate needs at least one DNS name or IP address. ``valid_days`` defaults
    per profile (``DEFAULT_DAYS``); validity never extends beyond the CA's own."""

    profile: Profile
    common_name: str
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    valid_days: int | None = None


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A new certificate and its private key, to hand to the requester once."""

    record: CertificateRecord
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def private_key_pem(self, passphrase: bytes | None = None) -> bytes:
        """PKCS#8 PEM, encrypted if a passphrase is given; write it 0600 (``create_private_file``)."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        return self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def init_ca(
    conn: Connection,
    files: CaFiles,
    keystore: MasterKeyProvider,
    *,
    now: datetime,
    actor: str,
    common_name: str = "openami utility CA",
) -> CertificateAuthority:
    """Create the CA (key, self-signed certificate, first CRL) in ``files.directory``.

    Raises Conflict if a CA is already there: a CA is never overwritten. The files are written
    before the registry row; if the caller's transaction then fails, the files stay and the next
    ``init_ca`` refuses: remove them by hand after checking that nothing was issued.
    """
    if files.exists():
        raise Conflict(f"a CA already exists in {files.directory}; refusing to overwrite it")
    ensure_private_dir(files.directory)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        _builder(name, name, key.public_key(), now, DEFAULT_DAYS[Profile.CA])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    passphrase = write_wrapped_passphrase(files.passphrase, keystore, _CA_KEY_PURPOSE)
    pkcs8 = serialization.PrivateFormat.PKCS8
    encrypted = key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.BestAvailableEncryption(passphrase))
    create_private_file(files.key, encrypted)
    create_private_file(files.cert, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    ca = CertificateAuthority(files, certificate, key)
    register(conn, certificate, Profile.CA, now=now, actor=actor)
    publish_crl(conn, ca, now=now)
    return ca


def load_ca(files: CaFiles, keystore: MasterKeyProvider) -> CertificateAuthority:
    """Read the CA; its key decrypts only with the passphrase the master key unwraps.

    Raises NotFound if there is no CA, PkiFileError if a file is unsafe, malformed or does not
    match, KeyIntegrityError if the wrapped passphrase was tampered with.
    """
    if not files.cert.exists():
        raise NotFound(f"no CA in {files.directory}: run `openami pki init`")
    passphrase = read_wrapped_passphrase(files.passphrase, keystore, _CA_KEY_PURPOSE)
    try:
        key = serialization.load_pem_private_key(read_private_file(files.key), password=passphrase)
        certificate = x509.load_pem_x509_certificate(files.cert.read_bytes())
    except (ValueError, TypeError):
        raise PkiFileError(f"the CA files in {files.directory} are malformed or do not decrypt") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != certificate.public_key():
        raise PkiFileError(f"the CA key in {files.directory} does not match its certificate")
    return CertificateAuthority(files, certificate, key)


def issue_certificate(
    conn: Connection, ca: CertificateAuthority, request: CertificateRequest, *, now: datetime, actor: str
) -> IssuedCertificate:
    """Sign a new key pair for ``request``, valid from ``now`` (minus 5 minutes); register and
    audit it. Raises InvalidInput for a bad name, address or validity."""
    if request.profile is Profile.CA:
        raise InvalidInput("the CA certificate is created by init_ca, not issued")
    if not _NAME.fullmatch(request.common_name):
        raise InvalidInput(f"{request.common_name[:80]!r} is not a valid name (1-64 letters, digits, '.', '_', '-')")
    sans = _subject_alt_names(request.dns_names, request.ip_addresses)
    if request.profile is Profile.SERVER and not sans:
        raise InvalidInput("a server certificate needs at least one DNS name or IP address")
    days = request.valid_days if request.valid_days is not None else DEFAULT_DAYS[request.profile]
    if not 1 <= days <= 3650:
        raise InvalidInput("validity must be between 1 and 3650 days")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, request.common_name)])
    builder = (
        _builder(subject, ca.certificate.subject, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([_EKU[request.profile]]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if _not_after(now, days) > ca.certificate.not_valid_after_utc:
        builder = builder.not_valid_after(ca.certificate.not_valid_after_utc)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    certificate = builder.sign(ca.key, hashes.SHA256())
    registered = register(conn, certificate, request.profile, now=now, actor=actor)
    return IssuedCertificate(registered, certificate, key)


def revoke_certificate(
    conn: Connection, ca: CertificateAuthority, serial: str, reason: RevocationReason, *, now: datetime, actor: str
) -> CertificateRecord:
    """Revoke (audited as ``pki.revoke``) and publish a new CRL, replacing ``crl.pem`` atomically.

    Raises NotFound (unknown serial), Conflict (already revoked), InvalidInput (the CA itself).
    """
    revoked = mark_revoked(conn, serial, reason, now=now, actor=actor)
    publish_crl(conn, ca, now=now)
    return revoked


def publish_crl(conn: Connection, ca: CertificateAuthority, *, now: datetime) -> x509.CertificateRevocationList:
    """Sign a CRL of every revoked certificate (next update after ``CRL_LIFETIME``), store it in
    ``pki_crls`` under the next CRL number, then replace ``crl.pem`` with it.

    The file is written after the row: two concurrent publishers collide on the CRL number and one
    fails before touching the file, so numbers never repeat and the file never goes backwards.
    """
    number = int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(crls.c.number), 0))).scalar_one()) + 1
    this_update = now.replace(microsecond=0)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(this_update)
        .next_update(this_update + CRL_LIFETIME)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    entries = revoked_entries(conn)
    for serial, revoked_at, reason in entries:
        entry = (
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at.replace(microsecond=0))
        )
        if reason is not RevocationReason.UNSPECIFIED:  # RFC 5280 5.3.1: absent rather than unspecified
            entry = entry.add_extension(x509.CRLReason(reason.flag), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(ca.key, hashes.SHA256())
    conn.execute(
        sa.insert(crls).values(
            number=number,
            this_update=this_update,
            next_update=this_update + CRL_LIFETIME,
            revoked_count=len(entries),
            der=crl.public_bytes(serialization.Encoding.DER),
        )
    )
    replace_public_file(ca.files.crl, crl.public_bytes(serialization.Encoding.PEM))
    return crl


def _not_after(now: datetime, days: int) -> datetime:
    return now.replace(microsecond=0) + timedelta(days=days)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: datetime, days: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now.replace(microsecond=0) - BACKDATE)
        .not_valid_after(_not_after(now, days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def is_dns_name(name: str) -> bool:
    """A host name a DNSName SAN may hold (RFC 1123 labels; no wildcards)."""
    return _DNS_NAME.fullmatch(name) is not None


def _subject_alt_names(dns_names: tuple[str, ...], ip_addresses: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for dns in dns_names:
        if not is_dns_name(dns):
            raise InvalidInput(f"{dns[:80]!r} is not a DNS name")
        names.append(x509.DNSName(dns.lower()))
    for text in ip_addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError:
            raise InvalidInput(f"{text[:80]!r} is not an IP address") from None
    return names
