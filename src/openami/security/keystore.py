"""Meter keys at rest: envelope encryption under a master key.

Every meter key (the DLMS global unicast encryption key ``guek``, authentication key ``gak`` and
the meter's own master key ``kek`` that new keys are wrapped under for key transfer) is stored
wrapped with AES-256-GCM under the platform's master key. The associated data binds a blob to its
meter id, key kind and key version, so a blob copied to another meter, swapped between kinds or
rolled back to an older version fails to decrypt.

Key versions per (meter, kind) have a state: "active" (the one in use, one at most), "pending"
(generated for a rotation, not yet proven in the meter: ``security.keys``) and "retired". A new
active GUEK version starts a new invocation counter space (``db.counters.switch_key_version``).

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.engine import Connection

from openami.db import counters as counter_repo
from openami.db.tables import meter_keys as mk
from openami.errors import NotFound, OpenAmiError

if TYPE_CHECKING:
    from openami.settings import Settings

__all__ = [
    "ACTIVE",
    "PENDING",
    "RETIRED",
    "FileMasterKey",
    "KeyIntegrityError",
    "MasterKeyError",
    "MasterKeyProvider",
    "MeterKeys",
    "StaticMasterKey",
    "active_version",
    "load_key_version",
    "load_meter_keys",
    "master_key_provider",
    "set_key_state",
    "store_key_version",
    "store_meter_keys",
]

MASTER_KEY_BYTES = 32
_FORMAT = b"\x01"  # blob = format byte || 12-byte nonce || ciphertext || 16-byte tag
_NONCE_BYTES = 12
_KINDS = ("guek", "gak", "kek")
_IN_CHUNK = 5000
ACTIVE, PENDING, RETIRED = "active", "pending", "retired"


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
    """A meter's DLMS keys (16 bytes for Security Suite 0/1, 32 for suite 2). Prints as ``***``.

    ``kek`` is the meter's master key for key transfer; None for meters commissioned without one.
    """

    guek: bytes = field(repr=False)
    gak: bytes = field(repr=False)
    kek: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for kind in _KINDS:
            key = getattr(self, kind)
            if key is not None and len(key) not in (16, 32):
                raise ValueError(f"{kind} must be 16 or 32 bytes")

    @classmethod
    def from_hex(cls, guek: str, gak: str, kek: str | None = None) -> MeterKeys:
        """From the hex strings of a commissioning file; the message of a failure holds no key."""
        try:
            return cls(bytes.fromhex(guek), bytes.fromhex(gak), None if kek is None else bytes.fromhex(kek))
        except (ValueError, TypeError):
            raise ValueError("meter keys must be 32 or 64 hex digits each") from None

    def __repr__(self) -> str:
        return "MeterKeys(guek=***, gak=***)" if self.kek is None else "MeterKeys(guek=***, gak=***, kek=***)"

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
) -> bool:
    """Store the meter's keys as its active ones, wrapped (a commissioning import says what the meter holds).

    A key equal to the active one is left as it is (idempotent import); a different one becomes the
    next key version, active, and the previous active version is retired (kept, wrapped, for audit).
    A new GUEK moves the meter's invocation counters to its new counter space. Returns True when the
    GUEK or GAK changed (the caller cancels a rotation in progress: the import supersedes it).
    """
    changed = False
    for kind in _KINDS:
        key: bytes | None = getattr(keys, kind)
        if key is None:
            continue  # a file without a KEK leaves the stored one (if any) alone
        active = _version(conn, meter_id, kind, state=ACTIVE)
        if active is not None and _unwraps_to(conn, keystore, meter_id, kind, active, key):
            continue
        if active is not None:
            set_key_state(conn, meter_id, kind, active, RETIRED, now=now)
        version = store_key_version(conn, keystore, meter_id, kind, key, state=ACTIVE, now=now)
        if kind == "guek":
            counter_repo.switch_key_version(conn, meter_id, version, server_ic_last=None, now=now)
        changed = changed or kind != "kek"
    return changed


def store_first_keys(
    conn: Connection, keystore: MasterKeyProvider, keys: Mapping[int, MeterKeys], *, now: datetime
) -> set[int]:
    """Commission many meters at once: every meter in ``keys`` that has no stored key at all gets its
    keys as version 1, active, and its counters in that key's space, in a few statements. Returns the
    meters it stored; the others (keys stored before) are left for :func:`store_meter_keys`."""
    ids = list(keys)
    known: set[int] = set()
    for i in range(0, len(ids), _IN_CHUNK):  # PostgreSQL takes at most 65,535 parameters a statement
        chunk = ids[i : i + _IN_CHUNK]
        known.update(conn.execute(sa.select(mk.c.meter_id).where(mk.c.meter_id.in_(chunk)).distinct()).scalars())
    fresh = [m for m in keys if m not in known]
    rows = [
        {
            "meter_id": meter_id, "key_kind": kind, "key_version": 1, "kek_id": keystore.key_id,
            "wrapped": keystore.wrap(key, _aad(meter_id, kind, 1)), "created_at": now, "state": ACTIVE,
            "state_changed_at": now,
        }
        for meter_id in fresh
        for kind in _KINDS
        if (key := getattr(keys[meter_id], kind)) is not None
    ]  # fmt: skip
    if rows:
        conn.execute(sa.insert(mk), rows)
        counter_repo.switch_key_versions(conn, fresh, 1, now=now)
    return set(fresh)


def store_key_version(
    conn: Connection, keystore: MasterKeyProvider, meter_id: int, kind: str, key: bytes, *, state: str, now: datetime
) -> int:
    """Store ``key`` as the next version of (meter, kind) in ``state``; returns the version number."""
    if kind not in _KINDS or state not in (ACTIVE, PENDING, RETIRED):
        raise ValueError("unknown key kind or state")
    latest = conn.execute(
        sa.select(sa.func.max(mk.c.key_version)).where(mk.c.meter_id == meter_id, mk.c.key_kind == kind)
    ).scalar_one_or_none()
    version = 1 if latest is None else int(latest) + 1
    conn.execute(
        sa.insert(mk).values(
            meter_id=meter_id,
            key_kind=kind,
            key_version=version,
            kek_id=keystore.key_id,
            wrapped=keystore.wrap(key, _aad(meter_id, kind, version)),
            created_at=now,
            state=state,
            state_changed_at=now,
        )
    )
    return version


def set_key_state(
    conn: Connection, meter_id: int, kind: str, version: int, state: str, *, now: datetime, expected: str | None = None
) -> bool:
    """Move one key version to ``state`` (only from ``expected`` when given); True if a row changed."""
    stmt = sa.update(mk).where(mk.c.meter_id == meter_id, mk.c.key_kind == kind, mk.c.key_version == version)
    if expected is not None:
        stmt = stmt.where(mk.c.state == expected)
    return conn.execute(stmt.values(state=state, state_changed_at=now)).rowcount == 1


def load_key_version(conn: Connection, keystore: MasterKeyProvider, meter_id: int, kind: str, version: int) -> bytes:
    """One stored key version, unwrapped. NotFound / KeyIntegrityError as for :func:`load_meter_keys`."""
    row = conn.execute(
        sa.select(mk.c.kek_id, mk.c.wrapped).where(
            mk.c.meter_id == meter_id, mk.c.key_kind == kind, mk.c.key_version == version
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"no {kind} version {version} stored for meter {meter_id}")
    kek_id, blob = str(row[0]), bytes(row[1])
    if kek_id != keystore.key_id:
        raise KeyIntegrityError(
            f"the {kind} of meter {meter_id} is wrapped under master key {kek_id}, not {keystore.key_id}"
        )
    try:
        return keystore.unwrap(blob, _aad(meter_id, kind, version))
    except KeyIntegrityError:
        raise KeyIntegrityError(f"the stored {kind} of meter {meter_id} failed authentication") from None


def load_meter_keys(conn: Connection, keystore: MasterKeyProvider, meter_id: int) -> MeterKeys:
    """The meter's active keys (``kek`` None when none is stored). Raises NotFound if it has no active
    GUEK or GAK and KeyIntegrityError if they do not decrypt under this master key (wrong master key,
    or a blob moved from another meter)."""
    found: dict[str, bytes | None] = {}
    for kind in _KINDS:
        version = _version(conn, meter_id, kind, state=ACTIVE)
        if version is None:
            if kind == "kek":
                found[kind] = None
                continue
            raise NotFound(f"no {kind} stored for meter {meter_id}")
        found[kind] = load_key_version(conn, keystore, meter_id, kind, version)
    guek, gak = found["guek"], found["gak"]
    assert guek is not None
    assert gak is not None
    return MeterKeys(guek=guek, gak=gak, kek=found["kek"])


def load_active_keys(
    conn: Connection, keystore: MasterKeyProvider, meter_ids: Sequence[int]
) -> tuple[dict[int, tuple[MeterKeys, int]], dict[int, OpenAmiError]]:
    """:func:`load_meter_keys` for many meters in one query: ({meter: (keys, GUEK version)}, {meter:
    why its keys are unusable}). A meter whose keys are missing or do not decrypt is in the second map
    with the same NotFound / KeyIntegrityError the one-meter function raises, never in the first."""
    ids = list(meter_ids)
    newest: dict[int, dict[str, tuple[int, str, bytes]]] = {}
    for i in range(0, len(ids), _IN_CHUNK):  # PostgreSQL takes at most 65,535 parameters a statement
        rows = conn.execute(
            sa.select(mk.c.meter_id, mk.c.key_kind, mk.c.key_version, mk.c.kek_id, mk.c.wrapped)
            .where(mk.c.meter_id.in_(ids[i : i + _IN_CHUNK]), mk.c.state == ACTIVE)
            .order_by(mk.c.meter_id, mk.c.key_kind, mk.c.key_version)
        )
        for meter_id, kind, version, kek_id, blob in rows:  # ascending versions: the last one wins
            newest.setdefault(int(meter_id), {})[str(kind)] = (int(version), str(kek_id), bytes(blob))
    loaded: dict[int, tuple[MeterKeys, int]] = {}
    failed: dict[int, OpenAmiError] = {}
    for meter_id in meter_ids:
        try:
            loaded[meter_id] = _unwrap_active(keystore, meter_id, newest.get(meter_id, {}))
        except (NotFound, KeyIntegrityError) as exc:
            failed[meter_id] = exc
    return loaded, failed


def _unwrap_active(
    keystore: MasterKeyProvider, meter_id: int, stored: dict[str, tuple[int, str, bytes]]
) -> tuple[MeterKeys, int]:
    keys: dict[str, bytes | None] = {"kek": None}
    for kind in _KINDS:
        if kind not in stored:
            if kind == "kek":
                continue
            raise NotFound(f"no {kind} stored for meter {meter_id}")
        version, kek_id, blob = stored[kind]
        if kek_id != keystore.key_id:
            raise KeyIntegrityError(
                f"the {kind} of meter {meter_id} is wrapped under master key {kek_id}, not {keystore.key_id}"
            )
        try:
            keys[kind] = keystore.unwrap(blob, _aad(meter_id, kind, version))
        except KeyIntegrityError:
            raise KeyIntegrityError(f"the stored {kind} of meter {meter_id} failed authentication") from None
    guek, gak = keys["guek"], keys["gak"]
    assert guek is not None
    assert gak is not None
    return MeterKeys(guek=guek, gak=gak, kek=keys["kek"]), stored["guek"][0]


def active_version(conn: Connection, meter_id: int, kind: str) -> int | None:
    """The active version of (meter, kind), None if there is none."""
    return _version(conn, meter_id, kind, state=ACTIVE)


def _version(conn: Connection, meter_id: int, kind: str, *, state: str) -> int | None:
    version = conn.execute(
        sa.select(sa.func.max(mk.c.key_version)).where(
            mk.c.meter_id == meter_id, mk.c.key_kind == kind, mk.c.state == state
        )
    ).scalar_one_or_none()
    return None if version is None else int(version)


def _unwraps_to(
    conn: Connection, keystore: MasterKeyProvider, meter_id: int, kind: str, version: int, key: bytes
) -> bool:
    try:
        stored = load_key_version(conn, keystore, meter_id, kind, version)
    except KeyIntegrityError:
        return False  # under another master key: store the import anew
    return hmac.compare_digest(stored, key)
