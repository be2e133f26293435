"""Carrying signed switch and limiter commands to meters, and reading their switch state.

The head-end holds no signing key: ``CommandExecutor.execute`` takes a ``SignedCommand`` made by the
command authority (services layer) and invokes ``execute`` (method 1) of the meter's Signed Command
Gateway (class 200, 0.128.96.3.10.255) with it, inside the usual management association (HLS-GMAC,
Suite 0). The meter verifies the signature against its pinned authority certificate, the target,
the validity window and the counter, then operates Disconnect Control or the Limiter and answers a
``Confirmation`` (switch state, voltage, current, load-side voltage, active threshold). A refusal
answers read-write-denied or temporary-failure; the head-end then reads attribute 4 (the last
refusal) for the reason, raises the security event ``meter.command-refused`` and reports it.

Sessions run under the collector's per-meter lock (a meter serves one association at a time) with
counters from ``Collector.reserve_block``, recorded when the session ends, exactly like a read.
Commands have their own slots, separate from bulk collection's, so a command waits at most for the
one session already running with its meter, never behind a whole collection run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple, TypeVar

import structlog

from openami.errors import MeterCommunicationError, NotFound
from openami.headend.collector import Collector
from openami.headend.counters import ReservedBlock
from openami.headend.reader import (  # the reader's failure mapping: one vocabulary for every session
    MeterSecurityFailure,
    MeterTarget,
    SessionCounters,
    _translate,
)
from openami.protocols.dlms import obis as obis_codes
from openami.protocols.dlms.apdu_types import ActionResult, DataAccessResult
from openami.protocols.dlms.axdr import Data
from openami.protocols.dlms.client import ClientSettings, DlmsClient
from openami.protocols.dlms.errors import DecodeError
from openami.protocols.dlms.obis import Obis
from openami.protocols.dlms.session_errors import ServiceError
from openami.protocols.dlms.signed_command import Confirmation, Refusal, RefusalRecord, SignedCommand
from openami.security import events as security_events

__all__ = [
    "COMMAND_GATEWAY",
    "LIMITER",
    "CommandExecutor",
    "CommandOutcome",
    "FinalRead",
    "SessionEnd",
    "Settle",
    "SwitchState",
]

_log = structlog.get_logger("openami.headend")
_T = TypeVar("_T")

COMMAND_GATEWAY = Obis(0, 128, 96, 3, 10, 255)
"""openami's Signed Command Gateway (manufacturer-specific class 200)."""
GATEWAY_CLASS = 200
EXECUTE = 1
LIMITER = Obis(0, 0, 17, 0, 0, 255)
VOLTAGE = Obis(1, 0, 32, 7, 0, 255)
CURRENT = Obis(1, 0, 31, 7, 0, 255)
ACTIVE_POWER = Obis(1, 0, 1, 7, 0, 255)
LOAD_SIDE_VOLTAGE = Obis(1, 128, 32, 7, 0, 255)
_NO_GATEWAY = frozenset({ActionResult.OBJECT_UNDEFINED, ActionResult.OBJECT_CLASS_INCONSISTENT,
                         ActionResult.OBJECT_UNAVAILABLE})  # fmt: skip


@dataclass(frozen=True, slots=True)
class FinalRead:
    """The energy registers read right after a confirmed disconnect (Wh) and when."""

    import_wh: float
    export_wh: float
    read_at: datetime


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What the meter did with a signed command: a confirmation, or a refusal and its reason."""

    confirmation: Confirmation | None
    refusal: Refusal | None = None
    detail: str | None = None  # a short explanation of the refusal
    final_read: FinalRead | None = None

    @property
    def confirmed(self) -> bool:
        return self.confirmation is not None


@dataclass(frozen=True, slots=True)
class SwitchState:
    """A meter's switch and limiter state and its instantaneous values; None where the meter had no answer."""

    meter_id: int
    read_at: datetime
    output_state: bool | None
    control_state: int | None  # 0 disconnected, 1 connected, 2 ready for reconnection
    control_mode: int | None
    active_threshold_w: float | None
    voltage_v: float | None
    current_a: float | None
    active_power_w: float | None
    load_side_voltage_v: float | None
    last_counter: int | None  # the last originator counter the meter accepted
    ignore_disconnects: bool | None


class SessionEnd(NamedTuple):
    """The invocation counters a session ended with, to be made durable before its meter's lock is released."""

    meter_id: int
    client_ic_next: int
    server_ic_last: int | None
    key_version: int


Settle = Callable[[SessionEnd, _T | MeterCommunicationError], Awaitable[None]]
"""Records a session's outcome (its result or why it failed) together with its counters, durably,
while the session still holds its meter's lock (``CommandExecutor.execute``'s ``settle``)."""


class _Step:
    def __init__(self) -> None:
        self.current = "connect"


