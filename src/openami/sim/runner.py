"""Running a fleet: worker processes that each host up to ~5,000 meters, and the parent that drives them.

Layout: the parent (``openami sim fleet``, or a test/benchmark through ``start_fleet_processes``)
builds the fleet, starts P workers (``python -m openami.sim.runner``, each its own asyncio loop),
hands each its slice of meters as one JSON line on stdin, waits for each to report ``ready``, writes
the commissioning file and returns a handle. A worker stops on SIGTERM/SIGINT or when its stdin
closes (so workers never outlive a parent that died). Worker stdout lines: ``bound INDEX PORT`` (only
when the fleet asked for OS-chosen ports) then ``ready COUNT``; logs go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from openami.runtime import tune_gc
from openami.sim.channel import (
    ControlError,
    LocalFleetControl,
    StdinLines,
    await_reply,
    control_reply,
    encode,
    send_line,
)
from openami.sim.commissioning import commissioning_document, write_commissioning
from openami.sim.fleet import Fleet, FleetConfig, SimMeter, build_fleet
from openami.sim.serving import HostedMeters, run, serve_meters_of

__all__ = [
    "ControlError",
    "FleetHandle",
    "LocalFleetControl",
    "run_fleet_in_process",
    "start_fleet_processes",
    "worker_main",
]

_STOP_GRACE_S = 10.0
_WARM_S_PER_METER_DAY = 0.0006  # 96 intervals at ~3 us, doubled for a machine that is busy elsewhere


@dataclasses.dataclass(slots=True)
class _Worker:
    process: subprocess.Popen[bytes]
    meters: tuple[SimMeter, ...]
    lines: queue.Queue[str | None]
    ready: bool = False


class FleetHandle:
    """A fleet running in worker processes: ``fleet`` (with bound ports), ``commissioning_path``, ``stop()``."""

    def __init__(self, fleet: Fleet, workers: list[_Worker], commissioning_path: Path | None) -> None:
        self.fleet = fleet
        self.commissioning_path = commissioning_path
        self._workers = workers
        self._control_lock = threading.Lock()
        self._control_id = 0
        self.control_timeout_s = 60.0

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    @property
    def exit_codes(self) -> list[int | None]:
        """Each worker's exit code (None while it runs); 0 after a clean ``stop()``."""
        return [w.process.poll() for w in self._workers]

    def alive(self) -> bool:
        """True while every worker process runs."""
        return all(w.process.poll() is None for w in self._workers)

    def stop(self, timeout: float = _STOP_GRACE_S) -> None:
        """SIGTERM every worker, close their stdin, wait; SIGKILL what is still there after ``timeout``."""
        for worker in self._workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
            _close_quietly(worker.process.stdin)
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            _close_quietly(worker.process.stdout)

    def _control_targets(self, meters: list[int]) -> list[int]:
        """Workers hosting the listed meters, and those hosting the check meters of their transformers."""
        listed = set(meters)
        targets = []
        for number, worker in enumerate(self._workers):
            if any(m.index in listed or any(i in listed for i, _, _ in m.members) for m in worker.meters):
                targets.append(number)
        return targets

    def control(self, op: str, meters: Iterable[int], /, **params: Any) -> int:
        """Apply scenario/fault operation ``op`` to the listed fleet indices; returns how many were touched.

        Blocks until every worker concerned has answered (``control_timeout_s``); raises ControlError
        when one refuses the operation (unknown, bad parameters) or does not answer. Call it from a
        thread (``asyncio.to_thread``) when an event loop must keep running meanwhile.
        """
        indices = list(meters)
        with self._control_lock:
            self._control_id += 1
            ident = self._control_id
            targets = self._control_targets(indices)
            line = encode(ident, op, indices, params)
            for number in targets:
                send_line(self._workers[number].process.stdin, line)
            deadline = time.monotonic() + self.control_timeout_s
            touched = 0
            for number in targets:
                touched += await_reply(self._workers[number].lines, ident, deadline, f"fleet worker {number}")
            return touched

    def __enter__(self) -> FleetHandle:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _close_quietly(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):
            stream.close()


