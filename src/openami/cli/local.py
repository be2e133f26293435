"""The local platform for one-shot administration commands (``openami cases``, ``outages``, ``prepay``).

They work on the database directly, with the platform's storage and keys but nothing started (no
collection, no listeners); an OpenAmiError becomes its message on stderr and exit status 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import click

from openami import logging as oam_logging
from openami.errors import OpenAmiError
from openami.services.bootstrap import build_platform, open_storage, stop_platform
from openami.services.context import Platform
from openami.settings import Settings

__all__ = ["local_platform", "run_local"]

T = TypeVar("T")


@contextmanager
def local_platform() -> Iterator[Platform]:
    """The platform built from this machine's settings; stopped (storage closed) on the way out."""
    oam_logging.configure()  # log lines to stderr: stdout is the answer
    platform = None
    try:
        settings = Settings()
        platform = build_platform(settings, engine=open_storage(settings))
        yield platform
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        if platform is not None:
            asyncio.run(stop_platform(platform))


def run_local(call: Callable[[Platform], T]) -> T:
    """``call(platform)`` on the local platform."""
    with local_platform() as platform:
        return call(platform)