class CommandExecutor:
    """Carries signed commands and state queries to meters, with its own slots and the per-meter lock."""

    def __init__(
        self,
        collector: Collector,
        *,
        slots: int = 16,
        client_system_title: bytes | None = None,
        timeout_s: float | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self._collector = collector
        self._slots = asyncio.Semaphore(slots)
        # the collector's own identity and timeout unless told otherwise: one head-end, one system title
        self._title = client_system_title or collector._client_system_title
        self._timeout_s = timeout_s or collector._settings.timeout_s
        self._now = now or collector._now

    async def execute(
        self,
        meter_id: int,
        signed: SignedCommand,
        *,
        final_read: bool,
        reserved: ReservedBlock | None = None,
        settle: Settle[CommandOutcome] | None = None,
    ) -> CommandOutcome:
        """Invoke the gateway's ``execute`` with ``signed``; on a confirmed open switch and ``final_read``,
        read the energy registers in the same session. Raises NotFound (unknown meter) or
        MeterCommunicationError (no answer, association refused, ...): the command may be retried.
        ``reserved``: counters reserved ahead for this session (``Collector.reserve_block``). ``settle``:
        the caller records the session's counters with the outcome, in one transaction of its own (the
        command queue's), before the meter's lock is released; the counter store records them otherwise."""

        async def work(client: DlmsClient, step: _Step) -> CommandOutcome:
            step.current = "execute"
            try:
                answer = await client.action(COMMAND_GATEWAY, GATEWAY_CLASS, EXECUTE, signed.to_parameters())
            except ServiceError as exc:
                return await _refusal(client, exc, step)
            try:
                confirmation = Confirmation.from_data(answer)
            except DecodeError:
                raise MeterCommunicationError("the meter's confirmation is malformed", step="execute") from None
            final = None
            if final_read and not confirmation.output_state:
                step.current = "final-read"
                final = await _final_read(client, self._now())
            return CommandOutcome(confirmation, final_read=final)

        outcome = await self._session(meter_id, work, reserved, settle)
        if outcome.refusal is not None:
            await asyncio.to_thread(self._report_refusal, meter_id, outcome)
        return outcome

    async def read_state(self, meter_id: int) -> SwitchState:
        """Disconnect Control (2, 3, 4), the limiter's active threshold, the gateway's counter and mode,
        and the instantaneous values, in one GET-with-list."""

        async def work(client: DlmsClient, step: _Step) -> SwitchState:
            step.current = "state"
            answers = await client.get_with_list(_STATE_ITEMS)
            return _state(meter_id, self._now(), answers)

        return await self._session(meter_id, work)

    # -- plumbing -----------------------------------------------------------------------------------

    async def _session(
        self,
        meter_id: int,
        work: Callable[[DlmsClient, _Step], Awaitable[_T]],
        reserved: ReservedBlock | None = None,
        settle: Settle[_T] | None = None,
    ) -> _T:
        if meter_id not in self._collector.targets:
            raise NotFound(f"meter {meter_id} is not known to the head-end")
        async with self._slots, self._collector.meter_lock(meter_id):
            target = self._collector.targets[meter_id]
            counters = await self._collector.reserve_block(meter_id, target.key_version, reserved=reserved)
            client = DlmsClient(self._client_settings(target, counters))
            step = _Step()
            ended: _T | MeterCommunicationError | None = None  # None: cancelled (nothing for settle)
            try:
                async with client:
                    step.current = "identify"
                    _check_identity(client, target)
                    result = await work(client, step)
                    step.current = "release"
                ended = result
            except MeterCommunicationError as exc:
                ended = exc
                raise
            except Exception as exc:
                ended = _translate(exc, target.serial, step.current)
                raise ended from exc
            finally:
                server_ic = client.server_invocation_counter
                end = SessionEnd(meter_id, client.client_invocation_counter, None if server_ic < 0 else server_ic,
                                 target.key_version)  # fmt: skip
                if settle is not None and ended is not None:
                    try:
                        await settle(end, ended)
                    except BaseException:  # not recorded with an outcome (stopping, a database error): alone
                        await self.record_counters(end)
                        raise
                else:
                    await self.record_counters(end)
            return result

    async def record_counters(self, end: SessionEnd) -> None:
        """Make a session's counters durable through the counter store (no outcome to record them with)."""
        await self._collector.counters.record(
            end.meter_id, client_ic_next=end.client_ic_next, server_ic_last=end.server_ic_last,
            key_version=end.key_version,
        )  # fmt: skip

    def _client_settings(self, target: MeterTarget, counters: SessionCounters) -> ClientSettings:
        return ClientSettings.management(
            target.host,
            target.port,
            system_title=self._title,
            guek=target.guek,
            gak=target.gak,
            invocation_counter=counters.client_ic_next,
            server_invocation_counter=-1 if counters.server_ic_last is None else counters.server_ic_last,
            timeout_s=self._timeout_s,
        )

    def _report_refusal(self, meter_id: int, outcome: CommandOutcome) -> None:
        """A meter refused a command the authority signed (or one it did not): a security event."""
        reason = outcome.refusal.name.lower().replace("_", "-") if outcome.refusal is not None else "unknown"
        _log.warning("headend.command.refused", meter_id=meter_id, reason=reason)
        details: dict[str, str | int | float | bool | None] = {"reason": reason, "detail": outcome.detail}
        engine = self._collector._engine
        with engine.begin() as conn:
            security_events.raise_event(conn, "meter.command-refused", now=self._now(), meter_id=meter_id,
                                        details=details)  # fmt: skip


def _check_identity(client: DlmsClient, target: MeterTarget) -> None:
    if client.server_system_title not in (None, target.system_title):
        message = f"meter {target.serial} answered with an unexpected system title"
        raise MeterSecurityFailure(message, step="identify", kind="meter.hls-failed")


async def _refusal(client: DlmsClient, exc: ServiceError, step: _Step) -> CommandOutcome:
    """The gateway refused: its last-refusal attribute says why (a meter without a gateway: not supported)."""
    result = ActionResult(exc.result)
    if result in _NO_GATEWAY:
        return CommandOutcome(None, Refusal.NOT_SUPPORTED, "the meter has no signed-command gateway")
    step.current = "refusal"
    try:
        value = await client.get(COMMAND_GATEWAY, GATEWAY_CLASS, 4)
        record = RefusalRecord.from_data(value)
    except (ServiceError, DecodeError):
        return CommandOutcome(None, Refusal.MALFORMED, f"refused ({result.name.lower()}), reason unreadable")
    return CommandOutcome(None, record.reason, f"refused ({result.name.lower()})")


_FINAL_ITEMS: list[tuple[Obis | str, int, int]] = [
    (code, 3, attr) for code in (obis_codes.ACTIVE_IMPORT, obis_codes.ACTIVE_EXPORT) for attr in (2, 3)
]


async def _final_read(client: DlmsClient, now: datetime) -> FinalRead | None:
    """Both energy registers (value and scaler_unit) in one GET-with-list, right after the switch opened.

    None when the meter refuses one: the disconnect is confirmed all the same (the next collection
    reads the registers).
    """
    answers = await client.get_with_list(_FINAL_ITEMS)
    import_wh, export_wh = _scaled(answers[0], answers[1]), _scaled(answers[2], answers[3])
    if import_wh is None or export_wh is None:
        return None
    return FinalRead(import_wh, export_wh, now)


_STATE_ITEMS: list[tuple[Obis | str, int, int]] = [
    (obis_codes.DISCONNECT_CONTROL, 70, 2),
    (obis_codes.DISCONNECT_CONTROL, 70, 3),
    (obis_codes.DISCONNECT_CONTROL, 70, 4),
    (LIMITER, 71, 3),  # threshold_active
    (COMMAND_GATEWAY, GATEWAY_CLASS, 3),
    (COMMAND_GATEWAY, GATEWAY_CLASS, 5),
    *((code, 3, attr) for code in (VOLTAGE, CURRENT, ACTIVE_POWER, LOAD_SIDE_VOLTAGE) for attr in (2, 3)),
]


def _value(item: Data | DataAccessResult) -> Data:
    return None if isinstance(item, DataAccessResult) else item


def _int(item: Data | DataAccessResult) -> int | None:
    value = _value(item)
    return int(value) if isinstance(value, int) else None


def _scaled(value: Data | DataAccessResult, scaler_unit: Data | DataAccessResult) -> float | None:
    """A register value times 10**scaler; None when either part is missing or not a number."""
    value, scaler_unit = _value(value), _value(scaler_unit)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    scaler = scaler_unit[0] if isinstance(scaler_unit, tuple) and len(scaler_unit) == 2 else 0
    return float(value) * 10.0 ** (scaler if isinstance(scaler, int) else 0)


def _state(meter_id: int, now: datetime, answers: list[Data | DataAccessResult]) -> SwitchState:
    output, control, mode, threshold, counter, ignoring = (_value(a) for a in answers[:6])
    values = answers[6:]
    return SwitchState(
        meter_id=meter_id,
        read_at=now.astimezone(UTC),
        output_state=output if isinstance(output, bool) else None,
        control_state=_int(control),
        control_mode=_int(mode),
        active_threshold_w=float(threshold) if isinstance(threshold, int | float) and threshold is not True else None,
        voltage_v=_scaled(values[0], values[1]),
        current_a=_scaled(values[2], values[3]),
        active_power_w=_scaled(values[4], values[5]),
        load_side_voltage_v=_scaled(values[6], values[7]),
        last_counter=_int(counter),
        ignore_disconnects=ignoring if isinstance(ignoring, bool) else None,
    )
