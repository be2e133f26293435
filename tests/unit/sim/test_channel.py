"""The fleet control channel's pieces: the worker's line reader and its replies."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from datetime import UTC, datetime

import pytest

from openami.sim.channel import ControlError, StdinLines, await_reply, control_reply, encode
from openami.sim.meter import MeterConfig, SimulatedMeter
from openami.sim.serving import HostedMeters


def test_line_reader_splits_lines_across_reads_and_keeps_a_last_unterminated_one() -> None:
    read_end, write_end = os.pipe()
    job = b"x" * 200_000  # larger than a pipe's buffer: several reads

    def write() -> None:
        with os.fdopen(write_end, "wb") as stream:
            stream.write(job + b"\n{}\n\ntail")

    writer = threading.Thread(target=write)
    writer.start()
    reader = StdinLines(read_end)
    try:
        assert reader.readline() == job
        assert reader.readline() == b"{}"
        assert reader.readline() == b""
        assert reader.readline() == b"tail"
        assert reader.readline() is None
    finally:
        writer.join(timeout=10)
        os.close(read_end)


def _hosted() -> HostedMeters:
    meter = SimulatedMeter(
        MeterConfig("OAM00000001", b"OAM\x00\x00\x00\x00\x01", bytes(16), bytes(16), profile_days=1),
        now=lambda: datetime(2026, 11, 22, 8, 0, tzinfo=UTC),
    )
    return HostedMeters(meters={7: meter})


def test_worker_answers_done_with_the_meters_it_touched() -> None:
    hosted = _hosted()
    line = encode(3, "tamper", [7, 8], {"kind": "cover"})
    assert json.loads(line)["op"] == "tamper"
    assert control_reply(hosted, line.rstrip(b"\n")) == "done 3 1"
    assert hosted.meters[7].events[-1][1] == 40


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"not json", "error ? "),
        (b'{"id": 4, "op": "tamper", "meters": [7], "kind": "x"}', "error 4 tamper kind"),
        (b'{"id": 5, "op": "nope", "meters": [7]}', "error 5 unknown simulator operation"),
        (b'{"id": 6, "op": "tamper", "meters": 7}', "error ? a control message"),
    ],
)
def test_worker_answers_error_on_one_line_and_keeps_going(line: bytes, reply: str) -> None:
    answer = control_reply(_hosted(), line)
    assert answer.startswith(reply)
    assert "\n" not in answer


def test_parent_takes_its_own_reply_and_raises_on_an_error() -> None:
    lines: queue.Queue[str | None] = queue.Queue()
    for line in ("done 1 5", "done 2 3"):
        lines.put(line)
    assert await_reply(lines, 2, time.monotonic() + 5, "worker 0") == 3  # a late answer to 1 is skipped
    lines.put("error 3 tamper kind must be one of cover")
    with pytest.raises(ControlError, match="tamper kind"):
        await_reply(lines, 3, time.monotonic() + 5, "worker 0")
    lines.put(None)
    with pytest.raises(ControlError, match="exited"):
        await_reply(lines, 4, time.monotonic() + 5, "worker 0")
