"""One read of one meter over DLMS: associate, read clock and registers, read the profile, release.

Only what the meter authenticated is returned: every response on the management association is
AES-GCM protected and its tag checked by the protocol layer, so a value that reaches the
``CollectedReadings`` built here is a value the meter's keys vouched for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

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
from openami.protocols.dlms.apdu import DataAccessResult
from openami.protocols.dlms.client import DlmsClient, ProfileRow
from openami.protocols.dlms.client_connection import ClientSettings
from openami.protocols.dlms.cosem.profile import CaptureObject, parse_time
from openami.protocols.dlms.cosem_time import CosemDateTime
from openami.protocols.dlms.errors import (
    AssociationError,
    AuthenticationTagError,
    DecodeError,
    DlmsError,
    ProtocolStateError,
    ReplayError,
    SecurityError,
)
from openami.protocols.dlms.session_errors import (
    ConnectionClosedError,
    DlmsTimeoutError,
    HlsAuthenticationError,
    ServiceError,
)

INTERVAL_S = 900


class MeterSecurityFailure(AuthenticationFailed):
    """An authentication failure that is also a security event: ``kind`` is ``meter.bad-tag``,
    ``meter.hls-failed`` or ``meter.replay`` (the collector raises it as such, see security.events)."""

    def __init__(self, message: str, *, step: str, kind: str) -> None:
        super().__init__(message, step=step)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class PendingKeys:
    """Keys sent to the meter whose arrival is unconfirmed (a rotation in state uncertain, ``security.keys``)."""

    meter_rotation_id: int
    key_version: int  # their GUEK version: the counter space they open
    guek: bytes = field(repr=False)
    gak: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class MeterTarget:
    """Everything needed to reach and authenticate one meter. Keys never appear in ``repr``.

    ``key_version`` is the GUEK version of ``guek``/``gak`` (the invocation counter space);
    ``pending``, when set, holds keys the meter may have switched to: try them first.
    """

    meter_id: int
    serial: str
    host: str
    port: int
    system_title: bytes
    customer_class: CustomerClass
    guek: bytes = field(repr=False)
    gak: bytes = field(repr=False)
    key_version: int = 1
    pending: PendingKeys | None = None

    def with_pending_keys(self) -> MeterTarget:
        """This meter as if its pending keys were its keys (no pending keys left)."""
        assert self.pending is not None
        p = self.pending
        return replace(self, guek=p.guek, gak=p.gak, key_version=p.key_version, pending=None)


@dataclass(frozen=True, slots=True)
class SessionCounters:
    """Invocation counters a session starts from and ends with (see headend.counters)."""

    client_ic_next: int
    server_ic_last: int | None


@dataclass(frozen=True, slots=True)
class ProfileLayout:
    """Where the clock, import, export and status columns sit in a meter's load profile.

    Learnt from the profile's capture_objects once and cached per meter: real meters differ in
    column order and in what else they capture.
    """

    columns: tuple[CaptureObject, ...]
    import_index: int  # index into ProfileRow.values (the clock column is not among them)
    export_index: int
    status_index: int | None

    @classmethod
    def of(cls, columns: Sequence[CaptureObject]) -> ProfileLayout:
        others = [c for c in columns if not c.is_clock]
        if len(others) == len(columns):
            raise MeterCommunicationError("the load profile captures no clock", step="profile")
        positions = {(c.class_id, str(c.logical_name), c.attribute_index): i for i, c in enumerate(others)}
        try:
            import_index = positions[(3, str(obis_codes.ACTIVE_IMPORT), 2)]
            export_index = positions[(3, str(obis_codes.ACTIVE_EXPORT), 2)]
        except KeyError:
            raise MeterCommunicationError(
                "the load profile does not capture both active energy registers", step="profile"
            ) from None
        status = [i for i, c in enumerate(others) if c.class_id == 1 and str(c.logical_name).startswith("0.0.96.10.")]
        return cls(tuple(columns), import_index, export_index, status[0] if status else None)


@dataclass(frozen=True, slots=True)
class EventLogState:
    """What the head-end knows of one meter's event log (0.0.99.98.0.255), cached per meter.

    ``read_to`` is the meter time (epoch s) up to which the log has been read; ``present`` None
    until the meter has told (its answer to ``entries_in_use``); ``entries_in_use`` as at the last
    read: unchanged and below ``profile_entries`` means nothing new, so nothing is requested.
    """

    read_to: int
    present: bool | None = None
    entries_in_use: int | None = None


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One event-log row: the meter's time stamp (epoch s), openami's event code, the value."""

    meter_time: int
    code: int
    value: float | None


