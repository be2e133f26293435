"""The platform's topics, one constant each; the name is the subject on a networked bus."""

from __future__ import annotations

from openami.bus.base import Topic
from openami.domain.messages import CollectedReadings, ReadingsStored

READINGS_COLLECTED: Topic[CollectedReadings] = Topic("readings.collected", CollectedReadings)
"""Head-end → MDM: one authenticated read of one meter."""

READINGS_STORED: Topic[ReadingsStored] = Topic("readings.stored", ReadingsStored)
"""MDM → services: a meter's read is validated, estimated and durably stored."""
