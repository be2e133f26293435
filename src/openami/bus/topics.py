"""The platform's topics, one constant each; the name is the subject on a networked bus."""

from __future__ import annotations

from openami.bus.base import Topic
from openami.domain.commands import CommandChanged
from openami.domain.messages import CollectedReadings, ReadingsStored
from openami.domain.meter_events import MeterEvents
from openami.domain.outages import OutageChanged

READINGS_COLLECTED: Topic[CollectedReadings] = Topic("readings.collected", CollectedReadings)
"""Head-end → MDM: one authenticated read of one meter."""

READINGS_STORED: Topic[ReadingsStored] = Topic("readings.stored", ReadingsStored)
"""MDM → services: a meter's read is validated, estimated and durably stored."""

COMMANDS_CHANGED: Topic[CommandChanged] = Topic("commands.changed", CommandChanged)
"""Services → workflows, prepayment, guard: a switch or limiter command changed status."""

METER_EVENTS: Topic[MeterEvents] = Topic("meter.events", MeterEvents)
"""Head-end → outage engine, guard, revenue protection: new authenticated events, each published once."""

OUTAGES_CHANGED: Topic[OutageChanged] = Topic("outages.changed", OutageChanged)
"""Outage engine and services → OMS feed (webhooks, listeners): an outage was opened or changed."""