@dataclass(frozen=True, slots=True)
class ReadResult:
    readings: CollectedReadings
    counters: SessionCounters
    layout: ProfileLayout
    event_log: EventLogState | None = None
    events: tuple[LoggedEvent, ...] = ()


class _Steps:
    """Names the step a failure happened in, for the communication-error record."""

    def __init__(self) -> None:
        self.current = "connect"


def floor_interval(epoch: int) -> int:
    return epoch - epoch % INTERVAL_S


def _client_settings(
    target: MeterTarget, client_system_title: bytes, counters: SessionCounters, timeout_s: float
) -> ClientSettings:
    return ClientSettings.management(
        target.host,
        target.port,
        system_title=client_system_title,
        guek=target.guek,
        gak=target.gak,
        invocation_counter=counters.client_ic_next,
        server_invocation_counter=-1 if counters.server_ic_last is None else counters.server_ic_last,
        timeout_s=timeout_s,
    )


async def read_meter(  # noqa: PLR0913 - all keyword-only, each one needed
    target: MeterTarget,
    *,
    client_system_title: bytes,
    counters: SessionCounters,
    since: int,
    until: int,
    timeout_s: float,
    layout: ProfileLayout | None = None,
    event_log: EventLogState | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ReadResult:
    """Read intervals ending in (since, until] plus clock and registers; raise MeterCommunicationError.

    ``since`` is the last interval end already held (epoch s); the profile is read from the capture
    at ``since`` (to difference the cumulative registers) up to ``until``. ``layout`` is the meter's
    profile layout when known from an earlier read (saves a request); the result carries it.

    ``event_log`` (None: the event log is not read) is what is known of the meter's event log: its
    size is asked in the same GET-with-list as the clock, and its new rows are read by range in one
    more request only when that size says there are any (``events`` and ``event_log`` in the result).
    """
    steps = _Steps()
    first_end = floor_interval(since) + INTERVAL_S
    last_end = floor_interval(until)
    client = DlmsClient(_client_settings(target, client_system_title, counters, timeout_s))
    try:
        async with client:
            steps.current = "identify"
            _check_identity(client, target)
            steps.current = "registers"
            wants_log = event_log is not None and event_log.present is not False
            meter_clock, registers, scalers, log_size = await _read_clock_and_registers(
                client, target.meter_id, with_event_log=wants_log
            )
            read_at = now()
            steps.current = "profile"
            if layout is None:
                layout = ProfileLayout.of(await client.profile_columns(obis_codes.LOAD_PROFILE))
            rows = await client.read_profile(
                obis_codes.LOAD_PROFILE,
                datetime.fromtimestamp(first_end - INTERVAL_S, UTC),
                datetime.fromtimestamp(last_end, UTC),
                columns=layout.columns,
            )
            events: tuple[LoggedEvent, ...] = ()
            if event_log is not None and wants_log:
                steps.current = "event-log"
                event_log, events = await _read_event_log(client, event_log, log_size, meter_clock)
            steps.current = "release"
    except MeterCommunicationError:
        raise
    except Exception as exc:
        raise _translate(exc, target.serial, steps.current) from exc
    columns = _interval_columns(rows, layout, scalers, (first_end, last_end))
    readings = CollectedReadings(
        meter_id=target.meter_id,
        read_at=read_at,
        meter_clock=meter_clock,
        requested_from=first_end,
        requested_to=last_end,
        interval_ends=columns[0],
        import_wh=columns[1],
        export_wh=columns[2],
        status=columns[3],
        registers=tuple(replace(r, captured_at=read_at, received_at=read_at) for r in registers),
        interval_s=INTERVAL_S,
    )
    server_ic = client.server_invocation_counter
    counters_after = SessionCounters(client.client_invocation_counter, None if server_ic < 0 else server_ic)
    return ReadResult(readings, counters_after, layout, event_log, events)


def _check_identity(client: DlmsClient, target: MeterTarget) -> None:
    if client.server_system_title not in (None, target.system_title):
        raise MeterSecurityFailure(
            f"meter {target.serial} answered with an unexpected system title", step="identify", kind="meter.hls-failed"
        )


_UNITS = {27: "W", 30: "Wh", 32: "varh", 33: "A", 35: "V"}
_REGISTERS = (obis_codes.ACTIVE_IMPORT, obis_codes.ACTIVE_EXPORT)
_CLOCK_AND_REGISTERS = [(obis_codes.CLOCK, 8, 2)] + [(code, 3, attr) for code in _REGISTERS for attr in (2, 3)]
_EVENT_LOG_SIZE = [(obis_codes.EVENT_LOG, 7, 7), (obis_codes.EVENT_LOG, 7, 8)]  # entries_in_use, profile_entries
_EVENT_LOG_COLUMNS = (
    CaptureObject(8, obis_codes.CLOCK, 2),
    CaptureObject(1, obis_codes.EVENT_CODE, 2),
    CaptureObject(1, obis_codes.Obis(0, 128, 96, 11, 0, 255), 2),  # the event's value (manufacturer-specific)
)
_NO_SUCH_OBJECT = frozenset({DataAccessResult.OBJECT_UNDEFINED, DataAccessResult.OBJECT_UNAVAILABLE})
LogSize = tuple[int, int] | Literal["absent", "unknown"]  # (entries_in_use, profile_entries), or why not


async def _read_clock_and_registers(
    client: DlmsClient, meter_id: int, *, with_event_log: bool = False
) -> tuple[datetime, tuple[RegisterSnapshot, ...], tuple[int, ...], LogSize]:
    """Clock and both energy registers (value, scaler_unit) in one GET-with-list: one round trip.

    ``with_event_log`` adds the event log's entries_in_use and profile_entries to the same request.
    """
    answers = await client.get_with_list(
        _CLOCK_AND_REGISTERS + _EVENT_LOG_SIZE if with_event_log else _CLOCK_AND_REGISTERS
    )
    clock = answers[0]
    if not isinstance(clock, bytes | CosemDateTime):
        raise MeterCommunicationError(f"clock answered {clock!r}", step="registers")
    meter_clock = parse_time(clock)
    snapshots = []
    scalers = []
    for i, code in enumerate(_REGISTERS):
        value, scaler_unit = answers[1 + 2 * i], answers[2 + 2 * i]
        if not isinstance(value, int | float) or not isinstance(scaler_unit, tuple) or len(scaler_unit) != 2:
            raise MeterCommunicationError(f"register {code} answered {value!r}/{scaler_unit!r}", step="registers")
        scaler, unit = int(_number(scaler_unit[0])), int(_number(scaler_unit[1]))
        scalers.append(scaler)
        scaled = float(value) * 10.0**scaler
        unit_name = _UNITS.get(unit, str(unit))
        snapshots.append(RegisterSnapshot(meter_id, str(code), meter_clock, scaled, unit_name, meter_clock))
    log_size: LogSize = _log_size(answers[len(_CLOCK_AND_REGISTERS) :]) if with_event_log else "unknown"
    return meter_clock, tuple(snapshots), tuple(scalers), log_size


def _log_size(answers: Sequence[object]) -> LogSize:
    in_use, capacity = answers
    if isinstance(in_use, DataAccessResult):
        return "absent" if in_use in _NO_SUCH_OBJECT else "unknown"
    if isinstance(in_use, int) and isinstance(capacity, int):
        return int(in_use), int(capacity)
    return "unknown"


async def _read_event_log(
    client: DlmsClient, state: EventLogState, size: LogSize, meter_clock: datetime
) -> tuple[EventLogState, tuple[LoggedEvent, ...]]:
    """The log's rows since ``state.read_to``, by range, when its size says there are new ones."""
    if size == "absent":  # the meter has no event log: remember it, never ask again
        return replace(state, present=False), ()
    if size == "unknown":  # the meter could not tell this time: ask again next session
        return state, ()
    in_use, capacity = size
    end = int(meter_clock.timestamp())
    if in_use == 0 or (in_use == state.entries_in_use and in_use < capacity):
        return EventLogState(max(state.read_to, end), True, in_use), ()  # nothing new since the last read
    start = min(state.read_to, end)
    try:
        rows = await client.read_profile(
            obis_codes.EVENT_LOG,
            datetime.fromtimestamp(start, UTC),
            datetime.fromtimestamp(end, UTC),
            columns=_EVENT_LOG_COLUMNS,
        )
    except (ServiceError, ProtocolStateError, DecodeError):  # refused, or rows openami cannot read: the
        return state, ()  # readings stand, the log is asked again next time (never a failed session)
    return EventLogState(end, True, in_use), tuple(_logged(row) for row in rows if _is_event(row))


def _is_event(row: ProfileRow) -> bool:
    """A row openami can read (``{clock, long-unsigned code, null or number}``); others are skipped."""
    values = row.values
    return len(values) >= 2 and isinstance(values[0], int) and (values[1] is None or isinstance(values[1], int | float))


def _logged(row: ProfileRow) -> LoggedEvent:
    value = row.values[1]
    return LoggedEvent(int(row.clock.timestamp()), int(row.values[0]), None if value is None else float(value))  # type: ignore[arg-type]


Columns = tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], tuple[int, ...]]


