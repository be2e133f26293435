"""Key transfer over real loopback: Security Setup (class 64) method 2 global_key_transfer (Blue Book, Green Book).

The new keys arrive wrapped (RFC 3394) under the meter's master key; they take effect for the next
association, the current one keeps answering with its own keys, and a new key is a new invocation
counter space.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from openami.protocols.dlms import obis
from openami.protocols.dlms.apdu import ActionResult
from openami.protocols.dlms.axdr import Array, Enum, Structure
from openami.protocols.dlms.client import ClientSettings, DlmsClient
from openami.protocols.dlms.errors import ReplayError
from openami.protocols.dlms.keywrap import GLOBAL_KEY_TRANSFER, KeyId, encode_key_transfer, wrap_key
from openami.protocols.dlms.session_errors import AssociationRejectedError, DlmsTimeoutError, ServiceError
from openami.sim.meter import MeterConfig, SimulatedMeter

from .conftest import GAK, GUEK, SERIAL, SERVER_TITLE

KEK = bytes.fromhex("4B454B2D4B45592D4F4632D2D2D2D201")
NEW_GUEK = bytes.fromhex("A0A1A2A3A4A5A6A7A8A9AAABACADAEAF")
NEW_GAK = bytes.fromhex("B0B1B2B3B4B5B6B7B8B9BABBBCBDBEBF")
NEW_KEYS = [(KeyId.GLOBAL_UNICAST_ENCRYPTION, NEW_GUEK), (KeyId.AUTHENTICATION, NEW_GAK)]


@pytest.fixture
def meter() -> SimulatedMeter:
    """The suite's meter, with a master key (KEK) so that it accepts key transfers."""
    return SimulatedMeter(MeterConfig(SERIAL, SERVER_TITLE, GUEK, GAK, profile_days=2, kek=KEK))


async def _transfer(client: DlmsClient, parameter: object) -> None:
    await client.action(obis.SECURITY_SETUP, 64, GLOBAL_KEY_TRANSFER, parameter)  # type: ignore[arg-type]


async def _serial(settings: ClientSettings) -> tuple[object, int, int]:
    async with DlmsClient(settings) as client:
        serial = await client.get(obis.SERIAL, 1, 2)
    return serial, client.client_invocation_counter, client.server_invocation_counter


async def test_key_transfer_takes_effect_at_the_next_association(
    management: Callable[..., ClientSettings], meter: SimulatedMeter
) -> None:
    async with DlmsClient(management()) as client:
        await _transfer(client, encode_key_transfer(KEK, NEW_KEYS))
        # the association that carried the transfer still answers, with the keys it was made with
        assert await client.get(obis.SERIAL, 1, 2) == SERIAL
    next_ic = client.client_invocation_counter
    assert meter.security.guek == GUEK  # staged, not yet current
    with pytest.raises(AssociationRejectedError) as rejected:
        await _serial(management(invocation_counter=next_ic))
    assert rejected.value.diagnostic == 1
    assert NEW_GUEK.hex() not in str(rejected.value).lower()
    serial, _, _ = await _serial(management(guek=NEW_GUEK, gak=NEW_GAK, invocation_counter=next_ic + 1))
    assert serial == SERIAL
    assert (meter.security.guek, meter.security.gak, meter.security.kek) == (NEW_GUEK, NEW_GAK, KEK)


async def test_a_new_key_is_a_new_invocation_counter_space(
    management: Callable[..., ClientSettings], meter: SimulatedMeter
) -> None:
    async with DlmsClient(management(invocation_counter=5000)) as client:
        for _ in range(20):
            await client.get(obis.SERIAL, 1, 2)
        await _transfer(client, encode_key_transfer(KEK, NEW_KEYS))
    server_ic = client.server_invocation_counter
    assert server_ic > 20
    new_keys = {"guek": NEW_GUEK, "gak": NEW_GAK}
    # the meter's counter restarted with the new key: a client still expecting the old space refuses it
    with pytest.raises(ReplayError):
        await _serial(management(**new_keys, server_invocation_counter=server_ic))
    # and the meter accepts client counters from its new key's start again
    serial, _, new_server_ic = await _serial(management(**new_keys, invocation_counter=1))
    assert serial == SERIAL
    assert new_server_ic < server_ic


