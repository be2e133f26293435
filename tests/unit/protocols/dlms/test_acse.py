"""ACSE AARQ/AARE/RLRQ/RLRE (IEC 62056-5-3 clause 8) and the xDLMS initiate APDUs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openami.protocols.dlms.acse import (
    AARE,
    AARQ,
    RLRE,
    RLRQ,
    AcseServiceProviderDiagnostic,
    AcseServiceUserDiagnostic,
    ApplicationContext,
    AssociationResult,
    ConfirmedServiceError,
    Conformance,
    DiagnosticSource,
    InitiateErrorReason,
    InitiateRequest,
    InitiateResponse,
    Mechanism,
    ReleaseRequestReason,
    decode_xdlms_initiate,
)
from openami.protocols.dlms.errors import DecodeError, EncodeError

# An LN association with a low-level-security password "12345678" proposing conformance 00 7E 1F
# and a client max receive PDU size of 1200: the AARQ as commonly shown for IEC 62056-5-3.
LLS_AARQ = bytes.fromhex(
    "6036A1090607608574050801018A0207808B0760857405080201AC0A80083132333435363738BE10040E01000000065F1F0400007E1F04B0"
)
# An AARE accepting an LN association: conformance 00 50 1F, server max PDU 500, VAA name 7.
PLAIN_AARE = bytes.fromhex("6129A109060760857405080101A203020100A305A103020100BE10040E0800065F1F040000501F01F40007")
MANAGEMENT_CONFORMANCE = (
    Conformance.GET
    | Conformance.SET
    | Conformance.ACTION
    | Conformance.SELECTIVE_ACCESS
    | Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ
    | Conformance.MULTIPLE_REFERENCES
)


def test_lls_aarq_matches_the_reference_bytes() -> None:
    aarq = AARQ(
        application_context=ApplicationContext.LN,
        authentication=True,
        mechanism=Mechanism.LLS,
        calling_authentication_value=b"12345678",
        user_information=InitiateRequest(Conformance(0x007E1F), client_max_receive_pdu_size=1200).encode(),
    )
    assert aarq.encode() == LLS_AARQ
    assert AARQ.decode(LLS_AARQ) == aarq


def test_management_client_aarq_for_hls_gmac() -> None:
    title = bytes.fromhex("4F414D0000000001")
    challenge = bytes(range(16))
    ciphered_initiate = bytes.fromhex("211f30000000") + bytes(26)  # opaque glo-initiateRequest bytes
    aarq = AARQ(
        application_context=ApplicationContext.LN_CIPHERING,
        calling_ap_title=title,
        authentication=True,
        mechanism=Mechanism.HLS_GMAC,
        calling_authentication_value=challenge,
        user_information=ciphered_initiate,
    )
    raw = aarq.encode()
    expected = (
        bytes.fromhex("605C A109060760857405080103 A60A0408".replace(" ", ""))
        + title
        + bytes.fromhex("8A020780 8B0760857405080205 AC128010".replace(" ", ""))
        + challenge
        + bytes.fromhex("BE220420")
        + ciphered_initiate
    )
    assert raw == expected
    assert AARQ.decode(raw) == aarq


def test_plain_aare_matches_the_reference_bytes() -> None:
    aare = AARE.decode(PLAIN_AARE)
    assert aare.result is AssociationResult.ACCEPTED
    assert aare.diagnostic_source is DiagnosticSource.ACSE_SERVICE_USER
    assert aare.diagnostic is AcseServiceUserDiagnostic.NULL
    assert aare.encode() == PLAIN_AARE
    initiate = decode_xdlms_initiate(aare.user_information or b"")
    assert initiate == InitiateResponse(Conformance(0x00501F), server_max_receive_pdu_size=500)


def test_aare_accepting_hls_carries_diagnostic_14_title_and_challenge() -> None:
    aare = AARE(
        result=AssociationResult.ACCEPTED,
        diagnostic=AcseServiceUserDiagnostic.AUTHENTICATION_REQUIRED,
        application_context=ApplicationContext.LN_CIPHERING,
        responding_ap_title=bytes.fromhex("4F414D0000BC614E"),
        authentication=True,
        mechanism=Mechanism.HLS_GMAC,
        responding_authentication_value=b"S" * 16,
        user_information=b"\x28\x00",
    )
    raw = aare.encode()
    assert bytes.fromhex("A305A10302010E") in raw
    assert bytes.fromhex("88020780") in raw
    assert bytes.fromhex("890760857405080205") in raw
    assert AARE.decode(raw) == aare


@pytest.mark.parametrize(
    ("result", "diagnostic"),
    [
        (AssociationResult.REJECTED_PERMANENT, AcseServiceUserDiagnostic.NO_REASON_GIVEN),
        (AssociationResult.REJECTED_PERMANENT, AcseServiceUserDiagnostic.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED),
        (AssociationResult.REJECTED_PERMANENT, AcseServiceUserDiagnostic.AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNISED),
        (AssociationResult.REJECTED_PERMANENT, AcseServiceUserDiagnostic.AUTHENTICATION_MECHANISM_NAME_REQUIRED),
        (AssociationResult.REJECTED_PERMANENT, AcseServiceUserDiagnostic.AUTHENTICATION_FAILURE),
        (AssociationResult.REJECTED_TRANSIENT, AcseServiceUserDiagnostic.NO_REASON_GIVEN),
    ],
)
def test_aare_rejections_round_trip(result: AssociationResult, diagnostic: AcseServiceUserDiagnostic) -> None:
    raw = AARE(result=result, diagnostic=diagnostic).encode()
    assert bytes((0xA2, 3, 2, 1, result)) in raw
    decoded = AARE.decode(raw)
    assert (decoded.result, decoded.diagnostic) == (result, diagnostic)


def test_aare_provider_diagnostic() -> None:
    aare = AARE(
        result=AssociationResult.REJECTED_PERMANENT,
        diagnostic=AcseServiceProviderDiagnostic.NO_COMMON_ACSE_VERSION,
        diagnostic_source=DiagnosticSource.ACSE_SERVICE_PROVIDER,
    )
    assert bytes.fromhex("A305A203020102") in aare.encode()
    assert AARE.decode(aare.encode()) == aare


def test_normal_release_response_is_63_03_80_01_00() -> None:
    assert RLRE().encode() == bytes.fromhex("6303800100")
    assert RLRE.decode(bytes.fromhex("6303800100")) == RLRE()
    assert RLRQ().encode() == bytes.fromhex("6203800100")
    assert RLRQ.decode(bytes.fromhex("6200")) == RLRQ(reason=None)


def test_release_with_user_information() -> None:
    rlrq = RLRQ(reason=ReleaseRequestReason.NORMAL, user_information=b"\x21\x00")
    assert rlrq.encode() == bytes.fromhex("6209800100BE0404022100")
    assert RLRQ.decode(rlrq.encode()) == rlrq


def test_initiate_request_with_dedicated_key_and_flags() -> None:
    request = InitiateRequest(
        MANAGEMENT_CONFORMANCE,
        client_max_receive_pdu_size=1024,
        dedicated_key=bytes(range(16)),
        response_allowed=False,
        proposed_quality_of_service=3,
    )
    raw = request.encode()
    assert raw.startswith(b"\x01\x01\x10" + bytes(range(16)) + b"\x01\x00\x01\x03\x06\x5f\x1f\x04\x00")
    assert raw.endswith(b"\x04\x00")
    assert InitiateRequest.decode(raw) == request
    assert "dedicated_key" not in repr(request)


def test_conformance_bits_follow_the_standard_positions() -> None:
    # get, set, action, selective-access, block-transfer-with-get, multiple-references
    assert MANAGEMENT_CONFORMANCE == 0x00121D
    assert Conformance.GENERAL_PROTECTION == 0x400000
    assert Conformance.ACTION == 0x000001


def test_confirmed_service_error_for_a_too_low_dlms_version() -> None:
    error = ConfirmedServiceError(1, 6, InitiateErrorReason.DLMS_VERSION_TOO_LOW)
    assert error.encode() == bytes.fromhex("0E010601")
    assert decode_xdlms_initiate(bytes.fromhex("0E010601")) == error


def test_authentication_values_stay_out_of_reprs() -> None:
    assert "12345678" not in repr(AARQ.decode(LLS_AARQ))
    assert "SECRET" not in repr(AARE(responding_authentication_value=b"SECRET"))


@pytest.mark.parametrize(
    ("decoder", "hex_bytes"),
    [
        (AARQ.decode, "6000"),  # no application context name
        (AARQ.decode, "6003A10100"),  # context name without an OID
        (AARQ.decode, "600BA109060760857405080201"),  # a mechanism OID where the context belongs
        (AARQ.decode, "6036A109"),  # truncated
        (AARQ.decode, "6100"),  # an AARE
        (AARE.decode, "610BA109060760857405080101"),  # no result / diagnostic
        (AARE.decode, "6129A109060760857405080101A203020100A305A303020100"),  # bad diagnostic choice
        (RLRE.decode, "630380010000"),  # trailing byte
        (RLRE.decode, "6303800500"),  # overrun
        (InitiateRequest.decode, "0100000006"),
        (InitiateResponse.decode, "0800065F1F050000501F01F40007"),
        (decode_xdlms_initiate, "C0"),
        (decode_xdlms_initiate, ""),
    ],
)
def test_malformed_acse_input_raises_decode_error(decoder: object, hex_bytes: str) -> None:
    with pytest.raises(DecodeError):
        decoder(bytes.fromhex(hex_bytes))  # type: ignore[operator]


def test_unencodable_fields_raise_encode_error() -> None:
    with pytest.raises(EncodeError):
        AARQ(mechanism=200).encode()
    with pytest.raises(EncodeError):
        InitiateRequest(Conformance.GET, client_max_receive_pdu_size=70000).encode()
    with pytest.raises(EncodeError):
        AARE(diagnostic_source=3).encode()


optional_bytes = st.none() | st.binary(max_size=40)
aarqs = st.builds(
    AARQ,
    application_context=st.integers(0, 127),
    calling_ap_title=optional_bytes,
    authentication=st.booleans(),
    mechanism=st.none() | st.integers(0, 127),
    calling_authentication_value=optional_bytes,
    user_information=st.none() | st.binary(max_size=300),
)
aares = st.builds(
    AARE,
    result=st.integers(0, 2),
    diagnostic=st.integers(0, 255),
    diagnostic_source=st.sampled_from([1, 2]),
    application_context=st.integers(0, 127),
    responding_ap_title=optional_bytes,
    authentication=st.booleans(),
    mechanism=st.none() | st.integers(0, 127),
    responding_authentication_value=optional_bytes,
    user_information=optional_bytes,
)
conformances = st.integers(0, 0xFFFFFF).map(Conformance)
initiate_requests = st.builds(
    InitiateRequest,
    conformance=conformances,
    client_max_receive_pdu_size=st.integers(0, 0xFFFF),
    dlms_version=st.integers(0, 255),
    dedicated_key=st.none() | st.binary(min_size=16, max_size=16),
    response_allowed=st.booleans(),
    proposed_quality_of_service=st.none() | st.integers(-128, 127),
)
initiate_responses = st.builds(
    InitiateResponse,
    conformance=conformances,
    server_max_receive_pdu_size=st.integers(0, 0xFFFF),
    dlms_version=st.integers(0, 255),
    negotiated_quality_of_service=st.none() | st.integers(-128, 127),
    vaa_name=st.integers(0, 0xFFFF),
)


@given(aarqs)
def test_aarq_round_trips(aarq: AARQ) -> None:
    assert AARQ.decode(aarq.encode()) == aarq


@given(aares)
def test_aare_round_trips(aare: AARE) -> None:
    assert AARE.decode(aare.encode()) == aare


@given(st.none() | st.integers(0, 127), optional_bytes)
def test_release_apdus_round_trip(reason: int | None, user_information: bytes | None) -> None:
    assert RLRQ.decode(RLRQ(reason, user_information).encode()) == RLRQ(reason, user_information)
    assert RLRE.decode(RLRE(reason, user_information).encode()) == RLRE(reason, user_information)


@given(initiate_requests | initiate_responses | st.builds(ConfirmedServiceError, *[st.integers(0, 255)] * 3))
def test_xdlms_initiate_apdus_round_trip(apdu: InitiateRequest | InitiateResponse | ConfirmedServiceError) -> None:
    assert decode_xdlms_initiate(apdu.encode()) == apdu
