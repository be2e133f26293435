"""Operator passwords: argon2id hashes (argon2-cffi) with parameters from ``IdentitySettings``.

Verification of a password with no stored hash (an unknown user) or an oversized one runs against a
hash of a random password, so a refusal costs the same time whatever its cause.
"""

from __future__ import annotations

import functools
import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from openami.errors import InvalidInput
from openami.settings import IdentitySettings

__all__ = ["MAX_PASSWORD_LENGTH", "hash_password", "needs_rehash", "verify_password"]

MAX_PASSWORD_LENGTH = 1024


@functools.lru_cache(maxsize=4)
def _hasher(time_cost: int, memory_kib: int, parallelism: int) -> tuple[PasswordHasher, str]:
    """The hasher for these parameters, and a hash of a random password to verify against instead."""
    hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID)
    return hasher, hasher.hash(secrets.token_urlsafe(24))


def _hasher_for(settings: IdentitySettings) -> tuple[PasswordHasher, str]:
    return _hasher(settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism)


def hash_password(password: str, settings: IdentitySettings) -> str:
    """argon2id PHC string; InvalidInput for a password that is too short or too long."""
    if not settings.min_password_length <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"a password has {settings.min_password_length} to {MAX_PASSWORD_LENGTH} characters")
    return _hasher_for(settings)[0].hash(password)


def verify_password(stored: str | None, password: str, settings: IdentitySettings) -> bool:
    """True when ``password`` matches ``stored``; ``stored`` None (nothing to match) costs the same and is False."""
    hasher, decoy = _hasher_for(settings)
    target = stored if stored is not None and len(password) <= MAX_PASSWORD_LENGTH else None
    try:
        matched = hasher.verify(decoy if target is None else target, password[:MAX_PASSWORD_LENGTH])
    except (VerificationError, InvalidHashError):
        return False
    return matched and target is not None


def needs_rehash(stored: str, settings: IdentitySettings) -> bool:
    """True when ``stored`` was made with other parameters than the configured ones."""
    return _hasher_for(settings)[0].check_needs_rehash(stored)
