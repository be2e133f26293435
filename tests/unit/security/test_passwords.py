"""argon2id password hashing: parameters, verification, oversized input, parameter upgrades."""

from __future__ import annotations

import pytest

from openami.errors import InvalidInput
from openami.security.passwords import MAX_PASSWORD_LENGTH, hash_password, needs_rehash, verify_password
from openami.settings import IdentitySettings

FAST = IdentitySettings(argon2_time_cost=1, argon2_memory_kib=1024, argon2_parallelism=1)
PASSWORD = "correct horse battery"


def test_default_parameters_follow_rfc_9106_second_recommendation() -> None:
    defaults = IdentitySettings()
    assert (defaults.argon2_time_cost, defaults.argon2_memory_kib, defaults.argon2_parallelism) == (3, 65_536, 4)


def test_hash_is_argon2id_salted_and_verifies() -> None:
    first, second = hash_password(PASSWORD, FAST), hash_password(PASSWORD, FAST)
    assert first.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert first != second  # a fresh salt each time
    assert verify_password(first, PASSWORD, FAST)
    assert not verify_password(first, PASSWORD + "!", FAST)
    assert not verify_password("not a hash", PASSWORD, FAST)
    assert not verify_password(None, PASSWORD, FAST)


def test_a_password_longer_than_the_maximum_never_matches() -> None:
    longest = "x" * MAX_PASSWORD_LENGTH
    stored = hash_password(longest, FAST)
    assert verify_password(stored, longest, FAST)
    assert not verify_password(stored, longest + "y", FAST)  # not silently truncated
    with pytest.raises(InvalidInput):
        hash_password(longest + "y", FAST)
    with pytest.raises(InvalidInput):
        hash_password("short", FAST)


def test_changed_parameters_ask_for_a_rehash() -> None:
    stored = hash_password(PASSWORD, FAST)
    assert not needs_rehash(stored, FAST)
    assert needs_rehash(stored, FAST.model_copy(update={"argon2_time_cost": 2}))
