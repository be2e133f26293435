"""Key rotation over DLMS: new keys into meters through Security Setup global_key_transfer, never losing one.

``openami.security.keys`` holds the state machine; this module talks to the meters. For each open
rotation, highest priority first, under the collector's per-meter lock (no read of that meter runs
between the steps, and every session takes fresh invocation counters from the collector):

1. uncertain (an earlier transfer's outcome is unknown): settle first. An association with the
   pending keys that works proves them (rotated); if the meter rejects them but accepts the active
   keys, the transfer never took (back to queued, go on with 2); otherwise it stays uncertain.
2. queued: associate with the CURRENT keys (meter unreachable: nothing changes, still queued); commit
   "uncertain" BEFORE sending; invoke global_key_transfer with the new GUEK and GAK wrapped (RFC 3394)
   under the meter's master key; release. A refusal: failed (the meter keeps its keys). No answer:
   uncertain.
3. prove: a fresh association with the NEW keys (a new counter space: no meter counter expected
   yet). Only when it works are the new keys activated (``security.keys.prove``: keys, counters and
   audit in one transaction). Otherwise uncertain.

Reads settle uncertain rotations the same way (:func:`read_settling`, called by the collector).
Errors and logs name meters and steps, never keys.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.engine import Engine

from openami.domain.meters import Meter
from openami.errors import AssociationRejected, AuthenticationFailed
from openami.headend.reader import MeterTarget, PendingKeys, ReadResult, SessionCounters
from openami.protocols.dlms.apdu import ActionResult
from openami.protocols.dlms.client import ClientSettings, DlmsClient
from openami.protocols.dlms.errors import AuthenticationTagError, DlmsError
from openami.protocols.dlms.keywrap import GLOBAL_KEY_TRANSFER, KeyId, encode_key_transfer
from openami.protocols.dlms.obis import CLOCK, SECURITY_SETUP
from openami.protocols.dlms.session_errors import AssociationRejectedError, HlsAuthenticationError, ServiceError
from openami.security import keys
from openami.security.keys import KeySet, MeterRotation
from openami.security.keystore import MasterKeyProvider, MeterKeys

if TYPE_CHECKING:
    from openami.headend.collector import Collector

__all__ = ["KeyRotator", "Outcome", "make_target", "read_settling"]

_log = structlog.get_logger("openami.headend")
ACTOR = "system:headend"
_FALLBACK_IC_SKIP = 8  # client counters the failed attempt with the pending keys may have used


class Outcome(enum.StrEnum):
    """Where one meter's rotation stands after an attempt (the report's categories)."""

    ROTATED = "rotated"
    PENDING = "pending"
    UNCERTAIN = "uncertain"
    FAILED = "failed"
    CANCELLED = "cancelled"


_OUTCOMES = {
    keys.RotationState.QUEUED: Outcome.PENDING,
    keys.RotationState.UNCERTAIN: Outcome.UNCERTAIN,
    keys.RotationState.ROTATED: Outcome.ROTATED,
    keys.RotationState.FAILED: Outcome.FAILED,
    keys.RotationState.CANCELLED: Outcome.CANCELLED,
}


def make_target(meter: Meter, key_set: KeySet) -> MeterTarget:
    """A meter as the head-end reaches it: address, identity, active keys and pending ones if any."""
    pending = key_set.pending
    return MeterTarget(
        meter_id=meter.id,
        serial=meter.serial,
        host=meter.host,
        port=meter.port,
        system_title=meter.system_title,
        customer_class=meter.customer_class,
        guek=key_set.active.guek,
        gak=key_set.active.gak,
        key_version=key_set.version,
        pending=None
        if pending is None
        else PendingKeys(pending.meter_rotation_id, pending.version, pending.keys.guek, pending.keys.gak),
    )


ReadFunction = Callable[[MeterTarget, SessionCounters], Awaitable[ReadResult]]


async def read_settling(
    engine: Engine,
    target: MeterTarget,
    counters: SessionCounters,
    read: ReadFunction,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> tuple[ReadResult, MeterTarget]:
    """Read a meter whose rotation is uncertain: pending keys first, active keys if the meter rejects them.

    Which worked settles the rotation (proven, or back to queued); returns the read and the meter's
    target from now on. Raises what the read raises when neither set of keys gets an association.
    """
    assert target.pending is not None
    rotation_id = target.pending.meter_rotation_id
    pending = target.with_pending_keys()
    try:
        result = await read(pending, SessionCounters(counters.client_ic_next, None))  # a new key's counter space
    except (AuthenticationFailed, AssociationRejected) as exc:
        if exc.step != "connect":
            raise
        skip = SessionCounters(counters.client_ic_next + _FALLBACK_IC_SKIP, counters.server_ic_last)
        result = await read(replace(target, pending=None), skip)
        await asyncio.to_thread(_settle, engine, rotation_id, proven=False, server_ic=None, now=now())
        _log.info("headend.keys.not_applied", meter_id=target.meter_id, via="read")
        return result, replace(target, pending=None)
    await asyncio.to_thread(
        _settle, engine, rotation_id, proven=True, server_ic=result.counters.server_ic_last, now=now()
    )
    _log.info("headend.keys.rotated", meter_id=target.meter_id, via="read")
    return result, pending


def _settle(engine: Engine, meter_rotation_id: int, *, proven: bool, server_ic: int | None, now: datetime) -> None:
    """``proven``: the new keys worked (``server_ic`` seen under them); else only the active keys did."""
    with engine.begin() as conn:
        rotation = keys.get_rotation(conn, meter_rotation_id)
        if rotation is None:
            return
        if proven:
            keys.prove(conn, rotation, server_ic_last=server_ic, actor=ACTOR, via="read", now=now)
        else:
            keys.mark_not_applied(conn, meter_rotation_id, now=now)


class KeyRotator:
    """Runs open rotations against the meters, through the collector's locks, counters and targets."""

    def __init__(
        self,
        engine: Engine,
        provider: MasterKeyProvider,
        collector: Collector,
        *,
        client_system_title: bytes,
        timeout_s: float,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._provider = provider
        self._collector = collector
        self._title = client_system_title
        self._timeout_s = timeout_s
        self._now = now

    async def run(
        self,
        *,
        rotation_id: int | None = None,
        concurrency: int = 16,
        progress: Callable[[MeterRotation, Outcome], None] | None = None,
    ) -> dict[Outcome, int]:
        """Attempt every open rotation (of one request, or all), emergencies first; returns the outcomes."""
        with self._engine.connect() as conn:
            rotations = keys.open_rotations(conn, rotation_id=rotation_id)
        counts = dict.fromkeys(Outcome, 0)
        slots = asyncio.Semaphore(concurrency)

        async def one(rotation: MeterRotation) -> None:
            async with slots:
                outcome = await self.rotate(rotation)
            counts[outcome] += 1
            if progress is not None:
                progress(rotation, outcome)

        for priority in sorted({r.priority for r in rotations}, reverse=True):  # an emergency goes out first
            await asyncio.gather(*(one(r) for r in rotations if r.priority == priority))
        return counts

    async def rotate(self, rotation: MeterRotation) -> Outcome:
        """One meter's rotation, as far as it goes now."""
        target = self._collector.targets.get(rotation.meter_id)
        if target is None:
            await self._db(keys.mark_unreachable, rotation.id, "the head-end does not know this meter yet")
            return Outcome.PENDING if rotation.state is keys.RotationState.QUEUED else Outcome.UNCERTAIN
        async with self._collector.meter_lock(rotation.meter_id):
            current = await asyncio.to_thread(self._current, rotation.id)  # another run may have moved it on
            if current is None or current.state not in keys.OPEN:
                return Outcome.CANCELLED if current is None else _OUTCOMES[current.state]
            rotation = current
            target = self._collector.targets[rotation.meter_id]
            new = await asyncio.to_thread(self._new_keys, rotation)
            if rotation.state is keys.RotationState.UNCERTAIN:
                settled = await self._settle(target, rotation, new)
                if settled is not None:
                    return settled
                target = self._collector.targets[rotation.meter_id]
            sent = await self._transfer(target, rotation, new)
            if sent is not None:
                return sent
            return await self._prove(target, rotation, new)

    async def _settle(self, target: MeterTarget, rotation: MeterRotation, new: MeterKeys) -> Outcome | None:
        """An uncertain rotation: which keys does the meter take? None: the old ones (now queued again)."""
        works, server_ic = await self._try(_with_keys(target, new, rotation))
        if works:
            return await self._proven(target, rotation, new, server_ic)
        old_works = False if works is None else (await self._try(target))[0]
        if not old_works:
            why = "no answer" if works is None else "neither the new nor the old keys were accepted"
            await self._db(keys.mark_unreachable, rotation.id, f"settling: {why}")
            return Outcome.UNCERTAIN
        await self._db(keys.mark_not_applied, rotation.id)
        self._collector.targets[target.meter_id] = replace(target, pending=None)
        return None

    async def _transfer(self, target: MeterTarget, rotation: MeterRotation, new: MeterKeys) -> Outcome | None:
        """Step 2; None once the meter acknowledged the transfer."""
        if new.kek is None:
            await self._db(keys.mark_refused, rotation, "no master key (kek) stored", actor=ACTOR)
            return Outcome.FAILED
        counters = await self._collector.reserve_block(target.meter_id, target.key_version)
        client = DlmsClient(self._settings(target, counters))
        try:
            try:
                await client.connect()
            except (DlmsError, OSError) as exc:
                await self._db(keys.mark_unreachable, rotation.id, f"associating with the current keys: {_why(exc)}")
                return Outcome.PENDING
            if not await self._db(keys.mark_sending, rotation.id):
                return Outcome.UNCERTAIN  # moved on elsewhere (another process): leave it to the next run
            pending = PendingKeys(rotation.id, rotation.guek_version, new.guek, new.gak)
            self._collector.targets[target.meter_id] = replace(target, pending=pending)
            parameter = encode_key_transfer(
                new.kek, [(KeyId.GLOBAL_UNICAST_ENCRYPTION, new.guek), (KeyId.AUTHENTICATION, new.gak)]
            )
            try:
                await client.action(SECURITY_SETUP, 64, GLOBAL_KEY_TRANSFER, parameter)
            except ServiceError as exc:
                result = ActionResult(exc.result).name.lower()
                reason = f"the meter refused the key transfer ({result})"
                await self._db(keys.mark_refused, rotation, reason, actor=ACTOR)
                self._collector.targets[target.meter_id] = target
                _log.warning("headend.keys.refused", meter_id=target.meter_id, result=result)
                return Outcome.FAILED
            except (DlmsError, OSError) as exc:
                await self._db(keys.mark_unreachable, rotation.id, f"no answer to the key transfer: {_why(exc)}")
                _log.warning("headend.keys.uncertain", meter_id=target.meter_id, error=_why(exc))
                return Outcome.UNCERTAIN
        finally:
            await client.close()
            await self._record(target, client)
        return None

    async def _prove(self, target: MeterTarget, rotation: MeterRotation, new: MeterKeys) -> Outcome:
        works, server_ic = await self._try(_with_keys(target, new, rotation))
        if not works:
            await self._db(keys.mark_unreachable, rotation.id, "the new keys are not proven yet")
            return Outcome.UNCERTAIN
        return await self._proven(target, rotation, new, server_ic)

    async def _proven(
        self, target: MeterTarget, rotation: MeterRotation, new: MeterKeys, server_ic: int | None
    ) -> Outcome:
        await self._db(keys.prove, rotation, server_ic_last=server_ic, actor=ACTOR, via="rotation")
        self._collector.targets[target.meter_id] = _with_keys(target, new, rotation)
        _log.info("headend.keys.rotated", meter_id=target.meter_id, via="rotation")
        return Outcome.ROTATED

    async def _try(self, target: MeterTarget) -> tuple[bool | None, int | None]:
        """Associate with ``target``'s keys and read the clock: True (works), False (keys refused), None (no answer)."""
        counters = await self._collector.reserve_block(target.meter_id, target.key_version)
        client = DlmsClient(self._settings(target, counters))
        try:
            async with client:
                await client.get(CLOCK, 8, 2)
        except (AssociationRejectedError, HlsAuthenticationError, AuthenticationTagError):
            return False, None
        except (DlmsError, OSError):
            return None, None
        finally:
            await self._record(target, client)
        server_ic = client.server_invocation_counter
        return True, None if server_ic < 0 else server_ic

    async def _record(self, target: MeterTarget, client: DlmsClient) -> None:
        server_ic = client.server_invocation_counter
        await self._collector.counters.record(
            target.meter_id,
            client_ic_next=client.client_invocation_counter,
            server_ic_last=None if server_ic < 0 else server_ic,
            key_version=target.key_version,
        )

    def _settings(self, target: MeterTarget, counters: SessionCounters) -> ClientSettings:
        return ClientSettings.management(
            target.host,
            target.port,
            system_title=self._title,
            guek=target.guek,
            gak=target.gak,
            invocation_counter=counters.client_ic_next,
            server_invocation_counter=-1 if counters.server_ic_last is None else counters.server_ic_last,
            timeout_s=self._timeout_s,
        )

    def _current(self, meter_rotation_id: int) -> MeterRotation | None:
        with self._engine.connect() as conn:
            return keys.get_rotation(conn, meter_rotation_id)

    def _new_keys(self, rotation: MeterRotation) -> MeterKeys:
        with self._engine.connect() as conn:
            return keys.load_new_keys(conn, self._provider, rotation)

    async def _db(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One state change of ``security.keys`` in its own transaction, in a worker thread (``now`` added)."""

        def call() -> Any:
            with self._engine.begin() as conn:
                return function(conn, *args, now=self._now(), **kwargs)

        return await asyncio.to_thread(call)


def _with_keys(target: MeterTarget, new: MeterKeys, rotation: MeterRotation) -> MeterTarget:
    return replace(target, guek=new.guek, gak=new.gak, key_version=rotation.guek_version, pending=None)


def _why(exc: BaseException) -> str:
    """A short cause for the rotation's record: the error's type and message (never key material)."""
    return f"{type(exc).__name__}: {exc}"[:200]
