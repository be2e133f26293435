"""A simulated electricity meter: COSEM objects over a DLMS/COSEM server, indistinguishable on the wire.

Objects (IDIS/DSMR conventions): clock 0.0.1.0.0.255 (optionally drifting), serial
0.0.96.1.0.255, active energy import 1.0.1.8.0.255 and export 1.0.2.8.0.255 (Wh, scaler 0, unit
30), the 15-minute load profile 1.0.99.1.0.255 (clock, import, export, status), disconnect control
0.0.96.3.10.255, limiter 0.0.17.0.0.255 and the signed command gateway 0.128.96.3.10.255 (the switch
moves for signed commands only; ``meter_switch``), security setup 0.0.43.0.0.255 (global_key_transfer
under the meter's master key, when it has one), the current association 0.0.40.0.0.255 and the
management client's next invocation counter 0.0.43.1.1.255. Management client SAP 1 needs HLS-GMAC
and Suite 0 ciphering; public client SAP 16 may read the clock and the object list only.

Events (``record_event``) go to the event log 0.0.99.98.0.255 (``sim.events``) and, when the Push
Setup 0.0.25.9.0.255 has a destination, out as ciphered pushes; ``power_fail``/``power_restore``
take the supply away and back (``sim.supply``: the registers stop, the meter stops answering).

:func:`serve_meter`/:func:`serve_meters` host one or thousands of meters in one event loop, each on
its own address; :class:`MeterFaults` lets a fleet runner make a meter slow, silent or offline.
"""

from __future__ import annotations

import asyncio
import random
import resource
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from openami.domain.meter_events import EventCode
from openami.protocols.dlms import obis
from openami.protocols.dlms.aio import start_server
from openami.protocols.dlms.axdr import DoubleLongUnsigned
from openami.protocols.dlms.cosem import (
    AssociationLN,
    CaptureObject,
    Clock,
    Data,
    LogicalDevice,
    ProfileGeneric,
    Register,
    SecuritySetup,
)
from openami.protocols.dlms.cosem.clock import utc_now
from openami.protocols.dlms.cosem.push_setup import PushSetup, TransportService
from openami.protocols.dlms.push import MAX_SEQUENCE, PushedEvent, encode_push
from openami.protocols.dlms.server import ServerConfig, ServerSecurity, ServerSession, management_client, public_client
from openami.sim.events import EventLog, PushChannel
from openami.sim.meter_profile import INTERVAL_S, LoadFunction, MeterEnergy, SimulatedProfile, default_load
from openami.sim.meter_switch import MeterSwitch
from openami.sim.supply import SupplyLoad

__all__ = ["MeterConfig", "MeterFaults", "SimulatedMeter", "serve_meter", "serve_meters"]

STATUS = obis.Obis(0, 0, 96, 10, 1, 255)
"""The profile's status column (Data, class 1)."""
WH = 30


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """One simulated meter. Keys are 16 bytes, the system title 8 bytes; keys never appear in repr."""

    serial: str
    system_title: bytes
    guek: bytes = field(repr=False)
    gak: bytes = field(repr=False)
    profile_days: int = 7
    clock_offset_s: float = 0.0
    """The meter's clock minus real time (drift), seconds."""
    load: LoadFunction | None = field(default=None, compare=False)
    """Wh imported/exported per interval end; None: :func:`default_load` seeded by the serial."""
    max_pdu_size: int = 1024
    invocation_counter: int = 0
    """The meter's own next invocation counter (for its ciphered answers)."""
    kek: bytes | None = field(default=None, repr=False)
    """The master key new keys are wrapped under (key transfer); None: the meter refuses key transfers."""
    push_host: str | None = None
    """Where the meter pushes its events (the head-end's push listener); None: it only logs them."""
    push_port: int = 0
    push_transport: TransportService = TransportService.TCP
    """TCP (a connection per notification) or UDP (one datagram each, never acknowledged)."""
    authority_certificate: bytes | None = field(default=None, repr=False)
    """DER of the command authority's certificate the meter pins; None: it refuses every signed command."""

    def __post_init__(self) -> None:
        if len(self.system_title) != 8 or len(self.guek) != 16 or len(self.gak) != 16:
            raise ValueError("a meter needs an 8-byte system title and 16-byte keys")
        if self.kek is not None and len(self.kek) != 16:
            raise ValueError("a meter's master key is 16 bytes")
        if not 1 <= self.profile_days <= 3660:
            raise ValueError("profile_days must be 1-3660")


