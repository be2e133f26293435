"""Process-wide interpreter settings for the long-running processes (the platform, the push process).

Both are an event loop with worker threads doing database work, and both keep large long-lived
structures (every meter's target and keys, the grid): CPython's defaults for thread switching and
for the cyclic garbage collector suit neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import threading
from collections.abc import Iterator

__all__ = [
    "GC_THRESHOLDS",
    "GIL_SWITCH_INTERVAL_S",
    "collector_paused",
    "loop_in_thread",
    "switch_threads_often",
    "tune_gc",
]

GIL_SWITCH_INTERVAL_S = 0.0002
"""CPython's default is 5 ms: a worker thread asking for the GIL while the event loop runs waits that
long at each step, and a worker inside a database transaction holds SQLite's write lock (or
PostgreSQL row locks) meanwhile, so every other writer waits too. Database work of commands, audit
and ingest runs on worker threads; with 1 ms their transactions during a collection are several
times shorter (switch benchmark: submit p50 1.9 s -> 0.5 s). Every SQLite call gives the GIL up and
must take it back, so a transaction of ten statements while the loop is busy waited up to ten
intervals: with 0.2 ms instead of 1 ms an outage storm's slow commands became rarer (storm commands
over twice the calm's p99: 2.2 % -> 0.7 %; pooled storm p99 x2.24 -> x1.92 of the calm's), and the
switch benchmark's collection showed no cost told apart from its spread (docs/benchmarks.md,
fourteenth and fifteenth sessions)."""

GC_THRESHOLDS = (10_000, 10, 100)
"""Young generation collected every 10,000 net allocations (CPython: 700), the middle one every 10 of
those, the oldest every 100 of those, and never over what ``tune_gc`` froze. Shorter passes than the
50,000/20/100 before: in a storm those took 12 ms (young) and 0.1-0.18 s (middle), the loop and any
transaction a worker thread held stopped meanwhile; with the targets and grid frozen too, a storm
now sees passes of at most ~0.04 s, and a collection costs the same CPU (docs/benchmarks.md)."""


def switch_threads_often() -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def tune_gc() -> None:
    """Call once the long-lived objects exist (settings, engine, meter targets, keys).

    A collection keeps hundreds of sessions in flight, each allocating thousands of small objects;
    with CPython's default thresholds the cyclic collector then runs thousands of times a second and
    walks every long-lived object each time (measured: ~40 % of the head-end's CPU). Freezing what
    exists at start-up and collecting the young generation less often removes most of that cost.
    Reference counting still frees almost everything immediately; only cycles wait longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


_pause_lock = threading.Lock()
_pauses = 0
_resume = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection in the whole process while any thread is inside (reference counting goes on).

    For work that builds a large structure and drops it at the end, such as a storm decision's tens of
    thousands of outage rows: a pass of an older generation in the middle walks every one of them
    while the event loop, and every command and on-demand read on it, waits (0.05-0.06 s passes over
    ~47,000 rows in the storm benchmark). What the work leaves behind, and the cycles it made, are
    collected by the passes after it. Keep the structure local to the block, so that it is freed
    before collection resumes.
    """
    global _pauses, _resume  # noqa: PLW0603 - one process-wide switch, counted across threads
    with _pause_lock:
        if _pauses == 0:
            _resume = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _resume:
                gc.enable()


def loop_in_thread(name: str) -> asyncio.AbstractEventLoop:
    """A new event loop (uvloop's where installed, as ``cli.loop.run``) running for good in a daemon
    thread of its own; hand it work with ``asyncio.run_coroutine_threadsafe``."""
    try:
        import uvloop  # noqa: PLC0415 - optional: not on Windows

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name=name, daemon=True).start()
    return loop
