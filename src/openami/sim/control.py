"""Operations a fleet runner applies to its meters while they run: scenarios, faults, attacks.

A parent sends ``{"op": NAME, "meters": [fleet indices], ...parameters}``; the worker that hosts
those meters looks the operation up here and applies it to each of them. Areas register their
operations with :func:`op` from their own modules (listed in ``_OP_MODULES``), so this module never
grows with them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from openami.sim.meter import SimulatedMeter

__all__ = ["OPS", "Op", "UnknownOperation", "apply", "op"]

Op = Callable[[SimulatedMeter, Mapping[str, Any]], None]
OPS: dict[str, Op] = {}
_OP_MODULES: tuple[str, ...] = (  # modules that register operations, imported on first use
    "openami.sim.switch_ops",
    "openami.sim.scenarios",
)
_loaded = False


class UnknownOperation(ValueError):
    """An operation nobody registered, or parameters it cannot take."""


def op(name: str) -> Callable[[Op], Op]:
    """Register ``fn(meter, params)`` as operation ``name``."""

    def register(fn: Op) -> Op:
        if name in OPS:
            raise ValueError(f"operation {name!r} is registered twice")
        OPS[name] = fn
        return fn

    return register


def _load() -> None:
    global _loaded  # noqa: PLW0603 - a one-time import of the registering modules
    if not _loaded:
        for module in _OP_MODULES:
            importlib.import_module(module)
        _loaded = True


def apply(meters: Mapping[int, SimulatedMeter], message: Mapping[str, Any]) -> int:
    """Apply one operation to the listed meters this worker hosts; returns how many it touched."""
    _load()
    name = message.get("op")
    fn = OPS.get(name) if isinstance(name, str) else None
    if fn is None:
        raise UnknownOperation(f"unknown simulator operation {name!r}; known: {', '.join(sorted(OPS))}")
    touched = 0
    for index in message.get("meters", ()):
        meter = meters.get(index)
        if meter is not None:
            fn(meter, message)
            touched += 1
    return touched