@dataclass(slots=True)
class MeterFaults:
    """Network conditions of one meter (``aio.ServerHooks``); change them at any time.

    ``offline`` closes new connections at once; ``silent`` swallows every request; otherwise each
    answer is delayed ``latency_s`` plus up to ``jitter_s`` and dropped with ``drop_probability``.
    ``lose_key_transfer_answer``: the meter applies a key transfer but its answer is lost (the
    head-end cannot tell whether the new keys took).
    """

    latency_s: float = 0.0
    jitter_s: float = 0.0
    drop_probability: float = 0.0
    silent: bool = False
    offline: bool = False
    lose_key_transfer_answer: bool = False
    drop_next_answer: bool = False
    rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)  # noqa: S311 - simulation, not crypto

    def accept_connection(self) -> bool:
        return not self.offline

    def response_delay(self) -> float | None:
        if self.drop_next_answer:
            self.drop_next_answer = False
            return None
        if self.silent or (self.drop_probability and self.rng.random() < self.drop_probability):
            return None
        return self.latency_s + (self.rng.random() * self.jitter_s if self.jitter_s else 0.0)


class SimulatedMeter:
    """A meter's logical device, its security state and its energy model.

    ``now`` is the real time (injected in tests); the meter's clock is ``now() + clock_offset``.
    Registers and profile are commissioned ``profile_days`` before the meter is built.
    """

    def __init__(self, config: MeterConfig, *, now: Callable[[], datetime] = utc_now) -> None:
        self.config = config
        self.faults = MeterFaults()
        self.clock = Clock(obis.CLOCK, now=now, offset=timedelta(seconds=config.clock_offset_s))
        started = int(self.clock.time().timestamp())
        entries = config.profile_days * 86_400 // INTERVAL_S
        commissioned = started - started % INTERVAL_S - (entries - 1) * INTERVAL_S
        seed = zlib.crc32(config.serial.encode())
        self.supply = SupplyLoad(config.load or default_load(config.serial))
        """The load as the registers see it: supply interruptions and bypass (events part)."""
        self.energy = MeterEnergy(self.supply, commissioned, start_import=seed % 5_000_000)
        self.security = ServerSecurity(
            config.system_title, config.guek, config.gak, invocation_counter=config.invocation_counter, kek=config.kek
        )
        self.switch = MeterSwitch(
            system_title=config.system_title,
            certificate=config.authority_certificate,
            energy=self.energy,
            meter_time=self.clock.time,
            record_event=self.record_event,
            seed=seed,
        )
        """Switch, limiter, signed-command gateway and instantaneous values (switch-protocol part)."""
        self.disconnect = self.switch.disconnect
        self.event_log = EventLog()
        self.events: list[tuple[int, int, float | None]] = self.event_log.entries
        """What the meter recorded: (meter time epoch s, EventCode, value); see :meth:`record_event`."""
        self.push_setup = _push_setup(config)
        self.pushes = PushChannel(random.Random(seed))  # noqa: S311 - spreading pushes, not a secret
        self._push_sequence = 0
        self.push_setup.on_push = self._push_latest
        self.device = self._build_device(SimulatedProfile(self.energy, self.clock.time, entries), entries)
        self.server_config = ServerConfig(
            device=self.device,
            security=self.security,
            policies={1: management_client(1), 16: public_client(16)},
            max_pdu_size=config.max_pdu_size,
            now=now,
        )

    def _register(self, name: obis.Obis, column: int) -> Register:
        def value() -> DoubleLongUnsigned:
            return DoubleLongUnsigned(self.energy.registers_at(self.clock.time().timestamp())[column])

        return Register(name, scaler=0, unit=WH, source=value)

    def _build_device(self, profile: SimulatedProfile, entries: int) -> LogicalDevice:
        capture = [
            CaptureObject(8, obis.CLOCK, 2),
            CaptureObject(3, obis.ACTIVE_IMPORT, 2),
            CaptureObject(3, obis.ACTIVE_EXPORT, 2),
            CaptureObject(1, STATUS, 2),
        ]
        return LogicalDevice(
            [
                self.clock,
                Data(obis.SERIAL, self.config.serial),
                self._register(obis.ACTIVE_IMPORT, 0),
                self._register(obis.ACTIVE_EXPORT, 1),
                ProfileGeneric(
                    obis.LOAD_PROFILE,
                    capture_objects=capture,
                    capture_period=INTERVAL_S,
                    source=profile,
                    profile_entries=entries,
                ),
                *self.switch.objects(),
                SecuritySetup(obis.SECURITY_SETUP, server_system_title=self.config.system_title, keys=_KeyHolder(self)),
                AssociationLN(obis.CURRENT_ASSOCIATION),
                Data(
                    obis.INVOCATION_COUNTER,
                    source=lambda: DoubleLongUnsigned(self.security.expected_client_ic(1) & 0xFFFFFFFF),
                ),
                *self.event_log.objects(),
                self.push_setup,
            ]
        )

    def record_event(self, code: EventCode, value: float | None = None) -> None:
        """The meter notes an event at its own clock time (event log; pushed when a push target is set)."""
        self._record(code, value, push=self.supply.powered)

    # --- events, pushes and power (events part) -------------------------------------------------

    def _record(self, code: EventCode, value: float | None, *, push: bool) -> None:
        epoch = int(self.clock.time().timestamp())  # whole seconds: the log row and the push name one instant
        self.event_log.append(epoch, int(code), value)
        if push:
            self._push(
                [PushedEvent(datetime.fromtimestamp(epoch, UTC), int(code), value)],
                last_gasp=code is EventCode.POWER_DOWN,
            )

    def _push(self, events: list[PushedEvent], *, last_gasp: bool = False) -> bool:
        """Queue one notification for sending; it is ciphered when it leaves (taking the next invocation
        counter then, in send order). Ciphering at once made a worker applying a storm to thousands of
        meters late with every one of their pushes: its randomisation started only after the last."""
        destination = self.push_setup.ip_destination()
        if destination is None:
            return False
        setup = self.push_setup
        return self.pushes.submit(
            lambda: self._encode_push(events),
            destination,
            randomisation_s=setup.randomisation_start_interval,
            retries=0 if last_gasp else setup.number_of_retries,  # a last gasp has the energy for one try
            repetition_delay_s=setup.repetition_delay,
        )

    def _encode_push(self, events: list[PushedEvent]) -> bytes:
        security = self.security
        frame = encode_push(
            events,
            system_title=security.system_title,
            invocation_counter=security.next_invocation_counter(),
            guek=security.guek,
            gak=security.gak,
            sequence=self._push_sequence,
            meter_time=self.clock.time(),
        )
        self._push_sequence = (self._push_sequence + 1) & MAX_SEQUENCE
        return frame

    def _push_latest(self) -> None:
        """Push Setup method 1: send the latest event again (or an empty notification)."""
        latest = self.events[-1:]
        self._push([PushedEvent(datetime.fromtimestamp(t, UTC), c, v) for t, c, v in latest])

    @property
    def powered(self) -> bool:
        return self.supply.powered

    def power_fail(self, last_gasp: bool) -> bool:
        """The supply goes off: POWER_DOWN logged (pushed only with ``last_gasp``), the meter goes dark.

        Registers stop, new connections are refused and open ones are dropped. False when it was already off.
        """
        if not self.supply.powered:
            return False
        self._record(EventCode.POWER_DOWN, None, push=last_gasp)
        self.supply.fail(self.clock.time().timestamp())
        self.faults.offline = True
        return True

    def power_restore(self) -> bool:
        """The supply comes back: the meter answers again and pushes POWER_UP. False when it was on."""
        if not self.supply.restore(self.clock.time().timestamp()):
            return False
        self.faults.offline = False
        self._record(EventCode.POWER_UP, None, push=True)
        return True

    def session(self) -> _PoweredSession:
        """A fresh association handler for one TCP connection (dropped when the supply fails)."""
        return _PoweredSession(self.server_config, self.supply)

    def __repr__(self) -> str:
        return f"SimulatedMeter({self.config.serial!r})"


