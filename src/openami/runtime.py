"""Process-wide interpreter settings for the long-running processes (the platform, the push process).

Both are an event loop with worker threads doing database work, and both keep large long-lived
structures (every meter's target and keys, the grid): CPython's defaults for thread switching and
for the cyclic garbage collector suit neither.
"""

from __future__ import annotations

import gc
import sys

__all__ = ["GC_THRESHOLDS", "GIL_SWITCH_INTERVAL_S", "switch_threads_often", "tune_gc"]

GIL_SWITCH_INTERVAL_S = 0.001
"""CPython's default is 5 ms: a worker thread asking for the GIL while the event loop runs waits that
long at each step, and a worker inside a database transaction holds SQLite's write lock (or
PostgreSQL row locks) meanwhile, so every other writer waits too. Database work of commands, audit
and ingest runs on worker threads; with 1 ms their transactions during a collection are several
times shorter (switch benchmark: submit p50 1.9 s -> 0.5 s)."""

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