def _pump(stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
    """Move a worker's stdout lines into a queue until EOF (so its pipe never fills up)."""
    for raw in stream:
        lines.put(raw.decode(errors="replace").rstrip("\n"))
    lines.put(None)


def _spawn(meters: tuple[SimMeter, ...], config: FleetConfig) -> _Worker:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "openami.sim.runner"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    assert process.stdin is not None
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True, name=f"fleet-{process.pid}").start()
    job = {
        "days": config.days,
        "report_ports": config.port == 0,
        "meters": [m.to_json() for m in meters],
        "authority_certificate_pem": config.authority_certificate_pem,
        "push": [config.push_host, config.push_port, config.push_transport] if config.push_host else None,
    }
    process.stdin.write(json.dumps(job, separators=(",", ":")).encode() + b"\n")
    process.stdin.flush()  # and keep it open: its EOF tells the worker that the parent is gone
    return _Worker(process, meters, lines)


def _await_ready(workers: list[_Worker], timeout: float) -> dict[int, int]:
    """Wait for every worker's ``ready``; return the ports the OS chose (meter index -> port)."""
    deadline = time.monotonic() + timeout
    ports: dict[int, int] = {}
    for number, worker in enumerate(workers):
        while not worker.ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"fleet worker {number} (pid {worker.process.pid}) not ready after {timeout} s")
            try:
                line = worker.lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                code = worker.process.wait()
                raise RuntimeError(f"fleet worker {number} (pid {worker.process.pid}) exited with code {code}")
            kind, *fields = line.split()
            if kind == "bound":
                ports[int(fields[0])] = int(fields[1])
            elif kind == "ready":
                worker.ready = True
    return ports


def start_fleet_processes(
    fleet: Fleet | FleetConfig,
    *,
    processes: int | None = None,
    commissioning_path: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    partitions: Sequence[Sequence[int]] | None = None,
) -> FleetHandle:
    """Start the fleet in worker processes and return once every meter listens.

    ``processes`` defaults to enough workers for ``max_meters_per_process`` each; ``partitions``
    instead names each worker's meters (fleet indices; every meter in exactly one), e.g. to serve a
    benchmark's probe meters from a process of their own. When
    ``commissioning_path`` is given, the commissioning file (0600) is written there before returning,
    with the ports actually bound. ``timeout`` defaults to a minute plus the meters' warm-up on two
    busy cores. Raises TimeoutError/RuntimeError (after stopping the workers) when a worker does not
    come up.
    """
    if isinstance(fleet, FleetConfig):
        fleet = build_fleet(fleet)
    if timeout is None:
        timeout = 60.0 + len(fleet.meters) * fleet.config.days * _WARM_S_PER_METER_DAY
    workers: list[_Worker] = []
    handle = FleetHandle(fleet, workers, None)
    try:
        for part in _parts(fleet, processes, partitions):
            workers.append(_spawn(part, fleet.config))
        ports = _await_ready(workers, timeout)
    except BaseException:
        handle.stop(timeout=2.0)
        raise
    if ports:
        fleet = _with_ports(fleet, ports)
        handle.fleet = fleet
    if commissioning_path is not None:
        handle.commissioning_path = write_commissioning(commissioning_path, commissioning_document(fleet))
    return handle


def _parts(
    fleet: Fleet, processes: int | None, partitions: Sequence[Sequence[int]] | None
) -> list[tuple[SimMeter, ...]]:
    if partitions is None:
        return fleet.partitions(processes)
    indices = [i for part in partitions for i in part]
    if sorted(indices) != list(range(len(fleet.meters))):
        raise ValueError("partitions must name every meter of the fleet exactly once")
    return [tuple(fleet.meters[i] for i in part) for part in partitions if part]


