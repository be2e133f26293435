"""The off-switch guard (issue 5): rate limits, the two-person rule, uncommanded openings, ignore-disconnects.

Stub so that ``services.switch`` can call it while the guard is being built: every batch is admitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from openami.security.policy import RequestScope

__all__ = ["Admission", "admit"]


@dataclass(frozen=True, slots=True)
class Admission:
    """``state``: "admitted" (queue the commands) or "awaiting-approval" (hold them for a second person)."""

    state: str
    batch_id: int | None = None
    reason: str | None = None


def admit(conn: Connection, scope: RequestScope, command: str, meter_ids: Sequence[int], *, now: datetime) -> Admission:
    """Decide whether a batch of ``command`` ("disconnect", ...) on ``meter_ids`` may be queued now.

    Raises ``GuardRefused`` (an InvalidInput, HTTP 429/409) when a rate limit or the ignore-disconnects
    mode forbids it; returns "awaiting-approval" when the batch needs a second approver.
    """
    return Admission("admitted")
