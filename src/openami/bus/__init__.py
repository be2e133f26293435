"""Publish/subscribe bus: in-process adapter (NATS JetStream later)."""

from openami.bus.base import Bus, BusClosed, Handler, Topic, Unsubscribe
from openami.bus.inprocess import InProcessBus
from openami.bus.topics import READINGS_COLLECTED, READINGS_STORED

__all__ = [
    "READINGS_COLLECTED",
    "READINGS_STORED",
    "Bus",
    "BusClosed",
    "Handler",
    "InProcessBus",
    "Topic",
    "Unsubscribe",
]
