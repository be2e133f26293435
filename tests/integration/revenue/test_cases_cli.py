"""``openami cases list|show|move|note|scan|watch`` and ``openami balance`` on both databases."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy.engine import Engine

from openami.cli import main
from openami.security import audit, events
from tests.integration.revenue.helpers import fill, load_grid, platform_on, transformer


def _run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_scan_then_work_the_case_from_the_command_line(engine: Engine, db_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"OPENAMI_DATABASE_URL": db_url, "OPENAMI_DATA_DIR": str(data)}
    platform = platform_on(engine, data)  # same data dir: the same master key as the CLI's
    ids = load_grid(platform)
    end = int(time.time()) // 900 * 900  # the CLI runs on the real clock
    for i in range(3):
        fill(engine, ids[f"OAM2{i:04d}"], end - 8 * 86_400, end, 100.0)
    fill(engine, ids["OAM20001"], end - 86_400, end, 20.0)
    fill(engine, ids["CHK0002"], end - 8 * 86_400, end, 300.0)
    try:
        code, out, err = _run(env, "balance", transformer(2), "--json")
        assert code == 0, err
        result = json.loads(out)
        assert result["flagged"] is True
        assert [s["meter_id"] for s in result["suspects"]] == [ids["OAM20001"]]

        code, out, err = _run(env, "cases", "scan", "--json")
        assert code == 0, err
        assert json.loads(out)["flagged_transformers"] == [transformer(2)]
        code, out, _ = _run(env, "cases", "list", "--json")
        (case,) = json.loads(out)
        assert (case["transformer_id"], case["state"]) == (transformer(2), "open")
        case_id = str(case["id"])

        code, _, err = _run(env, "cases", "move", case_id, "closed")
        assert code == 1
        assert "cannot go from open to closed" in err
        assert _run(env, "cases", "move", case_id, "investigating", "--note", "crew sent")[0] == 0
        assert _run(env, "cases", "note", case_id, "seal missing")[0] == 0
        code, out, _ = _run(env, "cases", "show", case_id, "--json")
        shown = json.loads(out)
        assert shown["state"] == "investigating"
        assert [h["kind"] for h in shown["history"]] == ["opened", "evidence", "state", "note"]
        code, out, _ = _run(env, "cases", "watch", "--json")
        assert code == 0
        assert [(w["meter_id"], w["rule"]) for w in json.loads(out)] == [(ids["OAM20001"], "energy-balance")]
        assert _run(env, "cases", "show", "999999")[0] == 1
        code, out, err = _run(env, "cases", "premise", "P10000", "--vacant", "--generation")
        assert code == 0, err
        assert out.startswith("premise P10000: vacant since ")
        assert "with registered generation" in out
        code, _, err = _run(env, "cases", "premise", "P10000")
        assert code == 1
        assert "give vacant and/or has_generation" in err
    finally:
        audit.configure(signer=None)  # the CLI configured the process-wide signer and thresholds
        events.configure(events.DEFAULT_BURSTS)
