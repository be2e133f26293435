"""The control channel of a running fleet: operations (``openami.sim.control``) sent to the meters' hosts.

Parent → worker: after the job line, one JSON line per operation on the worker's stdin,
``{"id": N, "op": NAME, "meters": [fleet indices], ...parameters}``. Worker → parent: ``done N
TOUCHED`` (how many of the listed meters it hosts and applied the operation to) or ``error N
MESSAGE`` on stdout. The worker applies operations on its event loop, one after the other, so they
see the meters exactly as the meters' own connections do. An in-process fleet takes the same
operations through :class:`LocalFleetControl`.
"""

from __future__ import annotations

import json
import os
import queue
import time
from collections.abc import Iterable, Mapping
from typing import IO, Any

from openami.sim import control, scenarios
from openami.sim.serving import HostedMeters

__all__ = ["ControlError", "LocalFleetControl", "StdinLines", "apply_message", "await_reply", "control_reply", "encode"]

_READ_SIZE = 65_536


class ControlError(RuntimeError):
    """A worker refused an operation (unknown, bad parameters) or did not answer in time."""


def apply_message(hosted: HostedMeters, message: Mapping[str, Any]) -> int:
    """Apply one operation to the meters ``hosted`` here (check meters follow supply operations)."""
    touched = control.apply(hosted.meters, message)
    scenarios.follow_checks(hosted, message)
    return touched


def _message(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict) or not isinstance(message.get("meters", []), list):
        raise control.UnknownOperation("a control message is a JSON object with a list of meters")
    return message


def control_reply(hosted: HostedMeters, line: bytes) -> str:
    """A worker's answer to one control line (never raises: a bad line is an ``error`` reply)."""
    ident: object = "?"
    try:
        message = _message(line)
        ident = message.get("id", "?")
        touched = apply_message(hosted, message)
    except Exception as exc:  # noqa: BLE001 - the channel's boundary: report, keep serving
        text = " ".join(str(exc).split()) or type(exc).__name__
        return f"error {ident} {text}"
    return f"done {ident} {touched}"


class StdinLines:
    """Lines from a file descriptor with raw ``os.read`` (a daemon thread blocked in a buffered reader
    aborts the interpreter at exit, and a buffered job read could swallow the first control lines)."""

    def __init__(self, fd: int = 0) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self._searched = 0  # bytes of the buffer known to hold no newline (a job line is megabytes long)
        self._eof = False

    def readline(self) -> bytes | None:
        """The next line without its newline; None at end of input."""
        while True:
            end = self._buffer.find(b"\n", self._searched)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                self._searched = 0
                return line
            self._searched = len(self._buffer)
            if self._eof:
                return self._rest()
            try:
                chunk = os.read(self._fd, _READ_SIZE)
            except OSError:
                chunk = b""
            if not chunk:
                self._eof = True
            self._buffer += chunk

    def _rest(self) -> bytes | None:
        """What is left after the last newline at end of input (None when nothing is)."""
        if not self._buffer:
            return None
        line = bytes(self._buffer)
        self._buffer.clear()
        self._searched = 0
        return line


def encode(ident: int, op: str, meters: Iterable[int], params: Mapping[str, Any]) -> bytes:
    """The control line the parent sends."""
    message = {**params, "id": ident, "op": op, "meters": list(meters)}
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def await_reply(lines: queue.Queue[str | None], ident: int, deadline: float, who: str) -> int:
    """Wait for one worker's ``done``/``error`` reply to operation ``ident``; returns how many meters it touched."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ControlError(f"no answer to control operation {ident} from {who}")
        try:
            line = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        if line is None:
            raise ControlError(f"{who} exited before answering control operation {ident}")
        kind, _, rest = line.partition(" ")
        got, _, detail = rest.partition(" ")
        if got != str(ident) or kind not in ("done", "error"):
            continue  # an answer to an operation abandoned after a timeout, or a stray line
        if kind == "error":
            raise ControlError(detail)
        return int(detail)


def send_line(stream: IO[bytes] | None, data: bytes) -> None:
    if stream is None:
        raise ControlError("the worker's stdin is closed")
    try:
        stream.write(data)
        stream.flush()
    except OSError as exc:
        raise ControlError(f"cannot reach the worker: {exc}") from None


class LocalFleetControl:
    """The control channel of a fleet served in this event loop (``run_fleet_in_process``)."""

    def __init__(self) -> None:
        self.hosted = HostedMeters()

    def control(self, op: str, meters: Iterable[int], /, **params: Any) -> int:
        """Apply ``op`` to the listed meters now; returns how many were touched (ControlError when refused)."""
        message = {**params, "op": op, "meters": list(meters)}
        try:
            return apply_message(self.hosted, message)
        except (control.UnknownOperation, ValueError) as exc:
            raise ControlError(str(exc)) from None
