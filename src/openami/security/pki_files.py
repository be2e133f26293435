"""Files of the PKI: private files created 0600 without following links or overwriting, atomic
replacement of public ones, output paths that cannot leave their directory, and passphrases kept
wrapped under the platform's master key.

Private keys on disk are PKCS#8 PEM encrypted with ``BestAvailableEncryption`` under a random
32-byte passphrase; the passphrase is stored next to the key, wrapped (AES-256-GCM) by the
``MasterKeyProvider`` with associated data naming what it protects. Reading a key therefore needs
both the file and the master key (or the HSM/Vault behind the provider).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import stat
from pathlib import Path

from openami.errors import Conflict, InvalidInput, OpenAmiError
from openami.security.keystore import MasterKeyProvider

__all__ = [
    "PkiFileError",
    "create_private_file",
    "ensure_private_dir",
    "output_path",
    "read_private_file",
    "read_wrapped_passphrase",
    "replace_public_file",
    "write_wrapped_passphrase",
]

_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_WRAPPED_FORMAT = "openami-wrapped-passphrase"


class PkiFileError(OpenAmiError):
    """A PKI file is missing, unsafe (readable by others, a link) or malformed."""

    code = "pki-file"
    http_status = 500


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700 if absent; refuse a link or a non-directory."""
    if path.is_symlink():
        raise PkiFileError(f"{path} is a symbolic link; refusing to use it")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.is_dir():
        raise PkiFileError(f"{path} is not a directory")


def output_path(directory: Path, file_name: str) -> Path:
    """``directory / file_name``, refusing any name that could leave the directory.

    The name must be a plain file name (letters, digits, ``.``, ``_``, ``-``; no separators, no
    leading dot, no ``..``); the directory is created 0700 if absent. Raises InvalidInput.
    """
    if not _FILE_NAME.fullmatch(file_name) or ".." in file_name:
        raise InvalidInput(f"{file_name!r} is not a plain file name (path separators and '..' are refused)")
    if directory.exists() and not directory.is_dir():
        raise InvalidInput(f"{directory} is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise InvalidInput(f"cannot create {directory}: {exc.strerror}") from None
    target = directory.resolve() / file_name
    if target.parent != directory.resolve():  # belt and braces: the name was checked above
        raise InvalidInput(f"{file_name!r} would be written outside {directory}")
    return target


def create_private_file(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write a new file with ``mode``; never overwrites, never follows a link (Conflict if it exists)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise Conflict(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise PkiFileError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed or, for 0644, we want exactly this
        os.write(fd, data)
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise PkiFileError(f"cannot write {path}: {exc.strerror}") from None
    os.close(fd)


def replace_public_file(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` atomically (write a sibling, fsync, rename): readers see the old or the new
    content, never a mix; a reader watching the file sees a new inode."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    create_private_file(temporary, data, mode=mode)
    try:
        temporary.replace(path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise PkiFileError(f"cannot replace {path}: {exc.strerror}") from None


def read_private_file(path: Path, *, max_bytes: int = 1 << 20) -> bytes:
    """Read a file that only its owner may access (PkiFileError otherwise, or if it is a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise PkiFileError(f"{path} does not exist") from None
    except OSError as exc:
        raise PkiFileError(f"{path} cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PkiFileError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise PkiFileError(
                f"{path} is accessible by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"refusing to use it: run `chmod 600 {path}`"
            )
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise PkiFileError(f"{path} is larger than {max_bytes} bytes")
    return data


def _aad(purpose: str) -> bytes:
    return b"openami/pki/key-passphrase/v1\x00" + purpose.encode("utf-8")


def write_wrapped_passphrase(path: Path, keystore: MasterKeyProvider, purpose: str) -> bytes:
    """Create a random passphrase, store it wrapped under the master key (0600), return it."""
    passphrase = base64.urlsafe_b64encode(secrets.token_bytes(32))
    document = {
        "format": _WRAPPED_FORMAT,
        "version": 1,
        "purpose": purpose,
        "kek_id": keystore.key_id,
        "wrapped": base64.b64encode(keystore.wrap(passphrase, _aad(purpose))).decode("ascii"),
    }
    create_private_file(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    return passphrase


def read_wrapped_passphrase(path: Path, keystore: MasterKeyProvider, purpose: str) -> bytes:
    """Unwrap a passphrase stored by ``write_wrapped_passphrase`` for the same ``purpose``.

    Raises PkiFileError if the file is unsafe or malformed or was wrapped under another master key;
    KeyIntegrityError (from the keystore) if it was tampered with or moved to another purpose.
    """
    try:
        document = json.loads(read_private_file(path, max_bytes=4096))
        wrapped = base64.b64decode(document["wrapped"], validate=True)
        kek_id = str(document["kek_id"])
        valid = document.get("format") == _WRAPPED_FORMAT and document.get("purpose") == purpose
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise PkiFileError(f"{path} is not a wrapped passphrase file") from None
    if not valid:
        raise PkiFileError(f"{path} does not hold the {purpose} passphrase")
    if kek_id != keystore.key_id:
        raise PkiFileError(f"{path} is wrapped under master key {kek_id}, not the configured {keystore.key_id}")
    return keystore.unwrap(wrapped, _aad(purpose))
