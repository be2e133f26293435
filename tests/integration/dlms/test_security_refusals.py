"""The meter's refusals (Green Book 9.2, IEC 62056-5-3 9.4): wrong keys, replay, bad tag, no ciphering."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from openami.protocols.dlms.acse import AARE, AARQ, ApplicationContext, Mechanism
from openami.protocols.dlms.apdu import (
    ActionRequestNormal,
    ActionResponseNormal,
    ActionResult,
    AttributeDescriptor,
    GetRequestNormal,
    GetResponseNormal,
    MethodDescriptor,
    decode_apdu,
)
from openami.protocols.dlms.client import ClientSettings, DlmsClient
from openami.protocols.dlms.client_connection import Associated
from openami.protocols.dlms.obis import CURRENT_ASSOCIATION, SERIAL
from openami.protocols.dlms.security import ReplayGuard, cipher_apdu, decipher_apdu, hls_gmac
from openami.protocols.dlms.session_errors import AssociationRejectedError
from openami.protocols.dlms.xdlms import Conformance, InitiateRequest

from .conftest import CLIENT_TITLE, GAK, GUEK, SERVER_TITLE, RawSession

WRONG_KEY = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
GET_SERIAL = GetRequestNormal(AttributeDescriptor(1, SERIAL, 2)).encode()


def glo(plain: bytes, ic: int, *, ek: bytes = GUEK, ak: bytes = GAK) -> bytes:
    """A glo-ciphered request from the management client (SC 0x30)."""
    tag = {0xC0: 0xC8, 0xC1: 0xC9, 0xC3: 0xCB, 0x01: 0x21}[plain[0]]
    return cipher_apdu(
        plain, tag=tag, security_control=0x30, system_title=CLIENT_TITLE, invocation_counter=ic, ek=ek, ak=ak
    )


def opened(answer: bytes) -> object:
    """Decipher and decode one of the meter's answers."""
    return decode_apdu(decipher_apdu(answer, system_title=SERVER_TITLE, ek=GUEK, ak=GAK).plaintext)


async def _associated(raw_session: Callable, settings: ClientSettings) -> RawSession:
    session = await raw_session(settings)
    assert isinstance(await session.associate(), Associated)
    return session


@pytest.mark.parametrize("wrong", ["guek", "gak"])
async def test_wrong_key_rejected_permanent_diagnostic_1(management: Callable[..., ClientSettings], wrong: str) -> None:
    with pytest.raises(AssociationRejectedError) as rejected:
        async with DlmsClient(management(**{wrong: WRONG_KEY})):
            pass
    assert (rejected.value.result, rejected.value.diagnostic) == (1, 1)
    assert WRONG_KEY.hex() not in str(rejected.value).lower()


async def test_management_client_without_mechanism_rejected_diagnostic_12(
    management: Callable[..., ClientSettings],
) -> None:
    with pytest.raises(AssociationRejectedError) as rejected:
        async with DlmsClient(management(mechanism=Mechanism.NONE)):
            pass
    assert rejected.value.diagnostic == 12


async def test_management_client_without_ciphering_rejected_diagnostic_2(
    management: Callable[..., ClientSettings],
) -> None:
    with pytest.raises(AssociationRejectedError) as rejected:
        async with DlmsClient(management(ciphered=False)):
            pass
    assert rejected.value.diagnostic == 2


async def test_unsupported_mechanism_rejected_diagnostic_11(
    management: Callable[..., ClientSettings], raw_session: Callable
) -> None:
    session = await raw_session(management())
    initiate = glo(InitiateRequest(Conformance.GET, 1024).encode(), 1)
    aarq = AARQ(ApplicationContext.LN_CIPHERING, CLIENT_TITLE, True, Mechanism.LLS, b"password", initiate)
    aare = AARE.decode(await session.exchange(aarq.encode()))
    assert (aare.result, aare.diagnostic) == (1, 11)


async def test_unciphered_initiate_on_ciphered_context_rejected_diagnostic_2(
    management: Callable[..., ClientSettings], raw_session: Callable
) -> None:
    session = await raw_session(management())
    plain = InitiateRequest(Conformance.GET, 1024).encode()
    aarq = AARQ(ApplicationContext.LN_CIPHERING, CLIENT_TITLE, True, Mechanism.HLS_GMAC, b"0123456789ABCDEF", plain)
    aare = AARE.decode(await session.exchange(aarq.encode()))
    assert (aare.result, aare.diagnostic) == (1, 2)


