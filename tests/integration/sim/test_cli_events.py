"""``openami sim fleet --push HOST:PORT --check-meters``: meters push where they are told; check meters are listed."""

from __future__ import annotations

import signal
from pathlib import Path

from openami.sim.commissioning import read_commissioning

from .push_listener import ThreadedFrameSink
from .test_fleet import _cli, _lines, _wait_for


def test_cli_fleet_with_check_meters_and_a_push_destination(tmp_path: Path) -> None:
    sink = ThreadedFrameSink()
    process = _cli(tmp_path, "--check-meters", "--push", f"127.0.0.1:{sink.port}", "--days", "1")
    try:
        ready = _wait_for(_lines(process), "ready:")[-1]
        document = read_commissioning(tmp_path / "c.json")
        checks = [m for m in document["meters"] if "check_for_transformer" in m]
        assert checks
        assert all(m["service_point_id"] is None for m in checks)
        assert {m["check_for_transformer"] for m in checks} == {t["id"] for t in document["transformers"]}
        assert f"{len(checks)} transformer check meters; pushing to 127.0.0.1:{sink.port}" in ready
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        sink.close()
    assert process.returncode == 0, stderr


def test_cli_refuses_a_push_destination_without_a_port(tmp_path: Path) -> None:
    process = _cli(tmp_path, "--push", "headend")
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "is not HOST:PORT" in stderr
