"""Micro-benchmark of the raw interval write path (``openami.db.readings.write_intervals``).

    openami bench storage --rows 1000000 --db sqlite
    openami bench storage --rows 1000000 --db postgres            # starts a private cluster (tests/pg.py)
    openami bench storage --rows 1000000 --db postgres --url URL  # an EMPTY scratch database

Rows are daily reads (96 intervals x 2 channels per meter), written in batches of ``--batch`` rows,
one transaction per batch, into a freshly migrated database: first as new values (the steady state
of collection), then the same rows again (re-reads: everything unchanged). The private cluster runs
with PostgreSQL's durable defaults (fsync, full-page writes, synchronous commit). Prints one JSON object;
besides wall-clock rates it reports CPU microseconds per row of this process and (private cluster only)
of all the server's processes, which do not depend on what else the machine is doing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from openami.db.engine import create_engine
from openami.db.meters import MeterSpec, upsert_meters
from openami.db.migrations import upgrade
from openami.db.readings import IngestCounts, IntervalRow, write_intervals
from openami.domain.meters import CustomerClass, MeterKind

T0 = 1_772_409_600  # 2026-03-02T00:00Z
RECEIVED = T0 + 86_400 + 3_600


def _load_pg() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "tests" / "pg.py"
    spec = importlib.util.spec_from_file_location("_openami_bench_pg", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _cluster_cpu_seconds(datadir: Path | None) -> float:
    """CPU seconds used so far by a local cluster's postmaster and all its children (0 if unknown)."""
    if datadir is None:
        return 0.0
    try:
        postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat_file.parent.name)
        if pid == postmaster or int(fields[1]) == postmaster:  # fields[1] = ppid
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / ticks


def _rows(n: int) -> tuple[int, list[IntervalRow]]:
    rows: list[IntervalRow] = []
    meters = (n + 191) // 192
    for m in range(1, meters + 1):
        for k in range(96):
            end = T0 + 900 * (k + 1)
            rows.append((m, 1, end, 100.0 + (m * 7 + k) % 250, 0, 1, RECEIVED))
            rows.append((m, 2, end, float(k % 3), 0, 1, RECEIVED))
    return meters, rows[:n]


def _run(url: str, rows: list[IntervalRow], meters: int, batch: int, datadir: Path | None = None) -> dict[str, Any]:
    upgrade(url)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            specs = [
                MeterSpec(f"BENCH{m:08d}", MeterKind.ELECTRIC, CustomerClass.RESIDENTIAL, "127.0.0.1", 4059,
                          m.to_bytes(8, "big"), "bench", "1.0.0")
                for m in range(1, meters + 1)
            ]  # fmt: skip
            ids = upsert_meters(conn, specs, now=datetime.now(UTC))
        assert sorted(ids.values()) == list(range(1, meters + 1)), "the benchmark needs an empty database"
        results: dict[str, Any] = {}
        for phase in ("new", "reread"):
            totals = IngestCounts(0, 0, 0)
            cpu_client, cpu_server = time.process_time(), _cluster_cpu_seconds(datadir)
            started = time.perf_counter()
            for i in range(0, len(rows), batch):
                with engine.begin() as conn:
                    counts = write_intervals(conn, rows[i : i + batch])
                totals = IngestCounts(*(a + b for a, b in zip(totals, counts, strict=True)))
            elapsed = time.perf_counter() - started
            client_us = (time.process_time() - cpu_client) / len(rows) * 1e6
            server_us = (_cluster_cpu_seconds(datadir) - cpu_server) / len(rows) * 1e6
            results[phase] = {
                "seconds": round(elapsed, 3),
                "rows_per_s": round(len(rows) / elapsed),
                # CPU per row, independent of other load on the machine
                "client_cpu_us_per_row": round(client_us, 3),
                "server_cpu_us_per_row": round(server_us, 3),
                **totals._asdict(),
            }
        return results
    finally:
        engine.dispose()


def _once(args: argparse.Namespace, rows: list[IntervalRow], meters: int) -> dict[str, Any]:
    if args.db == "sqlite":
        with tempfile.TemporaryDirectory(prefix="openami-bench-") as tmp:
            return _run(f"sqlite:///{tmp}/bench.sqlite3", rows, meters, args.batch)
    if args.url:
        return _run(args.url, rows, meters, args.batch)
    pg = _load_pg()
    cluster = pg.PostgresCluster.start(durable=True)
    try:
        return _run(cluster.url("postgres"), rows, meters, args.batch, cluster.datadir)
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="openami bench storage", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--url", help="PostgreSQL URL of an empty scratch database (else a private cluster)")
    parser.add_argument("--batch", type=int, default=100_000, help="rows per write_intervals call (one transaction)")
    parser.add_argument("--runs", type=int, default=1, help="repeat on a fresh database; report the median")
    args = parser.parse_args()
    meters, rows = _rows(args.rows)
    runs = [_once(args, rows, meters) for _ in range(args.runs)]
    median_new = statistics.median(r["new"]["rows_per_s"] for r in runs)
    median_reread = statistics.median(r["reread"]["rows_per_s"] for r in runs)
    print(
        json.dumps(
            {
                "benchmark": "storage",
                "db": args.db,
                "rows": len(rows),
                "batch": args.batch,
                "runs": args.runs,
                "rows_per_s": round(median_new),
                "reread_rows_per_s": round(median_reread),
                "each_run": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
