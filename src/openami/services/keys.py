"""Key management services: rotate the keys of one meter, a list, a feeder or every meter, and follow it.

``request_rotation`` checks the policy (``keys.rotate``), generates the new keys and stores them
pending, and records the request (audited) in one transaction; ``run_rotation`` then takes every
open rotation of it to the meters (``headend.keys.KeyRotator``, emergency re-keys first). Meters that
were unreachable stay queued and are attempted again by the platform after each scheduled collection
run (``retry_open_rotations``) and by ``openami keys rotate --retry``; a meter whose transfer's answer
was lost is settled by its next read. Reading the state of rotations needs the same permission.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openami.db import key_rotations as reports
from openami.db.key_rotations import KeyStatus, RotationReport
from openami.db.tables import feeders, meters, service_points, transformers
from openami.errors import InvalidInput, NotFound
from openami.headend.keys import KeyRotator, Outcome
from openami.security import keys as key_management
from openami.security.keys import MeterRotation
from openami.security.policy import RequestScope, Resource, authorize
from openami.services.context import Platform

__all__ = [
    "ACTION",
    "MAX_METERS_PER_LIST",
    "KeyStatus",
    "Outcome",
    "RotationReport",
    "key_status",
    "open_count",
    "recent_rotations",
    "request_rotation",
    "retry_open_rotations",
    "rotation_report",
    "run_rotation",
    "start_rotation",
    "stop_background",
]

ACTION = "keys.rotate"
MAX_METERS_PER_LIST = 10_000
_background: dict[int, set[asyncio.Task[dict[Outcome, int]]]] = {}  # per platform, until each run ends
_retrying: dict[int, asyncio.Task[dict[Outcome, int]]] = {}


def _resource(meter_ids: Sequence[int], feeder_id: str | None, all_meters: bool) -> tuple[str, Resource]:
    """The audit target text and the policy resource of a request, from what it names (before any lookup)."""
    if sum((bool(meter_ids), feeder_id is not None, all_meters)) != 1:
        raise InvalidInput("name the meters to rotate: meter ids, a feeder, or all")
    if all_meters:
        return "all", Resource("meters", "all")
    if feeder_id is not None:
        return f"feeder:{feeder_id}", Resource("feeder", feeder_id)
    ids = set(meter_ids)
    if len(ids) > MAX_METERS_PER_LIST:
        raise InvalidInput(f"at most {MAX_METERS_PER_LIST} meters per list (use a feeder or all)")
    if len(ids) == 1:
        (meter_id,) = ids
        return f"meter:{meter_id}", Resource("meter", str(meter_id))
    return f"meters:{len(ids)}", Resource("meters", str(len(ids)))


def _meters(conn: Connection, meter_ids: Sequence[int], feeder_id: str | None, all_meters: bool) -> list[int]:
    """The meter ids a request names; NotFound for an unknown feeder or meter."""
    if all_meters:
        return list(conn.execute(sa.select(meters.c.id).order_by(meters.c.id)).scalars())
    if feeder_id is not None:
        if conn.execute(sa.select(feeders.c.id).where(feeders.c.id == feeder_id)).first() is None:
            raise NotFound(f"no feeder {feeder_id[:40]!r}")
        on_feeder = (
            sa.select(meters.c.id)
            .join(service_points, service_points.c.id == meters.c.service_point_id)
            .join(transformers, transformers.c.id == service_points.c.transformer_id)
            .where(transformers.c.feeder_id == feeder_id)
            .order_by(meters.c.id)
        )
        return list(conn.execute(on_feeder).scalars())
    ids = sorted(set(meter_ids))
    known = set(conn.execute(sa.select(meters.c.id).where(meters.c.id.in_(ids))).scalars())
    unknown = [m for m in ids if m not in known]
    if unknown:
        raise NotFound(f"unknown meter ids: {unknown[:5]}")
    return ids


def request_rotation(
    platform: Platform,
    scope: RequestScope,
    *,
    meter_ids: Sequence[int] = (),
    feeder_id: str | None = None,
    all_meters: bool = False,
    emergency: bool = False,
    now: datetime | None = None,
) -> int:
    """Record a rotation of the named meters (new keys generated, stored pending, audited); returns its id.

    Raises PermissionDenied (audited), InvalidInput, NotFound (an unknown meter or feeder).
    """
    now = now or platform.now()
    target, resource = _resource(meter_ids, feeder_id, all_meters)
    with platform.engine.begin() as conn:
        authorize(conn, scope, ACTION, resource, purpose="operations", now=now)
        ids = _meters(conn, meter_ids, feeder_id, all_meters)
        if not ids:
            raise InvalidInput(f"{target} has no meters")
        return key_management.request_rotation(
            conn, platform.keystore, ids, target=target, emergency=emergency, actor=scope.principal, now=now
        )


def _rotator(platform: Platform) -> KeyRotator:
    settings = platform.settings
    return KeyRotator(
        platform.engine,
        platform.keystore,
        platform.collector,
        client_system_title=settings.headend.system_title,
        timeout_s=settings.collection.timeout_s,
        now=platform.now,
    )


async def run_rotation(
    platform: Platform,
    rotation_id: int | None = None,
    *,
    progress: Callable[[MeterRotation, Outcome], None] | None = None,
    concurrency: int | None = None,
) -> dict[Outcome, int]:
    """Take the open rotations of one request (or all open ones) to the meters; returns the attempts' outcomes.

    The caller authorised the request (``request_rotation``); this runs it, as the system.
    """
    limit = concurrency or max(1, min(64, platform.settings.collection.concurrency))
    return await _rotator(platform).run(rotation_id=rotation_id, progress=progress, concurrency=limit)


def open_count(platform: Platform, rotation_id: int | None = None) -> int:
    """How many meters of a request (or of all requests) are still pending or uncertain."""
    with platform.engine.connect() as conn:
        return len(key_management.open_rotations(conn, rotation_id=rotation_id))


def start_rotation(platform: Platform, rotation_id: int | None) -> asyncio.Task[dict[Outcome, int]]:
    """``run_rotation`` in the background of the running event loop (the API answers at once)."""
    name = f"keys.rotation.{rotation_id if rotation_id is not None else 'open'}"
    task = asyncio.get_running_loop().create_task(run_rotation(platform, rotation_id), name=name)
    tasks = _background.setdefault(id(platform), set())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


def retry_open_rotations(platform: Platform) -> asyncio.Task[dict[Outcome, int]] | None:
    """Attempt every open rotation again in the background, unless such a retry is still running.

    The platform calls it after each scheduled collection run, so a meter that was unreachable during
    its rotation gets its new keys soon after it is back.
    """
    running = _retrying.get(id(platform))
    if running is not None and not running.done():
        return None
    task = _retrying[id(platform)] = start_rotation(platform, None)
    return task


async def stop_background(platform: Platform) -> None:
    """Stop the platform's background rotations (a stopped one is left queued or uncertain: safe)."""
    tasks = _background.pop(id(platform), set())
    _retrying.pop(id(platform), None)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def rotation_report(
    platform: Platform, scope: RequestScope, rotation_id: int, *, with_meters: bool = True
) -> RotationReport:
    """A rotation request: counts by state (rotated, pending, uncertain, failed, cancelled) and its meters."""
    with platform.engine.begin() as conn:
        authorize(conn, scope, ACTION, Resource("rotation", str(rotation_id)), now=platform.now())
        return reports.rotation_report(conn, rotation_id, with_meters=with_meters)


def recent_rotations(platform: Platform, scope: RequestScope, *, limit: int = 20) -> list[RotationReport]:
    with platform.engine.begin() as conn:
        authorize(conn, scope, ACTION, now=platform.now())
        return reports.recent_rotations(conn, limit)


def key_status(platform: Platform, scope: RequestScope, meter_id: int) -> KeyStatus:
    """A meter's key versions and states (never the keys) and its newest rotation."""
    with platform.engine.begin() as conn:
        authorize(conn, scope, ACTION, Resource("meter", str(meter_id)), now=platform.now())
        return reports.key_status(conn, meter_id)
