"""Turning fleet specs into listening simulated meters in one event loop (a worker, or a test).

Each ``SimMeter`` becomes a ``SimulatedMeter`` whose load is its ``LoadModel``, whose clock is off by
its ``clock_offset_s``, and whose faults follow its ``FaultKind``: ``slow`` delays every answer,
``silent`` swallows every request, ``drop`` hangs up after ``drop_after`` answers on each connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from openami.protocols.dlms.aio import SessionLike, start_server
from openami.protocols.dlms.cosem.push_setup import TransportService
from openami.protocols.dlms.signed_command import certificate_der_from_pem
from openami.sim.fleet import FaultKind, SimMeter
from openami.sim.loadshape import LoadModel
from openami.sim.meter import MeterConfig, SimulatedMeter, close_servers
from openami.sim.meter_profile import LoadFunction
from openami.sim.supply import CheckLoad, SupplyLoad

__all__ = ["HangUpAfter", "HostedMeters", "build_meter", "run", "serve_meters_of"]

_T = TypeVar("_T")


def run(main: Coroutine[Any, Any, _T], *, use_uvloop: bool = True) -> _T:
    """``asyncio.run(main)`` on uvloop where it is installed (Linux, macOS), the standard loop otherwise.

    Serving meters is mostly event-loop and transport work; uvloop's C loop does it with ~15-20 %
    less CPU per DLMS session (docs/benchmarks.md).
    """
    if use_uvloop:
        try:
            import uvloop  # noqa: PLC0415 - optional: absent on Windows

        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


class HangUpAfter:
    """A session that closes its connection after ``answers`` answers (a meter that drops the line)."""

    __slots__ = ("_answers", "_inner", "_limit")

    def __init__(self, inner: SessionLike, answers: int) -> None:
        self._inner = inner
        self._limit = answers
        self._answers = 0

    def receive_data(self, data: bytes) -> bytes:
        answer = self._inner.receive_data(data)
        if answer:
            self._answers += 1
        return answer

    @property
    def closed(self) -> bool:
        return self._inner.closed or self._answers >= self._limit


@dataclass(slots=True)
class HostedMeters:
    """The meters one worker (or an in-process fleet) serves, by fleet index; ``checks``: its check meters."""

    meters: dict[int, SimulatedMeter] = field(default_factory=dict)
    checks: set[int] = field(default_factory=set)


def _load_of(spec: SimMeter) -> LoadFunction:
    """The meter's load model; a check meter's is the true load of its transformer's meters."""
    if spec.check_for_transformer is None:
        return LoadModel(spec.load)
    return CheckLoad([(index, serial, SupplyLoad(LoadModel(load))) for index, serial, load in spec.members])


def build_meter(
    spec: SimMeter,
    *,
    days: int,
    authority_certificate: bytes | None = None,
    push: tuple[str, int] | None = None,
    push_transport: str = "tcp",
) -> tuple[SimulatedMeter, Callable[[], SessionLike]]:
    """The simulated meter of ``spec`` (faults applied) and the session factory to serve it with.

    ``authority_certificate``: DER of the command authority's certificate the meter pins. ``push``:
    where the meter pushes its events (check meters never push), over ``push_transport`` ("tcp", "udp").
    """
    push_host, push_port = push if push is not None and spec.check_for_transformer is None else (None, 0)
    meter = SimulatedMeter(
        MeterConfig(
            serial=spec.serial,
            system_title=spec.system_title,
            guek=spec.guek,
            gak=spec.gak,
            profile_days=days,
            clock_offset_s=float(spec.clock_offset_s),
            load=_load_of(spec),
            kek=spec.kek,
            push_host=push_host,
            push_port=push_port,
            push_transport=TransportService.UDP if push_transport == "udp" else TransportService.TCP,
            authority_certificate=authority_certificate,
        )
    )
    meter.faults.lose_key_transfer_answer = spec.lose_key_transfer_answer
    factory: Callable[[], SessionLike] = meter.session
    if spec.fault is FaultKind.SLOW:
        meter.faults.latency_s = spec.delay_s
    elif spec.fault is FaultKind.SILENT:
        meter.faults.silent = True
    elif spec.fault is FaultKind.DROP:
        limit = spec.drop_after

        def factory() -> SessionLike:
            return HangUpAfter(meter.session(), limit)

    return meter, factory


@contextlib.asynccontextmanager
async def serve_meters_of(
    meters: Sequence[SimMeter],
    *,
    days: int,
    warm: bool = True,
    authority_certificate_pem: str | None = None,
    push: tuple[str, int] | None = None,
    push_transport: str = "tcp",
    hosted: HostedMeters | None = None,
) -> AsyncIterator[dict[int, int]]:
    """Serve ``meters`` in the running loop; yields {meter index: bound port}; closes them on exit.

    ``push``: where the meters push events (over ``push_transport``); ``hosted`` (if given) is filled
    with the meters served, for the control channel.

    ``warm`` computes each meter's registers over its whole history before it listens (about 1 µs
    per interval), so that the first read costs what every later read costs.
    """
    servers = []
    ports: dict[int, int] = {}
    pinned = None if authority_certificate_pem is None else certificate_der_from_pem(authority_certificate_pem)
    try:
        for spec in meters:
            meter, factory = build_meter(
                spec, days=days, authority_certificate=pinned, push=push, push_transport=push_transport
            )
            if hosted is not None:
                hosted.meters[spec.index] = meter
                if spec.check_for_transformer is not None:
                    hosted.checks.add(spec.index)
            if warm:  # sum the whole history now rather than during the first read (a benchmark's)
                meter.energy.registers_at(meter.clock.time().timestamp())
            server = await start_server(factory, spec.host, spec.port, hooks=meter.faults)
            servers.append(server)
            ports[spec.index] = server.sockets[0].getsockname()[1]
        yield ports
    finally:
        await close_servers(servers)
