"""structlog configuration: dotted event names with key-value context, JSON or console."""

from __future__ import annotations

import logging
import sys

import structlog

_SECRET_KEYS = frozenset({"key", "guek", "gak", "ak", "ek", "password", "token", "secret", "master_key", "auth_value"})


def _redact(_logger: object, _method: str, event: dict[str, object]) -> dict[str, object]:
    """Never let a key, password or token reach a log line, whatever a caller passes."""
    for name in event:
        if name.lower() in _SECRET_KEYS:
            event[name] = "***"
    return event


_level = logging.INFO


def configured_level() -> int:
    """The level :func:`configure` was last given (a child process logs at the same)."""
    return _level


def configure(*, json: bool = False, level: int = logging.INFO) -> None:
    global _level  # noqa: PLW0603 - one logging set-up per process
    _level = level
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
