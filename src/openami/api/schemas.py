"""Response and request models of the REST API (the OpenAPI description is generated from them)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class MeterOut(BaseModel):
    id: int
    serial: str
    kind: str
    customer_class: str
    host: str
    port: int
    system_title: str = Field(description="hex")
    model: str
    firmware: str
    service_point_id: str | None


class MeterPage(BaseModel):
    items: list[MeterOut]
    total: int
    next_after_id: int | None = Field(description="pass as after_id for the next page; null at the end")


class IntervalOut(BaseModel):
    channel: str = Field(description="OBIS code of the register the interval integrates")
    interval_end: datetime
    value: float
    unit: str
    quality: list[str]
    source: str = Field(description="meter, estimated or manual")
    version: int
    received_at: datetime


class ReadingsOut(BaseModel):
    meter_id: int
    start: datetime
    end: datetime
    intervals: list[IntervalOut]


class RegisterOut(BaseModel):
    obis: str
    value: float
    unit: str
    captured_at: datetime


class OnDemandReadOut(BaseModel):
    meter_id: int
    read_at: datetime
    meter_clock: datetime | None
    registers: list[RegisterOut]
    intervals: int = Field(description="interval rows returned by the meter")
    first_interval_end: datetime | None
    last_interval_end: datetime | None


class CollectionRunOut(BaseModel):
    id: int
    kind: str
    started_at: datetime
    finished_at: datetime | None
    expected: int
    received: int
    failed: int
    pending: int


class CommErrorOut(BaseModel):
    id: int
    meter_id: int
    run_id: int | None
    step: str
    cause: str
    occurred_at: datetime


class Health(BaseModel):
    status: str
    version: str
