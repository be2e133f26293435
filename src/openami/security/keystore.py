"""Meter keys at rest: envelope encryption under a master key.

Every meter key (the DLMS global unicast encryption key ``guek`` and authentication key ``gak``) is
stored wrapped with AES-256-GCM under the platform's master key (key-encryption key, KEK). The
associated data binds a blob to its meter id, key kind and key version, so a blob copied to another
meter, swapped between kinds or rolled back to an older version fails to decrypt.

The master key comes from a ``MasterKeyProvider``: ``FileMasterKey`` (32 random bytes in a 0600 file
created on first run; a file readable by group or others is refused) or ``StaticMasterKey`` (from
settings). An HSM (PKCS#11) or Vault transit provider only has to implement the same three members;
the master key then never enters this process.

Key material never appears in reprs, logs or exception messages: ``MeterKeys`` prints ``***``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.engine import Connection

from openami.db.tables import meter_keys as mk
from openami.errors import NotFound, OpenAmiError

if TYPE_CHECKING:
    from openami.settings import Settings

__all__ = [
    "FileMasterKey",
    "KeyIntegrityError",
    "MasterKeyError",
    "MasterKeyProvider",
    "MeterKeys",
    "StaticMasterKey",
    "load_meter_keys",
    "master_key_provider",
    "store_meter_keys",
]

MASTER_KEY_BYTES = 32
_FORMAT = b"\x01"  # blob = format byte || 12-byte nonce || ciphertext || 16-byte tag
_NONCE_BYTES = 12
_KINDS = ("guek", "gak")


class MasterKeyError(OpenAmiError):
    """The master key is missing, malformed or stored unsafely."""

    code = "master-key"
    http_status = 500


class KeyIntegrityError(OpenAmiError):
    """A wrapped key failed to decrypt: wrong master key, or the blob was moved or tampered with."""

    code = "key-integrity"
    http_status = 500


@runtime_checkable
class MasterKeyProvider(Protocol):
    """Wraps and unwraps small secrets under a master key it may never reveal."""

    @property
    def key_id(self) -> str:
        """A stable, non-secret identifier of the master key (stored next to every blob)."""
        ...

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes: ...

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        """Raises KeyIntegrityError when the blob or its associated data is not authentic."""
        ...


class StaticMasterKey:
    """AES-256-GCM under a master key held in memory."""

    __slots__ = ("_aead", "_key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != MASTER_KEY_BYTES:
            raise MasterKeyError(f"a master key is {MASTER_KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self._key_id = hashlib.sha256(b"openami-kek-id\x00" + key).hexdigest()[:16]

    @property
    def key_id(self) -> str:
        return self._key_id

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _FORMAT + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _FORMAT:
            raise KeyIntegrityError("wrapped key has an unknown format")
        try:
            return self._aead.decrypt(blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :], aad)
        except InvalidTag:
            raise KeyIntegrityError("wrapped key failed authentication") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key_id={self._key_id!r}, key=***)"


class FileMasterKey(StaticMasterKey):
    """The master key from a file of 32 raw bytes that only its owner may read."""

    __slots__ = ("path",)

    def __init__(self, key: bytes, path: Path) -> None:
        super().__init__(key)
        self.path = path

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> FileMasterKey:
        """Read the key file, creating it (mode 0600, 32 bytes from ``secrets``) if absent and ``create``.

        Raises MasterKeyError if the file is missing (and not to be created), is not a regular file,
        is accessible by group or others, or does not hold exactly 32 bytes.
        """
        if create and not path.exists():
            _create_key_file(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise MasterKeyError(f"master key file {path} does not exist") from None
        except OSError as error:
            raise MasterKeyError(f"master key file {path} cannot be opened: {error.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise MasterKeyError(f"master key file {path} is not a regular file")
            if info.st_mode & 0o077:
                raise MasterKeyError(
                    f"master key file {path} is accessible by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                    f"refusing to use it: run `chmod 600 {path}`"
                )
            key = os.read(fd, MASTER_KEY_BYTES + 1)
        finally:
            os.close(fd)
        if len(key) != MASTER_KEY_BYTES:
            raise MasterKeyError(f"master key file {path} must hold exactly {MASTER_KEY_BYTES} bytes")
        return cls(key, path)


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return  # another process created it first: read theirs
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secrets.token_bytes(MASTER_KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)


def master_key_provider(settings: Settings) -> MasterKeyProvider:
    """The provider the settings ask for: ``master_key`` if set (32 raw bytes, 64 hex digits or
    base64 of 32 bytes), else the file ``resolved_master_key_file`` (created on first run)."""
    if settings.master_key is not None:
        return StaticMasterKey(_decode_master_key(settings.master_key.get_secret_value()))
    return FileMasterKey.open(settings.resolved_master_key_file)


def _decode_master_key(raw: bytes) -> bytes:
    if len(raw) == MASTER_KEY_BYTES:
        return raw
    text = raw.strip()
    try:
        if len(text) == 2 * MASTER_KEY_BYTES:
            return binascii.unhexlify(text)
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError("the configured master key is neither 32 bytes, 64 hex digits nor base64") from None
    if len(decoded) != MASTER_KEY_BYTES:
        raise MasterKeyError("the configured master key does not decode to 32 bytes")
    return decoded


@dataclass(frozen=True, slots=True)
class MeterKeys:
    """A meter's DLMS keys (16 bytes for Security Suite 0/1, 32 for suite 2). Prints as ``***``."""

    guek: bytes = field(repr=False)
    gak: bytes = field(repr=False)

    def __post_init__(self) -> None:
        for kind in _KINDS:
            if len(getattr(self, kind)) not in (16, 32):
                raise ValueError(f"{kind} must be 16 or 32 bytes")

    @classmethod
    def from_hex(cls, guek: str, gak: str) -> MeterKeys:
        """From the hex strings of a commissioning file; the message of a failure holds no key."""
        try:
            return cls(bytes.fromhex(guek), bytes.fromhex(gak))
        except (ValueError, TypeError):
            raise ValueError("meter keys must be 32 or 64 hex digits each") from None

    def __repr__(self) -> str:
        return "MeterKeys(guek=***, gak=***)"

    __str__ = __repr__


