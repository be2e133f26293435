"""The bus interface every adapter offers: typed topics, publish, subscribe, drain, close.

Delivery is **at least once**: a handler may see the same message more than once (after a handler
failure, a restart or a redelivery by a networked adapter), so every consumer must be idempotent.
The MDM is: readings are keyed by meter, channel and interval end, and re-storing an unchanged
value adds nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from openami.errors import OpenAmiError

T = TypeVar("T")

Handler = Callable[[T], Awaitable[None]]
Unsubscribe = Callable[[], None]


@dataclass(frozen=True, slots=True)
class Topic(Generic[T]):
    """A named stream of messages of one type; ``name`` is the subject a networked adapter uses."""

    name: str
    message_type: type[T]


class BusClosed(OpenAmiError):
    """Publishing or subscribing on a bus that was closed."""

    code = "bus-closed"
    http_status = 503


class Bus(Protocol):
    """Publish/subscribe with at-least-once delivery and backpressure."""

    async def publish(self, topic: Topic[T], message: T) -> None:
        """Hand ``message`` to every current subscriber of ``topic``.

        Waits while a subscriber's queue is full (backpressure); a topic without subscribers drops
        the message. Never call it from a handler of the same topic with a full queue: it would
        wait for itself.
        """
        ...

    def subscribe(self, topic: Topic[T], handler: Handler[T]) -> Unsubscribe:
        """Deliver every later message of ``topic`` to ``handler``, one at a time, in order.

        Returns a function that stops the delivery (messages still queued for it are dropped).
        """
        ...

    async def drain(self) -> None:
        """Return once every message published so far has been handled (or given up on)."""
        ...

    async def close(self) -> None:
        """Drain, then stop every subscriber; later publishes raise BusClosed."""
        ...
