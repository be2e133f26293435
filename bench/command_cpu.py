"""`openami bench command_cpu`: the platform's CPU per signed switch command, without a collection.

--commands commands (each meter: disconnect, then reconnect once confirmed) are issued at --rate a
second against a simulated fleet in one worker process, the platform in this one. What it costs the
platform process is measured with the process's own CPU clock, and split by thread from
/proc/self/task (Linux): the API threads (submit), the queue's database threads, the event loop
(DLMS sessions, the queue), the counter store. CPU per command is less sensitive to a noisy shared
machine than wall time: compare versions by running them one after the other, several times.

Prints ONE JSON object on stdout: cpu_ms_per_command, sys_ms_per_command, threads_ms_per_command,
context_switches_per_command, p50_s/p99_s (submit → confirmed), commands, confirmed; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import resource
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))  # _common

from _common import command_bench_settings  # noqa: E402
from openami import logging as oam_logging  # noqa: E402
from openami.cli import loop  # noqa: E402
from openami.db.engine import create_engine  # noqa: E402
from openami.db.migrations import upgrade  # noqa: E402
from openami.security import command_authority  # noqa: E402
from openami.security.keystore import master_key_provider  # noqa: E402
from openami.security.policy import ALL_SCOPES, RequestScope, Role  # noqa: E402
from openami.services import switch as switch_services  # noqa: E402
from openami.services.bootstrap import build_platform, stop_platform  # noqa: E402
from openami.services.context import Platform  # noqa: E402
from openami.services.meters import import_commissioning  # noqa: E402
from openami.services.pki import ca_files  # noqa: E402
from openami.settings import CollectionSettings, PushSettings  # noqa: E402
from openami.sim.fleet import FleetConfig  # noqa: E402
from openami.sim.runner import start_fleet_processes  # noqa: E402

OPERATOR = RequestScope("bench:operator", frozenset({Role.AMI_OPERATOR}), frozenset({ALL_SCOPES}))
WARM_UP_METERS = 5
_API_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="api")


def _thread_cpu() -> dict[int, tuple[str, float]]:
    """Native thread id → (thread name without its pool index, CPU seconds so far)."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: re.sub(r"_\d+$", "", t.name) for t in threading.enumerate()}
    found: dict[int, tuple[str, float]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text(encoding="ascii")
        except OSError:
            continue  # the thread ended meanwhile
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state is field 0, utime 11, stime 12
        found[int(task.name)] = (names.get(int(task.name), "other"), (int(fields[11]) + int(fields[12])) / tick)
    return found


def _by_thread(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    spent: dict[str, float] = {}
    for tid, (name, seconds) in after.items():
        spent[name] = spent.get(name, 0.0) + seconds - before.get(tid, (name, 0.0))[1]
    return spent


class Commands:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.latencies: list[float] = []
        self.statuses: list[str] = []

    async def one(self, meter_id: int, command: str) -> None:
        request = switch_services.CommandRequest(meter_id, command, reason="bench")
        submit = functools.partial(switch_services.submit, self.platform, OPERATOR, request)
        started = time.perf_counter()
        view = await asyncio.get_running_loop().run_in_executor(_API_THREADS, submit)
        done = await switch_services.wait_for(self.platform, view.id, 60)
        self.latencies.append(time.perf_counter() - started)
        self.statuses.append(done.status)

    async def pair(self, meter_id: int, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self.one(meter_id, "disconnect")
        await self.one(meter_id, "reconnect")


async def _measure(platform: Platform, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    switch_services.start_queue(platform)
    ids = sorted(platform.collector.targets)
    warm = Commands(platform)
    for meter_id in ids[:WARM_UP_METERS]:  # first sessions build layouts and caches: not measured
        await warm.pair(meter_id, 0.0)
    meters = ids[WARM_UP_METERS : WARM_UP_METERS + args.commands // 2]
    console.print(f"{2 * len(meters)} commands at {args.rate:g}/s...")
    measured = Commands(platform)
    threads, usage = _thread_cpu(), resource.getrusage(resource.RUSAGE_SELF)
    cpu = time.process_time()
    await asyncio.gather(*(measured.pair(m, 2 * i / args.rate) for i, m in enumerate(meters)))
    cpu = time.process_time() - cpu
    spent, after = _by_thread(threads, _thread_cpu()), resource.getrusage(resource.RUSAGE_SELF)
    n = len(measured.statuses)
    switches = after.ru_nvcsw - usage.ru_nvcsw + after.ru_nivcsw - usage.ru_nivcsw
    ordered = sorted(measured.latencies)
    return {
        "commands": n,
        "confirmed": measured.statuses.count("confirmed"),
        "cpu_ms_per_command": round(1000 * cpu / n, 2),
        "sys_ms_per_command": round(1000 * (after.ru_stime - usage.ru_stime) / n, 2),
        "threads_ms_per_command": {k: round(1000 * v / n, 2) for k, v in sorted(spent.items()) if v > 0},
        "context_switches_per_command": round(switches / n, 1),
        "p50_s": round(ordered[n // 2], 4),
        "p99_s": round(ordered[min(n - 1, round(0.99 * (n - 1)))], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="openami bench command_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=500, help="simulated meters (one worker process)")
    parser.add_argument("--commands", type=int, default=500, help="commands measured (pairs per meter)")
    parser.add_argument("--rate", type=float, default=50.0, help="commands issued per second")
    args = parser.parse_args()
    oam_logging.configure()  # the platform's log lines to stderr: stdout is the one JSON object
    if args.commands < 2 or args.meters < WARM_UP_METERS + args.commands // 2:
        parser.error(f"--meters must be at least {WARM_UP_METERS} + --commands / 2, and --commands at least 2")
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="openami-bench-command-cpu-") as tmp_name:
        tmp = Path(tmp_name)
        url = f"sqlite:///{tmp}/bench.sqlite3"
        settings = command_bench_settings(
            tmp, url, collection=CollectionSettings(catch_up_days=1, retries=1, timeout_s=10),
            push=PushSettings(enabled=False),
        )  # fmt: skip
        engine = create_engine(url)
        upgrade(engine)
        with engine.begin() as conn:
            authority = command_authority.load_or_create(
                conn, master_key_provider(settings), ca_files(settings), now=datetime.now(UTC)
            )
        config = FleetConfig(meters=args.meters, seed=3, flaky_fraction=0.0, drift_fraction=0.0, days=2,
                             authority_certificate_pem=authority.certificate_pem)  # fmt: skip
        console.print(f"starting {args.meters} simulated meters...")
        fleet = start_fleet_processes(config, processes=1, commissioning_path=tmp / "c.json")
        try:
            document = json.loads((tmp / "c.json").read_text(encoding="utf-8"))
            import_commissioning(engine, master_key_provider(settings), document, now=datetime.now(UTC))
            platform = build_platform(settings, engine=engine)
            loop.tune_gc()

            async def run() -> dict[str, Any]:
                try:
                    return await _measure(platform, args, console)
                finally:
                    await stop_platform(platform)

            result = loop.run(run())
        finally:
            fleet.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
