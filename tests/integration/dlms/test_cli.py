"""``openami sim meter`` and ``openami read`` as a user runs them: real processes, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

OPENAMI = str(Path(sys.executable).with_name("openami"))
METER_TITLE = "4F414D0000000007"
CLIENT_TITLE = "4F50454E414D4901"
GUEK = "000102030405060708090A0B0C0D0E0F"
AK = "D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF"
WRONG_AK = "A0A1A2A3A4A5A6A7A8A9AAABACADAEAF"


async def _run(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        OPENAMI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OPENAMI_DATA_DIR": str(tmp_path)}


@pytest.fixture
async def meter_port(env: dict[str, str]) -> AsyncIterator[int]:
    process = await asyncio.create_subprocess_exec(
        OPENAMI, "sim", "meter", "--host", "127.0.0.1", "--port", "0", "--serial", "OAM00000007",
        "--system-title", METER_TITLE, "--guek", GUEK, "--ak", AK, "--days", "2",
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert found, line
        yield int(found.group(1))
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=30)


def _read_args(port: int, *extra: str, ak: str = AK) -> list[str]:
    return ["read", "--host", "127.0.0.1", "--port", str(port), "--system-title", CLIENT_TITLE,
            "--guek", GUEK, "--ak", ak, *extra]  # fmt: skip


async def test_read_json_against_sim_meter(meter_port: int, env: dict[str, str]) -> None:
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(hours=3)
    code, out, err = await _run(
        *_read_args(meter_port, "--json", "--from", start.isoformat(), "--to", end.isoformat()), env=env
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["serial"] == "OAM00000007"
    assert abs(datetime.fromisoformat(result["clock"]) - datetime.now(UTC)) < timedelta(seconds=30)
    imported = result["registers"]["1.0.1.8.0.255"]
    assert (imported["unit"], imported["scaler"]) == ("Wh", 0)
    assert result["registers"]["1.0.2.8.0.255"]["unit_code"] == 30
    profile = result["profile"]
    assert profile["columns"] == ["clock", "1.0.1.8.0.255", "1.0.2.8.0.255", "0.0.96.10.1.255"]
    assert 12 <= len(profile["rows"]) <= 13
    assert all(start <= datetime.fromisoformat(r["clock"]) <= end for r in profile["rows"])
    assert profile["rows"][-1]["1.0.1.8.0.255"] <= imported["value"]


async def test_read_twice_keeps_the_invocation_counter_growing(meter_port: int, env: dict[str, str]) -> None:
    for _ in range(2):
        code, out, err = await _run(*_read_args(meter_port, "--json"), env=env)
        assert code == 0, err
        assert len(json.loads(out)["profile"]["rows"]) in (96, 97)


async def test_read_prints_a_table(meter_port: int, env: dict[str, str]) -> None:
    code, out, err = await _run(*_read_args(meter_port), env={**env, "COLUMNS": "160"})
    assert code == 0, err
    assert "OAM00000007" in out
    assert "load profile 1.0.99.1.0.255" in out


async def test_read_with_wrong_key_fails_in_one_line_without_the_key(meter_port: int, env: dict[str, str]) -> None:
    code, out, err = await _run(*_read_args(meter_port, "--json", ak=WRONG_AK), env=env)
    assert code != 0
    assert out == ""
    assert "association rejected" in err
    assert "diagnostic 1" in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    for secret in (WRONG_AK, GUEK, AK):
        assert secret.lower() not in (out + err).lower()


async def test_read_from_nothing_listening_fails_cleanly(env: dict[str, str]) -> None:
    code, _, err = await _run(*_read_args(1, "--timeout", "2"), env=env)
    assert code == 1
    assert "Traceback" not in err
    assert "127.0.0.1:1" in err


async def test_bad_hex_key_is_a_usage_error_that_does_not_echo_the_key(env: dict[str, str]) -> None:
    code, _, err = await _run(*_read_args(4059, ak="zz" + AK[2:]), env=env)
    assert code == 2
    assert AK[2:].lower() not in err.lower()
