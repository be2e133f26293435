"""Waiting for a command's final status: a waiter woken and cancelled in the same loop step stops.

Python 3.11's ``asyncio.wait_for`` returns the inner result instead of raising when a cancellation
arrives in the loop step the awaited event is set; the command queue's worker, woken by a finished
command just as the platform stopped, then ran on and ``stop_platform`` never returned.
"""

from __future__ import annotations

import asyncio

from openami.waiting import wait_until_set


async def _wait_three_times(event: asyncio.Event) -> str:
    """Like the queue's worker loop: wait, clear, wait again; it only ends by being cancelled."""
    for _ in range(3):
        await wait_until_set(event, 5.0)
        event.clear()
    return "ran on after its cancellation"


async def test_a_waiter_cancelled_in_the_step_its_event_is_set_is_cancelled() -> None:
    event = asyncio.Event()
    task = asyncio.create_task(_wait_three_times(event))
    await asyncio.sleep(0)  # the task now waits on the event
    event.set()
    await asyncio.sleep(0)  # the wake-up is scheduled, not yet run
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    assert task in done, "the cancelled waiter did not stop"
    assert task.cancelled()


async def test_wait_until_set_says_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_until_set(event, 0.01) is False
    event.set()
    assert await wait_until_set(event, 0.01) is True
