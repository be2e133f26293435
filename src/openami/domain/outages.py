"""Outages as the OMS feed carries them: one message per change of one outage (bus, API, webhooks)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

__all__ = ["DeviceKind", "OutageChanged", "OutageState"]


class DeviceKind(enum.StrEnum):
    """What failed: a grid device, or a single meter's own supply (its service drop)."""

    SUBSTATION = "substation"
    FEEDER = "feeder"
    TRANSFORMER = "transformer"
    METER = "meter"


class OutageState(enum.StrEnum):
    OPEN = "open"  # located (and confirmed by pings): meters are dark
    RESTORED = "restored"  # power is back; restoration verification lists meters still dark
    MOMENTARY = "momentary"  # power came back within the momentary threshold: not counted as an outage
    CLOSED = "closed"  # closed by hand


@dataclass(frozen=True, slots=True)
class OutageChanged:
    """An outage was opened or changed; ``version`` increases with every change of that outage.

    ``change`` says what happened: ``opened``, ``momentary``, ``nested`` (became part of a larger
    outage), ``restoring`` (power-ups arrived), ``restored`` (verification done), ``closed``,
    ``annotated``. Counts are of affected meters and premises; ``critical_care`` counts premises
    flagged critical-care among them.
    """

    outage_id: int
    version: int
    change: str
    state: OutageState
    device_kind: DeviceKind
    device_id: str
    area: str | None
    parent_id: int | None
    started_at: datetime
    restored_at: datetime | None
    meters: int
    premises: int
    critical_care: int
    last_gasps: int
    still_dark: int
    at: datetime
