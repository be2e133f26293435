"""GET with block transfer and Profile Generic reads over loopback (IEC 62056-5-3 9.3.6, Blue Book 4.3.6)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from openami.protocols.dlms.apdu import SelectiveAccess
from openami.protocols.dlms.axdr import DoubleLongUnsigned, LongUnsigned, Structure
from openami.protocols.dlms.client import ClientSettings, DlmsClient
from openami.protocols.dlms.cosem import CaptureObject
from openami.protocols.dlms.cosem_time import CosemDateTime
from openami.protocols.dlms.obis import ACTIVE_EXPORT, ACTIVE_IMPORT, CLOCK, LOAD_PROFILE
from openami.sim.meter import SimulatedMeter


def _last_quarter_hour(meter: SimulatedMeter) -> datetime:
    now = meter.clock.time()
    return now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)


async def test_get_with_block_reassembles_30_day_profile(
    management: Callable[..., ClientSettings], meter: SimulatedMeter
) -> None:
    end = _last_quarter_hour(meter)
    async with DlmsClient(management()) as client:
        rows = await client.read_profile(LOAD_PROFILE, end - timedelta(days=30) + timedelta(minutes=15), end)
        register, _ = await client.read_register(ACTIVE_IMPORT)
    assert len(rows) == 30 * 96
    assert [r.clock for r in rows] == [end - timedelta(minutes=15 * i) for i in reversed(range(30 * 96))]
    imports = [int(r.values[0]) for r in rows]
    assert imports == sorted(imports)  # cumulative register snapshots
    if meter.clock.time() < end + timedelta(minutes=15):  # no interval ended in between
        assert imports[-1] == register


async def test_profile_range_includes_both_ends(
    management: Callable[..., ClientSettings], meter: SimulatedMeter
) -> None:
    end = _last_quarter_hour(meter) - timedelta(hours=1)
    start = end - timedelta(hours=2)
    async with DlmsClient(management()) as client:
        rows = await client.read_profile("1.0.99.1.0.255", start, end)
    assert (rows[0].clock, rows[-1].clock) == (start, end)
    assert len(rows) == 9


async def test_96_row_profile_with_a_small_pdu_still_reassembles(
    management: Callable[..., ClientSettings], meter: SimulatedMeter
) -> None:
    end = _last_quarter_hour(meter)
    async with DlmsClient(management(max_pdu_size=256)) as client:
        assert client.max_pdu_size == 256
        rows = await client.read_profile(LOAD_PROFILE, end - timedelta(hours=23, minutes=45), end)
    assert len(rows) == 96


async def test_profile_columns_are_clock_import_export_status(management: Callable[..., ClientSettings]) -> None:
    async with DlmsClient(management()) as client:
        columns = await client.profile_columns(LOAD_PROFILE)
        period = await client.get(LOAD_PROFILE, 7, 4)
        entries = await client.get(LOAD_PROFILE, 7, 7)
    assert [(c.class_id, c.logical_name, c.attribute_index) for c in columns[:3]] == [
        (8, CLOCK, 2),
        (3, ACTIVE_IMPORT, 2),
        (3, ACTIVE_EXPORT, 2),
    ]
    assert period == DoubleLongUnsigned(900)
    assert entries == DoubleLongUnsigned(30 * 96)


async def test_profile_by_entry_descriptor(management: Callable[..., ClientSettings]) -> None:
    last_two = SelectiveAccess(
        2, Structure((DoubleLongUnsigned(30 * 96 - 1), DoubleLongUnsigned(0), LongUnsigned(1), LongUnsigned(2)))
    )
    async with DlmsClient(management()) as client:
        rows = await client.get(LOAD_PROFILE, 7, 2, last_two)
        newest = await client.read_profile(LOAD_PROFILE, datetime.now(UTC) - timedelta(minutes=15), datetime.now(UTC))
    assert len(rows) == 2
    assert all(len(row) == 2 for row in rows)
    assert rows[-1][1] == newest[-1].values[0]


async def test_profile_with_selected_columns(management: Callable[..., ClientSettings]) -> None:
    clock_column = CaptureObject(8, CLOCK, 2).to_data()
    now = datetime.now(UTC)
    access = SelectiveAccess(
        1,
        Structure(
            (
                clock_column,
                CosemDateTime.from_datetime(now - timedelta(hours=1)).to_bytes(),
                CosemDateTime.from_datetime(now).to_bytes(),
                [clock_column, CaptureObject(3, ACTIVE_EXPORT, 2).to_data()],
            )
        ),
    )
    async with DlmsClient(management()) as client:
        rows = await client.get(LOAD_PROFILE, 7, 2, access)
    assert 3 <= len(rows) <= 4
    assert all(len(row) == 2 for row in rows)
