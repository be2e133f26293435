"""The simulated fleet: which meters exist, where they listen, their keys, loads and faults.

``build_fleet(FleetConfig(meters=N, seed=S))`` is deterministic: the same config gives the same
serials, addresses, system titles, load parameters, flaky meters and clock offsets, and (unless
``random_keys``) the same keys. Derived keys are HMAC-SHA256 of the seed and the serial: anyone who
knows the seed knows the keys, which is what reproducible tests want and why they are for the
simulator only. Every meter also has a master key (KEK) that new keys are wrapped under when the
platform rotates them. ``random_keys=True`` draws them from the OS CSPRNG instead; the commissioning file
is then the only copy. Running the fleet is ``openami.sim.runner``'s job.
"""

from __future__ import annotations

import enum
import hmac
import itertools
import random
import secrets
from dataclasses import dataclass, field
from typing import Any

from openami.domain.meters import CustomerClass
from openami.sim.loadshape import LoadParams, draw_params
from openami.sim.topology import Topology, build_topology

__all__ = [
    "DEFAULT_PORT",
    "MAX_METERS_PER_PROCESS",
    "PUSH_TRANSPORTS",
    "FaultKind",
    "Fleet",
    "FleetConfig",
    "SimMeter",
    "address_of",
    "build_fleet",
]

DEFAULT_PORT = 4059  # IANA port of the DLMS/COSEM TCP wrapper (IEC 62056-47)
MAX_METERS_PER_PROCESS = 5_000  # listeners per worker: well under the 20,000 open files of a process
PUSH_TRANSPORTS = ("tcp", "udp")
MODEL = "openami-sim-e1"
FIRMWARE = "1.0.0"
MANUFACTURER_ID = b"OAM"  # first 3 bytes of every system title (the FLAG manufacturer ID slot)
_HOSTS_PER_BLOCK = 254  # last octet 1-254: never a .0 or .255 address


class FaultKind(enum.StrEnum):
    """How a flaky meter misbehaves."""

    SLOW = "slow"  # answers every request after ``delay_s``
    SILENT = "silent"  # accepts the TCP connection, never answers
    DROP = "drop"  # closes the connection after ``drop_after`` answered requests


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """What fleet to build and how to lay it out (see docs/simulator.md).

    ``port`` is the port of every meter (each on its own 127.x.y.z address) or, with
    ``single_address``, the first port on 127.0.0.1 (meter i listens on ``port + i``). Port 0 lets
    the OS choose each meter's port (the runner reports them): what tests want, since a fixed port
    collides with any other fleet on the machine. ``days`` is how far back the meters' load profile
    goes (1-3660; memory: about 7 KB per meter and day).
    """

    meters: int
    seed: int = 1
    flaky_fraction: float = 0.03
    drift_fraction: float = 0.01
    single_address: bool = False
    port: int = DEFAULT_PORT
    random_keys: bool = False
    days: int = 7
    utc_offset_s: int = 0
    max_meters_per_process: int = MAX_METERS_PER_PROCESS
    authority_certificate_pem: str | None = None
    """The command authority's certificate (PEM) every meter pins; None: meters refuse every signed command."""
    push_host: str | None = None
    """Where every meter pushes its events (the head-end's push listener); None: meters only log them."""
    push_port: int = 0
    push_transport: str = "tcp"
    """How meters push: "tcp" (a connection per notification) or "udp" (a datagram per notification)."""
    check_meters: bool = False
    """Add a check meter at each transformer (after the customers' meters, one index per transformer)."""

    def __post_init__(self) -> None:
        if self.meters < 1:
            raise ValueError("a fleet needs at least one meter")
        if not (0.0 <= self.flaky_fraction <= 1.0 and 0.0 <= self.drift_fraction <= 1.0):
            raise ValueError("flaky_fraction and drift_fraction must be between 0 and 1")
        if not 0 <= self.port <= 65_535 or (self.single_address and self.port and self.port + self.meters > 65_536):
            raise ValueError(f"port {self.port} leaves no room for {self.meters} meters")
        if not 1 <= self.days <= 3660 or self.max_meters_per_process < 1:
            raise ValueError("days must be 1-3660 and max_meters_per_process positive")
        if self.push_transport not in PUSH_TRANSPORTS:
            raise ValueError(f"push_transport is one of {', '.join(PUSH_TRANSPORTS)}")


