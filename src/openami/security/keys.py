"""Meter key management: new keys from a CSPRNG, key versions, and the state of every rotation.

A rotation replaces a meter's GUEK and GAK through the meter's Security Setup ``global_key_transfer``
(the head-end side is ``openami.headend.keys``). Its state, per meter (``meter_key_rotations``)::

    queued ──transfer about to be sent──► uncertain ──new keys proven──► rotated
      ▲  │                                 │  │  │
      │  └─meter unreachable: stays queued │  │  └─meter refused the transfer──► failed
      └────────old keys work, new do not───┘  └─no answer: stays uncertain
    (queued or uncertain) ──keys imported for the meter──► cancelled

- queued: the new keys are stored as PENDING key versions (wrapped like every key); nothing was
  sent, or what was sent is known not to have taken. The meter keeps working with its keys.
- uncertain: written BEFORE the transfer goes out, so a crash or a lost answer can never hide a
  transfer. The next contact (a rotation run or any read) tries the pending keys first, then the
  active ones, and settles the state by what works: no meter is ever lost.
- rotated: a fresh association with the new keys succeeded. In ONE transaction the new versions
  become active, the old ones retired, the meter's counters move to the new key's space
  (``db.counters.switch_key_version``) and the audit entry is written.

Nothing here talks to a meter or logs key material; keys only leave this module wrapped or in
:class:`~openami.security.keystore.MeterKeys` (whose repr is ``***``).
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openami.db import counters as counter_repo
from openami.db.tables import key_rotations as kr
from openami.db.tables import meter_key_rotations as mkr
from openami.db.tables import meter_keys as mk
from openami.errors import NotFound, OpenAmiError
from openami.security import keystore
from openami.security.audit import AuditEntry, record
from openami.security.keystore import MasterKeyProvider, MeterKeys

__all__ = [
    "EMERGENCY_PRIORITY",
    "OPEN",
    "KeySet",
    "MeterRotation",
    "PendingKeySet",
    "RotationState",
    "cancel_open_rotations",
    "generate_keys",
    "get_rotation",
    "load_key_set",
    "load_new_keys",
    "mark_not_applied",
    "mark_refused",
    "mark_sending",
    "mark_unreachable",
    "open_rotations",
    "prove",
    "request_rotation",
]

ACTION = "keys.rotate"
NORMAL_PRIORITY = 0
EMERGENCY_PRIORITY = 100
_CHUNK = 500  # ids per IN (...) list


class RotationState(enum.StrEnum):
    QUEUED = "queued"
    UNCERTAIN = "uncertain"
    ROTATED = "rotated"
    FAILED = "failed"
    CANCELLED = "cancelled"


OPEN = (RotationState.QUEUED, RotationState.UNCERTAIN)


@dataclass(frozen=True, slots=True)
class MeterRotation:
    """One meter's rotation, as stored."""

    id: int
    rotation_id: int
    meter_id: int
    state: RotationState
    priority: int
    guek_version: int
    gak_version: int
    attempts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class PendingKeySet:
    """Keys a meter may or may not hold (its rotation is uncertain): the next contact tries them first."""

    meter_rotation_id: int
    version: int  # the GUEK version: the counter space they open
    keys: MeterKeys


@dataclass(frozen=True, slots=True)
class KeySet:
    """What the head-end needs to reach a meter: its active keys, their GUEK version, pending keys if any."""

    active: MeterKeys
    version: int
    pending: PendingKeySet | None = None


def generate_keys() -> tuple[bytes, bytes]:
    """A new GUEK and GAK for Security Suite 0: 16 bytes each from the OS CSPRNG."""
    return secrets.token_bytes(16), secrets.token_bytes(16)


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _audit(
    conn: Connection, actor: str, outcome: str, resource: str, now: datetime, **details: str | int | bool
) -> None:
    record(conn, AuditEntry(actor=actor, action=ACTION, outcome=outcome, resource=resource, details=details), now=now)