def _interval_columns(
    rows: list[ProfileRow], layout: ProfileLayout, scalers: tuple[int, ...], requested: tuple[int, int]
) -> Columns:
    """Interval energies from captures of the cumulative registers (differences 15 minutes apart).

    A capture without its predecessor one interval earlier gives no interval: VEE sees a gap and
    estimates it; out-of-order captures (a clock that went back) are skipped, VEE flags the clock.
    """
    first_end, last_end = requested
    import_factor, export_factor = 10.0 ** scalers[0], 10.0 ** scalers[1]
    imp, exp, st = layout.import_index, layout.export_index, layout.status_index
    ends: list[int] = []
    imports: list[float] = []
    exports: list[float] = []
    status: list[int] = []
    width = len(layout.columns) - 1
    previous_end, previous_import, previous_export = -1, 0.0, 0.0
    try:
        for row in rows:
            end = int(row.clock.timestamp())
            if end <= previous_end:
                continue
            values = row.values
            if len(values) != width:  # the cached layout no longer fits: the meter was reconfigured
                raise MeterCommunicationError("load profile rows do not match its capture objects", step="profile")
            imported = float(values[imp]) * import_factor  # type: ignore[arg-type]
            exported = float(values[exp]) * export_factor  # type: ignore[arg-type]
            if previous_end == end - INTERVAL_S and first_end <= end <= last_end:
                ends.append(end)
                imports.append(imported - previous_import)
                exports.append(exported - previous_export)
                status.append(0 if st is None else int(values[st]))  # type: ignore[arg-type]
            previous_end, previous_import, previous_export = end, imported, exported
    except (TypeError, ValueError):  # a column held something other than a number (bytes, a structure…)
        raise MeterCommunicationError("load profile values are not numbers", step="profile") from None
    return tuple(ends), tuple(imports), tuple(exports), tuple(status)


