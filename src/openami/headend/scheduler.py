"""Collection windows: when each meter is due, per its customer class (seed 004 defaults).

Residential meters are read ``residential_reads_per_day`` times a day (default 6: every 4 hours),
commercial ones ``commercial_reads_per_day`` (default 24: hourly). Within its period each meter has
a fixed slot (its id spread over the period), so load is even rather than a burst at the top of the
hour. A meter never read since the process started is due at once (catch-up after a restart).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime

import structlog

from openami.domain.meters import CustomerClass
from openami.headend.collector import Collector, RunSummary
from openami.headend.reader import MeterTarget
from openami.settings import CollectionSettings
from openami.waiting import wait_until_set

_log = structlog.get_logger("openami.headend")
_DAY_S = 86_400
_SPREAD = 2_654_435_761  # Knuth's multiplicative hash: neighbouring ids land far apart in the period


def period_s(customer_class: CustomerClass, settings: CollectionSettings) -> int:
    per_day = (
        settings.commercial_reads_per_day
        if customer_class is CustomerClass.COMMERCIAL
        else settings.residential_reads_per_day
    )
    return _DAY_S // per_day


def window_index(meter_id: int, period: int, now_epoch: int) -> int:
    """Which collection window of its period the meter is in at ``now_epoch``."""
    offset = (meter_id * _SPREAD) % period
    return (now_epoch - offset) // period


def due_meters(
    targets: Iterable[MeterTarget], done: dict[int, int], now_epoch: int, settings: CollectionSettings
) -> list[int]:
    """Meters whose current window has not been collected yet (``done`` maps meter → window)."""
    due = []
    for target in targets:
        window = window_index(target.meter_id, period_s(target.customer_class, settings), now_epoch)
        if done.get(target.meter_id, -1) < window:
            due.append(target.meter_id)
    return due


class Scheduler:
    """Runs due collections until stopped; each tick's due meters form one collection run."""

    def __init__(
        self,
        collector: Collector,
        settings: CollectionSettings,
        *,
        tick_s: float = 5.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_run: Callable[[RunSummary], Awaitable[None] | None] | None = None,
    ) -> None:
        self._collector = collector
        self._settings = settings
        self._tick_s = tick_s
        self._now = now
        self._on_run = on_run
        self.done: dict[int, int] = {}
        self.progress: tuple[int, int, int] = (0, 0, 0)  # expected, received, failed of the current run

    async def run_once(self) -> RunSummary | None:
        now_epoch = int(self._now().timestamp())
        due = due_meters(self._collector.targets.values(), self.done, now_epoch, self._settings)
        if not due:
            return None
        expected = len(due)
        self.progress = (expected, 0, 0)

        def progress(received: int, failed: int) -> None:
            self.progress = (expected, received, failed)

        summary = await self._collector.collect(due, kind="scheduled", progress=progress)
        for meter_id in due:  # failed meters wait for their next window; the comm error is recorded
            target = self._collector.targets[meter_id]
            self.done[meter_id] = window_index(meter_id, period_s(target.customer_class, self._settings), now_epoch)
        if self._on_run is not None:
            result = self._on_run(summary)
            if result is not None:
                await result
        return summary

    async def run_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad run; the error is logged
                _log.exception("headend.scheduler.run_failed")
            await wait_until_set(stop, self._tick_s)