def request_rotation(
    conn: Connection,
    provider: MasterKeyProvider,
    meter_ids: Sequence[int],
    *,
    target: str,
    emergency: bool,
    actor: str,
    now: datetime,
) -> int:
    """Record a rotation of ``meter_ids`` (new keys generated and stored pending); returns its id.

    A meter with a rotation already open joins this one (keeping its pending keys; an emergency
    raises its priority); a meter without a stored master key (KEK) cannot receive keys: its row is
    ``failed`` at once. Audited in the caller's transaction.
    """
    rotation_id = int(
        conn.execute(
            sa.insert(kr)
            .values(target=target, emergency=emergency, requested_by=actor, requested_at=now)
            .returning(kr.c.id)
        ).scalar_one()
    )
    priority = EMERGENCY_PRIORITY if emergency else NORMAL_PRIORITY
    ids = sorted(set(meter_ids))
    joined = failed = 0
    for chunk in _chunks(ids):
        already_open = _adopt_open(conn, chunk, rotation_id, priority, now)
        with_kek = set(
            conn.execute(
                sa.select(mk.c.meter_id).where(
                    mk.c.meter_id.in_(chunk), mk.c.key_kind == "kek", mk.c.state == keystore.ACTIVE
                )
            ).scalars()
        )
        joined += len(already_open)
        for meter_id in chunk:
            if meter_id in already_open:
                continue
            if meter_id not in with_kek:
                failed += 1
                _insert(conn, rotation_id, meter_id, priority, (0, 0), now=now, state=RotationState.FAILED,
                        error="no master key (kek) stored")  # fmt: skip
                continue
            versions = tuple(
                keystore.store_key_version(conn, provider, meter_id, kind, key, state=keystore.PENDING, now=now)
                for kind, key in zip(("guek", "gak"), generate_keys(), strict=True)
            )
            _insert(conn, rotation_id, meter_id, priority, versions, now=now, state=RotationState.QUEUED)
    _audit(conn, actor, "ok", f"rotation:{rotation_id}", now, target=target, meters=len(ids), emergency=emergency,
           joined=joined, failed=failed)  # fmt: skip
    return rotation_id


def _adopt_open(conn: Connection, chunk: Sequence[int], rotation_id: int, priority: int, now: datetime) -> set[int]:
    """Open rotations of these meters move to the new request (the report shows them there)."""
    rows = conn.execute(
        sa.select(mkr.c.id, mkr.c.meter_id, mkr.c.priority).where(mkr.c.meter_id.in_(chunk), mkr.c.state.in_(OPEN))
    ).all()
    for row_id, _meter_id, old_priority in rows:
        conn.execute(
            sa.update(mkr)
            .where(mkr.c.id == row_id)
            .values(rotation_id=rotation_id, priority=max(int(old_priority), priority), updated_at=now)
        )
    return {int(row[1]) for row in rows}


def _insert(  # noqa: PLR0913
    conn: Connection,
    rotation_id: int,
    meter_id: int,
    priority: int,
    versions: tuple[int, ...],
    *,
    now: datetime,
    state: RotationState,
    error: str | None = None,
) -> None:
    conn.execute(
        sa.insert(mkr).values(
            rotation_id=rotation_id,
            meter_id=meter_id,
            state=state,
            priority=priority,
            guek_version=versions[0],
            gak_version=versions[1],
            last_error=error,
            created_at=now,
            updated_at=now,
            settled_at=now if state is RotationState.FAILED else None,
        )
    )


def _rotation(row: Sequence[Any]) -> MeterRotation:
    return MeterRotation(
        int(row[0]), int(row[1]), int(row[2]), RotationState(row[3]), int(row[4]), int(row[5]), int(row[6]),
        int(row[7]), row[8],
    )  # fmt: skip


_COLUMNS = (mkr.c.id, mkr.c.rotation_id, mkr.c.meter_id, mkr.c.state, mkr.c.priority, mkr.c.guek_version,
            mkr.c.gak_version, mkr.c.attempts, mkr.c.last_error)  # fmt: skip