class _PoweredSession(ServerSession):
    """A session that goes dead with the meter's supply: no answer, and the connection is dropped."""

    def __init__(self, config: ServerConfig, supply: SupplyLoad) -> None:
        super().__init__(config)
        self._supply = supply

    def receive_data(self, data: bytes) -> bytes:
        if not self._supply.powered:
            self.closed = True  # the transport hangs up
            return b""
        return super().receive_data(data)


PUSH_RETRIES = 3
PUSH_REPETITION_DELAY_S = 2


def _push_setup(config: MeterConfig) -> PushSetup:
    """Pushes to the configured destination; a notification that cannot be delivered is tried
    ``PUSH_RETRIES`` more times, ``PUSH_REPETITION_DELAY_S`` apart, as a real meter's Push Setup is
    configured (a last gasp still gets one try: the meter has no energy for more)."""
    destination = f"{config.push_host}:{config.push_port}".encode() if config.push_host else b""
    setup = PushSetup(
        obis.PUSH_SETUP,
        push_objects=[CaptureObject(40, obis.PUSH_SETUP, 1), CaptureObject(7, obis.EVENT_LOG, 2)],
        destination=destination,
        number_of_retries=PUSH_RETRIES,
        repetition_delay=PUSH_REPETITION_DELAY_S,
    )
    setup.transport = config.push_transport
    return setup


