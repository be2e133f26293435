"""A simulated meter's supply: the switch, the limiter, the signed-command gateway and what they measure.

The switch moves only for a signed command the gateway verified, the customer's button (an armed
switch), a limiter trip or a fault injected by the fleet runner (``switch_ops``); every move is an
event. While the switch is open the premises get no supply: the registers and the load profile stop
growing (the intervals it was open for count only their closed part), the current and the power
read 0 and the load-side voltage reads 0 unless something feeds the premises from inside (a
"backfeed": a generator, a bypass).

Instantaneous values (Register, class 3): supply voltage 1.0.32.7.0.255 (~230 V with a little noise,
V, scaler -1), current 1.0.31.7.0.255 (A, scaler -2), active power import 1.0.1.7.0.255 (W, scaler
0; the Limiter's monitored value) and load-side voltage 1.128.32.7.0.255 (V, scaler -1). Demand comes
from the meter's load model (its current interval's energy as a mean power) unless the fleet runner
set one (``set-demand``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import datetime

from openami.domain.meter_events import EventCode
from openami.protocols.dlms import obis
from openami.protocols.dlms.axdr import DoubleLongUnsigned, LongUnsigned
from openami.protocols.dlms.cosem import (
    ControlState,
    CosemObject,
    Limiter,
    Register,
    SignedCommandGateway,
    SignedDisconnectControl,
)
from openami.protocols.dlms.signed_command import RefusalRecord
from openami.sim.meter_profile import INTERVAL_S, LoadFunction, MeterEnergy

__all__ = ["NOMINAL_VOLTAGE_V", "MeterSwitch"]

NOMINAL_VOLTAGE_V = 230.0
_VOLTAGE_NOISE_V = 0.8
_BACKFEED_VOLTAGE_V = 226.0  # a small generator behind the meter sags a little
_VOLT, _AMPERE, _WATT = 35, 33, 27
_STATE_EVENTS = {
    ControlState.DISCONNECTED: EventCode.SWITCH_OPENED,
    ControlState.CONNECTED: EventCode.SWITCH_CLOSED,
    ControlState.READY_FOR_RECONNECTION: EventCode.SWITCH_ARMED,
}

RecordEvent = Callable[[EventCode, float | None], None]


class MeterSwitch:
    """The switch side of one simulated meter; it is the gateway's :class:`GatewaySite`.

    ``meter_time`` is the meter's clock; ``record_event`` the meter's one way of reporting events;
    ``energy`` the meter's registers, whose load becomes switch-aware at the first opening.
    """

    def __init__(
        self,
        *,
        system_title: bytes,
        certificate: bytes | None,
        energy: MeterEnergy,
        meter_time: Callable[[], datetime],
        record_event: RecordEvent,
        seed: int,
    ) -> None:
        self.disconnect = SignedDisconnectControl(obis.DISCONNECT_CONTROL, control_mode=1)
        self.limiter = Limiter(obis.LIMITER)
        self.gateway = SignedCommandGateway(
            obis.COMMAND_GATEWAY,
            system_title=system_title,
            certificate=certificate,
            disconnect=self.disconnect,
            limiter=self.limiter,
            site=self,
        )
        self.energy = energy
        # The customer's own consumption, whatever the switch does: under the mains model
        # (``sim.supply``: outages, bypass) when the meter has one, so that both see the switch.
        self._carrier = getattr(energy.load, "inner", None) is not None
        self._demand_load: LoadFunction = energy.load.inner if self._carrier else energy.load  # type: ignore[attr-defined]
        self._meter_time = meter_time
        self._record = record_event
        self._rng = random.Random(seed)  # noqa: S311 - measurement noise, not crypto
        self.backfeed = False
        self.demand_override_w: float | None = None
        self._open_periods: list[list[float]] = []
        """[opened, closed] in meter epoch seconds; ``closed`` is inf while the switch is open."""
        self._limit_counter: int | None = None

    def objects(self) -> list[CosemObject]:
        """The COSEM objects the meter's logical device adds for its supply."""
        return [
            self.disconnect,
            self.limiter,
            self.gateway,
            Register(obis.INSTANT_VOLTAGE, scaler=-1, unit=_VOLT, source=lambda: _tenths(self.measure()[0])),
            Register(obis.INSTANT_CURRENT, scaler=-2, unit=_AMPERE, source=lambda: _hundredths(self.measure()[1])),
            Register(obis.INSTANT_POWER, scaler=0, unit=_WATT, source=lambda: _whole(self.power_w())),
            Register(obis.LOAD_SIDE_VOLTAGE, scaler=-1, unit=_VOLT, source=lambda: _tenths(self.measure()[2])),
        ]

    # -- what the premises draw ---------------------------------------------------------------

    def demand_w(self) -> float:
        """What the premises would draw now with the switch closed, W."""
        if self.demand_override_w is not None:
            return self.demand_override_w
        now = int(self._meter_time().timestamp())
        interval_end = now - now % INTERVAL_S + INTERVAL_S
        wh_in, _ = self._demand_load(interval_end)
        return wh_in * 3600 / INTERVAL_S

    def power_w(self) -> float:
        """What flows through the meter now: the demand, or nothing while the switch is open."""
        self.check_limiter()
        return self.demand_w() if self.disconnect.output_state else 0.0

    def measure(self) -> tuple[float, float, float]:
        """(supply voltage V, current A, load-side voltage V), as the meter would measure them now."""
        voltage = NOMINAL_VOLTAGE_V + self._rng.gauss(0.0, _VOLTAGE_NOISE_V)
        power = self.power_w()
        if self.disconnect.output_state:
            load_side = voltage
        elif self.backfeed:
            load_side = _BACKFEED_VOLTAGE_V + self._rng.gauss(0.0, _VOLTAGE_NOISE_V)
        else:
            load_side = 0.0
        return voltage, power / voltage, load_side

    def _supplied_load(self, interval_end: int) -> tuple[int, int]:
        """The load the registers see: each interval scaled by the part of it the switch was closed."""
        wh_in, wh_out = self._demand_load(interval_end)
        start = interval_end - INTERVAL_S
        open_s = sum(max(0.0, min(interval_end, closed) - max(start, opened)) for opened, closed in self._open_periods)
        closed_part = max(0.0, 1.0 - open_s / INTERVAL_S)
        return round(wh_in * closed_part), round(wh_out * closed_part)

    # -- moves that are not signed commands ----------------------------------------------------

    def check_limiter(self) -> None:
        """Trip (open the switch) when demand has stayed above the active threshold long enough.

        Not while the meter ignores disconnects: a trip is an opening like any other.
        """
        if not self.disconnect.output_state or self.gateway.ignore_disconnects:
            return
        demand = self.demand_w()
        if self.limiter.observe(demand, self._meter_time().timestamp()) and self.disconnect.open():
            self._record(EventCode.LIMITER_TRIPPED, demand)
            self.switch_changed(self.disconnect.control_state, self._limit_counter)

    def press_button(self) -> None:
        """The customer presses the button: an armed switch closes."""
        if self.disconnect.press_button():
            self.switch_changed(self.disconnect.control_state, None)

    def force_open(self) -> None:
        """The switch opens without any command (a fault, or an attack on the switch itself)."""
        if self.disconnect.open():
            self.switch_changed(self.disconnect.control_state, None)

    def set_demand(self, watts: float | None) -> None:
        """The premises' demand from now on (None: back to the load model); the limiter looks at it."""
        self.demand_override_w = watts
        self.check_limiter()

    # -- GatewaySite -------------------------------------------------------------------------

    def meter_time(self) -> datetime:
        return self._meter_time()

    def switch_changed(self, state: ControlState, counter: int | None) -> None:
        self._track_supply(state)
        self._record(_STATE_EVENTS[state], counter)

    def limit_changed(self, counter: int) -> None:
        self._limit_counter = counter
        self.check_limiter()

    def ignore_disconnects_changed(self, on: bool, counter: int) -> None:
        code = EventCode.IGNORE_DISCONNECTS_ON if on else EventCode.IGNORE_DISCONNECTS_OFF
        self._record(code, counter)

    def refused(self, record: RefusalRecord) -> None:
        self._record(EventCode.COMMAND_REFUSED, record.reason)

    def _track_supply(self, state: ControlState) -> None:
        now = self._meter_time().timestamp()
        supplied = state is ControlState.CONNECTED
        periods = self._open_periods
        if supplied and periods and periods[-1][1] == math.inf:
            periods[-1][1] = now
        elif not supplied and (not periods or periods[-1][1] != math.inf):
            periods.append([now, math.inf])
            # Registers are prefix sums computed as intervals end: from the first opening on, every
            # interval not yet summed goes through the switch-aware load (never switched: no cost).
            # It replaces what flows, not only what registers: a check meter must not see it either.
            if self._carrier:
                self.energy.load.inner = self._supplied_load  # type: ignore[attr-defined]
            else:
                self.energy.load = self._supplied_load


def _tenths(value: float) -> LongUnsigned:
    return LongUnsigned(min(max(round(value * 10), 0), 0xFFFF))


def _hundredths(value: float) -> DoubleLongUnsigned:
    return DoubleLongUnsigned(min(max(round(value * 100), 0), 0xFFFFFFFF))


def _whole(value: float) -> DoubleLongUnsigned:
    return DoubleLongUnsigned(min(max(round(value), 0), 0xFFFFFFFF))
