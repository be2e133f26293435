"""Run the platform's event loop: uvloop where it is installed (Linux, macOS), asyncio's otherwise.

The head-end is mostly event-loop and transport work (thousands of short DLMS sessions); uvloop does
the same work with ~20 % less CPU (docs/benchmarks.md). Behaviour is the same on either loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from openami.runtime import switch_threads_often, tune_gc

__all__ = ["run", "tune_gc"]

_T = TypeVar("_T")


def run(main: Coroutine[Any, Any, _T], *, use_uvloop: bool = True) -> _T:
    switch_threads_often()
    if use_uvloop:
        try:
            import uvloop  # noqa: PLC0415 - optional: not on Windows
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
