"""The in-process bus: ordered at-least-once delivery, bounded queues with backpressure, drain/close."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openami.bus import BusClosed, InProcessBus, Topic

NUMBERS: Topic[int] = Topic("test.numbers", int)
ECHOES: Topic[int] = Topic("test.echoes", int)


async def _spin(n: int = 20) -> None:
    """Let every ready task run a few steps (not a wait for time: the loop only runs what is ready)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_each_subscriber_receives_every_message_in_order() -> None:
    bus = InProcessBus()
    seen_a: list[int] = []
    seen_b: list[int] = []

    async def a(m: int) -> None:
        seen_a.append(m)

    async def b(m: int) -> None:
        seen_b.append(m)

    bus.subscribe(NUMBERS, a)
    bus.subscribe(NUMBERS, b)
    for i in range(100):
        await bus.publish(NUMBERS, i)
    await bus.drain()
    assert seen_a == seen_b == list(range(100))
    await bus.close()


@given(st.lists(st.integers(), max_size=50), st.integers(min_value=1, max_value=8))
def test_delivery_is_exactly_once_and_ordered_when_handlers_succeed(messages: list[int], queue_size: int) -> None:
    async def scenario() -> list[int]:
        bus = InProcessBus(queue_size=queue_size)
        seen: list[int] = []

        async def handler(m: int) -> None:
            seen.append(m)

        bus.subscribe(NUMBERS, handler)
        for m in messages:
            await bus.publish(NUMBERS, m)
        await bus.close()
        return seen

    assert asyncio.run(scenario()) == messages


async def test_publish_waits_while_the_subscriber_queue_is_full() -> None:
    bus = InProcessBus(queue_size=1)
    release = asyncio.Event()
    seen: list[int] = []

    async def slow(m: int) -> None:
        await release.wait()
        seen.append(m)

    bus.subscribe(NUMBERS, slow)
    await bus.publish(NUMBERS, 1)  # taken by the delivery task, which then blocks in the handler
    await _spin()
    await bus.publish(NUMBERS, 2)  # fills the queue
    third = asyncio.create_task(bus.publish(NUMBERS, 3))
    await _spin()
    assert not third.done(), "publish must apply backpressure when the queue is full"
    release.set()
    await third
    await bus.drain()
    assert seen == [1, 2, 3]
    await bus.close()


async def test_a_failed_handler_is_retried_so_delivery_is_at_least_once() -> None:
    bus = InProcessBus(retry_delay_s=0.0)
    calls: list[int] = []

    async def flaky(m: int) -> None:
        calls.append(m)
        if calls.count(m) == 1:
            raise RuntimeError("transient")

    bus.subscribe(NUMBERS, flaky)
    await bus.publish(NUMBERS, 7)
    await bus.publish(NUMBERS, 8)
    await bus.drain()
    assert calls == [7, 7, 8, 8]
    await bus.close()


async def test_a_message_that_always_fails_is_dropped_and_later_ones_still_arrive() -> None:
    bus = InProcessBus(max_attempts=2, retry_delay_s=0.0)
    handled: list[int] = []
    attempts: list[int] = []

    async def handler(m: int) -> None:
        attempts.append(m)
        if m == 13:
            raise ValueError("poison")
        handled.append(m)

    bus.subscribe(NUMBERS, handler)
    for m in (12, 13, 14):
        await bus.publish(NUMBERS, m)
    await bus.drain()
    assert handled == [12, 14]
    assert attempts.count(13) == 2
    await bus.close()


async def test_unsubscribe_stops_delivery() -> None:
    bus = InProcessBus()
    seen: list[int] = []

    async def handler(m: int) -> None:
        seen.append(m)

    unsubscribe = bus.subscribe(NUMBERS, handler)
    await bus.publish(NUMBERS, 1)
    await bus.drain()
    unsubscribe()
    await bus.publish(NUMBERS, 2)
    await bus.drain()
    assert seen == [1]
    await bus.close()


async def test_drain_waits_for_messages_published_by_handlers() -> None:
    bus = InProcessBus()
    echoed: list[int] = []

    async def forward(m: int) -> None:
        await bus.publish(ECHOES, m * 10)

    async def record(m: int) -> None:
        echoed.append(m)

    bus.subscribe(NUMBERS, forward)
    bus.subscribe(ECHOES, record)
    for i in range(5):
        await bus.publish(NUMBERS, i)
    await bus.drain()
    assert echoed == [0, 10, 20, 30, 40]
    await bus.close()


async def test_a_topic_without_subscribers_drops_messages() -> None:
    bus = InProcessBus()
    await bus.publish(NUMBERS, 1)
    await bus.drain()
    await bus.close()


async def test_close_delivers_what_was_published_then_refuses_more() -> None:
    bus = InProcessBus()
    seen: list[int] = []

    async def handler(m: int) -> None:
        seen.append(m)

    bus.subscribe(NUMBERS, handler)
    await bus.publish(NUMBERS, 1)
    await bus.close()
    assert seen == [1]
    with pytest.raises(BusClosed):
        await bus.publish(NUMBERS, 2)
    with pytest.raises(BusClosed):
        bus.subscribe(NUMBERS, handler)


def test_subscribing_outside_a_running_loop_starts_delivery_on_first_publish() -> None:
    bus = InProcessBus()
    seen: list[int] = []

    async def handler(m: int) -> None:
        seen.append(m)

    bus.subscribe(NUMBERS, handler)

    async def scenario() -> None:
        await bus.publish(NUMBERS, 5)
        await bus.close()

    asyncio.run(scenario())
    assert seen == [5]
