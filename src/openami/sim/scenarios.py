"""Grid and meter scenarios a running fleet can be put through (issue 6): outages, tamper, sags, theft.

Each operation is registered with :func:`openami.sim.control.op` and applied meter by meter in the
worker that hosts the meters (``FleetHandle.control(op, meters, **params)``):

- ``power-fail`` ``{"last_gasp_share": 0..1 (default 1), "seed": int}``: the meters lose supply,
  stop answering, their registers stop; a deterministic share of them push a last gasp;
- ``power-restore`` ``{"restore_share": 0..1 (default 1), "seed"}``: that share comes back (and
  pushes POWER_UP), the others stay dark;
- ``momentary`` ``{"seconds": s, "last_gasp_share"}``: supply lost, then back after ``seconds``;
- ``tamper`` ``{"kind": "cover" | "magnetic" | "reverse" | "removed"}``;
- ``voltage`` ``{"volts": 190.0}``: a sag (< 207 V), a swell (> 253 V) or back to normal, with the value;
- ``bypass`` ``{"fraction": 0.6}``: from now on the meter registers only ``1 - fraction`` of its
  import, while its transformer's check meter still sees all of it;
- ``event`` ``{"code": EventCode, "value": float | null}``: any event, on demand.

Which meters push a last gasp (or come back) is a pure function of the seed and the meter's serial
(:func:`chosen`), so a test knows exactly which meters to expect. Check meters follow their
transformer's meters (:func:`follow_checks`): their load leaves out the meters without supply, and a
check meter goes dark itself when its whole transformer is.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from typing import Any

from openami.domain.meter_events import EventCode
from openami.sim.control import UnknownOperation, op
from openami.sim.fleet import Fleet
from openami.sim.meter import SimulatedMeter
from openami.sim.serving import HostedMeters
from openami.sim.supply import SupplyLoad

__all__ = [
    "POWER_OPS",
    "SAG_BELOW_V",
    "SWELL_ABOVE_V",
    "chosen",
    "follow_checks",
    "last_gasp_chosen",
    "meters_of",
    "restore_chosen",
]

SAG_BELOW_V = 207.0  # 230 V - 10 % (EN 50160)
SWELL_ABOVE_V = 253.0  # 230 V + 10 %
_CODES = frozenset(int(c) for c in EventCode)
POWER_OPS = frozenset({"power-fail", "power-restore", "momentary"})
"""Operations that change the supply, which check meters must follow."""
_TAMPER = {
    "cover": EventCode.COVER_OPENED,
    "magnetic": EventCode.MAGNETIC_FIELD,
    "reverse": EventCode.REVERSE_ENERGY,
    "removed": EventCode.METER_REMOVED,
}


def _share(params: Mapping[str, Any], name: str) -> float:
    value = params.get(name, 1.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise UnknownOperation(f"{name} must be a number between 0 and 1")
    return float(value)


def _seed(params: Mapping[str, Any]) -> int:
    seed = params.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UnknownOperation("seed must be an integer")
    return seed


def chosen(serial: str, *, seed: int, share: float, salt: str) -> bool:
    """Whether this meter falls in a ``share`` of the fleet (deterministic in seed, salt and serial)."""
    digest = hashlib.sha256(f"openami-sim/{salt}/{seed}/{serial}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


def last_gasp_chosen(serial: str, params: Mapping[str, Any]) -> bool:
    """Whether the meter gets its last gasp out in a ``power-fail``/``momentary`` with these parameters."""
    return chosen(serial, seed=_seed(params), share=_share(params, "last_gasp_share"), salt="last-gasp")


def restore_chosen(serial: str, params: Mapping[str, Any]) -> bool:
    """Whether the meter comes back in a ``power-restore`` with these parameters."""
    return chosen(serial, seed=_seed(params), share=_share(params, "restore_share"), salt="restore")


def _seconds(params: Mapping[str, Any]) -> float:
    seconds = params.get("seconds", 1.0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 86_400:
        raise UnknownOperation("seconds must be a number from 0 to 86400")
    return float(seconds)


def _later(seconds: float, fn: Any) -> None:
    """Run ``fn`` after ``seconds`` on the running loop (at once when there is none: a plain call)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        fn()
        return
    loop.call_later(seconds, fn)


@op("power-fail")
def _power_fail(meter: SimulatedMeter, params: Mapping[str, Any]) -> None:
    meter.power_fail(last_gasp=last_gasp_chosen(meter.config.serial, params))


@op("push-randomisation")
def _push_randomisation(meter: SimulatedMeter, params: Mapping[str, Any]) -> None:
    """Set the Push Setup's randomisation_start_interval: each push waits up to that many seconds, so
    a storm's notifications spread out as a real network delivers them ({"seconds": 0-65535})."""
    seconds = params.get("seconds")
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not 0 <= seconds <= 0xFFFF:
        raise UnknownOperation("push-randomisation needs whole seconds 0-65535")
    meter.push_setup.randomisation_start_interval = seconds


@op("power-restore")
def _power_restore(meter: SimulatedMeter, params: Mapping[str, Any]) -> None:
    if restore_chosen(meter.config.serial, params):
        meter.power_restore()


