"""`openami bench collect --meters N`: one full daily collection of a simulated fleet, end to end.

The fleet runs in its own worker processes (the simulator), the platform in this one: DLMS sessions
over loopback (HLS-GMAC, Suite 0), 96 intervals x 2 channels plus registers per meter, the bus, VEE
and storage into a fresh SQLite file (or PostgreSQL with --db postgres). While the collection runs,
on-demand reads of random meters measure the latency an operator would see.

Prints ONE JSON object on stdout: meters_per_s, values_per_s (stored), session_p50_s, session_p99_s,
on_demand_p99_s, peak_rss_mb (this process), failed meters; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # tests/pg.py for a private PostgreSQL

from openami import logging as oam_logging  # noqa: E402
from openami.cli import loop  # noqa: E402
from openami.db import comm_errors  # noqa: E402
from openami.db.engine import create_engine  # noqa: E402
from openami.db.migrations import upgrade  # noqa: E402
from openami.security.keystore import master_key_provider  # noqa: E402
from openami.services.bootstrap import build_platform, stop_platform  # noqa: E402
from openami.services.context import Platform  # noqa: E402
from openami.services.meters import import_commissioning  # noqa: E402
from openami.settings import CollectionSettings, Settings  # noqa: E402
from openami.sim.fleet import FleetConfig  # noqa: E402
from openami.sim.runner import start_fleet_processes  # noqa: E402


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _on_demand_probe(platform: Platform, stop: asyncio.Event, latencies: list[float]) -> None:
    ids = sorted(platform.collector.targets)
    rng = random.Random(7)
    while not stop.is_set():
        meter_id = rng.choice(ids)
        started = time.perf_counter()
        try:
            await platform.collector.read_on_demand(meter_id, hours=1)
            latencies.append(time.perf_counter() - started)
        except Exception:  # noqa: BLE001 - a flaky meter; the benchmark measures the others
            pass
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def _collect(platform: Platform, console: Console) -> dict[str, float]:
    ids = sorted(platform.collector.targets)
    stop = asyncio.Event()
    on_demand: list[float] = []
    with Progress(
        TextColumn("collect"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("collect", total=len(ids))

        def advance(received: int, failed: int) -> None:
            progress.update(task, completed=received + failed)

        probe = asyncio.create_task(_on_demand_probe(platform, stop, on_demand))
        started = time.perf_counter()
        cpu_started = time.process_time()
        summary = await platform.collector.collect(ids, progress=advance)
        read_s = time.perf_counter() - started
        await platform.bus.drain()
        await platform.ingestor.flush()
        elapsed = time.perf_counter() - started
        collect_cpu = time.process_time() - cpu_started
        stop.set()
        await probe
    return {
        "meters": len(ids),
        "received": summary.received,
        "failed": summary.failed,
        "elapsed_s": round(elapsed, 2),
        "read_phase_s": round(read_s, 2),
        "meters_per_s": round(summary.received / elapsed, 1),
        "values_per_s": round(summary.values / elapsed, 1),
        "session_p50_s": round(statistics.median(summary.session_s), 4) if summary.session_s else float("nan"),
        "session_p99_s": round(_quantile(summary.session_s, 0.99), 4),
        "platform_cpu_ms_per_meter": round(1000 * collect_cpu / max(1, summary.received + summary.failed), 3),
        "on_demand_reads": len(on_demand),
        "on_demand_p99_s": round(_quantile(on_demand, 0.99), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="openami bench collect", description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--sim-processes", type=int, default=None, help="simulator worker processes")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="platform event loop")
    parser.add_argument("--gc", choices=("tuned", "default"), default="tuned", help="platform GC thresholds")
    parser.add_argument("--flaky", type=float, default=0.0, help="share of flaky meters (default 0)")
    args = parser.parse_args()
    oam_logging.configure()  # the platform's log lines to stderr: stdout is the one JSON object
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="openami-bench-collect-") as tmp:
        cluster = None
        url = f"sqlite:///{tmp}/bench.sqlite3"
        if args.db == "postgres":
            from tests.pg import PostgresCluster  # noqa: PLC0415

            cluster = PostgresCluster.start(durable=True)
            url = cluster.url("postgres")
        settings = Settings(
            data_dir=Path(tmp),
            database_url=url,
            collection=CollectionSettings(concurrency=args.concurrency, catch_up_days=1, retries=1, timeout_s=10),
        )
        console.print(f"starting {args.meters} simulated meters...")
        config = FleetConfig(meters=args.meters, seed=args.seed, flaky_fraction=args.flaky, drift_fraction=0.0, days=2)
        fleet = start_fleet_processes(config, processes=args.sim_processes, commissioning_path=Path(tmp) / "c.json")
        try:
            engine = create_engine(url)
            upgrade(engine)
            document = json.loads((Path(tmp) / "c.json").read_text(encoding="utf-8"))
            import_commissioning(engine, master_key_provider(settings), document, now=datetime.now(UTC))
            platform = build_platform(settings, engine=engine)
            if args.gc == "tuned":
                loop.tune_gc()

            async def run() -> dict[str, object]:
                try:
                    figures: dict[str, object] = {**await _collect(platform, console)}
                finally:
                    await stop_platform(platform)
                with engine.connect() as conn:
                    errors = comm_errors.list_comm_errors(conn, limit=1000)
                figures["failures"] = dict(Counter(f"{e.step}: {e.cause.split(':')[0]}" for e in errors))
                return figures

            result: dict[str, object] = {
                "db": args.db,
                "concurrency": args.concurrency,
                **loop.run(run(), use_uvloop=args.loop == "uvloop"),
            }
        finally:
            fleet.stop()
            if cluster is not None:
                cluster.stop()
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the simulator's workers (and PostgreSQL)
    result["platform_cpu_s"] = round(own.ru_utime + own.ru_stime, 1)
    result["simulator_cpu_s"] = round(children.ru_utime + children.ru_stime, 1)
    result["peak_rss_mb"] = round(own.ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
