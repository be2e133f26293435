"""`openami bench switch --meters N`: signed disconnect/reconnect commands issued during a collection.

The fleet (pinning the command authority's certificate) runs in worker processes, the platform in
this one. The fleet holds 2N meters in two halves of N: the first half is collected alone (the
baseline), the second half is collected while --commands commands run on meters of that same half
(half disconnects, each followed by its meter's reconnect once confirmed), issued evenly over about
the baseline's duration. Each command goes the whole way: submit (policy, guard, counter, signature,
audit), the queue, a DLMS session, the meter's verification, the confirmation (and the final
register read after a disconnect). End-to-end latency is from submit to the confirmed status.

Prints ONE JSON object on stdout: p50_s, p99_s, success_rate, meters_per_s_baseline,
meters_per_s_with_commands, rate_drop_pct, peak_rss_mb (this process), the run's sizes and where a
command's time went (submit, queued, meter, notify: p50 and p99 each), and idle_p50_s/idle_p99_s: 20
commands one at a time before any collection; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import random
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # tests/pg.py for a private PostgreSQL

from openami import logging as oam_logging  # noqa: E402
from openami.cli import loop  # noqa: E402
from openami.db.engine import create_engine  # noqa: E402
from openami.db.migrations import upgrade  # noqa: E402
from openami.errors import OpenAmiError  # noqa: E402
from openami.security import command_authority  # noqa: E402
from openami.security.keystore import master_key_provider  # noqa: E402
from openami.security.policy import ALL_SCOPES, RequestScope, Role  # noqa: E402
from openami.services import switch as switch_services  # noqa: E402
from openami.services.bootstrap import build_platform, stop_platform  # noqa: E402
from openami.services.context import Platform  # noqa: E402
from openami.services.meters import import_commissioning  # noqa: E402
from openami.services.pki import ca_files  # noqa: E402
from openami.services.switch import CommandRequest  # noqa: E402
from openami.settings import CollectionSettings, GuardSettings, PushSettings, Settings, SwitchSettings  # noqa: E402
from openami.sim.fleet import FleetConfig  # noqa: E402
from openami.sim.runner import start_fleet_processes  # noqa: E402

OPERATOR = RequestScope(
    principal="bench:operator", roles=frozenset({Role.AMI_OPERATOR}), scopes=frozenset({ALL_SCOPES})
)


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _collect(platform: Platform, ids: list[int]) -> tuple[float, int]:
    """One collection of ``ids`` until stored; (meters per second, meters read)."""
    started = time.perf_counter()
    summary = await platform.collector.collect(ids)
    await platform.bus.drain()
    await platform.ingestor.flush()
    return summary.received / (time.perf_counter() - started), summary.received


Stages = dict[str, list[float]]
_API_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="api")
console_err = Console(stderr=True)


async def _command(platform: Platform, request: CommandRequest, timeout_s: float, stages: Stages) -> float | None:
    """Submit and wait for the outcome; the end-to-end seconds when confirmed, None otherwise.

    ``stages`` collects where the time went: submit (the call), queued (recorded → sent), meter (sent →
    confirmed: the DLMS session and the final read), notify (confirmed → the waiter has it).
    """
    started = time.perf_counter()
    # on threads of their own, as the API's requests run on the server's threads, not the collector's
    submit = functools.partial(switch_services.submit, platform, OPERATOR, request)
    try:
        view = await asyncio.get_running_loop().run_in_executor(_API_THREADS, submit)
    except OpenAmiError as exc:  # e.g. the meter's previous command is still in flight: counted as failed
        console_err.print(f"submit refused: {exc.code}")
        return None
    submitted = time.perf_counter()
    done = await switch_services.wait_for(platform, view.id, timeout_s)
    total = time.perf_counter() - started
    if done.status != "confirmed" or done.sent_at is None or done.confirmed_at is None:
        return None
    stages["submit"].append(submitted - started)
    stages["queued"].append((done.sent_at - done.created_at).total_seconds())
    stages["meter"].append((done.confirmed_at - done.sent_at).total_seconds())
    stages["notify"].append(max(0.0, total - (done.confirmed_at - done.created_at).total_seconds()))
    return total


async def _open_and_close(platform: Platform, meter_id: int, delay_s: float, results: list[float | None],
                          stages: Stages) -> None:  # fmt: skip
    await asyncio.sleep(delay_s)
    results.append(await _command(platform, CommandRequest(meter_id, "disconnect", reason="bench"), 60, stages))
    results.append(await _command(platform, CommandRequest(meter_id, "reconnect", reason="bench"), 60, stages))


async def _loop_lag(stop: asyncio.Event, lags: list[float]) -> None:
    """How late the event loop wakes a sleeper: what every hop of a command (and a read) waits."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        await asyncio.sleep(0.05)
        lags.append(loop.time() - started - 0.05)


