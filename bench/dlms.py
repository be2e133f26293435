"""`openami bench dlms [--sessions N] [--clients C] [--concurrency K] [--loop L]`: DLMS/COSEM sessions per second.

A full session is what a head-end does to collect a meter: TCP connect, AARQ/AARE (Suite 0 ciphered
initiate), HLS-GMAC passes 3 and 4, GET of a 96-row load profile by range (block transfer at PDU
1024), one GET-with-list of both energy registers with their scaler_unit, RLRQ/RLRE, close. The
meters are served by one separate process (``openami.sim.meter`` on 127.0.0.1, one listening port
per meter), the sessions run in C client processes of K concurrent sessions each (one meter per
concurrent session, as a head-end never opens two associations to one meter at once). Processes
are started with ``spawn``; timing starts when every client is connected to the start signal. Every
process runs uvloop when it is installed (``--loop asyncio`` for the standard loop).

Also measured in-process: profile decoding (A-XDR buffer to typed rows) in rows per second.

Prints ONE JSON object, e.g. {"sessions_per_s": ..., "session_p50_s": ..., "session_p99_s": ...,
"profile_decode_rows_per_s": ..., "peak_rss_mb": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing
import resource
import statistics
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event as EventType
from typing import Any

from openami.protocols.dlms import axdr
from openami.protocols.dlms.client import ClientSettings, DlmsClient, decode_profile_rows
from openami.protocols.dlms.connection import EncodedData
from openami.protocols.dlms.cosem import CaptureObject
from openami.protocols.dlms.obis import ACTIVE_EXPORT, ACTIVE_IMPORT, CLOCK, LOAD_PROFILE
from openami.sim.meter import MeterConfig, SimulatedMeter, close_servers, serve_meters
from openami.sim.serving import run

GUEK = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
GAK = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")
CLIENT_TITLE = bytes.fromhex("4F50454E414D4901")
COLUMNS = (
    CaptureObject(8, CLOCK, 2),
    CaptureObject(3, ACTIVE_IMPORT, 2),
    CaptureObject(3, ACTIVE_EXPORT, 2),
)
REGISTERS = [(ACTIVE_IMPORT, 3, 2), (ACTIVE_IMPORT, 3, 3), (ACTIVE_EXPORT, 3, 2), (ACTIVE_EXPORT, 3, 3)]


def _meter(index: int, pdu: int) -> SimulatedMeter:
    title = b"OAM" + index.to_bytes(5, "big")
    return SimulatedMeter(MeterConfig(f"OAM{index:08d}", title, GUEK, GAK, profile_days=2, max_pdu_size=pdu))


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def _sys_s() -> float:
    """CPU time this process spent in the kernel (loopback TCP, mostly), seconds."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------- server


def _server_process(meters: int, pdu: int, ports: Any, stop: EventType, report: Any, loop: str) -> None:
    run(_serve(meters, pdu, ports, stop, report), use_uvloop=loop == "uvloop")


async def _serve(meters: int, pdu: int, ports: Any, stop: EventType, report: Any) -> None:
    servers = await serve_meters((_meter(i, pdu), "127.0.0.1", 0) for i in range(meters))
    ports.put([server.sockets[0].getsockname()[1] for server in servers])
    cpu_before, sys_before = time.process_time(), _sys_s()
    await asyncio.get_running_loop().run_in_executor(None, stop.wait)
    report.put({
        "server_cpu_s": time.process_time() - cpu_before,
        "server_sys_s": _sys_s() - sys_before,
        "server_rss_mb": _peak_rss_mb(),
    })  # fmt: skip
    await close_servers(servers)


# ----------------------------------------------------------------------------------------- clients


def _client_process(ports: list[int], sessions: int, pdu: int, go: EventType, results: Any, loop: str) -> None:
    results.put(run(_run_clients(ports, sessions, pdu, go), use_uvloop=loop == "uvloop"))


async def _run_clients(ports: list[int], sessions: int, pdu: int, go: EventType) -> dict[str, Any]:
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    remaining = [sessions]
    durations: list[float] = []
    errors: list[str] = []
    started = time.monotonic()
    cpu_before, sys_before = time.process_time(), _sys_s()
    await asyncio.gather(*(_sessions_on(port, pdu, remaining, durations, errors) for port in ports))
    return {
        "started": started,
        "finished": time.monotonic(),
        "durations": durations,
        "errors": errors[:5],
        "error_count": len(errors),
        "client_cpu_s": time.process_time() - cpu_before,
        "client_sys_s": _sys_s() - sys_before,
        "client_rss_mb": _peak_rss_mb(),
    }


