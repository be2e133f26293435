"""OBIS logical names (IEC 62056-6-1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openami.protocols.dlms import obis
from openami.protocols.dlms.errors import DecodeError, EncodeError
from openami.protocols.dlms.obis import Obis


def test_parse_str_and_bytes() -> None:
    code = Obis.parse("1.0.1.8.0.255")
    assert code == Obis(1, 0, 1, 8, 0, 255)
    assert str(code) == "1.0.1.8.0.255"
    assert bytes(code) == code.to_bytes() == bytes.fromhex("0100010800ff")
    assert Obis.from_bytes(bytes.fromhex("0100010800ff")) == code


def test_parse_accepts_the_iec_punctuation() -> None:
    assert Obis.parse("1-0:1.8.0*255") == obis.ACTIVE_IMPORT
    assert Obis.parse(" 0.0.1.0.0.255 ") == obis.CLOCK


@pytest.mark.parametrize("text", ["", "1.0.1.8.0", "1.0.1.8.0.255.1", "1.0.1.8.0.256", "a.b.c.d.e.f", "1..1.8.0.255"])
def test_parse_rejects_malformed_codes(text: str) -> None:
    with pytest.raises(DecodeError):
        Obis.parse(text)


def test_groups_are_checked_on_construction() -> None:
    with pytest.raises(EncodeError):
        Obis(1, 0, 1, 8, 0, 256)
    with pytest.raises(EncodeError):
        Obis(-1, 0, 1, 8, 0, 255)


@pytest.mark.parametrize("size", [0, 5, 7])
def test_from_bytes_needs_six_bytes(size: int) -> None:
    with pytest.raises(DecodeError):
        Obis.from_bytes(bytes(size))


def test_well_known_constants() -> None:
    assert str(obis.SECURITY_SETUP) == "0.0.43.0.0.255"
    assert str(obis.INVOCATION_COUNTER) == "0.0.43.1.1.255"
    assert str(obis.CURRENT_ASSOCIATION) == "0.0.40.0.0.255"
    assert str(obis.DISCONNECT_CONTROL) == "0.0.96.3.10.255"
    assert str(obis.LOAD_PROFILE) == "1.0.99.1.0.255"


@given(st.binary(min_size=6, max_size=6))
def test_round_trips(raw: bytes) -> None:
    code = Obis.from_bytes(raw)
    assert bytes(code) == raw
    assert Obis.parse(str(code)) == code