@dataclass(frozen=True, slots=True)
class SimMeter:
    """One simulated meter: identity, address, keys (secret: never log them), load and faults."""

    index: int
    serial: str
    host: str
    port: int
    system_title: bytes
    guek: bytes = field(repr=False)
    gak: bytes = field(repr=False)
    service_point_id: str | None
    load: LoadParams
    fault: FaultKind | None = None
    delay_s: float = 0.0
    drop_after: int = 0
    clock_offset_s: int = 0
    kek: bytes | None = field(default=None, repr=False)
    lose_key_transfer_answer: bool = False
    """A fault for tests: the meter applies a key transfer, but its answer never arrives."""
    check_for_transformer: str | None = None
    """Set for a transformer's check meter (no service point): it measures the sum of ``members``."""
    members: tuple[tuple[int, str, LoadParams], ...] = ()
    """A check meter's transformer meters: (fleet index, serial, load), whose true load it registers."""

    @property
    def customer_class(self) -> CustomerClass:
        return self.load.customer_class

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (keys in hex) to hand the meter to a worker process."""
        return {
            "index": self.index,
            "serial": self.serial,
            "host": self.host,
            "port": self.port,
            "system_title": self.system_title.hex(),
            "guek": self.guek.hex(),
            "gak": self.gak.hex(),
            "service_point_id": self.service_point_id,
            "load": {**_load_json(self.load)},
            "fault": self.fault.value if self.fault else None,
            "delay_s": self.delay_s,
            "drop_after": self.drop_after,
            "clock_offset_s": self.clock_offset_s,
            "kek": None if self.kek is None else self.kek.hex(),
            "lose_key_transfer_answer": self.lose_key_transfer_answer,
            "check_for_transformer": self.check_for_transformer,
            "members": [[index, serial, _load_json(load)] for index, serial, load in self.members],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SimMeter:
        return cls(
            index=data["index"],
            serial=data["serial"],
            host=data["host"],
            port=data["port"],
            system_title=bytes.fromhex(data["system_title"]),
            guek=bytes.fromhex(data["guek"]),
            gak=bytes.fromhex(data["gak"]),
            service_point_id=data["service_point_id"],
            load=_load_from_json(data["load"]),
            fault=FaultKind(data["fault"]) if data["fault"] else None,
            delay_s=data["delay_s"],
            drop_after=data["drop_after"],
            clock_offset_s=data["clock_offset_s"],
            kek=bytes.fromhex(data["kek"]) if data.get("kek") else None,
            lose_key_transfer_answer=bool(data.get("lose_key_transfer_answer", False)),
            check_for_transformer=data.get("check_for_transformer"),
            members=tuple((index, serial, _load_from_json(load)) for index, serial, load in data.get("members", ())),
        )


def _load_json(load: LoadParams) -> dict[str, Any]:
    return {
        "seed": load.seed,
        "customer_class": load.customer_class.value,
        "annual_kwh": load.annual_kwh,
        "pv_kwp": load.pv_kwp,
        "ev_kw": load.ev_kw,
        "utc_offset_s": load.utc_offset_s,
        "weather_seed": load.weather_seed,
    }


def _load_from_json(data: dict[str, Any]) -> LoadParams:
    load = dict(data)
    load["customer_class"] = CustomerClass(load["customer_class"])
    return LoadParams(**load)


@dataclass(frozen=True, slots=True)
class Fleet:
    """A built fleet: its config, grid and meters (in commissioning order)."""

    config: FleetConfig
    topology: Topology
    meters: tuple[SimMeter, ...]

    @property
    def check_meters(self) -> tuple[SimMeter, ...]:
        """The transformers' check meters (empty unless the config asked for them)."""
        return tuple(m for m in self.meters if m.check_for_transformer is not None)

    @property
    def flaky(self) -> tuple[SimMeter, ...]:
        return tuple(m for m in self.meters if m.fault is not None)

    @property
    def drifting(self) -> tuple[SimMeter, ...]:
        return tuple(m for m in self.meters if m.clock_offset_s)

    def partitions(self, processes: int | None = None) -> list[tuple[SimMeter, ...]]:
        """The meters split into ``processes`` contiguous slices (default: enough for the per-process cap)."""
        count = processes or -(-len(self.meters) // self.config.max_meters_per_process)
        count = max(1, min(count, len(self.meters)))
        size, larger = divmod(len(self.meters), count)
        bounds = [0]
        for k in range(count):
            bounds.append(bounds[-1] + size + (k < larger))
        return [self.meters[a:b] for a, b in itertools.pairwise(bounds)]


def address_of(index: int, config: FleetConfig) -> tuple[str, int]:
    """(host, port) of meter ``index``: 127.0.1.1, 127.0.1.2, … 127.0.1.254, 127.0.2.1, … on one port."""
    if config.single_address:
        return "127.0.0.1", config.port + index if config.port else 0
    block, host = divmod(index, _HOSTS_PER_BLOCK)
    block += 1  # skip 127.0.0.x: 127.0.0.1 belongs to the platform
    if block >= 1 << 16:
        raise ValueError("more meters than the 127/8 network has addresses for")
    return f"127.{block >> 8}.{block & 0xFF}.{host + 1}", config.port


def _derive(seed: int, label: str, size: int) -> bytes:
    return hmac.digest(f"openami-sim/{seed}".encode(), label.encode(), "sha256")[:size]


def _keys(config: FleetConfig, serial: str) -> tuple[bytes, bytes, bytes]:
    """(GUEK, GAK, KEK) of one meter."""
    if config.random_keys:
        return secrets.token_bytes(16), secrets.token_bytes(16), secrets.token_bytes(16)
    seed = config.seed
    return _derive(seed, f"{serial}/guek", 16), _derive(seed, f"{serial}/gak", 16), _derive(seed, f"{serial}/kek", 16)


def _system_titles(config: FleetConfig, count: int) -> list[bytes]:
    """Unique 8-byte system titles: manufacturer ID + 5 seeded pseudo-random bytes."""
    titles: list[bytes] = []
    seen: set[bytes] = set()
    for i in range(count):
        attempt = 0
        while (title := MANUFACTURER_ID + _derive(config.seed, f"title/{i}/{attempt}", 5)) in seen:
            attempt += 1
        seen.add(title)
        titles.append(title)
    return titles


def _faults(config: FleetConfig, rng: random.Random) -> dict[int, tuple[FaultKind, float, int]]:
    """Flaky meters (at least one from 10 meters when the fraction is not 0), kinds in rotation."""
    wanted = round(config.meters * config.flaky_fraction)
    if config.flaky_fraction and config.meters >= 10:
        wanted = max(1, wanted)
    kinds = list(FaultKind)
    chosen = sorted(rng.sample(range(config.meters), min(wanted, config.meters)))
    return {
        index: (kinds[k % len(kinds)], round(rng.uniform(0.5, 2.0), 2), rng.randint(1, 3))
        for k, index in enumerate(chosen)
    }


def _drifts(config: FleetConfig, flaky: set[int], rng: random.Random) -> dict[int, int]:
    """Meters whose clock is off by 30 s to 15 min either way, chosen among the reliable ones."""
    candidates = [i for i in range(config.meters) if i not in flaky]
    wanted = round(config.meters * config.drift_fraction)
    if config.drift_fraction and config.meters >= 10:
        wanted = max(1, wanted)
    chosen = sorted(rng.sample(candidates, min(wanted, len(candidates))))
    return {index: rng.choice((-1, 1)) * rng.randint(30, 900) for index in chosen}


def build_fleet(config: FleetConfig) -> Fleet:
    """Build the whole fleet described by ``config`` (deterministic unless ``random_keys``)."""
    topology = build_topology(config.meters, config.seed)
    rng = random.Random(f"openami-fleet-{config.seed}")  # noqa: S311 - reproducible fault choice, not a secret
    faults = _faults(config, rng)
    drifts = _drifts(config, set(faults), rng)
    titles = _system_titles(config, config.meters + (len(topology.transformers) if config.check_meters else 0))
    meters = []
    for i, (service_point, customer_class) in enumerate(
        zip(topology.service_points, topology.customer_classes, strict=True)
    ):
        serial = f"OAM{i + 1:08d}"
        host, port = address_of(i, config)
        guek, gak, kek = _keys(config, serial)
        meter_seed = int.from_bytes(_derive(config.seed, f"load/{i}", 8), "big")
        load = draw_params(meter_seed, customer_class, weather_seed=config.seed, utc_offset_s=config.utc_offset_s)
        fault, delay_s, drop_after = faults.get(i, (None, 0.0, 0))
        meters.append(
            SimMeter(
                i,
                serial,
                host,
                port,
                titles[i],
                guek,
                gak,
                service_point.id,
                load,
                fault=fault,
                delay_s=delay_s if fault is FaultKind.SLOW else 0.0,
                drop_after=drop_after if fault is FaultKind.DROP else 0,
                clock_offset_s=drifts.get(i, 0),
                kek=kek,
            )
        )
    if config.check_meters:
        meters += _check_meters(config, topology, meters, titles)
    return Fleet(config, topology, tuple(meters))


def _check_meters(
    config: FleetConfig, topology: Topology, meters: list[SimMeter], titles: list[bytes]
) -> list[SimMeter]:
    """One check meter per transformer, indices after the customers' meters (a reliable meter, no drift)."""
    members: dict[str, list[tuple[int, str, LoadParams]]] = {t.id: [] for t in topology.transformers}
    for meter, service_point in zip(meters, topology.service_points, strict=True):
        members[service_point.transformer_id].append((meter.index, meter.serial, meter.load))
    checks = []
    for t, transformer in enumerate(topology.transformers):
        index = config.meters + t
        serial = f"OAC{t + 1:08d}"
        host, port = address_of(index, config)
        guek, gak, kek = _keys(config, serial)
        seed = int.from_bytes(_derive(config.seed, f"check/{t}", 8), "big")
        load = draw_params(seed, CustomerClass.COMMERCIAL, weather_seed=config.seed, utc_offset_s=config.utc_offset_s)
        checks.append(
            SimMeter(
                index,
                serial,
                host,
                port,
                titles[index],
                guek,
                gak,
                None,
                load,
                kek=kek,
                check_for_transformer=transformer.id,
                members=tuple(members[transformer.id]),
            )
        )
    return checks
