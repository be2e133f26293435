"""``openami audit verify|show|checkpoint|public-key`` and ``openami security events|alerts|ack`` on both databases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from openami.cli import main
from openami.db.engine import create_engine
from openami.security import audit, events
from tests.integration.security.audit_helpers import T0, attacker, fill


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Settings for the in-process CLI; its process-wide audit signer and thresholds are reset afterwards."""
    try:
        yield {
            "OPENAMI_DATABASE_URL": db_url,
            "OPENAMI_DATA_DIR": str(tmp_path / "data"),
            "OPENAMI_AUDIT__CHECKPOINT_EVERY": "4",
        }
    finally:
        audit.configure(signer=None)
        events.configure(events.DEFAULT_BURSTS)


def _run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_verify_exits_0_on_an_intact_chain_and_1_naming_the_first_bad_entry(env: dict[str, str], db_url: str) -> None:
    code, out, _ = _run(env, "audit", "verify")
    assert (code, out.strip()) == (0, "chain intact: 0 entries, no signed checkpoint yet")
    engine = create_engine(db_url)
    try:
        fill(engine, 9)
        # entry 1 audits the first verify, 2..10 are filled, 11 audits the checkpoint
        assert _run(env, "audit", "checkpoint")[:2] == (0, "checkpoint #11 signed\n")
        code, out, _ = _run(env, "audit", "verify")
        assert code == 0
        assert out.startswith("chain intact: 11 entries, last checkpoint #11 at ")
        with attacker(engine) as conn:
            conn.execute(sa.text("UPDATE audit_log SET actor = 'user:mallory' WHERE seq = 5"))
    finally:
        engine.dispose()
    code, _, err = _run(env, "audit", "verify")
    assert code == 1
    assert "chain BROKEN at entry 5: entry 5 was edited" in err


def test_verify_with_a_foreign_public_key_fails(env: dict[str, str], db_url: str, tmp_path: Path) -> None:
    engine = create_engine(db_url)
    try:
        fill(engine, 3)
    finally:
        engine.dispose()
    assert _run(env, "audit", "checkpoint")[0] == 0
    code, pem, _ = _run(env, "audit", "public-key")
    assert code == 0
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    (tmp_path / "audit.pub").write_text(pem)
    assert _run(env, "audit", "verify", "--public-key", str(tmp_path / "audit.pub"))[0] == 0
    other = {**env, "OPENAMI_DATA_DIR": str(tmp_path / "elsewhere")}
    code, _, err = _run(other, "audit", "verify")
    assert code == 1
    assert "another key" in err


def test_show_filters_and_prints_json(env: dict[str, str], db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        fill(engine, 8)
    finally:
        engine.dispose()
    code, out, _ = _run(env, "audit", "show", "--meter", "2", "--json")
    assert code == 0
    rows = json.loads(out)
    assert {r["resource"] for r in rows} == {"meter:2"}
    assert len(rows) == 2
    code, out, _ = _run(env, "audit", "show", "--actor", "user:u1", "--since", "2026-11-22T12:00:03", "--json")
    assert code == 0
    assert [(r["actor"], r["at"]) for r in json.loads(out)][-1] == ("user:u1", "2026-11-22T12:00:04+00:00")
    code, out, _ = _run(env, "audit", "show", "--limit", "1")
    assert (code, "audit log (1 entries)" in out) == (0, True)
    code, _, err = _run(env, "audit", "show", "--since", "not a date")
    assert code == 2
    assert "ISO 8601" in err


def test_security_events_alerts_and_ack(env: dict[str, str], db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            for _ in range(3):
                events.raise_event(conn, "meter.bad-tag", now=T0, meter_id=4)
    finally:
        engine.dispose()
    code, out, _ = _run(env, "security", "events", "--meter", "4", "--json")
    assert code == 0
    assert [e["kind"] for e in json.loads(out)] == ["meter.bad-tag"] * 3
    code, out, _ = _run(env, "security", "alerts", "--state", "open", "--json")
    (alert,) = json.loads(out)
    assert _run(env, "security", "ack", str(alert["id"]))[:2] == (0, f"alert {alert['id']} is acknowledged\n")
    code, _, err = _run(env, "security", "ack", str(alert["id"]))
    assert code == 1
    assert "acknowledged" in err
    assert _run(env, "security", "ack", str(alert["id"]), "--close")[1] == f"alert {alert['id']} is closed\n"
