"""`openami bench ingest --values N [--db sqlite|postgres|both] [--url URL]`: MDM ingest + VEE throughput.

Generates N synthetic interval values (daily reads of 96 intervals x 2 channels over many meters,
with a few gaps, spikes and faulty clocks; see _ingest_data.py) and feeds them, batch by batch,
through the MDM's ``Ingestor`` (VEE, then one storage transaction per batch) into a fresh SQLite
file and/or PostgreSQL. ``--path bus`` (default) publishes the reads on the in-process bus to the
ingest consumer, as the platform runs: VEE of the next batch overlaps the write of the previous one,
and on PostgreSQL each batch is written over ``--lanes`` connections (default 2). ``--path sync``
calls ``Ingestor.ingest`` batch after batch (one transaction, no overlap). Without ``--url`` PostgreSQL is
a private cluster started like the test suite's (tests/pg.py), durable (fsync on), and removed
afterwards. Generation is not timed.

Prints ONE JSON object on stdout, e.g. {"values": N, "sqlite_values_per_s": ..., "postgres_values_per_s":
..., "vee_only_values_per_s": ..., "peak_rss_mb": ...}; a progress bar goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.engine import Engine

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))  # tests/pg.py: the same private cluster as the test suite

from _common import bench_database  # noqa: E402
from _ingest_data import Generator  # noqa: E402
from openami.bus import READINGS_COLLECTED, READINGS_STORED, InProcessBus  # noqa: E402
from openami.db.engine import create_engine  # noqa: E402
from openami.db.meters import MeterSpec, upsert_meters  # noqa: E402
from openami.db.migrations import upgrade  # noqa: E402
from openami.domain.messages import CollectedReadings, ReadingsStored  # noqa: E402
from openami.domain.meters import CustomerClass, MeterKind  # noqa: E402
from openami.mdm.ingest import BATCH_VALUES, BatchResult, Ingestor  # noqa: E402
from openami.mdm.vee import MeterState, validate  # noqa: E402
from openami.settings import VeeSettings  # noqa: E402

CHUNK_VALUES = 3_000_000


def main() -> None:
    parser = argparse.ArgumentParser(prog="openami bench ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=1_000_000, help="interval values to ingest (default 1e6)")
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--url", help="PostgreSQL URL to use instead of a private cluster (must be empty)")
    parser.add_argument("--meters", type=int, default=10_000, help="meters the values are spread over")
    parser.add_argument(
        "--batch-values", type=int, default=BATCH_VALUES, help=f"values per ingest batch (default {BATCH_VALUES:,})"
    )
    parser.add_argument(
        "--path",
        choices=("sync", "bus"),
        default="bus",
        help="through the bus as the platform runs (default), or direct calls",
    )
    parser.add_argument(
        "--lanes", type=int, help="bus path: writer connections (default: the Ingestor's, 2 on PostgreSQL, 1 on SQLite)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-registers", action="store_true", help="reads without register snapshots (to see what they cost)"
    )
    args = parser.parse_args()
    meters = max(1, min(args.meters, args.values // 192 or 1))
    result: dict[str, object] = {
        "values": args.values,
        "meters": meters,
        "batch_values": args.batch_values,
        "path": args.path,
        "registers": not args.no_registers,
    }
    console = Console(stderr=True)
    result["vee_only_values_per_s"] = _vee_only(min(args.values, 1_000_000), meters, args.seed)
    targets = ("sqlite", "postgres") if args.db == "both" else (args.db,)
    with _progress(console) as progress:
        for kind in targets:
            with bench_database(kind, args.url) as url:
                stats = _run(url, kind, args, meters, progress)
            result.update({f"{kind}_{name}": value for name, value in stats.items()})
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _vee_only(values: int, meters: int, seed: int) -> int:
    """VEE alone (no storage), for the budget split: values/s on one core."""
    reads = list(Generator(meters, seed).reads(values))
    settings = VeeSettings()
    states: dict[int, MeterState] = {}
    count = 0
    start = time.perf_counter()
    for msg in reads:
        vee = validate(msg, settings, states.get(msg.meter_id))
        states[msg.meter_id] = vee.state
        count += msg.value_count
    return round(count / (time.perf_counter() - start))


def _add_meters(engine_url: str, count: int) -> list[int]:
    specs = [
        MeterSpec(
            serial=f"BENCH{n:09d}",
            kind=MeterKind.ELECTRIC,
            customer_class=CustomerClass.RESIDENTIAL,
            host="127.0.0.1",
            port=4059,
            system_title=n.to_bytes(8, "big"),
            model="openami-sim-e1",
            firmware="1.0.0",
        )
        for n in range(1, count + 1)
    ]
    engine = create_engine(engine_url)
    try:
        upgrade(engine)
        with engine.begin() as conn:
            ids = upsert_meters(conn, specs, now=datetime.now(UTC))
    finally:
        engine.dispose()
    return [ids[s.serial] for s in specs]


def _run(url: str, kind: str, args: argparse.Namespace, meters: int, progress: Progress) -> dict[str, float]:
    ids = _add_meters(url, meters)
    engine = create_engine(url)
    ingestor = Ingestor(engine, VeeSettings(), batch_values=args.batch_values, lanes=args.lanes)
    task = progress.add_task(f"ingest {kind}", total=args.values)
    reads = Generator(meters, args.seed, meter_ids=ids, registers=not args.no_registers).reads(args.values)
    # reads are generated a chunk at a time, off the clock; the bus path drains between chunks, so its
    # chunks are ~3 M values whatever the batch size (comparisons of batch sizes stay fair)
    batch_reads = max(1, args.batch_values // 192)
    chunk = max(batch_reads, CHUNK_VALUES // 192) if args.path == "bus" else batch_reads
    clock = _Clock(lambda done, wall: progress.update(task, completed=done, description=_rate(kind, done, wall)))
    try:
        if args.path == "bus":
            totals = asyncio.run(_through_bus(ingestor, reads, chunk, clock))
        else:
            totals = _direct(ingestor, reads, chunk, clock)
        server_cpu = _server_cpu_s(engine) if kind == "postgres" else None
    finally:
        engine.dispose()
    stats: dict[str, float] = {
        "values_per_s": round(clock.values / clock.wall),
        "seconds": round(clock.wall, 2),
        "client_cpu_us_per_value": round(clock.cpu / clock.values * 1e6, 3),
        "rows": totals.inserted + totals.superseded + totals.unchanged,
        "estimated": totals.estimated,
        "flagged": totals.flagged,
    }
    if server_cpu is not None:
        stats["server_cpu_us_per_value"] = round(server_cpu / clock.values * 1e6, 3)
    return stats


def _rate(kind: str, done: int, wall: float) -> str:
    return f"ingest {kind} {done / wall:>9,.0f} values/s"


class _Clock:
    """Wall and CPU time (all threads of this process) spent ingesting, and the values ingested."""

    def __init__(self, tick: Callable[[int, float], None]) -> None:
        self.wall = self.cpu = 0.0
        self.values = 0
        self._tick = tick

    @contextlib.contextmanager
    def running(self, values: int) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        self.values += values
        self._tick(self.values, self.wall)


def _direct(ingestor: Ingestor, reads: Iterator[CollectedReadings], chunk: int, clock: _Clock) -> BatchResult:
    """``Ingestor.ingest`` batch after batch."""
    totals = BatchResult()
    while batch := list(islice(reads, chunk)):  # generated before the clock starts
        with clock.running(sum(m.value_count for m in batch)):
            totals.add(ingestor.ingest(batch))
    return totals


async def _through_bus(
    ingestor: Ingestor, reads: Iterator[CollectedReadings], chunk: int, clock: _Clock
) -> BatchResult:
    """Publish reads to the ingest consumer as the head-end does; the clock runs while a chunk is in flight."""
    bus = InProcessBus(queue_size=1024)
    ingestor.subscribe(bus)
    totals = BatchResult()

    async def count(stored: ReadingsStored) -> None:
        totals.estimated += stored.counts.estimated
        totals.flagged += stored.counts.flagged
        totals.inserted += stored.counts.values  # rows handed to storage (the bus carries no storage counts)

    bus.subscribe(READINGS_STORED, count)
    while batch := list(islice(reads, chunk)):  # generated before the clock starts
        with clock.running(sum(m.value_count for m in batch)):
            for msg in batch:
                await bus.publish(READINGS_COLLECTED, msg)
            await bus.drain()
            await ingestor.flush()
            await bus.drain()
    await ingestor.close()
    await bus.close()
    return totals


def _server_cpu_s(engine: Engine) -> float | None:
    """CPU seconds of the PostgreSQL backends serving this database (local server only), else None."""
    with engine.connect() as conn:
        pids = [
            int(pid)
            for (pid,) in conn.exec_driver_sql("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        ]
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    except OSError:
        return None
    return total / ticks


if __name__ == "__main__":
    main()
