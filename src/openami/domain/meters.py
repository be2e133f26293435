"""Meters, premises, service points and the grid topology they hang on."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MeterKind(enum.StrEnum):
    ELECTRIC = "electric"
    GAS = "gas"
    WATER = "water"


class CustomerClass(enum.StrEnum):
    RESIDENTIAL = "residential"
    COMMERCIAL = "commercial"


class Phase(enum.StrEnum):
    A = "A"
    B = "B"
    C = "C"
    ABC = "ABC"


@dataclass(frozen=True, slots=True)
class Meter:
    """A meter as the platform knows it. Keys are not here: they live in the keystore."""

    id: int
    serial: str
    kind: MeterKind
    host: str
    port: int
    system_title: bytes
    model: str
    firmware: str
    customer_class: CustomerClass
    service_point_id: str | None = None


@dataclass(frozen=True, slots=True)
class Substation:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Feeder:
    id: str
    substation_id: str


@dataclass(frozen=True, slots=True)
class Transformer:
    id: str
    feeder_id: str
    phase: Phase


@dataclass(frozen=True, slots=True)
class Premise:
    id: str
    address: str
    critical_care: bool = False


@dataclass(frozen=True, slots=True)
class ServicePoint:
    id: str
    premise_id: str
    transformer_id: str
    phase: Phase