def _number(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    raise MeterCommunicationError(f"a number was expected, the meter sent {type(value).__name__}", step="profile")


def _translate(exc: Exception, serial: str, step: str) -> MeterCommunicationError:
    """Map protocol and transport failures to the platform's errors; never carries key material."""
    if isinstance(exc, DlmsTimeoutError | TimeoutError):
        return MeterTimeout(f"meter {serial} did not answer in time during {step}", step=step)
    if isinstance(exc, ConnectionClosedError | ConnectionError | OSError):
        return MeterUnreachable(f"meter {serial} unreachable during {step}: {type(exc).__name__}", step=step)
    if isinstance(exc, ReplayError):
        message = f"meter {serial} sent a replayed invocation counter during {step}"
        return MeterSecurityFailure(message, step=step, kind="meter.replay")
    if isinstance(exc, AuthenticationTagError | SecurityError):
        message = f"meter {serial} failed authentication during {step}"
        return MeterSecurityFailure(message, step=step, kind="meter.bad-tag")
    if isinstance(exc, HlsAuthenticationError) or (isinstance(exc, AssociationError) and exc.diagnostic == 13):
        message = f"meter {serial} failed authentication during {step}"
        return MeterSecurityFailure(message, step=step, kind="meter.hls-failed")
    if isinstance(exc, AssociationError):
        return AssociationRejected(f"meter {serial} rejected the association (diagnostic {exc.diagnostic})", step=step)
    if isinstance(exc, DlmsError):
        return MeterCommunicationError(f"meter {serial}: {exc}", step=step)
    return MeterCommunicationError(f"meter {serial}: unexpected {type(exc).__name__} during {step}", step=step)
