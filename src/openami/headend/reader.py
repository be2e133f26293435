"""One read of one meter over DLMS: associate, read clock, registers and profile, release.

Only what the meter authenticated is returned: every response on the management association is
AES-GCM protected and its tag checked by the protocol layer, so a value that reaches the
``CollectedReadings`` built here is a value the meter's keys vouched for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from openami.domain.messages import CollectedReadings
from openami.domain.meters import CustomerClass
from openami.domain.readings import RegisterSnapshot
from openami.errors import (
    AssociationRejected,
    AuthenticationFailed,
    MeterCommunicationError,
    MeterTimeout,
    MeterUnreachable,
)
from openami.protocols.dlms import obis as obis_codes
from openami.protocols.dlms.client import DlmsClient, ProfileRow
from openami.protocols.dlms.client_connection import ClientSettings
from openami.protocols.dlms.errors import (
    AssociationError,
    AuthenticationTagError,
    DlmsError,
    ReplayError,
    SecurityError,
)
from openami.protocols.dlms.session_errors import ConnectionClosedError, DlmsTimeoutError, HlsAuthenticationError

INTERVAL_S = 900


@dataclass(frozen=True, slots=True)
class MeterTarget:
    """Everything needed to reach and authenticate one meter. Keys never appear in ``repr``."""

    meter_id: int
    serial: str
    host: str
    port: int
    system_title: bytes
    customer_class: CustomerClass
    guek: bytes = field(repr=False)
    gak: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SessionCounters:
    """Invocation counters a session starts from and ends with (see headend.counters)."""

    client_ic_next: int
    server_ic_last: int | None


@dataclass(frozen=True, slots=True)
class ReadResult:
    readings: CollectedReadings
    counters: SessionCounters


class _Steps:
    """Names the step a failure happened in, for the communication-error record."""

    def __init__(self) -> None:
        self.current = "connect"


def floor_interval(epoch: int) -> int:
    return epoch - epoch % INTERVAL_S


async def read_meter(
    target: MeterTarget,
    *,
    client_system_title: bytes,
    counters: SessionCounters,
    since: int,
    until: int,
    timeout_s: float,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ReadResult:
    """Read intervals ending in (since, until] plus clock and registers; raise MeterCommunicationError.

    ``since`` is the last interval end already held (epoch s); the profile request starts at the
    next interval so nothing already stored is read again.
    """
    settings = ClientSettings.management(
        target.host,
        target.port,
        system_title=client_system_title,
        guek=target.guek,
        gak=target.gak,
        invocation_counter=counters.client_ic_next,
        server_invocation_counter=-1 if counters.server_ic_last is None else counters.server_ic_last,
        timeout_s=timeout_s,
    )
    steps = _Steps()
    first_end = floor_interval(since) + INTERVAL_S
    last_end = floor_interval(until)
    client = DlmsClient(settings)
    try:
        async with client:
            steps.current = "identify"
            _check_identity(client, target)
            steps.current = "clock"
            meter_clock = await client.read_clock()
            read_at = now()
            steps.current = "registers"
            registers, scalers = await _read_registers(client, target.meter_id, read_at)
            steps.current = "profile"
            rows = await client.read_profile(
                obis_codes.LOAD_PROFILE,
                # one capture earlier than the first interval: its register value starts the first delta
                datetime.fromtimestamp(first_end - INTERVAL_S, UTC),
                datetime.fromtimestamp(last_end, UTC),
            )
            steps.current = "release"
    except MeterCommunicationError:
        raise
    except Exception as exc:
        raise _translate(exc, target.serial, steps.current) from exc
    readings = _collected(target.meter_id, read_at, meter_clock, (first_end, last_end), rows, registers, scalers)
    server_ic = client.server_invocation_counter
    return ReadResult(
        readings,
        SessionCounters(client.client_invocation_counter, None if server_ic < 0 else server_ic),
    )


def _check_identity(client: DlmsClient, target: MeterTarget) -> None:
    if client.server_system_title not in (None, target.system_title):
        raise AuthenticationFailed(f"meter {target.serial} answered with an unexpected system title", step="identify")


_UNITS = {27: "W", 30: "Wh", 32: "varh", 33: "A", 35: "V"}
_REGISTERS = (obis_codes.ACTIVE_IMPORT, obis_codes.ACTIVE_EXPORT)


async def _read_registers(
    client: DlmsClient, meter_id: int, read_at: datetime
) -> tuple[tuple[RegisterSnapshot, ...], tuple[int, ...]]:
    """Both energy registers (value and scaler_unit) in one GET-with-list; returns snapshots and scalers."""
    answers = await client.get_with_list([(code, 3, attr) for code in _REGISTERS for attr in (2, 3)])
    snapshots = []
    scalers = []
    for i, code in enumerate(_REGISTERS):
        value, scaler_unit = answers[2 * i], answers[2 * i + 1]
        if not isinstance(value, int | float) or not isinstance(scaler_unit, tuple) or len(scaler_unit) != 2:
            raise MeterCommunicationError(f"register {code} answered {value!r}/{scaler_unit!r}", step="registers")
        scaler, unit = int(_number(scaler_unit[0])), int(_number(scaler_unit[1]))
        scalers.append(scaler)
        scaled = float(value) * 10.0**scaler
        snapshots.append(RegisterSnapshot(meter_id, str(code), read_at, scaled, _UNITS.get(unit, str(unit)), read_at))
    return tuple(snapshots), tuple(scalers)


def _collected(
    meter_id: int,
    read_at: datetime,
    meter_clock: datetime,
    requested: tuple[int, int],
    rows: list[ProfileRow],
    registers: tuple[RegisterSnapshot, ...],
    scalers: tuple[int, ...],
) -> CollectedReadings:
    """Columnar interval energies from profile rows (clock, cumulative import, cumulative export, status)."""
    first_end, last_end = requested
    import_factor, export_factor = 10.0 ** scalers[0], 10.0 ** scalers[1]
    ends: list[int] = []
    imports: list[float] = []
    exports: list[float] = []
    status: list[int] = []
    previous: tuple[int, float, float] | None = None
    for row in rows:
        end = int(row.clock.timestamp())
        if previous is not None and end <= previous[0]:
            continue  # out of order or repeated: the meter's clock went back; VEE flags the clock
        imported = _number(row.values[0]) * import_factor
        exported = _number(row.values[1]) * export_factor
        # The profile captures the cumulative registers; an interval's energy is the difference to the
        # capture one interval earlier. Without that capture the interval is a gap for VEE to fill.
        if previous is not None and previous[0] == end - INTERVAL_S and first_end <= end <= last_end:
            ends.append(end)
            imports.append(imported - previous[1])
            exports.append(exported - previous[2])
            status.append(int(_number(row.values[2])) if len(row.values) > 2 else 0)
        previous = (end, imported, exported)
    return CollectedReadings(
        meter_id=meter_id,
        read_at=read_at,
        meter_clock=meter_clock,
        requested_from=first_end,
        requested_to=last_end,
        interval_ends=tuple(ends),
        import_wh=tuple(imports),
        export_wh=tuple(exports),
        status=tuple(status),
        registers=registers,
        interval_s=INTERVAL_S,
    )


def _number(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    raise MeterCommunicationError(f"profile column holds {type(value).__name__}, not a number", step="profile")


def _translate(exc: Exception, serial: str, step: str) -> MeterCommunicationError:
    """Map protocol and transport failures to the platform's errors; never carries key material."""
    if isinstance(exc, DlmsTimeoutError | TimeoutError):
        return MeterTimeout(f"meter {serial} did not answer in time during {step}", step=step)
    if isinstance(exc, ConnectionClosedError | ConnectionError | OSError):
        return MeterUnreachable(f"meter {serial} unreachable during {step}: {type(exc).__name__}", step=step)
    if isinstance(exc, ReplayError):
        return AuthenticationFailed(f"meter {serial} sent a replayed invocation counter during {step}", step=step)
    if isinstance(exc, AuthenticationTagError | SecurityError):
        return AuthenticationFailed(f"meter {serial} failed authentication during {step}", step=step)
    if isinstance(exc, HlsAuthenticationError) or (isinstance(exc, AssociationError) and exc.diagnostic == 13):
        return AuthenticationFailed(f"meter {serial} failed authentication during {step}", step=step)
    if isinstance(exc, AssociationError):
        return AssociationRejected(f"meter {serial} rejected the association (diagnostic {exc.diagnostic})", step=step)
    if isinstance(exc, DlmsError):
        return MeterCommunicationError(f"meter {serial}: {exc}", step=step)
    return MeterCommunicationError(f"meter {serial}: unexpected {type(exc).__name__} during {step}", step=step)