def _with_ports(fleet: Fleet, ports: dict[int, int]) -> Fleet:
    meters = tuple(dataclasses.replace(m, port=ports.get(m.index, m.port)) for m in fleet.meters)
    return dataclasses.replace(fleet, meters=meters)


async def run_fleet_in_process(
    fleet: Fleet | FleetConfig,
    stop: asyncio.Event,
    ready: asyncio.Future[Fleet] | None = None,
    control: LocalFleetControl | None = None,
) -> None:
    """Serve the whole fleet in the running event loop until ``stop`` is set (tests, small fleets).

    ``ready`` (if given) receives the fleet with the ports actually bound once every meter listens;
    ``control`` (if given) then takes operations for its meters (``control.control(op, meters, ...)``).
    """
    if isinstance(fleet, FleetConfig):
        fleet = build_fleet(fleet)
    config = fleet.config
    async with serve_meters_of(
        fleet.meters,
        days=config.days,
        authority_certificate_pem=config.authority_certificate_pem,
        push=(config.push_host, config.push_port) if config.push_host else None,
        push_transport=config.push_transport,
        hosted=None if control is None else control.hosted,
    ) as ports:
        if ready is not None and not ready.done():
            ready.set_result(_with_ports(fleet, ports))
        await stop.wait()


async def _worker(job: dict[str, Any], stdin: StdinLines) -> None:
    meters: Sequence[SimMeter] = [SimMeter.from_json(m) for m in job["meters"]]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    hosted = HostedMeters()
    push = job.get("push")
    async with serve_meters_of(
        meters,
        days=job["days"],
        authority_certificate_pem=job.get("authority_certificate_pem"),
        push=(str(push[0]), int(push[1])) if push else None,
        push_transport=str(push[2]) if push else "tcp",
        hosted=hosted,
    ) as ports:
        # Thousands of meters are long-lived objects (hundreds of MB): frozen out of the cyclic
        # collector's passes, which otherwise walked them all again and again once a storm's pushes
        # and sessions allocated (a storm: ~95 % of every simulator process's CPU in the collector).
        tune_gc()
        # control lines are only read once every meter is served: the parent sends none before ``ready``
        threading.Thread(target=_watch_stdin, args=(loop, stop, stdin, hosted), daemon=True, name="parent").start()
        if job["report_ports"]:
            sys.stdout.write("".join(f"bound {index} {port}\n" for index, port in ports.items()))
        sys.stdout.write(f"ready {len(meters)}\n")
        sys.stdout.flush()
        await stop.wait()


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event, stdin: StdinLines, hosted: HostedMeters) -> None:
    """Hand control lines to the event loop until the parent closes our stdin (or dies), then stop the worker."""
    while (line := stdin.readline()) is not None:
        if line.strip():
            try:
                loop.call_soon_threadsafe(_answer_control, hosted, line)
            except RuntimeError:  # the loop is closed: the worker is stopping anyway
                return
    with contextlib.suppress(RuntimeError):  # the loop may already be closed
        loop.call_soon_threadsafe(stop.set)


def _answer_control(hosted: HostedMeters, line: bytes) -> None:
    """On the worker's loop: apply one operation, answer ``done``/``error`` on stdout."""
    sys.stdout.write(control_reply(hosted, line) + "\n")
    sys.stdout.flush()


def _raise_open_files_limit() -> None:
    """Each meter listens on its own socket: use the hard limit of open files, not the soft one."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource  # noqa: PLC0415 - POSIX only

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def worker_main() -> None:
    """Entry of ``python -m openami.sim.runner``: one JSON job line on stdin, serve until told to stop."""
    _raise_open_files_limit()
    stdin = StdinLines(0)
    job = json.loads(stdin.readline() or b"{}")
    try:
        run(_worker(job, stdin))  # uvloop where installed
    except OSError as exc:  # typically: an address already in use
        sys.stderr.write(f"openami.sim.runner: {exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    worker_main()