def _aad(meter_id: int, kind: str, version: int) -> bytes:
    return (
        b"openami/meter-key/v1\x00"
        + meter_id.to_bytes(8, "big")
        + kind.encode("ascii")
        + b"\x00"
        + version.to_bytes(4, "big")
    )


def store_meter_keys(
    conn: Connection, keystore: MasterKeyProvider, meter_id: int, keys: MeterKeys, *, now: datetime
) -> None:
    """Store the meter's keys, wrapped; a key equal to the stored one is left as it is (idempotent import),
    a different one becomes the next key version (the old version stays, wrapped, for audit)."""
    for kind in _KINDS:
        key: bytes = getattr(keys, kind)
        latest = _latest(conn, meter_id, kind)
        if latest is not None:
            version, kek_id, blob = latest
            if kek_id == keystore.key_id and hmac.compare_digest(
                keystore.unwrap(blob, _aad(meter_id, kind, version)), key
            ):
                continue
        version = 1 if latest is None else latest[0] + 1
        conn.execute(
            sa.insert(mk).values(
                meter_id=meter_id,
                key_kind=kind,
                key_version=version,
                kek_id=keystore.key_id,
                wrapped=keystore.wrap(key, _aad(meter_id, kind, version)),
                created_at=now,
            )
        )


def load_meter_keys(conn: Connection, keystore: MasterKeyProvider, meter_id: int) -> MeterKeys:
    """The meter's current keys. Raises NotFound if none are stored and KeyIntegrityError if they do
    not decrypt under this master key (wrong master key, or a blob moved from another meter)."""
    found: dict[str, bytes] = {}
    for kind in _KINDS:
        latest = _latest(conn, meter_id, kind)
        if latest is None:
            raise NotFound(f"no {kind} stored for meter {meter_id}")
        version, kek_id, blob = latest
        if kek_id != keystore.key_id:
            raise KeyIntegrityError(
                f"the {kind} of meter {meter_id} is wrapped under master key {kek_id}, not {keystore.key_id}"
            )
        try:
            found[kind] = keystore.unwrap(blob, _aad(meter_id, kind, version))
        except KeyIntegrityError:
            raise KeyIntegrityError(f"the stored {kind} of meter {meter_id} failed authentication") from None
    return MeterKeys(guek=found["guek"], gak=found["gak"])


def _latest(conn: Connection, meter_id: int, kind: str) -> tuple[int, str, bytes] | None:
    row = conn.execute(
        sa.select(mk.c.key_version, mk.c.kek_id, mk.c.wrapped)
        .where(mk.c.meter_id == meter_id, mk.c.key_kind == kind)
        .order_by(mk.c.key_version.desc())
        .limit(1)
    ).one_or_none()
    return None if row is None else (int(row[0]), str(row[1]), bytes(row[2]))
