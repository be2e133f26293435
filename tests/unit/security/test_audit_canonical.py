"""The audit chain's canonical encoding (docs/security.md): fixed vectors, escaping, details rules."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openami.security.audit_codec import (
    GENESIS_HASH,
    canonical_details,
    canonical_entry,
    checkpoint_message,
    entry_hash,
    is_secret_name,
)

FIRST = b'[1,1,1795392000000000,"user:alice","readings.read","ok","meter:42","premise:P000123","billing","{}"]'


def test_canonical_entry_matches_the_documented_example_and_hash() -> None:
    encoded = canonical_entry(
        (1, 1795392000000000, "user:alice", "readings.read", "ok", "meter:42", "premise:P000123", "billing", "{}")
    )
    assert encoded == FIRST
    assert entry_hash(GENESIS_HASH, encoded) == hashlib.sha256(bytes(32) + FIRST).digest()
    assert entry_hash(GENESIS_HASH, encoded).hex() == "9489f8838d56aefa7de568afe2fe26f3522dc3305364868dfa460bdfbd9615e7"


def test_details_are_hashed_as_their_stored_text_with_jcs_escaping() -> None:
    details = canonical_details({"z": 1, "a": 'é\x01"\\', "f": 0.1, "b": True, "n": None, "big": 1e21, "small": 1e-7})
    assert details == '{"a":"é\\u0001\\"\\\\","b":true,"big":1e+21,"f":0.1,"n":null,"small":1e-07,"z":1}'
    second = canonical_entry((2, 5, "user:bob", "auth.login", "denied", None, None, None, details))
    assert second.startswith(b'[1,2,5,"user:bob","auth.login","denied",null,null,null,"{\\"a\\":\\"\xc3\xa9\\\\u0001')
    chained = entry_hash(entry_hash(GENESIS_HASH, FIRST), second)
    assert chained.hex() == "d99c7ae2353ba2be638d6943bc9d7c242c1322cc4fb715a6efbe8d2d33474b5c"


def test_non_ascii_is_utf8_and_only_control_characters_are_escaped() -> None:
    encoded = canonical_entry((3, 0, "user:zoë", "a.b", "ok", "résumé\u2028", None, None, "{}"))
    assert "zoë".encode() in encoded
    assert "\u2028".encode() in encoded  # JCS writes U+2028 as itself
    assert b"\\u" not in encoded


def test_empty_details_are_an_empty_object() -> None:
    assert canonical_details({}) == "{}"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), b"bytes", [1], {"x": 1}])
def test_details_values_must_be_finite_scalars(value: object) -> None:
    with pytest.raises(ValueError, match=r"finite|unsupported"):
        canonical_details({"x": value})  # type: ignore[dict-item]


@pytest.mark.parametrize("key", ["Upper", "with space", "", "1st", "a" * 65, "sémantique"])
def test_details_keys_must_be_lower_case_identifiers(key: str) -> None:
    with pytest.raises(ValueError, match="lower-case identifier"):
        canonical_details({key: 1})


def test_details_size_is_bounded() -> None:
    with pytest.raises(ValueError, match="bytes"):
        canonical_details({"note": "x" * 9000})
    with pytest.raises(ValueError, match="items"):
        canonical_details({f"k{i}_count": i for i in range(65)})


@pytest.mark.parametrize(
    "name",
    ["password", "new_password", "userpassword", "token", "api_token", "key", "api_key", "guek", "gak", "gbek",
     "master_kek", "secret", "client_secret", "passphrase", "credentials", "session", "cookie", "keys"],
)  # fmt: skip
def test_secret_names_are_recognised(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    ["key_id", "key_version", "key_kind", "token_name", "token_id", "kek_id", "password_age", "session_id",
     "meter", "step", "reason", "keyword_count", "monkey", "tokenizer"],
)  # fmt: skip
def test_metadata_names_are_not_secrets(name: str) -> None:
    assert not is_secret_name(name)


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).filter(lambda k: not is_secret_name(k)),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text()),
        max_size=8,
    )
)
def test_details_round_trip_and_are_independent_of_insertion_order(details: dict[str, object]) -> None:
    text = canonical_details(details)  # type: ignore[arg-type]
    assert json.loads(text) == details
    assert canonical_details(dict(reversed(list(details.items())))) == text  # type: ignore[arg-type]
    assert canonical_details(json.loads(text)) == text


def test_checkpoint_message_binds_sequence_time_and_hash() -> None:
    digest = bytes(range(32))
    message = checkpoint_message(1000, digest, 1_795_392_000_000_000)
    assert (
        message
        == b"openami-audit-checkpoint\x00v1\x00"
        + (1000).to_bytes(8, "big")
        + (1_795_392_000_000_000).to_bytes(8, "big")
        + digest
    )
    assert checkpoint_message(1001, digest, 1_795_392_000_000_000) != message


@given(
    st.tuples(
        st.integers(min_value=1, max_value=2**62),
        st.integers(min_value=0, max_value=2**62),
        st.text(min_size=1),
        st.text(min_size=1),
        st.sampled_from(["ok", "denied", "failed"]),
        st.none() | st.text(),
        st.none() | st.text(),
        st.none() | st.text(),
        st.text(),
    )
)
def test_built_encoding_equals_the_json_encoder(fields: tuple) -> None:  # type: ignore[type-arg]
    expected = json.dumps([1, *fields], ensure_ascii=False, separators=(",", ":")).encode()
    assert canonical_entry(fields) == expected