async def _run(platform: Platform, commands: int, console: Console) -> dict[str, float | int]:
    ids = sorted(platform.collector.targets)
    half = len(ids) // 2
    baseline_ids, busy_ids = ids[:half], ids[half:]
    switch_services.start_queue(platform)
    idle_stages: Stages = {"submit": [], "queued": [], "meter": [], "notify": []}
    idle = [await _command(platform, CommandRequest(m, c, reason="bench"), 30, idle_stages)
            for m in busy_ids[-10:] for c in ("disconnect", "reconnect")]  # fmt: skip
    idle_confirmed = [x for x in idle if x is not None]
    console.print(f"baseline: collecting {len(baseline_ids)} meters without commands...")
    baseline_started = time.perf_counter()
    baseline_rate, _ = await _collect(platform, baseline_ids)
    spread_s = 0.8 * (time.perf_counter() - baseline_started)
    pairs = min(commands // 2, len(busy_ids))
    targets = random.Random(5).sample(busy_ids, pairs)
    console.print(f"collecting {len(busy_ids)} meters while {2 * pairs} commands run...")
    latencies: list[float | None] = []
    stages: Stages = {"submit": [], "queued": [], "meter": [], "notify": []}
    workers = [
        asyncio.create_task(_open_and_close(platform, meter_id, i * spread_s / max(1, pairs), latencies, stages))
        for i, meter_id in enumerate(targets)
    ]
    lags: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(_loop_lag(stop, lags))
    busy_rate, _ = await _collect(platform, busy_ids)
    stop.set()
    await asyncio.gather(*workers, probe)
    confirmed = [x for x in latencies if x is not None]
    return {
        "meters_per_collection": half,
        "fleet_meters": len(ids),
        "commands": len(latencies),
        "p50_s": round(_quantile(confirmed, 0.5), 4),
        "p99_s": round(_quantile(confirmed, 0.99), 4),
        "success_rate": round(len(confirmed) / max(1, len(latencies)), 4),
        "meters_per_s_baseline": round(baseline_rate, 1),
        "meters_per_s_with_commands": round(busy_rate, 1),
        "rate_drop_pct": round(100 * (1 - busy_rate / baseline_rate), 1) if baseline_rate else float("nan"),
        "idle_p50_s": round(_quantile(idle_confirmed, 0.5), 4),  # one command at a time, no collection
        "idle_p99_s": round(_quantile(idle_confirmed, 0.99), 4),
        "loop_lag_p50_s": round(_quantile(lags, 0.5), 4),
        "loop_lag_p99_s": round(_quantile(lags, 0.99), 4),
        **{f"{name}_p50_s": round(_quantile(values, 0.5), 4) for name, values in stages.items()},
        **{f"{name}_p99_s": round(_quantile(values, 0.99), 4) for name, values in stages.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="openami bench switch", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--meters", type=int, default=10_000, help="meters per collection (the fleet holds two halves of N)"
    )
    parser.add_argument("--commands", type=int, default=1000, help="disconnects + reconnects")
    parser.add_argument("--concurrency", type=int, default=200, help="collection concurrency")
    parser.add_argument("--command-slots", type=int, default=SwitchSettings().slots, help="command sessions at once")
    parser.add_argument("--sim-processes", type=int, default=None, help="simulator worker processes")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="platform event loop")
    args = parser.parse_args()
    oam_logging.configure()  # the platform's log lines to stderr: stdout is the one JSON object
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="openami-bench-switch-") as tmp:
        cluster = None
        url = f"sqlite:///{tmp}/bench.sqlite3"
        if args.db == "postgres":
            from tests.pg import PostgresCluster  # noqa: PLC0415

            cluster = PostgresCluster.start(durable=True)
            url = cluster.url("postgres")
        unlimited = 10_000_000  # the guard's rate limits would (rightly) stop a thousand disconnects an hour
        settings = Settings(
            data_dir=Path(tmp),
            database_url=url,
            collection=CollectionSettings(concurrency=args.concurrency, catch_up_days=1, retries=1, timeout_s=10),
            switch=SwitchSettings(poll_s=0.2, slots=args.command_slots),
            guard=GuardSettings(max_disconnects_fleet=unlimited, max_disconnects_area=unlimited),
            push=PushSettings(enabled=False),
        )
        engine = create_engine(url)
        upgrade(engine)
        with engine.begin() as conn:
            authority = command_authority.load_or_create(
                conn, master_key_provider(settings), ca_files(settings), now=datetime.now(UTC)
            )
        console.print(f"starting {2 * args.meters} simulated meters...")
        config = FleetConfig(meters=2 * args.meters, seed=3, flaky_fraction=0.0, drift_fraction=0.0, days=2,
                             authority_certificate_pem=authority.certificate_pem)  # fmt: skip
        fleet = start_fleet_processes(config, processes=args.sim_processes, commissioning_path=Path(tmp) / "c.json")
        try:
            document = json.loads((Path(tmp) / "c.json").read_text(encoding="utf-8"))
            import_commissioning(engine, master_key_provider(settings), document, now=datetime.now(UTC))
            platform = build_platform(settings, engine=engine)
            loop.tune_gc()

            async def run() -> dict[str, float | int]:
                try:
                    return await _run(platform, args.commands, console)
                finally:
                    await switch_services.stop_queue(platform)
                    await stop_platform(platform)

            result: dict[str, object] = {"db": args.db, **loop.run(run(), use_uvloop=args.loop == "uvloop")}
        finally:
            fleet.stop()
            if cluster is not None:
                cluster.stop()
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
