"""xDLMS LN service APDUs (IEC 62056-5-3 clause 9.3): known bytes and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openami.protocols.dlms import obis
from openami.protocols.dlms.acse import RLRE
from openami.protocols.dlms.apdu import (
    ActionRequestNormal,
    ActionResponseNormal,
    ActionResult,
    Apdu,
    AttributeDescriptor,
    CipheredApdu,
    DataAccessResult,
    DataNotification,
    EventNotificationRequest,
    ExceptionResponse,
    ExceptionServiceError,
    ExceptionStateError,
    GetRequestNext,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseNormal,
    GetResponseWithDataBlock,
    GetResponseWithList,
    MethodDescriptor,
    SelectiveAccess,
    SetRequestNormal,
    SetResponseNormal,
    decode_apdu,
    decode_data_result,
)
from openami.protocols.dlms.axdr import (
    Array,
    DoubleLong,
    DoubleLongUnsigned,
    Enum,
    Integer,
    LongUnsigned,
    Structure,
    Unsigned,
    encode,
)
from openami.protocols.dlms.errors import DecodeError, EncodeError
from openami.protocols.dlms.obis import Obis

from .test_axdr import data_values

CLOCK_TIME = AttributeDescriptor(8, obis.CLOCK, 2)


def test_get_request_normal_for_the_clock_time() -> None:
    raw = bytes.fromhex("C0 01 C1 00 08 00 00 01 00 00 FF 02 00".replace(" ", ""))
    assert GetRequestNormal(CLOCK_TIME).encode() == raw
    assert decode_apdu(raw) == GetRequestNormal(CLOCK_TIME, None, 0xC1)


def test_get_request_with_selective_access_by_entry() -> None:
    access = SelectiveAccess(
        2, Structure((DoubleLongUnsigned(1), DoubleLongUnsigned(96), LongUnsigned(1), LongUnsigned(0)))
    )
    request = GetRequestNormal(AttributeDescriptor(7, obis.LOAD_PROFILE, 2), access, invoke_id_and_priority=0x81)
    raw = request.encode()
    assert raw == bytes.fromhex(
        "C00181 0007 0100630100FF 02 01 02 0204 0600000001 0600000060 120001 120000".replace(" ", "")
    )
    assert decode_apdu(raw) == request


def test_get_response_normal_with_data_and_with_an_error() -> None:
    assert GetResponseNormal(DoubleLong(-5)).encode() == bytes.fromhex("C401C10005FFFFFFFB")
    assert decode_apdu(bytes.fromhex("C401C10104")) == GetResponseNormal(DataAccessResult.OBJECT_UNDEFINED)


def test_get_with_block_transfer_reassembles_the_value() -> None:
    profile = Array([Structure((b"\x07\xe8" + bytes(10), DoubleLongUnsigned(n))) for n in range(96)])
    encoded = encode(profile)
    blocks = [encoded[i : i + 400] for i in range(0, len(encoded), 400)]
    responses = [
        GetResponseWithDataBlock(last_block=n == len(blocks), block_number=n, result=block).encode()
        for n, block in enumerate(blocks, start=1)
    ]
    assert responses[0][:8] == bytes.fromhex("C402C1000000000100")[:8]
    reassembled = b""
    for raw in responses:
        block = decode_apdu(raw)
        assert isinstance(block, GetResponseWithDataBlock)
        assert isinstance(block.result, bytes)
        reassembled += block.result
    assert decode_data_result(reassembled) == profile
    assert GetRequestNext(1).encode() == bytes.fromhex("C002C100000001")


def test_block_transfer_error_and_request_next() -> None:
    raw = bytes.fromhex("C402C101000000020110")
    assert decode_apdu(raw) == GetResponseWithDataBlock(True, 2, DataAccessResult.NO_LONG_GET_IN_PROGRESS)


def test_get_with_list() -> None:
    request = GetRequestWithList(((CLOCK_TIME, None), (AttributeDescriptor(1, obis.SERIAL, 2), None)))
    assert request.encode().startswith(bytes.fromhex("C003C102"))
    assert decode_apdu(request.encode()) == request
    response = GetResponseWithList((b"OAM1", DataAccessResult.READ_WRITE_DENIED))
    assert response.encode() == bytes.fromhex("C403C102000904") + b"OAM1" + b"\x01\x03"
    assert decode_apdu(response.encode()) == response


def test_set_request_and_response() -> None:
    request = SetRequestNormal(AttributeDescriptor(70, obis.DISCONNECT_CONTROL, 4), Enum(1))
    assert request.encode() == bytes.fromhex("C101C1 0046 000060030AFF 04 00 1601".replace(" ", ""))
    assert decode_apdu(request.encode()) == request
    assert decode_apdu(bytes.fromhex("C501C103")) == SetResponseNormal(DataAccessResult.READ_WRITE_DENIED)


def test_action_request_remote_disconnect_with_integer_zero() -> None:
    request = ActionRequestNormal(MethodDescriptor(70, obis.DISCONNECT_CONTROL, 1), Integer(0))
    assert request.encode() == bytes.fromhex("C301C1 0046 000060030AFF 01 01 0F00".replace(" ", ""))
    assert decode_apdu(request.encode()) == request


def test_action_request_distinguishes_no_parameters_from_null_data() -> None:
    without = ActionRequestNormal(MethodDescriptor(15, obis.CURRENT_ASSOCIATION, 1))
    with_null = ActionRequestNormal(MethodDescriptor(15, obis.CURRENT_ASSOCIATION, 1), None, has_parameters=True)
    assert without.encode().endswith(b"\x01\x00")  # method id 1, parameters absent
    assert with_null.encode().endswith(b"\x01\x01\x00")
    assert decode_apdu(with_null.encode()) == with_null


def test_action_response_with_hls_reply_data() -> None:
    reply = ActionResponseNormal(ActionResult.SUCCESS, b"\x10" + bytes(16))
    assert reply.encode() == bytes.fromhex("C701C100 01 00 0911 10".replace(" ", "")) + bytes(16)
    assert decode_apdu(reply.encode()) == reply
    assert decode_apdu(bytes.fromhex("C701C10B00")) == ActionResponseNormal(ActionResult.OBJECT_UNAVAILABLE)


def test_exception_response_for_a_stale_invocation_counter_carries_the_expected_one() -> None:
    raw = bytes.fromhex("D801060000002A")
    assert decode_apdu(raw) == ExceptionResponse(
        ExceptionStateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.INVOCATION_COUNTER_ERROR, 42
    )
    assert ExceptionResponse(1, 6, 42).encode() == raw
    assert decode_apdu(bytes.fromhex("D80105")) == ExceptionResponse(1, ExceptionServiceError.DECIPHERING_ERROR)
    with pytest.raises(EncodeError):
        ExceptionResponse(1, 6).encode()


def test_data_notification_with_and_without_date_time() -> None:
    stamp = bytes.fromhex("07E80301050D000000FFC400")
    push = DataNotification(Structure((b"OAM1", DoubleLongUnsigned(7))), 1, stamp)
    raw = push.encode()
    assert raw[:6] == bytes.fromhex("0F000000010C")
    assert decode_apdu(raw) == push
    assert decode_apdu(bytes.fromhex("0F00000001000300")) == DataNotification(False, 1, None)


def test_event_notification() -> None:
    event = EventNotificationRequest(AttributeDescriptor(1, Obis.parse("0.0.96.11.0.255"), 2), Unsigned(69))
    assert event.encode() == bytes.fromhex("C200 0001 0000600B00FF 02 1145".replace(" ", ""))
    assert decode_apdu(event.encode()) == event


def test_unknown_result_codes_are_kept() -> None:
    response = decode_apdu(bytes.fromhex("C401C10107"))
    assert isinstance(response, GetResponseNormal)
    assert response.result == 7
    assert response.encode() == bytes.fromhex("C401C10107")


def test_ciphered_and_acse_apdus_are_dispatched() -> None:
    assert decode_apdu(bytes.fromhex("C8053000000001")) == CipheredApdu(0xC8, bytes.fromhex("C8053000000001"))
    assert decode_apdu(bytes.fromhex("6303800100")) == RLRE()


@pytest.mark.parametrize(
    "hex_bytes",
    [
        "",
        "C0",
        "C004C1",  # unsupported GET choice
        "C001C1000800000100",  # truncated descriptor
        "C001C100080000010000FF0202",  # bad access-selection flag
        "C401C1",
        "C401C102",  # Get-Data-Result choice 2
        "C402C101000000020205",  # DataBlock-G choice 2
        "C401C100110000",  # trailing byte
        "D801",
        "D80106000000",
        "0F00000001",
        "C5",
        "E6",
        "C003C1FF",  # list count beyond the APDU
    ],
)
def test_malformed_apdus_raise_decode_error(hex_bytes: str) -> None:
    with pytest.raises(DecodeError):
        decode_apdu(bytes.fromhex(hex_bytes))


def test_descriptor_fields_are_range_checked_when_encoding() -> None:
    with pytest.raises(EncodeError):
        GetRequestNormal(AttributeDescriptor(70000, obis.CLOCK, 2)).encode()
    with pytest.raises(EncodeError):
        GetRequestNormal(CLOCK_TIME, invoke_id_and_priority=256).encode()
    with pytest.raises(EncodeError):
        GetRequestNext(-1).encode()


# ------------------------------------------------------------------------------- round trips

iips = st.integers(0, 255)
obis_codes = st.binary(min_size=6, max_size=6).map(Obis.from_bytes)
attributes = st.builds(AttributeDescriptor, st.integers(0, 0xFFFF), obis_codes, st.integers(-128, 127))
methods = st.builds(MethodDescriptor, st.integers(0, 0xFFFF), obis_codes, st.integers(-128, 127))
accesses = st.none() | st.builds(SelectiveAccess, st.integers(0, 255), data_values)
data_access_results = st.integers(0, 255).map(DataAccessResult)
get_data_results = data_values | data_access_results
u32 = st.integers(0, 0xFFFFFFFF)
octets = st.binary(max_size=20)

apdus: st.SearchStrategy[Apdu] = st.one_of(
    st.builds(GetRequestNormal, attributes, accesses, iips),
    st.builds(GetRequestNext, u32, iips),
    st.builds(GetRequestWithList, st.lists(st.tuples(attributes, accesses), max_size=4).map(tuple), iips),
    st.builds(GetResponseNormal, get_data_results, iips),
    st.builds(GetResponseWithDataBlock, st.booleans(), u32, st.binary(max_size=300) | data_access_results, iips),
    st.builds(GetResponseWithList, st.lists(get_data_results, max_size=4).map(tuple), iips),
    st.builds(SetRequestNormal, attributes, data_values, accesses, iips),
    st.builds(SetResponseNormal, data_access_results, iips),
    st.builds(ActionRequestNormal, methods, data_values, iips, st.booleans()),
    st.builds(ActionResponseNormal, st.integers(0, 255).map(ActionResult), get_data_results, iips, st.booleans()),
    st.builds(ExceptionResponse, st.integers(0, 255), st.integers(0, 5), st.none()),
    st.builds(ExceptionResponse, st.integers(0, 255), st.just(6), u32),
    st.builds(DataNotification, data_values, u32, st.none() | st.binary(min_size=1, max_size=12)),
    st.builds(EventNotificationRequest, attributes, data_values, st.none() | octets),
)


def _normalised(apdu: Apdu) -> Apdu:
    """What decoding gives back for values the encoder leaves out (parameters when the flag is off)."""
    if isinstance(apdu, ActionRequestNormal) and not apdu.has_parameters:
        return ActionRequestNormal(apdu.descriptor, None, apdu.invoke_id_and_priority, has_parameters=False)
    if isinstance(apdu, ActionResponseNormal) and not apdu.has_return_data:
        return ActionResponseNormal(apdu.result, None, apdu.invoke_id_and_priority, has_return_data=False)
    return apdu


@given(apdus)
def test_every_apdu_round_trips(apdu: Apdu) -> None:
    assert decode_apdu(apdu.encode()) == _normalised(apdu)