class _KeyHolder:
    """The meter's keys as its Security Setup object sees them; applies the key-transfer fault."""

    __slots__ = ("_meter",)

    def __init__(self, meter: SimulatedMeter) -> None:
        self._meter = meter

    @property
    def kek(self) -> bytes | None:
        return self._meter.security.kek

    def stage_keys(self, *, guek: bytes | None = None, gak: bytes | None = None, kek: bytes | None = None) -> None:
        self._meter.security.stage_keys(guek=guek, gak=gak, kek=kek)
        faults = self._meter.faults
        if faults.lose_key_transfer_answer:
            faults.drop_next_answer = True  # the answer to this very request


async def serve_meter(meter: SimulatedMeter, host: str = "127.0.0.1", port: int = 4059) -> asyncio.Server:
    """Listen for DLMS/COSEM clients of one meter on ``host:port`` (port 0 = ephemeral)."""
    return await start_server(meter.session, host, port, hooks=meter.faults)


async def serve_meters(meters: Iterable[tuple[SimulatedMeter, str, int]]) -> list[asyncio.Server]:
    """Serve many meters in this event loop, each on its own (host, port), e.g. 127.0.x.y:4059.

    Raises the process's open-file limit to its hard limit first (one listening socket per meter,
    plus one per open connection). Close them with :func:`close_servers`.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return [await serve_meter(meter, host, port) for meter, host, port in meters]


async def close_servers(servers: Iterable[asyncio.Server]) -> None:
    """Stop listening and wait for the servers to close."""
    servers = list(servers)
    for server in servers:
        server.close()
    await asyncio.gather(*(server.wait_closed() for server in servers))