async def test_bad_tag_answered_d8_01_05_and_association_stays_usable(
    management: Callable[..., ClientSettings], raw_session: Callable
) -> None:
    session = await _associated(raw_session, management())
    ic = session.connection.client_invocation_counter
    tampered = bytearray(glo(GET_SERIAL, ic))
    tampered[-1] ^= 0x01
    assert await session.exchange(bytes(tampered)) == bytes.fromhex("D80105")
    answer = opened(await session.exchange(glo(GET_SERIAL, ic)))  # the same counter: never accepted
    assert answer == GetResponseNormal("OAM00000042")


async def test_replayed_frame_answered_d8_01_06_with_expected_counter(
    management: Callable[..., ClientSettings], raw_session: Callable
) -> None:
    session = await _associated(raw_session, management())
    ic = session.connection.client_invocation_counter
    request = glo(GET_SERIAL, ic)
    assert opened(await session.exchange(request)) == GetResponseNormal("OAM00000042")
    assert await session.exchange(request) == bytes.fromhex("D80106") + (ic + 1).to_bytes(4, "big")
    assert opened(await session.exchange(glo(GET_SERIAL, ic + 1))) == GetResponseNormal("OAM00000042")


async def test_request_with_wrong_encryption_key_answered_d8_01_05(
    management: Callable[..., ClientSettings], raw_session: Callable
) -> None:
    session = await _associated(raw_session, management())
    ic = session.connection.client_invocation_counter
    assert await session.exchange(glo(GET_SERIAL, ic, ek=WRONG_KEY)) == bytes.fromhex("D80105")


async def test_unciphered_request_on_ciphered_association_answered_d8_01_01(
    management: Callable[..., ClientSettings], raw_session: Callable
) -> None:
    session = await _associated(raw_session, management())
    assert await session.exchange(GET_SERIAL) == bytes.fromhex("D80101")
    ic = session.connection.client_invocation_counter
    assert opened(await session.exchange(glo(GET_SERIAL, ic))) == GetResponseNormal("OAM00000042")


async def test_wrong_hls_answer_refused_and_nothing_served(
    management: Callable[..., ClientSettings], raw_session: Callable
) -> None:
    settings = management()
    session = await raw_session(settings)
    ctos = b"C" * 16
    initiate = glo(InitiateRequest(Conformance.GET | Conformance.ACTION, 1024).encode(), 1)
    aarq = AARQ(ApplicationContext.LN_CIPHERING, CLIENT_TITLE, True, Mechanism.HLS_GMAC, ctos, initiate)
    aare = AARE.decode(await session.exchange(aarq.encode()))
    assert (aare.result, aare.diagnostic) == (0, 14)
    assert aare.responding_authentication_value
    assert GET_SERIAL[0] == 0xC0
    # pass 3 answers a different challenge than the server's StoC
    forged = hls_gmac(system_title=CLIENT_TITLE, invocation_counter=2, ek=GUEK, ak=GAK, challenge=b"not the StoC")
    action = ActionRequestNormal(MethodDescriptor(15, CURRENT_ASSOCIATION, 1), forged).encode()
    answer = opened(await session.exchange(glo(action, 3)))
    assert isinstance(answer, ActionResponseNormal)
    assert answer.result == ActionResult.READ_WRITE_DENIED
    assert await session.exchange(glo(GET_SERIAL, 4)) == bytes.fromhex("D80101")


async def test_server_answers_are_ciphered_with_increasing_counters(
    management: Callable[..., ClientSettings], raw_session: Callable
) -> None:
    session = await _associated(raw_session, management())
    guard = ReplayGuard(session.connection.server_invocation_counter)
    ic = session.connection.client_invocation_counter
    for offset in range(3):
        answer = await session.exchange(glo(GET_SERIAL, ic + offset))
        assert answer[0] == 0xCC  # glo-get-response
        plain = decipher_apdu(answer, system_title=SERVER_TITLE, ek=GUEK, ak=GAK, replay_guard=guard).plaintext
        assert decode_apdu(plain) == GetResponseNormal("OAM00000042")


async def test_keys_never_appear_in_settings_repr(management: Callable[..., ClientSettings]) -> None:
    text = repr(replace(management()))
    assert GUEK.hex() not in text.lower()
    assert GAK.hex() not in text.lower()
    assert "guek" not in text