def open_rotations(
    conn: Connection, *, rotation_id: int | None = None, meter_ids: Sequence[int] | None = None, limit: int = 100_000
) -> list[MeterRotation]:
    """Open (queued or uncertain) rotations, highest priority first, then oldest."""
    query = sa.select(*_COLUMNS).where(mkr.c.state.in_(OPEN))
    if rotation_id is not None:
        query = query.where(mkr.c.rotation_id == rotation_id)
    if meter_ids is not None:
        query = query.where(mkr.c.meter_id.in_(list(meter_ids)))
    rows = conn.execute(query.order_by(mkr.c.priority.desc(), mkr.c.id).limit(limit)).all()
    return [_rotation(row) for row in rows]


def get_rotation(conn: Connection, meter_rotation_id: int) -> MeterRotation | None:
    row = conn.execute(sa.select(*_COLUMNS).where(mkr.c.id == meter_rotation_id)).one_or_none()
    return None if row is None else _rotation(row)


def load_new_keys(conn: Connection, provider: MasterKeyProvider, rotation: MeterRotation) -> MeterKeys:
    """The rotation's new (pending) GUEK and GAK, with the meter's active KEK they travel under."""
    kek_version = keystore.active_version(conn, rotation.meter_id, "kek")
    kek = (
        None
        if kek_version is None
        else keystore.load_key_version(conn, provider, rotation.meter_id, "kek", kek_version)
    )
    return MeterKeys(
        guek=keystore.load_key_version(conn, provider, rotation.meter_id, "guek", rotation.guek_version),
        gak=keystore.load_key_version(conn, provider, rotation.meter_id, "gak", rotation.gak_version),
        kek=kek,
    )


def load_key_set(conn: Connection, provider: MasterKeyProvider, meter_id: int) -> KeySet:
    """The meter's active keys and, while its rotation is uncertain, the pending ones (NotFound, KeyIntegrityError)."""
    active = keystore.load_meter_keys(conn, provider, meter_id)
    version = keystore.active_version(conn, meter_id, "guek") or 1
    rotations = open_rotations(conn, meter_ids=[meter_id])
    uncertain = next((r for r in rotations if r.state is RotationState.UNCERTAIN), None)
    if uncertain is None:
        return KeySet(active, version)
    new = load_new_keys(conn, provider, uncertain)
    return KeySet(active, version, PendingKeySet(uncertain.id, uncertain.guek_version, MeterKeys(new.guek, new.gak)))


def load_key_sets(
    conn: Connection, provider: MasterKeyProvider, meter_ids: Sequence[int]
) -> tuple[dict[int, KeySet], dict[int, OpenAmiError]]:
    """:func:`load_key_set` for many meters with a few queries: ({meter: key set}, {meter: why not})."""
    active, failed = keystore.load_active_keys(conn, provider, meter_ids)
    uncertain = {
        r.meter_id: r for r in open_rotations(conn, meter_ids=list(active)) if r.state is RotationState.UNCERTAIN
    }
    sets: dict[int, KeySet] = {}
    for meter_id, (keys, version) in active.items():
        rotation = uncertain.get(meter_id)
        if rotation is None:
            sets[meter_id] = KeySet(keys, version)
            continue
        try:
            new = load_new_keys(conn, provider, rotation)
        except (NotFound, keystore.KeyIntegrityError) as exc:
            failed[meter_id] = exc
            continue
        pending = PendingKeySet(rotation.id, rotation.guek_version, MeterKeys(new.guek, new.gak))
        sets[meter_id] = KeySet(keys, version, pending)
    return sets, failed


def _move(
    conn: Connection, meter_rotation_id: int, frm: Iterable[RotationState], now: datetime, **values: object
) -> bool:
    stmt = sa.update(mkr).where(mkr.c.id == meter_rotation_id, mkr.c.state.in_(list(frm)))
    return conn.execute(stmt.values(updated_at=now, **values)).rowcount == 1


def mark_unreachable(conn: Connection, meter_rotation_id: int, error: str, *, now: datetime) -> None:
    """An attempt that did not reach the point of sending (or of settling): the state stays as it is."""
    _move(conn, meter_rotation_id, OPEN, now, attempts=mkr.c.attempts + 1, last_error=error[:255])


