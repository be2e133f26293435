"""Fleet operations on the meters' supply switches (``openami.sim.control``): customers, faults and attacks.

- ``press-button``: the customer presses the meter's button; an armed switch closes (SWITCH_CLOSED, no counter).
- ``backfeed`` ``{"on": bool}``: something feeds the premises from inside (a generator): the load-side
  voltage reads ~226 V while the switch is open.
- ``open-switch``: the switch opens without any signed command (a fault, or an attack on the switch
  itself); SWITCH_OPENED with no counter is what the uncommanded-opening detector looks for.
- ``set-demand`` ``{"watts": float | null}``: the premises' demand from now on (null: back to the load
  model); a limiter with an active threshold may trip on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from openami.sim.control import UnknownOperation, op
from openami.sim.meter import SimulatedMeter

__all__ = ["backfeed", "open_switch", "press_button", "set_demand"]


@op("press-button")
def press_button(meter: SimulatedMeter, _params: Mapping[str, Any]) -> None:
    meter.switch.press_button()


@op("backfeed")
def backfeed(meter: SimulatedMeter, params: Mapping[str, Any]) -> None:
    on = params.get("on")
    if not isinstance(on, bool):
        raise UnknownOperation('backfeed needs {"on": true|false}')
    meter.switch.backfeed = on


@op("open-switch")
def open_switch(meter: SimulatedMeter, _params: Mapping[str, Any]) -> None:
    meter.switch.force_open()


@op("set-demand")
def set_demand(meter: SimulatedMeter, params: Mapping[str, Any]) -> None:
    watts = params.get("watts")
    if watts is None:
        meter.switch.set_demand(None)
        return
    if isinstance(watts, bool) or not isinstance(watts, int | float) or not math.isfinite(watts) or watts < 0:
        raise UnknownOperation('set-demand needs {"watts": a number >= 0, or null}')
    meter.switch.set_demand(float(watts))
