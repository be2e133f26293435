"""Security Suite 0 (Green Book clause 9.2): GCM known answers, ciphered APDUs, HLS-GMAC, replay."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openami.protocols.dlms import security
from openami.protocols.dlms.errors import AuthenticationTagError, DecodeError, ReplayError, SecurityError
from openami.protocols.dlms.security import (
    DecipheredApdu,
    ReplayGuard,
    SecurityControl,
    Suite0,
    cipher_apdu,
    cipher_general_glo,
    decipher_apdu,
    ded_tag,
    glo_tag,
    hls_gmac,
    plain_tag,
    verify_hls_gmac,
)

# Green Book example keys and titles (clause 9.2.7 examples)
EK = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
AK = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")
SERVER_TITLE = bytes.fromhex("4D4D4D0000BC614E")
CLIENT_TITLE = bytes.fromhex("4D4D4D0000000001")
GB_INITIATE_REQUEST = bytes.fromhex("01011000112233445566778899AABBCCDDEEFF0000065F1F0400007E1F04B0")
GB_GLO_INITIATE_REQUEST = bytes.fromhex(
    "21303001234567801302FF8A7874133D414CED25B42534D28DB0047720606B175BD52211BE6841DB204D39EE6FDB8E356855"
)
OTHER_KEY = bytes(16)
GET_CLOCK = bytes.fromhex("C001C100080000010000FF0200")

# --------------------------------------------------------------------- AES-GCM known answers (NIST)
# Test cases 1-4 of McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", AES-128; DLMS uses
# the first 12 bytes of the tag.
K3 = bytes.fromhex("feffe9928665731c6d6a8f9467308308")
IV3 = bytes.fromhex("cafebabefacedbaddecaf888")
P3 = bytes.fromhex(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
)
C3 = bytes.fromhex(
    "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
    "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985"
)
NIST_CASES = [
    (bytes(16), bytes(12), b"", b"", b"", "58e2fccefa7e3061367f1d57a4e7455a"),
    (
        bytes(16),
        bytes(12),
        bytes(16),
        b"",
        bytes.fromhex("0388dace60b6a392f328c2b971b2fe78"),
        "ab6e47d42cec13bdf53a67b21257bddf",
    ),
    (K3, IV3, P3, b"", C3, "4d5c2af327cd64a62cf35abd2ba6fab4"),
    (
        K3,
        IV3,
        P3[:60],
        bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2"),
        C3[:60],
        "5bc94fbc3221a5db94fae95ae7121a47",
    ),
]


@pytest.mark.parametrize(("key", "iv", "plaintext", "aad", "ciphertext", "tag"), NIST_CASES)
def test_gcm_matches_nist_vectors_with_12_byte_tags(
    key: bytes, iv: bytes, plaintext: bytes, aad: bytes, ciphertext: bytes, tag: str
) -> None:
    sealed, got_tag = security._gcm_seal(key, iv, aad, plaintext)
    assert sealed == ciphertext
    assert got_tag == bytes.fromhex(tag)[:12]
    assert security._gcm_open(key, iv, aad, ciphertext, bytes.fromhex(tag)[:12]) == plaintext
    with pytest.raises(AuthenticationTagError):
        security._gcm_open(key, iv, aad + b"x", ciphertext, bytes.fromhex(tag)[:12])


def test_encryption_only_uses_the_gcm_keystream() -> None:
    assert security._ctr(K3, IV3, P3) == C3


# ---------------------------------------------------------------------------- Green Book examples


def test_green_book_glo_initiate_request_known_answer() -> None:
    ciphered = cipher_apdu(
        GB_INITIATE_REQUEST,
        tag=glo_tag(0x01),
        security_control=0x30,
        system_title=SERVER_TITLE,
        invocation_counter=0x01234567,
        ek=EK,
        ak=AK,
    )
    assert ciphered == GB_GLO_INITIATE_REQUEST
    opened = decipher_apdu(GB_GLO_INITIATE_REQUEST, system_title=SERVER_TITLE, ek=EK, ak=AK)
    assert opened == DecipheredApdu(0x30, 0x01234567, GB_INITIATE_REQUEST, 0x21, SERVER_TITLE)


def test_green_book_hls_gmac_pass_3_client_answers_stoc() -> None:
    stoc = b"P6wRJ21F"
    value = hls_gmac(system_title=CLIENT_TITLE, invocation_counter=1, ek=EK, ak=AK, challenge=stoc)
    assert value == bytes.fromhex("10000000011A52FE7DD3E72748973C1E28")
    assert verify_hls_gmac(value, system_title=CLIENT_TITLE, ek=EK, ak=AK, challenge=stoc) == 1


def test_green_book_hls_gmac_pass_4_server_answers_ctos() -> None:
    ctos = b"K56iVagY"
    value = hls_gmac(system_title=SERVER_TITLE, invocation_counter=0x01234567, ek=EK, ak=AK, challenge=ctos)
    assert value == bytes.fromhex("1001234567FE1466AFB3DBCD4F9389E2B7")
    assert verify_hls_gmac(value, system_title=SERVER_TITLE, ek=EK, ak=AK, challenge=ctos) == 0x01234567


def test_glo_get_request_matches_an_independent_implementation() -> None:
    # Published example of an independent DLMS ciphering tool (system title "RICRICRI").
    ciphered = cipher_apdu(
        bytes.fromhex("c001810001000060010aff0200"),
        tag=0xC8,
        security_control=0x30,
        system_title=bytes.fromhex("5249435249435249"),
        invocation_counter=0x80000001,
        ek=bytes.fromhex("454E4352595054494F4E4B45594B4559"),
        ak=bytes.fromhex("41555448454E5449434154494F4E4B45"),
    )
    assert ciphered == bytes.fromhex("c81e30800000010de63f2331a09aa85e8830f5f3610d47e1e24b14e8a022aefc")


def test_hls_gmac_rejects_wrong_key_challenge_title_or_shape() -> None:
    value = hls_gmac(system_title=CLIENT_TITLE, invocation_counter=7, ek=EK, ak=AK, challenge=b"challenge")
    for kwargs in (
        {"system_title": CLIENT_TITLE, "ek": OTHER_KEY, "ak": AK, "challenge": b"challenge"},
        {"system_title": CLIENT_TITLE, "ek": EK, "ak": OTHER_KEY, "challenge": b"challenge"},
        {"system_title": SERVER_TITLE, "ek": EK, "ak": AK, "challenge": b"challenge"},
        {"system_title": CLIENT_TITLE, "ek": EK, "ak": AK, "challenge": b"challengf"},
    ):
        with pytest.raises(AuthenticationTagError):
            verify_hls_gmac(value, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(AuthenticationTagError):
        verify_hls_gmac(value[:-1], system_title=CLIENT_TITLE, ek=EK, ak=AK, challenge=b"challenge")
    with pytest.raises(AuthenticationTagError):
        verify_hls_gmac(b"\x00" + value[1:], system_title=CLIENT_TITLE, ek=EK, ak=AK, challenge=b"challenge")


# ------------------------------------------------------------------------------ ciphered APDUs


def _cipher(plain: bytes = GET_CLOCK, *, sc: int = 0x30, ic: int = 1, tag: int = 0xC8) -> bytes:
    return cipher_apdu(
        plain, tag=tag, security_control=sc, system_title=CLIENT_TITLE, invocation_counter=ic, ek=EK, ak=AK
    )


def test_glo_layout_is_tag_length_sc_ic_ciphertext_tag() -> None:
    ciphered = _cipher(ic=0x0A0B0C0D)
    assert ciphered[0] == 0xC8
    assert ciphered[1] == len(ciphered) - 2 == 5 + len(GET_CLOCK) + 12
    assert ciphered[2:7] == bytes.fromhex("300A0B0C0D")
    assert GET_CLOCK not in ciphered


def test_authentication_only_sends_the_plaintext_in_clear_and_verifies_it() -> None:
    ciphered = _cipher(sc=0x10)
    assert ciphered[7 : 7 + len(GET_CLOCK)] == GET_CLOCK
    assert decipher_apdu(ciphered, system_title=CLIENT_TITLE, ek=EK, ak=AK).plaintext == GET_CLOCK
    tampered = bytearray(ciphered)
    tampered[10] ^= 0x01
    with pytest.raises(AuthenticationTagError):
        decipher_apdu(bytes(tampered), system_title=CLIENT_TITLE, ek=EK, ak=AK)


def test_encryption_only_round_trips_without_a_tag() -> None:
    ciphered = _cipher(sc=0x20)
    assert len(ciphered) == 2 + 5 + len(GET_CLOCK)
    assert decipher_apdu(ciphered, system_title=CLIENT_TITLE, ek=EK, ak=AK).plaintext == GET_CLOCK


def test_receiver_detects_any_tampered_byte() -> None:
    ciphered = _cipher()
    for position in range(len(ciphered)):
        tampered = bytearray(ciphered)
        tampered[position] ^= 0x40
        with pytest.raises((AuthenticationTagError, DecodeError, SecurityError)):
            decipher_apdu(bytes(tampered), system_title=CLIENT_TITLE, ek=EK, ak=AK)


def test_receiver_rejects_ciphertext_and_tag_changes_as_authentication_failures() -> None:
    ciphered = _cipher()
    for position in range(7, len(ciphered)):
        tampered = bytearray(ciphered)
        tampered[position] ^= 0x01
        with pytest.raises(AuthenticationTagError):
            decipher_apdu(bytes(tampered), system_title=CLIENT_TITLE, ek=EK, ak=AK)


@pytest.mark.parametrize(("ek", "ak"), [(OTHER_KEY, AK), (EK, OTHER_KEY)])
def test_receiver_with_a_wrong_key_rejects_the_apdu(ek: bytes, ak: bytes) -> None:
    with pytest.raises(AuthenticationTagError):
        decipher_apdu(_cipher(), system_title=CLIENT_TITLE, ek=ek, ak=ak)


def test_cached_suite_gives_the_module_functions_bytes_and_refuses_the_same_tampering() -> None:
    suite = Suite0(EK, AK)
    assert suite.cipher(
        GET_CLOCK, tag=0xC8, security_control=0x30, system_title=CLIENT_TITLE, invocation_counter=1
    ) == (_cipher())
    guard = ReplayGuard()
    assert suite.decipher(_cipher(), system_title=CLIENT_TITLE, replay_guard=guard).plaintext == GET_CLOCK
    tampered = bytearray(_cipher())
    tampered[-1] ^= 0x01
    with pytest.raises(AuthenticationTagError):
        suite.decipher(bytes(tampered), system_title=CLIENT_TITLE)
    with pytest.raises(ReplayError):
        suite.decipher(_cipher(), system_title=CLIENT_TITLE, replay_guard=guard)
    with pytest.raises(ReplayError):
        suite.plaintext(_cipher(), system_title=CLIENT_TITLE, replay_guard=guard)
    with pytest.raises(AuthenticationTagError):
        suite.plaintext(bytes(tampered), system_title=CLIENT_TITLE)
    assert suite.plaintext(_cipher(ic=2), system_title=CLIENT_TITLE, replay_guard=guard) == GET_CLOCK
    assert guard.last_accepted == 2
    f_stoc = suite.hls_gmac(system_title=CLIENT_TITLE, invocation_counter=4, challenge=b"StoC-challenge!!")
    assert f_stoc == hls_gmac(
        system_title=CLIENT_TITLE, invocation_counter=4, ek=EK, ak=AK, challenge=b"StoC-challenge!!"
    )
    assert suite.verify_hls_gmac(f_stoc, system_title=CLIENT_TITLE, challenge=b"StoC-challenge!!") == 4
    assert EK.hex() not in repr(suite).lower()
    assert AK.hex() not in repr(suite).lower()


def test_receiver_with_the_wrong_sender_title_rejects_the_apdu() -> None:
    with pytest.raises(AuthenticationTagError):
        decipher_apdu(_cipher(), system_title=SERVER_TITLE, ek=EK, ak=AK)


def test_general_glo_ciphering_carries_the_system_title() -> None:
    ciphered = cipher_general_glo(
        GET_CLOCK, security_control=0x30, system_title=CLIENT_TITLE, invocation_counter=9, ek=EK, ak=AK
    )
    assert ciphered[:10] == b"\xdb\x08" + CLIENT_TITLE
    opened = decipher_apdu(ciphered, system_title=None, ek=EK, ak=AK)
    assert (opened.plaintext, opened.system_title, opened.ciphered_tag, opened.invocation_counter) == (
        GET_CLOCK,
        CLIENT_TITLE,
        0xDB,
        9,
    )
    assert decipher_apdu(ciphered, system_title=CLIENT_TITLE, ek=EK, ak=AK).plaintext == GET_CLOCK
    with pytest.raises(SecurityError):
        decipher_apdu(ciphered, system_title=SERVER_TITLE, ek=EK, ak=AK)


def test_receiver_rejects_replayed_invocation_counter() -> None:
    guard = ReplayGuard(last_accepted=4)
    assert decipher_apdu(_cipher(ic=5), system_title=CLIENT_TITLE, ek=EK, ak=AK, replay_guard=guard).plaintext
    assert guard.last_accepted == 5
    for stale in (5, 3):
        with pytest.raises(ReplayError) as caught:
            decipher_apdu(_cipher(ic=stale), system_title=CLIENT_TITLE, ek=EK, ak=AK, replay_guard=guard)
        assert caught.value.expected == 6
    decipher_apdu(_cipher(ic=100), system_title=CLIENT_TITLE, ek=EK, ak=AK, replay_guard=guard)
    assert guard.last_accepted == 100


def test_forged_apdu_does_not_advance_the_replay_guard() -> None:
    guard = ReplayGuard(last_accepted=1)
    forged = bytearray(_cipher(ic=1000))
    forged[-1] ^= 0x01
    with pytest.raises(AuthenticationTagError):
        decipher_apdu(bytes(forged), system_title=CLIENT_TITLE, ek=EK, ak=AK, replay_guard=guard)
    assert guard.last_accepted == 1


def test_replay_guard_refuses_unauthenticated_apdus() -> None:
    guard = ReplayGuard(last_accepted=1)
    with pytest.raises(SecurityError, match="authenticated"):
        decipher_apdu(_cipher(sc=0x20, ic=1000), system_title=CLIENT_TITLE, ek=EK, ak=AK, replay_guard=guard)
    assert guard.last_accepted == 1


def test_replay_guard_check_and_advance() -> None:
    guard = ReplayGuard(last_accepted=10)
    guard.check_and_advance(11)
    with pytest.raises(ReplayError) as caught:
        guard.check_and_advance(11)
    assert caught.value.expected == 12


def test_plain_tags_map_to_the_glo_and_ded_tags_of_the_standard() -> None:
    assert {plain: glo_tag(plain) for plain in (0xC0, 0xC1, 0xC3, 0xC4, 0xC5, 0xC7, 0x01, 0x08, 0xC2, 0x0E)} == {
        0xC0: 0xC8,
        0xC1: 0xC9,
        0xC3: 0xCB,
        0xC4: 0xCC,
        0xC5: 0xCD,
        0xC7: 0xCF,
        0x01: 0x21,
        0x08: 0x28,
        0xC2: 0xCA,
        0x0E: 0x2E,
    }
    assert ded_tag(0xC0) == 0xD0
    assert plain_tag(0xCC) == 0xC4
    assert plain_tag(0xDB) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"security_control": 0x31},  # suite 1
        {"security_control": 0xB0},  # compression
        {"security_control": 0x00},  # neither authenticated nor encrypted
        {"system_title": b"short"},
        {"invocation_counter": 2**32},
        {"ek": bytes(15)},
    ],
)
def test_unsupported_or_invalid_ciphering_inputs_raise_security_error(kwargs: dict[str, object]) -> None:
    arguments: dict[str, object] = {
        "tag": 0xC8,
        "security_control": 0x30,
        "system_title": CLIENT_TITLE,
        "invocation_counter": 1,
        "ek": EK,
        "ak": AK,
    }
    arguments.update(kwargs)
    with pytest.raises(SecurityError):
        cipher_apdu(GET_CLOCK, **arguments)  # type: ignore[arg-type]


def test_deciphered_plaintext_and_keys_stay_out_of_reprs_and_messages() -> None:
    opened = decipher_apdu(_cipher(), system_title=CLIENT_TITLE, ek=EK, ak=AK)
    assert GET_CLOCK.hex() not in repr(opened).lower()
    assert "plaintext" not in repr(opened)
    with pytest.raises(SecurityError) as caught:
        cipher_apdu(
            GET_CLOCK,
            tag=0xC8,
            security_control=0x30,
            system_title=CLIENT_TITLE,
            invocation_counter=1,
            ek=b"k" * 15,
            ak=AK,
        )
    assert "kkk" not in str(caught.value)


def test_security_control_flags() -> None:
    assert SecurityControl.AUTHENTICATED | SecurityControl.ENCRYPTED == 0x30
    assert SecurityControl.suite_id(0x31) == 1


def test_decipher_rejects_unciphered_and_malformed_apdus() -> None:
    for raw in (b"", GET_CLOCK, b"\xc8\x03\x30\x00\x00", b"\xc8\x10" + bytes(5), b"\xdb\x07" + bytes(12)):
        with pytest.raises(DecodeError):
            decipher_apdu(raw, system_title=CLIENT_TITLE, ek=EK, ak=AK)
    with pytest.raises(SecurityError):
        decipher_apdu(_cipher(), system_title=None, ek=EK, ak=AK)
    with pytest.raises(AuthenticationTagError):
        decipher_apdu(b"\xc8\x08\x30\x00\x00\x00\x01abc", system_title=CLIENT_TITLE, ek=EK, ak=AK)


@given(
    st.binary(max_size=600),
    st.sampled_from([0x10, 0x20, 0x30, 0x50, 0x70]),
    st.integers(0, 2**32 - 1),
    st.sampled_from(sorted(security.GLO_TAGS.values()) + sorted(security.DED_TAGS.values())),
)
def test_cipher_then_decipher_round_trips(plain: bytes, sc: int, ic: int, tag: int) -> None:
    opened = decipher_apdu(_cipher(plain, sc=sc, ic=ic, tag=tag), system_title=CLIENT_TITLE, ek=EK, ak=AK)
    assert (opened.plaintext, opened.security_control, opened.invocation_counter, opened.ciphered_tag) == (
        plain,
        sc,
        ic,
        tag,
    )


def test_server_security_never_ciphers_with_a_replaced_key() -> None:
    from openami.protocols.dlms.server_policy import ServerSecurity  # noqa: PLC0415 - the one test of it here

    server = ServerSecurity(SERVER_TITLE, EK, AK)
    assert server.suite.plaintext(_cipher(), system_title=CLIENT_TITLE) == GET_CLOCK
    server.guek = OTHER_KEY
    with pytest.raises(AuthenticationTagError):
        server.suite.plaintext(_cipher(), system_title=CLIENT_TITLE)
    server.guek, server.gak = EK, OTHER_KEY
    with pytest.raises(AuthenticationTagError):
        server.suite.plaintext(_cipher(), system_title=CLIENT_TITLE)
    assert "***" in repr(server)