def mark_sending(conn: Connection, meter_rotation_id: int, *, now: datetime) -> bool:
    """queued -> uncertain, to be COMMITTED before the transfer is sent; False if it was not queued."""
    return _move(
        conn, meter_rotation_id, (RotationState.QUEUED,), now, state=RotationState.UNCERTAIN,
        transfer_sent_at=now, attempts=mkr.c.attempts + 1, last_error=None,
    )  # fmt: skip


def mark_refused(conn: Connection, rotation: MeterRotation, reason: str, *, actor: str, now: datetime) -> bool:
    """The meter answered the transfer with a refusal: it keeps its keys; the pending ones are retired unused."""
    if not _move(conn, rotation.id, OPEN, now, state=RotationState.FAILED, settled_at=now, last_error=reason[:255]):
        return False
    _retire_pending(conn, rotation, now)
    _audit(conn, actor, "failed", f"meter:{rotation.meter_id}", now, rotation_id=rotation.rotation_id, reason=reason)
    return True


def mark_not_applied(conn: Connection, meter_rotation_id: int, *, now: datetime) -> bool:
    """uncertain -> queued: the old keys still work and the new ones do not (the transfer never took)."""
    return _move(
        conn, meter_rotation_id, (RotationState.UNCERTAIN,), now, state=RotationState.QUEUED,
        last_error="the meter kept its keys (transfer not applied)",
    )  # fmt: skip


def prove(
    conn: Connection, rotation: MeterRotation, *, server_ic_last: int | None, actor: str, via: str, now: datetime
) -> bool:
    """The new keys worked in a fresh association: activate them (one transaction, audited).

    New versions active, old retired, counters moved to the new key's space with ``server_ic_last``
    (the meter's counter seen under the new keys). False (nothing changed) unless it was uncertain.
    """
    if not _move(conn, rotation.id, (RotationState.UNCERTAIN,), now, state=RotationState.ROTATED, settled_at=now,
                 last_error=None):  # fmt: skip
        return False
    meter_id = rotation.meter_id
    for kind, version in (("guek", rotation.guek_version), ("gak", rotation.gak_version)):
        conn.execute(
            sa.update(mk)
            .where(mk.c.meter_id == meter_id, mk.c.key_kind == kind, mk.c.state == keystore.ACTIVE)
            .values(state=keystore.RETIRED, state_changed_at=now)
        )
        if not keystore.set_key_state(
            conn, meter_id, kind, version, keystore.ACTIVE, now=now, expected=keystore.PENDING
        ):
            raise keystore.KeyIntegrityError(f"the pending {kind} of meter {meter_id} is gone")
    counter_repo.switch_key_version(conn, meter_id, rotation.guek_version, server_ic_last=server_ic_last, now=now)
    _audit(conn, actor, "ok", f"meter:{meter_id}", now, rotation_id=rotation.rotation_id, via=via,
           guek_version=rotation.guek_version, gak_version=rotation.gak_version)  # fmt: skip
    return True


def _retire_pending(conn: Connection, rotation: MeterRotation, now: datetime) -> None:
    for kind, version in (("guek", rotation.guek_version), ("gak", rotation.gak_version)):
        keystore.set_key_state(conn, rotation.meter_id, kind, version, keystore.RETIRED, now=now,
                               expected=keystore.PENDING)  # fmt: skip


def cancel_open_rotations(conn: Connection, meter_id: int, *, actor: str, now: datetime) -> int:
    """Keys were imported for the meter: its open rotation is superseded (pending keys retired)."""
    cancelled = 0
    for rotation in open_rotations(conn, meter_ids=[meter_id]):
        if _move(conn, rotation.id, OPEN, now, state=RotationState.CANCELLED, settled_at=now,
                 last_error="superseded by imported keys"):  # fmt: skip
            _retire_pending(conn, rotation, now)
            _audit(conn, actor, "ok", f"meter:{meter_id}", now, rotation_id=rotation.rotation_id, cancelled=True)
            cancelled += 1
    return cancelled
