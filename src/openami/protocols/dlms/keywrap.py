"""Key transfer to a meter: AES key wrap (RFC 3394) and the Security Setup ``global_key_transfer`` parameter.

DLMS UA Blue Book, Security Setup (class 64), method 2 ``global_key_transfer(data)``::

    data ::= array key_data
    key_data ::= structure {
        key_id:      enum (0 global unicast encryption key, 1 global broadcast encryption key,
                           2 authentication key, 3 master key (KEK)),
        key_wrapped: octet-string   -- the new key, AES-wrapped (RFC 3394) under the master key
    }

Green Book (key transfer with the master key): every key is wrapped with the server's master key (KEK);
the server unwraps them all, and a new key takes effect for the NEXT association (the current one
still answers with the keys it was established with). A new key starts a new invocation counter
space. Messages here never carry key material, wrapped or not.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from openami.protocols.dlms.axdr import Array, Data, Enum, Structure
from openami.protocols.dlms.errors import DecodeError, SecurityError

__all__ = [
    "GLOBAL_KEY_TRANSFER",
    "KeyData",
    "KeyId",
    "KeyUnwrapError",
    "decode_key_transfer",
    "encode_key_transfer",
    "unwrap_key",
    "unwrap_keys",
    "wrap_key",
]

GLOBAL_KEY_TRANSFER = 2
"""Security Setup method id of ``global_key_transfer``."""
_KEY_SIZES = (16, 24, 32)  # AES-128/192/256 (Suite 0 uses 16-byte keys and a 16-byte KEK)


class KeyUnwrapError(SecurityError):
    """A wrapped key does not unwrap under this master key: wrong KEK or altered bytes."""


class KeyId(enum.IntEnum):
    """key_id of ``key_data`` (Blue Book, Security Setup class 64, method 2)."""

    GLOBAL_UNICAST_ENCRYPTION = 0
    GLOBAL_BROADCAST_ENCRYPTION = 1
    AUTHENTICATION = 2
    MASTER = 3


@dataclass(frozen=True, slots=True)
class KeyData:
    """One element of the transfer: which key, and its RFC 3394 wrap (never shown in repr)."""

    key_id: KeyId
    wrapped: bytes = field(repr=False)


def _check_kek(kek: bytes) -> None:
    if len(kek) not in _KEY_SIZES:
        raise SecurityError("a master key (KEK) must be 16, 24 or 32 bytes")  # the length only


def wrap_key(kek: bytes, key: bytes) -> bytes:
    """RFC 3394 AES key wrap of ``key`` (16, 24 or 32 bytes) under ``kek``; 8 bytes longer than the key."""
    _check_kek(kek)
    if len(key) not in _KEY_SIZES:
        raise SecurityError("a wrapped key must be 16, 24 or 32 bytes")
    return aes_key_wrap(kek, key)


def unwrap_key(kek: bytes, wrapped: bytes) -> bytes:
    """RFC 3394 AES key unwrap; KeyUnwrapError when the integrity check fails or the size is wrong."""
    _check_kek(kek)
    if len(wrapped) - 8 not in _KEY_SIZES:
        raise KeyUnwrapError("a wrapped key must be 24, 32 or 40 bytes")
    try:
        return aes_key_unwrap(kek, wrapped)
    except InvalidUnwrap:
        raise KeyUnwrapError("the wrapped key failed the RFC 3394 integrity check") from None


def encode_key_transfer(kek: bytes, keys: Iterable[tuple[KeyId, bytes]]) -> Array:
    """The ``global_key_transfer`` parameter: each key wrapped under ``kek``, in the order given.

    A key id may appear once; an empty transfer is refused (SecurityError, naming no key).
    """
    items: list[Data] = []
    seen: set[KeyId] = set()
    for key_id, key in keys:
        if key_id in seen:
            raise SecurityError(f"key id {int(key_id)} given twice")
        seen.add(key_id)
        items.append(Structure((Enum(int(key_id)), wrap_key(kek, key))))
    if not items:
        raise SecurityError("a key transfer needs at least one key")
    return Array(items)


def decode_key_transfer(parameter: Data) -> tuple[KeyData, ...]:
    """The key_data items of a ``global_key_transfer`` parameter (not yet unwrapped).

    Raises DecodeError (offset = index of the offending item) for anything but a non-empty array of
    {enum key_id 0-3, octet-string} structures with distinct key ids.
    """
    if not isinstance(parameter, list) or not parameter:
        raise DecodeError("global_key_transfer takes a non-empty array", offset=0, expected="array of key_data")
    found: list[KeyData] = []
    for index, item in enumerate(parameter):
        if not isinstance(item, tuple) or len(item) != 2:
            raise DecodeError("key_data is a structure of two elements", offset=index, expected="structure")
        key_id, wrapped = item
        if not isinstance(key_id, Enum) or not KeyId.GLOBAL_UNICAST_ENCRYPTION <= key_id <= KeyId.MASTER:
            raise DecodeError("key_id must be an enum 0-3", offset=index, expected="enum key_id")
        if not isinstance(wrapped, bytes):
            raise DecodeError("key_wrapped must be an octet-string", offset=index, expected="octet-string")
        kind = KeyId(int(key_id))
        if any(k.key_id is kind for k in found):
            raise DecodeError("a key id appears twice", offset=index, expected="distinct key ids")
        found.append(KeyData(kind, wrapped))
    return tuple(found)


def unwrap_keys(kek: bytes, items: Sequence[KeyData]) -> dict[KeyId, bytes]:
    """Unwrap every item under ``kek``: all or nothing (KeyUnwrapError on the first that fails)."""
    return {item.key_id: unwrap_key(kek, item.wrapped) for item in items}
