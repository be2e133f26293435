"""The platform commands as a user runs them: `openami run --sim`, `meters`, `readings`, and their errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

OPENAMI = [sys.executable, "-m", "openami.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAMI_")}
    env.update({"OPENAMI_DATA_DIR": str(data_dir), **extra})
    return env


def _cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OPENAMI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_run_with_a_simulated_fleet_collects_and_serves_the_api(tmp_path: Path) -> None:
    port = _free_port()
    env = _env(tmp_path, OPENAMI_COLLECTION__CATCH_UP_DAYS="1")
    # each meter on its own 127.x.y.z address; --sim-port 0 lets the OS pick ports so no other fleet collides
    proc = subprocess.Popen(
        [*OPENAMI, "run", "--sim", "30", "--seed", "5", "--sim-port", "0", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        token_file = tmp_path / "admin-token"
        deadline = time.monotonic() + 120
        stored = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            while time.monotonic() < deadline and stored == 0:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.5)
                if not token_file.exists():
                    continue
                headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
                try:
                    runs = client.get("/v1/collection/runs", headers=headers)
                except httpx.TransportError:
                    continue
                if runs.status_code == 200 and runs.json():
                    stored = runs.json()[0]["received"]
            assert stored > 0, "no meter collected within two minutes"
            assert (token_file.stat().st_mode & 0o777) == 0o600
            meters = client.get("/v1/meters", headers=headers).json()
            assert meters["total"] == 30
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "admin API token" in output
    assert "API on http://127.0.0.1" in output

    listing = _cli("meters", "list", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    assert len(json.loads(listing.stdout)) == 30
    readings = _cli("readings", "1", "--format", "json", env=env)
    assert readings.returncode == 0, readings.stderr
    values = json.loads(readings.stdout)
    assert values
    assert {"channel", "interval_end", "value", "quality", "source", "version"} <= set(values[0])
    assert "guek" not in readings.stdout + listing.stdout
    verify = _cli("audit", "verify", env=env)  # every API request of the run was audited, the chain is whole
    assert verify.returncode == 0, verify.stderr
    assert "chain intact" in verify.stdout


def test_unknown_meter_and_bad_dates_are_clear_errors(tmp_path: Path) -> None:
    env = _env(tmp_path)
    unknown = _cli("readings", "424242", env=env)
    assert unknown.returncode != 0
    assert "424242" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    bad = _cli("readings", "1", "--from", "yesterday", env=env)
    assert bad.returncode == 2
    assert "ISO 8601" in bad.stderr


def test_a_database_that_is_down_at_start_is_a_clear_error(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there
    env = _env(tmp_path, OPENAMI_DATABASE_URL=f"postgresql+psycopg://openami@127.0.0.1:{port}/openami")
    result = _cli("run", env=env, timeout=60)
    assert result.returncode == 1
    assert "unavailable" in result.stderr
    assert "Traceback" not in result.stderr


def test_importing_a_malformed_commissioning_file_stores_nothing(tmp_path: Path) -> None:
    env = _env(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "openami-commissioning", "version": 1, "meters": [{"serial": "X"}]}))
    result = _cli("meters", "import", str(bad), env=env)
    assert result.returncode == 1
    assert "malformed" in result.stderr
    assert json.loads(_cli("meters", "list", "--json", env=env).stdout) == []
    not_json = tmp_path / "x.json"
    not_json.write_text("{")
    assert _cli("meters", "import", str(not_json), env=env).returncode == 1


@pytest.mark.parametrize("args", [["meters", "import", "/nonexistent.json"], ["readings", "abc"]])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    result = _cli(*args, env=_env(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