@op("momentary")
def _momentary(meter: SimulatedMeter, params: Mapping[str, Any]) -> None:
    seconds = _seconds(params)
    if meter.power_fail(last_gasp=last_gasp_chosen(meter.config.serial, params)):
        _later(seconds, meter.power_restore)


@op("tamper")
def _tamper(meter: SimulatedMeter, params: Mapping[str, Any]) -> None:
    code = _TAMPER.get(params.get("kind"))  # type: ignore[arg-type]
    if code is None:
        raise UnknownOperation(f"tamper kind must be one of {', '.join(_TAMPER)}")
    meter.record_event(code)


@op("voltage")
def _voltage(meter: SimulatedMeter, params: Mapping[str, Any]) -> None:
    volts = params.get("volts")
    if isinstance(volts, bool) or not isinstance(volts, int | float) or not 0 <= volts <= 1000:
        raise UnknownOperation("volts must be a number from 0 to 1000")
    if volts < SAG_BELOW_V:
        code = EventCode.VOLTAGE_SAG
    elif volts > SWELL_ABOVE_V:
        code = EventCode.VOLTAGE_SWELL
    else:
        code = EventCode.VOLTAGE_NORMAL
    meter.record_event(code, float(volts))


@op("bypass")
def _bypass(meter: SimulatedMeter, params: Mapping[str, Any]) -> None:
    meter.supply.set_bypass(_share(params, "fraction"), meter.clock.time().timestamp())


@op("event")
def _event(meter: SimulatedMeter, params: Mapping[str, Any]) -> None:
    raw = params.get("code")
    if not isinstance(raw, int) or raw not in _CODES:
        raise UnknownOperation(f"unknown event code {raw!r}")
    code = EventCode(raw)
    value = params.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise UnknownOperation("an event value is a number or null")
    meter.record_event(code, None if value is None else float(value))


# ------------------------------------------------------------------------------------ check meters


def _follow(check: SimulatedMeter, members: Mapping[int, tuple[str, SupplyLoad]], message: Mapping[str, Any]) -> None:
    at = check.clock.time().timestamp()
    name = message.get("op")
    listed = [members[i] for i in message.get("meters", ()) if i in members]
    for serial, supply in listed:
        if name in ("power-fail", "momentary"):
            supply.fail(at)
        elif name == "power-restore" and restore_chosen(serial, message):
            supply.restore(at)
    if name == "momentary" and listed:
        seconds = _seconds(message)
        _later(seconds, lambda: _restore_members(check, [supply for _, supply in listed]))
    _follow_power(check, members)


def _restore_members(check: SimulatedMeter, supplies: list[SupplyLoad]) -> None:
    at = check.clock.time().timestamp()
    for supply in supplies:
        supply.restore(at)
    _follow_power(check, check_members_of(check))


def _follow_power(check: SimulatedMeter, members: Mapping[int, tuple[str, SupplyLoad]]) -> None:
    """A check meter is dark exactly when every meter of its transformer is (it never pushes)."""
    dark = bool(members) and not any(supply.powered for _, supply in members.values())
    if dark and check.powered:
        check.power_fail(last_gasp=False)
    elif not dark and not check.powered:
        check.power_restore()


def check_members_of(check: SimulatedMeter) -> Mapping[int, tuple[str, SupplyLoad]]:
    """A check meter's view of its transformer's meters (empty for an ordinary meter)."""
    inner = getattr(check.supply.inner, "by_index", None)
    return inner if isinstance(inner, Mapping) else {}


def follow_checks(hosted: HostedMeters, message: Mapping[str, Any]) -> None:
    """Let the check meters of this worker follow a supply operation on their transformers' meters."""
    if message.get("op") not in POWER_OPS:
        return
    for index in hosted.checks:
        check = hosted.meters[index]
        _follow(check, check_members_of(check), message)


# ------------------------------------------------------------------------------------ fleet helpers


def meters_of(
    fleet: Fleet,
    *,
    feeder: str | None = None,
    transformer: str | None = None,
    substation: str | None = None,
    include_check: bool = False,
) -> list[int]:
    """Fleet indices of the meters downstream of a grid element (all the given ones must match).

    Raises ValueError for an element the fleet's grid does not have, or when none is given.
    """
    if feeder is None and transformer is None and substation is None:
        raise ValueError("name a feeder, a transformer or a substation")
    topology = fleet.topology
    feeders = {f.id: f.substation_id for f in topology.feeders}
    transformers = {t.id: t.feeder_id for t in topology.transformers}
    for name, value, known in (
        ("feeder", feeder, feeders),
        ("transformer", transformer, transformers),
        ("substation", substation, {s.id for s in topology.substations}),
    ):
        if value is not None and value not in known:
            raise ValueError(f"unknown {name} {value!r}")

    def downstream(transformer_id: str) -> bool:
        feeder_id = transformers[transformer_id]
        return (
            (transformer is None or transformer_id == transformer)
            and (feeder is None or feeder_id == feeder)
            and (substation is None or feeders[feeder_id] == substation)
        )

    selected = [
        index for index, service_point in enumerate(topology.service_points) if downstream(service_point.transformer_id)
    ]
    if include_check:
        selected += [
            m.index for m in fleet.check_meters if m.check_for_transformer and downstream(m.check_for_transformer)
        ]
    return selected
