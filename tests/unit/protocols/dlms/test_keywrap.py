"""Key transfer: AES key wrap (RFC 3394) and the Security Setup global_key_transfer parameter (Blue Book class 64)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openami.protocols.dlms import axdr
from openami.protocols.dlms.axdr import Array, Enum, Structure
from openami.protocols.dlms.errors import DecodeError, SecurityError
from openami.protocols.dlms.keywrap import (
    KeyData,
    KeyId,
    KeyUnwrapError,
    decode_key_transfer,
    encode_key_transfer,
    unwrap_key,
    unwrap_keys,
    wrap_key,
)

# RFC 3394 section 4.1: wrap 128 bits of key data with a 128-bit KEK
RFC_KEK = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
RFC_KEY = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
RFC_WRAPPED = bytes.fromhex("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5")
# RFC 3394 section 4.6: 256 bits of key data with a 256-bit KEK
RFC_KEK_256 = bytes.fromhex("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
RFC_KEY_256 = bytes.fromhex("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
RFC_WRAPPED_256 = bytes.fromhex("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21")

NEW_GUEK = bytes.fromhex("A0A1A2A3A4A5A6A7A8A9AAABACADAEAF")
NEW_GAK = bytes.fromhex("B0B1B2B3B4B5B6B7B8B9BABBBCBDBEBF")


def test_rfc3394_4_1_wrap_128_bit_key_with_128_bit_kek() -> None:
    assert wrap_key(RFC_KEK, RFC_KEY) == RFC_WRAPPED
    assert unwrap_key(RFC_KEK, RFC_WRAPPED) == RFC_KEY


def test_rfc3394_4_6_wrap_256_bit_key_with_256_bit_kek() -> None:
    assert wrap_key(RFC_KEK_256, RFC_KEY_256) == RFC_WRAPPED_256
    assert unwrap_key(RFC_KEK_256, RFC_WRAPPED_256) == RFC_KEY_256


@given(kek=st.binary(min_size=16, max_size=16), key=st.binary(min_size=16, max_size=16))
def test_wrap_round_trips(kek: bytes, key: bytes) -> None:
    wrapped = wrap_key(kek, key)
    assert len(wrapped) == 24
    assert key not in wrapped
    assert unwrap_key(kek, wrapped) == key


@pytest.mark.parametrize("position", [0, 7, 8, 23])
def test_tampered_wrap_is_refused_without_revealing_keys(position: int) -> None:
    tampered = bytearray(RFC_WRAPPED)
    tampered[position] ^= 0x01
    with pytest.raises(KeyUnwrapError) as caught:
        unwrap_key(RFC_KEK, bytes(tampered))
    assert caught.value.__cause__ is None
    text = str(caught.value).lower()
    for secret in (RFC_KEK, RFC_KEY, RFC_WRAPPED):
        assert secret.hex() not in text


def test_wrap_under_another_kek_is_refused() -> None:
    with pytest.raises(KeyUnwrapError):
        unwrap_key(bytes(16), RFC_WRAPPED)


@pytest.mark.parametrize("size", [0, 8, 23, 25, 48])
def test_wrapped_key_of_a_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(KeyUnwrapError):
        unwrap_key(RFC_KEK, bytes(size))


def test_bad_key_sizes_are_refused() -> None:
    with pytest.raises(SecurityError, match="master key"):
        wrap_key(bytes(15), RFC_KEY)
    with pytest.raises(SecurityError, match="16, 24 or 32"):
        wrap_key(RFC_KEK, bytes(15))


def test_global_key_transfer_parameter_is_an_array_of_key_id_and_wrapped_key() -> None:
    parameter = encode_key_transfer(
        RFC_KEK, [(KeyId.GLOBAL_UNICAST_ENCRYPTION, NEW_GUEK), (KeyId.AUTHENTICATION, NEW_GAK)]
    )
    encoded = axdr.encode(parameter)
    # array of 2, structure of 2 {enum 0, octet-string of 24}, structure of 2 {enum 2, octet-string of 24}
    assert encoded[:8] == bytes.fromhex("0102 0202 1600 0918")
    assert encoded[8:32] == wrap_key(RFC_KEK, NEW_GUEK)
    assert encoded[32:38] == bytes.fromhex("0202 1602 0918")
    assert len(encoded) == 2 + 2 * (2 + 2 + 2 + 24)
    items = decode_key_transfer(axdr.decode_all(encoded))
    assert [item.key_id for item in items] == [KeyId.GLOBAL_UNICAST_ENCRYPTION, KeyId.AUTHENTICATION]
    assert unwrap_keys(RFC_KEK, items) == {
        KeyId.GLOBAL_UNICAST_ENCRYPTION: NEW_GUEK,
        KeyId.AUTHENTICATION: NEW_GAK,
    }


def test_key_data_repr_hides_the_wrapped_key() -> None:
    item = KeyData(KeyId.MASTER, wrap_key(RFC_KEK, NEW_GUEK))
    assert item.wrapped.hex() not in repr(item)


@pytest.mark.parametrize(
    "parameter",
    [
        None,
        Array(),
        b"\x00" * 24,
        Array([Structure((Enum(0),))]),
        Array([Structure((Enum(4), bytes(24)))]),
        Array([Structure((axdr.Unsigned(0), bytes(24)))]),
        Array([Structure((Enum(0), "text"))]),
        Array([Structure((Enum(0), bytes(24))), Structure((Enum(0), bytes(24)))]),
    ],
    ids=["null", "empty", "octets", "short-structure", "unknown-key-id", "not-enum", "not-octets", "twice"],
)
def test_malformed_transfer_parameter_is_a_decode_error(parameter: axdr.Data) -> None:
    with pytest.raises(DecodeError):
        decode_key_transfer(parameter)


def test_unwrap_keys_is_all_or_nothing() -> None:
    good = KeyData(KeyId.GLOBAL_UNICAST_ENCRYPTION, wrap_key(RFC_KEK, NEW_GUEK))
    bad = KeyData(KeyId.AUTHENTICATION, wrap_key(bytes(16), NEW_GAK))
    with pytest.raises(KeyUnwrapError):
        unwrap_keys(RFC_KEK, [good, bad])


def test_encode_refuses_a_key_id_twice_or_no_key() -> None:
    with pytest.raises(SecurityError, match="twice"):
        encode_key_transfer(RFC_KEK, [(KeyId.MASTER, NEW_GUEK), (KeyId.MASTER, NEW_GAK)])
    with pytest.raises(SecurityError, match="at least one"):
        encode_key_transfer(RFC_KEK, [])
