"""The audit chain's canonical encoding, entry validation and checkpoint message (docs/security.md).

An entry's hash is ``SHA-256(prev_hash || canonical)`` where ``prev_hash`` is the previous entry's
32-byte hash (32 zero bytes before the first entry) and ``canonical`` is the UTF-8 encoding of the
JSON array

    [1, seq, at_us, actor, action, outcome, resource, subject, purpose, details]

with no whitespace (``,`` and ``:`` only), strings escaped as RFC 8785 (JCS) does (``"`` ``\\`` and
the control characters U+0000-U+001F only; ``\\b \\f \\n \\r \\t``, others as ``\\u00xx`` with
lower-case hex; every other character as itself in UTF-8), ``null`` for an absent resource, subject
or purpose, and integers in decimal. ``1`` is the format version; ``at_us`` is epoch microseconds
UTC. ``details`` is a JSON *string* holding the details' own canonical JSON text (an object with
keys sorted, the same compact form, floats written as Python's shortest round-trip ``repr``), exactly
as stored in the ``details`` column: a verifier never re-serialises details, so no two
implementations can disagree on how a float is written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping

__all__ = [
    "CANONICAL_ENCODER",
    "FORMAT_VERSION",
    "GENESIS_HASH",
    "OUTCOMES",
    "EntryFields",
    "canonical_details",
    "canonical_entry",
    "check_text",
    "checkpoint_message",
    "entry_hash",
    "is_secret_name",
]

FORMAT_VERSION = 1
GENESIS_HASH = bytes(32)
OUTCOMES = frozenset({"ok", "denied", "failed"})
MAX_DETAILS_BYTES = 8192
MAX_DETAIL_ITEMS = 64

CANONICAL_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_esc = json.encoder.encode_basestring  # JSON string with JCS escaping (the encoder's, ensure_ascii=False)
_DETAILS_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=True)
_CHECKPOINT_DOMAIN = b"openami-audit-checkpoint\x00v1\x00"
_DETAIL_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# A detail key is split into words ("api_key" -> api, key); a word below marks a secret, unless the
# key's last word says it is only metadata about one ("key_id", "token_name", "password_age").
_SECRET_WORDS = frozenset(
    {
        "password", "passwd", "pwd", "passphrase", "pin", "secret", "token", "key", "keys", "guek", "gak", "gbek",
        "kek", "dek", "credential", "credentials", "cookie", "session", "bearer", "authorization", "privkey",
        "apikey", "otp",
    }
)  # fmt: skip
_METADATA_WORDS = frozenset(
    {"id", "ids", "version", "versions", "kind", "kinds", "type", "name", "fingerprint", "count", "age", "expiry",
     "expires", "scope", "scopes", "length", "bits", "algorithm", "state", "status"}
)  # fmt: skip


def is_secret_name(name: str) -> bool:
    """True for a details key that names a secret (``password``, ``api_token``, ``guek`` ...)."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    if not words:
        return False
    if words[-1] in _METADATA_WORDS and len(words) > 1:
        return False
    return any(w in _SECRET_WORDS for w in words) or "password" in name.lower() or "secret" in name.lower()


@functools.lru_cache(maxsize=8192)
def check_text(value: str | None, field: str, *, max_length: int, required: bool = False) -> None:
    """Raise ValueError unless ``value`` is a short, printable string (or None when not required)."""
    if value is None:
        if required:
            raise ValueError(f"audit entry needs a {field}")
        return
    if not isinstance(value, str):
        raise TypeError(f"audit {field} must be a string, not {type(value).__name__}")
    if not value or len(value) > max_length:
        raise ValueError(f"audit {field} must be 1 to {max_length} characters")
    if _CONTROL.search(value):
        raise ValueError(f"audit {field} contains control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"audit {field} is not valid Unicode text") from None


@functools.lru_cache(maxsize=4096)
def _key_problem(key: str) -> str | None:
    """Why ``key`` may not name a details item, or None (cached: the same few keys recur)."""
    if not _DETAIL_KEY.fullmatch(key):
        return f"audit details key {key!r} is not a lower-case identifier"
    if is_secret_name(key):
        return f"audit details may not hold secrets: refusing key {key!r}"
    return None


def canonical_details(details: Mapping[str, str | int | float | bool | None]) -> str:
    """The details' canonical JSON text; raises ValueError for a secret-like key or a bad value."""
    if not details:
        return "{}"
    if len(details) > MAX_DETAIL_ITEMS:
        raise ValueError(f"audit details hold at most {MAX_DETAIL_ITEMS} items")
    for key, value in details.items():
        problem = _key_problem(key) if isinstance(key, str) else f"audit details key {key!r} is not a string"
        if problem is not None:
            raise ValueError(problem)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"audit details value of {key!r} is not a finite number")
        if value is not None and not isinstance(value, str | int | float):
            raise ValueError(f"audit details value of {key!r} has unsupported type {type(value).__name__}")
    text = _DETAILS_ENCODER.encode(details if type(details) is dict else dict(details))
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("audit details are not valid Unicode text") from None
    if size > MAX_DETAILS_BYTES:
        raise ValueError(f"audit details exceed {MAX_DETAILS_BYTES} bytes")
    return text


EntryFields = tuple[int, int, str, str, str, str | None, str | None, str | None, str]
"""(seq, at_us, actor, action, outcome, resource, subject, purpose, details text): what is hashed."""


def canonical_entry(fields: EntryFields) -> bytes:
    """The bytes an entry's hash covers after the previous hash (see the module docstring).

    Built directly (the same bytes as ``CANONICAL_ENCODER.encode([FORMAT_VERSION, *fields])``, which
    a test checks) because ``verify`` runs it once per entry: about half the cost of the encoder.
    """
    seq, at_us, actor, action, outcome, resource, subject, purpose, details = fields
    return (
        f"[{FORMAT_VERSION},{seq:d},{at_us:d},{_esc(actor)},{_esc(action)},{_esc(outcome)},"
        f"{'null' if resource is None else _esc(resource)},{'null' if subject is None else _esc(subject)},"
        f"{'null' if purpose is None else _esc(purpose)},{_esc(details)}]"
    ).encode()


def entry_hash(prev_hash: bytes, canonical: bytes) -> bytes:
    return hashlib.sha256(prev_hash + canonical).digest()


def checkpoint_message(seq: int, chain_hash: bytes, signed_at_us: int) -> bytes:
    """What a checkpoint's signature covers: a domain label, seq and time (uint64 big-endian), the hash."""
    return _CHECKPOINT_DOMAIN + struct.pack(">QQ", seq, signed_at_us) + chain_hash