async def _sessions_on(port: int, pdu: int, remaining: list[int], durations: list[float], errors: list[str]) -> None:
    client_ic, server_ic = 0, -1
    while remaining[0] > 0:
        remaining[0] -= 1
        settings = ClientSettings.management(
            "127.0.0.1", port, system_title=CLIENT_TITLE, guek=GUEK, gak=GAK, max_pdu_size=pdu,
            invocation_counter=client_ic, server_invocation_counter=server_ic, timeout_s=10.0,
        )  # fmt: skip
        client = DlmsClient(settings)
        began = time.monotonic()
        try:
            async with client:
                await _one_session(client)
            durations.append(time.monotonic() - began)
        except Exception as exc:  # noqa: BLE001 - a benchmark counts failures, it does not stop on them
            errors.append(f"{type(exc).__name__}: {exc}")
        client_ic, server_ic = client.client_invocation_counter, client.server_invocation_counter


async def _one_session(client: DlmsClient) -> None:
    now = datetime.now(UTC)
    end = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
    rows = await client.read_profile(LOAD_PROFILE, end - timedelta(hours=23, minutes=45), end, columns=COLUMNS)
    if len(rows) != 96:
        raise RuntimeError(f"{len(rows)} rows instead of 96")
    await client.get_with_list(REGISTERS)


# ----------------------------------------------------------------------------------------- decode


def _profile_decode_rows_per_s(seconds: float = 1.0) -> float:
    """A-XDR profile buffer of 96 rows (as the meter sends it) to typed rows, in-process."""
    meter = _meter(0, 1024)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(days=1)
    rows = list(meter.energy.rows(int(start.timestamp()) // 900 * 900 + 900, int(end.timestamp()) // 900 * 900))
    raw = axdr.encode(
        axdr.Array(axdr.decode_all(bytes(r)) if isinstance(r, bytes) else axdr.Structure(r) for r in rows)
    )
    count = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        count += len(decode_profile_rows(EncodedData(raw)))
    return count / (time.perf_counter() - began)


# ----------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(prog="openami bench dlms", description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=3000, help="full sessions to run (default 3000)")
    parser.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent sessions per client process")
    parser.add_argument("--pdu", type=int, default=1024, help="client's proposed max PDU size (default 1024)")
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop (uvloop falls back to asyncio)"
    )
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    meters = args.clients * args.concurrency
    ports_queue, report, results = context.Queue(), context.Queue(), context.Queue()
    stop, go = context.Event(), context.Event()
    server = context.Process(target=_server_process, args=(meters, args.pdu, ports_queue, stop, report, args.loop))
    server.start()
    ports = ports_queue.get(timeout=120)
    share = [
        args.sessions // args.clients + (1 if i < args.sessions % args.clients else 0) for i in range(args.clients)
    ]
    clients = [
        context.Process(
            target=_client_process,
            args=(ports[i * args.concurrency : (i + 1) * args.concurrency], share[i], args.pdu, go, results, args.loop),
        )
        for i in range(args.clients)
    ]
    for process in clients:
        process.start()
    time.sleep(1.0)  # let the client processes import and wait on the start signal
    go.set()
    outcomes = [results.get(timeout=600) for _ in clients]
    stop.set()
    server_report = report.get(timeout=60)
    for process in (*clients, server):
        process.join(timeout=30)
    print(json.dumps(_summary(args, outcomes, server_report)))


def _summary(args: argparse.Namespace, outcomes: list[dict[str, Any]], server: dict[str, Any]) -> dict[str, Any]:
    durations = sorted(d for outcome in outcomes for d in outcome["durations"])
    wall = max(o["finished"] for o in outcomes) - min(o["started"] for o in outcomes)
    quantiles = statistics.quantiles(durations, n=100) if len(durations) > 1 else [durations[0]] * 99
    return {
        "sessions": len(durations),
        "errors": sum(o["error_count"] for o in outcomes),
        "first_errors": [e for o in outcomes for e in o["errors"]][:3],
        "clients": args.clients,
        "concurrency": args.concurrency,
        "pdu": args.pdu,
        "loop": args.loop if _has_uvloop() else "asyncio",
        "sessions_per_s": round(len(durations) / wall, 1),
        "session_p50_s": round(statistics.median(durations), 5),
        "session_p99_s": round(quantiles[98], 5),
        "server_cpu_ms_per_session": round(1000 * server["server_cpu_s"] / max(1, len(durations)), 3),
        "client_cpu_ms_per_session": round(1000 * sum(o["client_cpu_s"] for o in outcomes) / max(1, len(durations)), 3),
        "server_kernel_ms_per_session": round(1000 * server["server_sys_s"] / max(1, len(durations)), 3),
        "client_kernel_ms_per_session": round(
            1000 * sum(o["client_sys_s"] for o in outcomes) / max(1, len(durations)), 3
        ),
        "profile_decode_rows_per_s": round(_profile_decode_rows_per_s()),
        "peak_rss_mb": round(max(server["server_rss_mb"], *(o["client_rss_mb"] for o in outcomes)), 1),
    }


if __name__ == "__main__":
    main()
