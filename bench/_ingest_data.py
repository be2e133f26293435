"""Synthetic daily reads for `openami bench ingest`: realistic 15-minute shapes and a few faults.

Deterministic for a seed. Each meter-day is one ``CollectedReadings`` (96 intervals x 2 channels,
midnight register snapshots) as the head-end would publish it after a daily collection. About 1 %
of reads have a short gap, 0.2 % a long one, 0.2 % a spike, 0.05 % a negative value, 0.5 % a
status bit, 1 % a meter clock off by a minute and 0.1 % a register that disagrees.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from openami.domain.messages import CollectedReadings
from openami.domain.readings import Channel, RegisterSnapshot

S = 900
PER_DAY = 96
START = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp())  # a Monday
_IMPORT = str(Channel.ACTIVE_IMPORT)
_EXPORT = str(Channel.ACTIVE_EXPORT)


def _bump(k: int, centre: float, width: float) -> float:
    hour = (k + 1) / 4
    return math.exp(-(((hour - centre) / width) ** 2))


RESIDENTIAL = [250 * (0.3 + 1.2 * _bump(k, 7.5, 1.2) + 1.8 * _bump(k, 19.5, 2.0)) for k in range(PER_DAY)]
COMMERCIAL = [250 * (1.0 + 6.0 * (_bump(k, 13.0, 4.0))) for k in range(PER_DAY)]
SOLAR = [250 * 3.0 * _bump(k, 13.0, 2.8) for k in range(PER_DAY)]


@dataclass(frozen=True, slots=True)
class _Meter:
    meter_id: int
    shape: list[float]
    scale: float
    pv: float  # 0 = no rooftop PV


def _meters(ids: list[int], rng: random.Random) -> list[_Meter]:
    out = []
    for meter_id in ids:
        commercial = rng.random() < 0.1
        shape = COMMERCIAL if commercial else RESIDENTIAL
        pv = rng.uniform(0.5, 2.0) if rng.random() < 0.25 else 0.0
        out.append(_Meter(meter_id, shape, rng.uniform(0.4, 2.5), pv))
    return out


class Generator:
    """Yields reads day by day over ``meters`` meters (ids ``meter_ids``, else 1..meters) until ``values`` exist."""

    def __init__(
        self, meters: int, seed: int = 1, meter_ids: list[int] | None = None, *, registers: bool = True
    ) -> None:
        self.with_registers = registers
        self.rng = random.Random(seed)
        self.meters = _meters(meter_ids or list(range(1, meters + 1)), self.rng)
        self.noise = [self.rng.uniform(0.8, 1.2) for _ in range(4099)]
        self.registers = {m.meter_id: [self.rng.uniform(1e6, 5e7), self.rng.uniform(0, 1e6)] for m in self.meters}

    def reads(self, values: int) -> Iterator[CollectedReadings]:
        produced = 0
        day = 0
        while produced < values:
            for meter in self.meters:
                if produced >= values:
                    return
                msg = self._read(meter, day)
                produced += 2 * PER_DAY
                yield msg
            day += 1

    def _read(self, meter: _Meter, day: int) -> CollectedReadings:
        rng, noise = self.rng, self.noise
        day_start = START + day * 86_400
        factor = meter.scale * rng.uniform(0.8, 1.2)
        offset = (meter.meter_id * 31 + day * 97) % 4000
        imp = [float(round(v * factor * noise[offset + k])) for k, v in enumerate(meter.shape)]
        exp = [float(round(v * meter.pv * noise[offset + 95 - k])) for k, v in enumerate(SOLAR)] if meter.pv else None
        exp = exp or [0.0] * PER_DAY
        status = [0] * PER_DAY
        drop: set[int] = set()
        roll = rng.random()
        if roll < 0.01:
            at = rng.randrange(1, PER_DAY - 4)
            drop = set(range(at, at + rng.randint(1, 3)))
        elif roll < 0.012:
            at = rng.randrange(0, PER_DAY - 20)
            drop = set(range(at, at + rng.randint(8, 20)))
        elif roll < 0.014:
            imp[rng.randrange(PER_DAY)] *= 30
        elif roll < 0.0145:
            imp[rng.randrange(PER_DAY)] = -imp[0]
        elif roll < 0.0195:
            status[rng.randrange(PER_DAY)] = 0x80
        registers = self._registers(meter, day, day_start, sum(imp), sum(exp))
        ends = range(day_start + S, day_start + 86_400 + 1, S)
        keep = [k for k in range(PER_DAY) if k not in drop] if drop else range(PER_DAY)
        read_at = datetime.fromtimestamp(day_start + 86_400 + 1800 + meter.meter_id % 600, UTC)
        skew = 60 if rng.random() < 0.01 else 0
        return CollectedReadings(
            meter_id=meter.meter_id,
            read_at=read_at,
            meter_clock=read_at + timedelta(seconds=skew),
            requested_from=day_start + S,
            requested_to=day_start + 86_400,
            interval_ends=tuple(ends[k] for k in keep) if drop else tuple(ends),
            import_wh=tuple(imp[k] for k in keep) if drop else tuple(imp),
            export_wh=tuple(exp[k] for k in keep) if drop else tuple(exp),
            status=tuple(status[k] for k in keep) if drop else tuple(status),
            registers=registers if self.with_registers else (),
        )

    def _registers(
        self, meter: _Meter, day: int, day_start: int, imp_sum: float, exp_sum: float
    ) -> tuple[RegisterSnapshot, ...]:
        reg = self.registers[meter.meter_id]
        snaps = []
        if day == 0:  # the first read also brings the previous midnight's snapshot
            snaps += self._snapshot(meter.meter_id, day_start, reg)
        reg[0] += imp_sum + (1000.0 if self.rng.random() < 0.001 else 0.0)
        reg[1] += exp_sum
        snaps += self._snapshot(meter.meter_id, day_start + 86_400, reg)
        return tuple(snaps)

    @staticmethod
    def _snapshot(meter_id: int, at: int, reg: list[float]) -> list[RegisterSnapshot]:
        when = datetime.fromtimestamp(at, UTC)
        return [
            RegisterSnapshot(meter_id, _IMPORT, when, round(reg[0]) / 1000, "kWh", when),
            RegisterSnapshot(meter_id, _EXPORT, when, round(reg[1]) / 1000, "kWh", when),
        ]
