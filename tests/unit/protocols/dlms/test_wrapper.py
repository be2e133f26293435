"""IEC 62056-47 wrapper framing over a TCP byte stream."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openami.protocols.dlms.errors import DecodeError, EncodeError
from openami.protocols.dlms.wrapper import (
    HEADER_SIZE,
    Framer,
    WrapperFrame,
    WrapperFramer,
    WrapperHeader,
    decode_datagram,
    encode_wrapper,
)

GET_CLOCK = bytes.fromhex("C001C1000800000100 00FF0200".replace(" ", ""))


def test_encode_wrapper_header_is_version_ports_and_length() -> None:
    frame = encode_wrapper(1, 1, GET_CLOCK)
    assert frame[:HEADER_SIZE] == bytes.fromhex("0001 0001 0001 000d".replace(" ", ""))
    assert frame[HEADER_SIZE:] == GET_CLOCK
    assert WrapperHeader.from_bytes(frame) == WrapperHeader(1, 1, 13)


def test_encode_wrapper_refuses_what_does_not_fit_16_bits() -> None:
    with pytest.raises(EncodeError):
        encode_wrapper(0x10000, 1, b"")
    with pytest.raises(EncodeError):
        encode_wrapper(16, 1, bytes(0x10000))


def test_framer_reassembles_a_frame_fed_byte_by_byte() -> None:
    framer = WrapperFramer()
    frame = encode_wrapper(16, 1, GET_CLOCK)
    for byte in frame[:-1]:
        framer.feed(bytes((byte,)))
        assert framer.next_frame() is None
    framer.feed(frame[-1:])
    assert framer.next_frame() == WrapperFrame(16, 1, GET_CLOCK)
    assert framer.next_frame() is None
    assert framer.buffered == 0


def test_a_datagram_carries_exactly_one_frame() -> None:
    frame = encode_wrapper(0x67, 0x66, GET_CLOCK)
    assert decode_datagram(frame) == WrapperFrame(0x67, 0x66, GET_CLOCK)
    with pytest.raises(DecodeError, match="one whole frame"):
        decode_datagram(frame + frame)  # two frames in one datagram: not a UDP wrapper PDU
    with pytest.raises(DecodeError, match="one whole frame"):
        decode_datagram(frame[:-1])  # truncated
    with pytest.raises(DecodeError, match="header"):
        decode_datagram(frame[:5])
    with pytest.raises(DecodeError, match="version"):
        decode_datagram(b"\x00\x02" + frame[2:])
    with pytest.raises(DecodeError, match="limit"):
        decode_datagram(frame, max_apdu_length=len(GET_CLOCK) - 1)


def test_framer_splits_coalesced_frames_from_one_read() -> None:
    framer = WrapperFramer()
    frames = [WrapperFrame(1, 1, b"\x01"), WrapperFrame(1, 1, b""), WrapperFrame(16, 1, GET_CLOCK)]
    framer.feed(b"".join(encode_wrapper(f.source_wport, f.dest_wport, f.apdu) for f in frames) + b"\x00\x01")
    assert [framer.next_frame() for _ in frames] == frames
    assert framer.next_frame() is None
    assert framer.buffered == 2


def test_framer_rejects_a_wrong_wrapper_version() -> None:
    framer = WrapperFramer()
    framer.feed(bytes.fromhex("0002 0001 0001 0000"))
    with pytest.raises(DecodeError, match="version") as caught:
        framer.next_frame()
    assert caught.value.offset == 0


def test_framer_rejects_a_length_beyond_its_limit_before_buffering_it() -> None:
    framer = WrapperFramer(max_apdu_length=1024)
    framer.feed(encode_wrapper(1, 1, b"ok"))
    framer.feed(encode_wrapper(1, 1, b"")[:6] + (1025).to_bytes(2, "big"))
    assert framer.next_frame() == WrapperFrame(1, 1, b"ok")
    with pytest.raises(DecodeError, match="exceeds") as caught:
        framer.next_frame()
    assert caught.value.offset == HEADER_SIZE + 2 + 6


def test_framer_limit_must_fit_the_length_field() -> None:
    with pytest.raises(ValueError, match="max_apdu_length"):
        WrapperFramer(max_apdu_length=0x10000)


def test_wrapper_framer_satisfies_the_framer_protocol() -> None:
    framer: Framer[WrapperFrame] = WrapperFramer()
    framer.feed(encode_wrapper(1, 1, b"x"))
    assert framer.next_frame() == WrapperFrame(1, 1, b"x")


@given(
    st.lists(
        st.builds(WrapperFrame, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=64)), max_size=6
    ),
    st.lists(st.integers(1, 40), max_size=50),
)
def test_any_split_of_the_stream_yields_the_same_frames(frames: list[WrapperFrame], cuts: list[int]) -> None:
    stream = b"".join(encode_wrapper(f.source_wport, f.dest_wport, f.apdu) for f in frames)
    framer = WrapperFramer()
    received: list[WrapperFrame] = []
    pos = 0
    for cut in [*cuts, len(stream)]:
        framer.feed(stream[pos : pos + cut])
        pos += cut
        while (frame := framer.next_frame()) is not None:
            received.append(frame)
    framer.feed(stream[pos:])
    while (frame := framer.next_frame()) is not None:
        received.append(frame)
    assert received == frames
