"""The audit signing key: ECDSA P-256 that signs the chain's checkpoints.

``AuditSigner`` is the interface (an HSM can implement it later: the private key then never enters
this process). ``EcdsaAuditSigner`` holds the key in memory; it comes from a PEM file of mode 0600
created on first use (``load_or_create_signer``) or from a PEM given in settings. A verifier only
needs the public key (``public_key_pem`` / ``load_public_key``), which can be published.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from openami.errors import OpenAmiError

if TYPE_CHECKING:
    from openami.settings import Settings

__all__ = [
    "AuditKeyError",
    "AuditSigner",
    "EcdsaAuditSigner",
    "audit_signer",
    "key_id_of",
    "load_or_create_signer",
    "load_public_key",
    "public_key_pem",
    "verify_signature",
]

_MAX_PEM_BYTES = 16_384


class AuditKeyError(OpenAmiError):
    """The audit signing key is missing, malformed or stored unsafely."""

    code = "audit-key"
    http_status = 500


@runtime_checkable
class AuditSigner(Protocol):
    """Signs checkpoint messages with a key it need not reveal."""

    @property
    def key_id(self) -> str:
        """SHA-256 (hex) of the public key's SubjectPublicKeyInfo DER; stored with each checkpoint."""
        ...

    def public_key(self) -> ec.EllipticCurvePublicKey: ...

    def sign(self, message: bytes) -> bytes:
        """ECDSA P-256 with SHA-256, DER-encoded signature."""
        ...


def key_id_of(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


class EcdsaAuditSigner:
    """An in-memory ECDSA P-256 key. Prints without the key."""

    __slots__ = ("_key", "_key_id")

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise AuditKeyError("the audit signing key must be an ECDSA P-256 key")
        self._key = key
        self._key_id = key_id_of(key.public_key())

    @classmethod
    def generate(cls) -> EcdsaAuditSigner:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, pem: bytes) -> EcdsaAuditSigner:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise AuditKeyError("the audit signing key is not an unencrypted PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise AuditKeyError("the audit signing key must be an ECDSA P-256 key")
        return cls(key)

    @property
    def key_id(self) -> str:
        return self._key_id

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))

    def private_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key_id={self._key_id[:16]!r}, key=***)"


def public_key_pem(signer: AuditSigner) -> bytes:
    return signer.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from PEM; raises AuditKeyError for anything else."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise AuditKeyError("not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise AuditKeyError("the audit verification key must be an ECDSA P-256 public key")
    return key


def verify_signature(public_key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def load_or_create_signer(path: Path, *, create: bool = True) -> EcdsaAuditSigner:
    """The signer from a PEM file that only its owner may read, generated (mode 0600) if absent.

    Raises AuditKeyError if the file is missing (and not to be created), not a regular file,
    accessible by group or others, or not a P-256 private key.
    """
    if create and not path.exists():
        _create_key_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise AuditKeyError(f"audit signing key file {path} does not exist") from None
    except OSError as error:
        raise AuditKeyError(f"audit signing key file {path} cannot be opened: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise AuditKeyError(f"audit signing key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise AuditKeyError(
                f"audit signing key file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); refusing to use it: run `chmod 600 {path}`"
            )
        pem = os.read(fd, _MAX_PEM_BYTES)
    finally:
        os.close(fd)
    return EcdsaAuditSigner.from_pem(pem)


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = EcdsaAuditSigner.generate().private_pem()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return  # another process created it first: use theirs
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)


def audit_signer(settings: Settings) -> EcdsaAuditSigner:
    """The signer the settings ask for: ``audit.signing_key`` (PEM) if set, else the key file."""
    if settings.audit.signing_key is not None:
        return EcdsaAuditSigner.from_pem(settings.audit.signing_key.get_secret_value().encode("ascii"))
    return load_or_create_signer(settings.audit.signing_key_file or settings.data_dir / "audit-signing-key.pem")
