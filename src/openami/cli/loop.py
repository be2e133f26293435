"""Run the platform's event loop: uvloop where it is installed (Linux, macOS), asyncio's otherwise.

The head-end is mostly event-loop and transport work (thousands of short DLMS sessions); uvloop does
the same work with ~20 % less CPU (docs/benchmarks.md). Behaviour is the same on either loop.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


GIL_SWITCH_INTERVAL_S = 0.001
"""CPython's default is 5 ms: a worker thread asking for the GIL while the event loop runs waits that
long at each step, and a worker inside a database transaction holds SQLite's write lock (or
PostgreSQL row locks) meanwhile, so every other writer waits too. Database work of commands, audit
and ingest runs on worker threads; with 1 ms their transactions during a collection are several
times shorter (switch benchmark: submit p50 1.9 s -> 0.5 s)."""


def run(main: Coroutine[Any, Any, _T], *, use_uvloop: bool = True) -> _T:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    if use_uvloop:
        try:
            import uvloop  # noqa: PLC0415 - optional: not on Windows
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


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
    gc.set_threshold(50_000, 20, 100)
