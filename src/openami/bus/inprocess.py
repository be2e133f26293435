"""In-process bus: one bounded asyncio queue and one delivery task per subscriber.

The embedded default (one process, one event loop). A handler that raises is retried up to
``max_attempts`` times, then the message is logged as dead and dropped: the sources re-read what
was lost (the head-end catches up from the last stored actual interval), which is what makes
at-least-once delivery with idempotent consumers sufficient.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from openami.bus.base import BusClosed, Handler, T, Topic, Unsubscribe

log = structlog.get_logger(__name__)

_STOP = object()


class _Subscriber:
    """One subscription: its queue and the task that feeds the handler."""

    def __init__(self, topic: Topic[Any], handler: Handler[Any], queue_size: int) -> None:
        self.topic = topic
        self.handler = handler
        self.queue: asyncio.Queue[object] = asyncio.Queue(maxsize=queue_size)
        self.task: asyncio.Task[None] | None = None
        self.pending = 0  # put and not yet handled


class InProcessBus:
    """A :class:`~openami.bus.base.Bus` for components that share one event loop.

    ``queue_size`` bounds each subscriber's queue: ``publish`` waits while it is full, so a slow
    consumer slows its producers down instead of growing memory without limit.
    """

    def __init__(self, *, queue_size: int = 1024, max_attempts: int = 3, retry_delay_s: float = 0.1) -> None:
        if queue_size < 1 or max_attempts < 1:
            raise ValueError("queue_size and max_attempts must be at least 1")
        self._queue_size = queue_size
        self._max_attempts = max_attempts
        self._retry_delay_s = retry_delay_s
        self._subscribers: dict[str, list[_Subscriber]] = {}
        self._closed = False

    async def publish(self, topic: Topic[T], message: T) -> None:
        if self._closed:
            raise BusClosed(f"bus closed; cannot publish on {topic.name}")
        for sub in tuple(self._subscribers.get(topic.name, ())):
            self._start(sub)
            sub.pending += 1
            try:
                await sub.queue.put(message)
            except BaseException:
                sub.pending -= 1
                raise

    def subscribe(self, topic: Topic[T], handler: Handler[T]) -> Unsubscribe:
        if self._closed:
            raise BusClosed(f"bus closed; cannot subscribe to {topic.name}")
        sub = _Subscriber(topic, handler, self._queue_size)
        self._subscribers.setdefault(topic.name, []).append(sub)
        with contextlib.suppress(RuntimeError):  # no running loop yet: started on first publish
            self._start(sub)

        def unsubscribe() -> None:
            subs = self._subscribers.get(topic.name, [])
            if sub in subs:
                subs.remove(sub)
            if sub.task is not None:
                sub.task.cancel()

        return unsubscribe

    async def drain(self) -> None:
        # Handlers may publish on other topics while we wait: repeat until every queue is idle.
        while True:
            busy = [s for subs in self._subscribers.values() for s in subs if s.pending]
            if not busy:
                return
            for sub in busy:
                await sub.queue.join()

    async def close(self) -> None:
        if self._closed:
            return
        await self.drain()
        self._closed = True
        tasks = [s.task for subs in self._subscribers.values() for s in subs if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._subscribers.clear()

    def _start(self, sub: _Subscriber) -> None:
        if sub.task is None:
            sub.task = asyncio.get_running_loop().create_task(self._deliver(sub), name=f"bus:{sub.topic.name}")

    async def _deliver(self, sub: _Subscriber) -> None:
        while True:
            message = await sub.queue.get()
            try:
                await self._handle(sub, message)
            finally:
                sub.pending -= 1
                sub.queue.task_done()

    async def _handle(self, sub: _Subscriber, message: object) -> None:
        for attempt in range(1, self._max_attempts + 1):
            try:
                await sub.handler(message)
            except asyncio.CancelledError:
                raise
            except Exception:  # a handler's failure must not stop the subscription
                log.warning("bus.handler.failed", topic=sub.topic.name, attempt=attempt, exc_info=True)
                if attempt < self._max_attempts:
                    await asyncio.sleep(self._retry_delay_s * attempt)
            else:
                return
        log.error("bus.message.dead", topic=sub.topic.name, attempts=self._max_attempts)
