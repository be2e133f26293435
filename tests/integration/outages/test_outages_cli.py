"""``openami topology import``, ``openami outages list|show`` and ``openami webhooks`` on both databases."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from openami.cli import main
from openami.db import outages as repo
from openami.db.outages import AffectedMeter, NewOutage
from openami.domain.outages import DeviceKind, OutageState

from .grid import add_grid_meters, grid_csv, meters_of


@pytest.fixture
def cli(engine: Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("OPENAMI_DATABASE_URL", db_url)
    monkeypatch.setenv("OPENAMI_DATA_DIR", str(tmp_path))
    return CliRunner()


def test_topology_import_outages_and_webhooks_from_the_command_line(
    cli: CliRunner, engine: Engine, tmp_path: Path
) -> None:
    ids = add_grid_meters(engine)
    good = tmp_path / "grid.csv"
    good.write_text(grid_csv(), encoding="utf-8")
    done = cli.invoke(main, ["topology", "import", str(good)])
    assert done.exit_code == 0, done.output
    assert "2 substations, 4 feeders, 20 transformers" in done.output

    bad = tmp_path / "bad.csv"
    bad.write_text("kind,id,parent_id\nfeeder,F1,\nfeeder,F1,SS1\n", encoding="utf-8")
    rejected = cli.invoke(main, ["topology", "import", str(bad)])
    assert rejected.exit_code == 1
    assert "row 2 (feeder F1): a feeder needs a parent substation" in rejected.output
    assert "row 3 (feeder F1): duplicate id, already used by row 2" in rejected.output

    now = datetime.now(UTC)
    meters = meters_of(ids, "SS1-F1-T1")
    with engine.begin() as conn:
        outage_id = repo.insert_outage(
            conn,
            NewOutage(DeviceKind.TRANSFORMER, "SS1-F1-T1", "SS1", OutageState.OPEN, now, "last-gasps"),
            [AffectedMeter(m, "dark", True) for m in meters],
            now=now,
        )
    listed = cli.invoke(main, ["outages", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [(o["id"], o["device"], o["meters"]) for o in json.loads(listed.stdout)] == [
        (outage_id, "transformer:SS1-F1-T1", len(meters))
    ]
    shown = cli.invoke(main, ["outages", "show", str(outage_id), "--json"])
    assert sorted(m["meter_id"] for m in json.loads(shown.stdout)["meters"]) == sorted(meters)
    missing = cli.invoke(main, ["outages", "show", "99999"])
    assert missing.exit_code == 1
    assert "outage 99999 does not exist" in missing.output

    added = cli.invoke(main, ["webhooks", "add", "oms", "http://127.0.0.1:9/hook"])
    assert added.exit_code == 0, added.output
    assert "signing secret (shown once)" in added.output
    assert "oms" in cli.invoke(main, ["webhooks", "list"]).output
    assert cli.invoke(main, ["webhooks", "remove", "1"]).exit_code == 0
    refused = cli.invoke(main, ["webhooks", "add", "oms", "http://oms.example.com/hook"])
    assert refused.exit_code == 1
    assert "plain http is allowed only to a loopback receiver" in refused.output
