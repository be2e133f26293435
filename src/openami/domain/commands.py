"""Switch and limiter commands as the rest of the platform sees them on the bus (issue 5)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["COMMAND_NAMES", "FINAL_STATUSES", "OPEN_STATUSES", "STATUSES", "CommandChanged"]

COMMAND_NAMES = ("disconnect", "reconnect", "reconnect-arm", "limit", "cancel-limit")
"""What ``services.switch`` accepts; each maps to one signed ``Command``."""

STATUSES = ("awaiting-approval", "queued", "sent", "confirmed", "failed", "expired", "cancelled")
OPEN_STATUSES = frozenset({"awaiting-approval", "queued", "sent"})
"""A command in one of these may still reach the meter."""
FINAL_STATUSES = frozenset({"confirmed", "failed", "expired", "cancelled"})


@dataclass(frozen=True, slots=True)
class CommandChanged:
    """One command moved to ``status`` (published on ``bus.topics.COMMANDS_CHANGED``).

    ``output_state`` is the switch state the meter confirmed (None until confirmed);
    ``failure_reason`` is set on failed and expired.
    """

    command_id: int
    meter_id: int
    command: str
    status: str
    changed_at: datetime
    workflow: str | None = None
    batch_id: int | None = None
    output_state: bool | None = None
    failure_reason: str | None = None
