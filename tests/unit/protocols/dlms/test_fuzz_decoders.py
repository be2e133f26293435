"""Every decoder, fed random or mutated bytes, raises only the protocol's own errors (DecodeError/DlmsError)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openami.protocols.dlms import axdr
from openami.protocols.dlms.acse import AARE, AARQ, RLRE, RLRQ, decode_xdlms_initiate
from openami.protocols.dlms.apdu import decode_apdu
from openami.protocols.dlms.compact import StructureType, encode_compact_array
from openami.protocols.dlms.cosem_time import CosemDateTime
from openami.protocols.dlms.errors import DlmsError
from openami.protocols.dlms.obis import Obis
from openami.protocols.dlms.security import ReplayGuard, cipher_apdu, cipher_general_glo, decipher_apdu
from openami.protocols.dlms.wrapper import WrapperFramer, decode_datagram, encode_wrapper

from .test_acse import LLS_AARQ, PLAIN_AARE, aares, aarqs
from .test_apdu import apdus
from .test_axdr import data_values

EK = bytes(range(16))
AK = bytes(range(16, 32))
TITLE = b"OAM\x00\x00\x00\x00\x01"


def _framer(data: bytes) -> object:
    framer = WrapperFramer(max_apdu_length=512)
    framer.feed(data)
    frames = []
    while (frame := framer.next_frame()) is not None:
        frames.append(frame)
    return frames


def _decipher(data: bytes) -> object:
    return decipher_apdu(data, system_title=TITLE, ek=EK, ak=AK, replay_guard=ReplayGuard(0))


def _decipher_and_decode(data: bytes) -> object:
    return decode_apdu(_decipher(data).plaintext)


DECODERS: dict[str, Callable[[bytes], object]] = {
    "axdr.decode": axdr.decode,
    "axdr.decode_all": axdr.decode_all,
    "decode_apdu": decode_apdu,
    "AARQ.decode": AARQ.decode,
    "AARE.decode": AARE.decode,
    "RLRQ.decode": RLRQ.decode,
    "RLRE.decode": RLRE.decode,
    "decode_xdlms_initiate": decode_xdlms_initiate,
    "wrapper framer": _framer,
    "decode_datagram": lambda data: decode_datagram(data, max_apdu_length=512),
    "decipher_apdu": _decipher,
    "decipher then decode": _decipher_and_decode,
    "CosemDateTime.from_bytes": CosemDateTime.from_bytes,
    "Obis.from_bytes": Obis.from_bytes,
}

SEEDS = [
    LLS_AARQ,
    PLAIN_AARE,
    bytes.fromhex("6303800100"),
    bytes.fromhex("C001C100080000010000FF0200"),
    bytes.fromhex("C402C1000000000100820102") + bytes(258),
    bytes.fromhex("13020206100c000000010002000000030004"),
    encode_wrapper(1, 1, bytes.fromhex("C001C100080000010000FF0200")) * 2,
    encode_wrapper(1, 1, bytes.fromhex("C001C100080000010000FF0200")),
    cipher_apdu(LLS_AARQ, tag=0xC8, security_control=0x30, system_title=TITLE, invocation_counter=5, ek=EK, ak=AK),
    cipher_general_glo(
        b"\xc4\x01\xc1\x00\x11\x01", security_control=0x10, system_title=TITLE, invocation_counter=9, ek=EK, ak=AK
    ),
    encode_compact_array([(axdr.DoubleLongUnsigned(1), b"ab")] * 3, StructureType((6, 9))),
]


def _feed_everything(data: bytes) -> None:
    for name, decoder in DECODERS.items():
        try:
            decoder(data)
        except DlmsError:
            pass
        except Exception as exc:  # the point of the test: nothing else may escape
            pytest.fail(f"{name} raised {type(exc).__name__}: {exc} on {data.hex()}")


@st.composite
def mutated(draw: st.DrawFn, seeds: st.SearchStrategy[bytes]) -> bytes:
    """A valid encoding with a few bytes flipped, inserted, deleted or the end cut off."""
    data = bytearray(draw(seeds))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and data:
            data[position] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x81, 0x84, 0xFF]))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=3))
        elif action == "delete" and data:
            del data[position]
        elif action == "truncate":
            del data[position:]
    return bytes(data)


valid_encodings = st.one_of(
    st.sampled_from(SEEDS),
    data_values.map(axdr.encode),
    apdus.map(lambda apdu: apdu.encode()),
    aarqs.map(AARQ.encode),
    aares.map(AARE.encode),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_decoders_raise_only_protocol_errors_on_random_bytes(data: bytes) -> None:
    _feed_everything(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([0x01, 0x02, 0x09, 0x13, 0x60, 0x61, 0xC0, 0xC4, 0xC8, 0xDB, 0xD8, 0x0F]), st.binary(max_size=120)
)
def test_decoders_raise_only_protocol_errors_on_plausible_tags(tag: int, rest: bytes) -> None:
    _feed_everything(bytes((tag,)) + rest)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated(valid_encodings))
def test_decoders_raise_only_protocol_errors_on_mutated_encodings(data: bytes) -> None:
    _feed_everything(data)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_truncation_of_a_valid_encoding_raises_only_protocol_errors(seed: bytes) -> None:
    for end in range(len(seed)):
        _feed_everything(seed[:end])
