"""Read-only views of key rotations and key versions (for the API and the CLI); never a key, wrapped or not.

The rotation state machine is ``openami.security.keys``'s; a report groups a request's meters by
state: rotated, pending (queued: nothing sent, or known not to have taken), uncertain (sent, outcome
unknown), failed, cancelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openami.db.tables import key_rotations as kr
from openami.db.tables import meter_key_rotations as mkr
from openami.db.tables import meter_keys as mk
from openami.db.tables import meters
from openami.errors import NotFound

__all__ = ["CATEGORIES", "KeyStatus", "KeyVersion", "MeterRotationRow", "RotationReport", "key_status",
           "recent_rotations", "rotation_report"]  # fmt: skip

CATEGORIES = ("rotated", "pending", "uncertain", "failed", "cancelled")
_CATEGORY = {"queued": "pending"}


@dataclass(frozen=True, slots=True)
class MeterRotationRow:
    meter_id: int
    serial: str
    state: str  # one of CATEGORIES
    attempts: int
    last_error: str | None
    updated_at: datetime
    rotation_id: int


@dataclass(frozen=True, slots=True)
class RotationReport:
    id: int
    target: str
    emergency: bool
    requested_by: str
    requested_at: datetime
    counts: dict[str, int]
    meters: list[MeterRotationRow] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """True once no meter of it is pending or uncertain."""
        return not (self.counts["pending"] or self.counts["uncertain"])


@dataclass(frozen=True, slots=True)
class KeyVersion:
    kind: str
    version: int
    state: str
    created_at: datetime
    state_changed_at: datetime | None


@dataclass(frozen=True, slots=True)
class KeyStatus:
    meter_id: int
    serial: str
    versions: list[KeyVersion]
    rotation: MeterRotationRow | None  # the newest


def _meter_rows(conn: Connection, where: sa.ColumnElement[bool], limit: int | None = None) -> list[MeterRotationRow]:
    query = (
        sa.select(
            mkr.c.meter_id,
            meters.c.serial,
            mkr.c.state,
            mkr.c.attempts,
            mkr.c.last_error,
            mkr.c.updated_at,
            mkr.c.rotation_id,
        )
        .join(meters, meters.c.id == mkr.c.meter_id)
        .where(where)
        .order_by(mkr.c.id.desc())
        .limit(limit)
    )
    return [
        MeterRotationRow(int(m), str(s), _CATEGORY.get(str(st), str(st)), int(a), e, u, int(r))
        for m, s, st, a, e, u, r in conn.execute(query)
    ]


def _counts(conn: Connection, rotation_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = {r: dict.fromkeys(CATEGORIES, 0) for r in rotation_ids}
    query = (
        sa.select(mkr.c.rotation_id, mkr.c.state, sa.func.count())
        .where(mkr.c.rotation_id.in_(list(rotation_ids)))
        .group_by(mkr.c.rotation_id, mkr.c.state)
    )
    for rotation_id, state, n in conn.execute(query):
        counts[int(rotation_id)][_CATEGORY.get(str(state), str(state))] = int(n)
    return counts


def rotation_report(conn: Connection, rotation_id: int, *, with_meters: bool = True) -> RotationReport:
    """One rotation request with its meters' states; NotFound for an unknown id."""
    row = conn.execute(
        sa.select(kr.c.id, kr.c.target, kr.c.emergency, kr.c.requested_by, kr.c.requested_at).where(
            kr.c.id == rotation_id
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"no key rotation {rotation_id}")
    rows = _meter_rows(conn, mkr.c.rotation_id == rotation_id) if with_meters else []
    return RotationReport(int(row[0]), str(row[1]), bool(row[2]), str(row[3]), row[4],
                          _counts(conn, [rotation_id])[rotation_id], rows)  # fmt: skip


def recent_rotations(conn: Connection, limit: int = 20) -> list[RotationReport]:
    """The newest rotation requests with their counts (no per-meter rows)."""
    rows = conn.execute(
        sa.select(kr.c.id, kr.c.target, kr.c.emergency, kr.c.requested_by, kr.c.requested_at)
        .order_by(kr.c.id.desc())
        .limit(limit)
    ).all()
    counts = _counts(conn, [int(r[0]) for r in rows])
    return [RotationReport(int(r[0]), str(r[1]), bool(r[2]), str(r[3]), r[4], counts[int(r[0])]) for r in rows]


def key_status(conn: Connection, meter_id: int) -> KeyStatus:
    """A meter's key versions (kind, version, state, dates) and its newest rotation; NotFound if unknown."""
    serial = conn.execute(sa.select(meters.c.serial).where(meters.c.id == meter_id)).scalar_one_or_none()
    if serial is None:
        raise NotFound(f"no meter {meter_id}")
    versions = [
        KeyVersion(str(kind), int(version), str(state), created, changed)
        for kind, version, state, created, changed in conn.execute(
            sa.select(mk.c.key_kind, mk.c.key_version, mk.c.state, mk.c.created_at, mk.c.state_changed_at)
            .where(mk.c.meter_id == meter_id)
            .order_by(mk.c.key_kind, mk.c.key_version)
        )
    ]
    newest = _meter_rows(conn, mkr.c.meter_id == meter_id, limit=1)
    return KeyStatus(meter_id, str(serial), versions, newest[0] if newest else None)