async def test_master_key_transfer_replaces_the_kek(
    management: Callable[..., ClientSettings], meter: SimulatedMeter
) -> None:
    new_kek = bytes(range(16))
    async with DlmsClient(management()) as client:
        await _transfer(client, encode_key_transfer(KEK, [(KeyId.MASTER, new_kek)]))
    async with DlmsClient(management(invocation_counter=client.client_invocation_counter)) as client:
        assert meter.security.kek == new_kek
        with pytest.raises(ServiceError) as refused:  # the old KEK no longer unwraps
            await _transfer(client, encode_key_transfer(KEK, NEW_KEYS))
        assert refused.value.result == ActionResult.OTHER_REASON
        await _transfer(client, encode_key_transfer(new_kek, NEW_KEYS))
    assert meter.security.has_staged_keys


@pytest.mark.parametrize(
    ("parameter", "result"),
    [
        (encode_key_transfer(bytes(16), NEW_KEYS), ActionResult.OTHER_REASON),  # wrapped under another KEK
        (
            Array([Structure((Enum(0), wrap_key(KEK, NEW_GUEK)[:-1] + b"\x00"))]),  # altered wrap
            ActionResult.OTHER_REASON,
        ),
        (Array([Structure((Enum(1), wrap_key(KEK, NEW_GUEK)))]), ActionResult.OTHER_REASON),  # broadcast key
        (Array([Structure((Enum(9), wrap_key(KEK, NEW_GUEK)))]), ActionResult.TYPE_UNMATCHED),
        (wrap_key(KEK, NEW_GUEK), ActionResult.TYPE_UNMATCHED),  # not an array
        (
            # one good key and one bad one: all or nothing
            Array([Structure((Enum(0), wrap_key(KEK, NEW_GUEK))), Structure((Enum(2), wrap_key(bytes(16), NEW_GAK)))]),
            ActionResult.OTHER_REASON,
        ),
    ],
    ids=["other-kek", "altered", "broadcast", "unknown-key-id", "not-an-array", "one-bad"],
)
async def test_bad_key_transfer_is_refused_and_leaves_the_keys_unchanged(
    management: Callable[..., ClientSettings], meter: SimulatedMeter, parameter: object, result: ActionResult
) -> None:
    async with DlmsClient(management()) as client:
        with pytest.raises(ServiceError) as refused:
            await _transfer(client, parameter)
        assert refused.value.result == result
        assert KEK.hex() not in str(refused.value).lower()
    assert not meter.security.has_staged_keys
    serial, _, _ = await _serial(management(invocation_counter=client.client_invocation_counter))
    assert serial == SERIAL
    assert (meter.security.guek, meter.security.gak) == (GUEK, GAK)


async def test_public_client_cannot_transfer_keys(public: Callable[..., ClientSettings], meter: SimulatedMeter) -> None:
    async with DlmsClient(public()) as client:
        with pytest.raises(ServiceError) as refused:
            await _transfer(client, encode_key_transfer(KEK, NEW_KEYS))
    assert refused.value.result == ActionResult.READ_WRITE_DENIED
    assert not meter.security.has_staged_keys


async def test_meter_without_master_key_refuses_key_transfer(management: Callable[..., ClientSettings]) -> None:
    from openami.sim.meter import close_servers, serve_meter  # noqa: PLC0415

    plain = SimulatedMeter(MeterConfig(SERIAL, SERVER_TITLE, GUEK, GAK, profile_days=1))
    server = await serve_meter(plain, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        async with DlmsClient(management(port=port)) as client:
            with pytest.raises(ServiceError) as refused:
                await _transfer(client, encode_key_transfer(KEK, NEW_KEYS))
        assert refused.value.result == ActionResult.OTHER_REASON
    finally:
        await close_servers([server])


async def test_simulator_fault_loses_the_answer_but_applies_the_transfer(
    management: Callable[..., ClientSettings], meter: SimulatedMeter
) -> None:
    meter.faults.lose_key_transfer_answer = True
    client = DlmsClient(management(timeout_s=0.3))
    async with client:
        with pytest.raises(DlmsTimeoutError):
            await _transfer(client, encode_key_transfer(KEK, NEW_KEYS))
    serial, _, _ = await _serial(
        management(guek=NEW_GUEK, gak=NEW_GAK, invocation_counter=client.client_invocation_counter)
    )
    assert serial == SERIAL
