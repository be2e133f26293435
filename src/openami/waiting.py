"""Waiting for an asyncio event with a time limit, safely cancellable (every layer uses it)."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["wait_until_set"]


async def wait_until_set(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for ``event`` at most ``timeout_s``; True if it is set.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives in the same loop
    step as the event is set (it returns the result instead), so a background loop cancelled at
    shutdown just as it is woken runs on, and whoever awaits it on stop waits forever.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    return event.is_set()
