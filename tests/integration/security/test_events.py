"""Security events and burst alerts on SQLite and PostgreSQL (issue 4, part 6)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.errors import Conflict, NotFound
from openami.security import audit, events
from openami.security.audit_keys import EcdsaAuditSigner
from openami.security.events import BurstRule
from tests.integration.security.audit_helpers import T0

RULES = {
    "meter.bad-tag": BurstRule(3, 600, "meter"),
    "api.login-failed": BurstRule(2, 60, "actor"),
    "api.bad-certificate": BurstRule(4, 60, "fleet"),
}


def _raise(engine: Engine, kind: str, seconds: float, **kwargs: object) -> int:
    with engine.begin() as conn:
        return events.raise_event(conn, kind, now=T0 + timedelta(seconds=seconds), rules=RULES, **kwargs)  # type: ignore[arg-type]


def test_event_is_stored_and_audited_in_the_same_transaction(engine: Engine) -> None:
    event_id = _raise(engine, "meter.replay", 0, meter_id=42, details={"step": "profile", "expected": 17})
    with engine.connect() as conn:
        (stored,) = events.list_events(conn)
        (entry,) = audit.query(conn)
    assert (stored.id, stored.kind, stored.meter_id, stored.occurred_at) == (event_id, "meter.replay", 42, T0)
    assert stored.details == {"step": "profile", "expected": 17}
    assert stored.audit_seq == entry.seq
    assert (entry.actor, entry.action, entry.outcome, entry.resource) == (
        "system:headend",
        "security.event",
        "failed",
        "meter:42",
    )
    assert entry.details == {"kind": "meter.replay", "step": "profile", "expected": 17}


def test_rolled_back_event_leaves_neither_event_nor_audit_entry(engine: Engine) -> None:
    with engine.connect() as conn:
        transaction = conn.begin()
        events.raise_event(conn, "api.denied", now=T0, actor="user:bob")
        transaction.rollback()
    with engine.connect() as conn:
        assert events.list_events(conn) == []
        assert audit.chain_head(conn)[0] == 0


def test_a_burst_opens_one_alert_not_one_per_event(engine: Engine) -> None:
    for i in range(2):
        _raise(engine, "meter.bad-tag", i, meter_id=7)
    with engine.connect() as conn:
        assert events.list_alerts(conn) == []  # below the threshold
    for i in range(2, 6):
        _raise(engine, "meter.bad-tag", i * 10, meter_id=7)
    _raise(engine, "meter.bad-tag", 30, meter_id=8)  # another meter: its own count
    with engine.connect() as conn:
        (alert,) = events.list_alerts(conn)
        members = events.list_events(conn, alert_id=alert.id)
        opened = audit.query(conn, action="security.alert.open")
    assert (alert.kind, alert.scope, alert.state, alert.event_count, alert.threshold) == (
        "meter.bad-tag",
        "meter:7",
        "open",
        6,
        3,
    )
    assert alert.opened_at == T0 + timedelta(seconds=20)
    assert alert.last_event_at == T0 + timedelta(seconds=50)
    assert len(members) == 6
    assert [e.resource for e in opened] == [f"alert:{alert.id}"]


def test_a_quiet_window_ends_the_burst_and_a_new_burst_opens_a_new_alert(engine: Engine) -> None:
    for i in range(3):
        _raise(engine, "api.login-failed", i, actor="user:eve")
    for i in range(2):
        _raise(engine, "api.login-failed", 1000 + i, actor="user:eve")
    for i in range(5):
        _raise(engine, "api.login-failed", 2000 + i * 100, actor="user:eve")  # slower than 2 per minute
    with engine.connect() as conn:
        alerts = events.list_alerts(conn)
    assert [(a.scope, a.event_count) for a in alerts] == [("actor:user:eve", 2), ("actor:user:eve", 3)]


def test_fleet_wide_threshold_counts_every_source(engine: Engine) -> None:
    for i in range(4):
        _raise(engine, "api.bad-certificate", i, actor=f"client:c{i}")
    with engine.connect() as conn:
        (alert,) = events.list_alerts(conn)
    assert (alert.scope, alert.event_count) == ("fleet", 4)


def test_kinds_without_a_rule_never_alert(engine: Engine) -> None:
    for i in range(20):
        _raise(engine, "api.denied", i, actor="user:bob")
    with engine.connect() as conn:
        assert events.list_alerts(conn) == []
        assert len(events.list_events(conn, kind="api.denied", actor="user:bob")) == 20
        assert all(e.outcome == "denied" for e in audit.query(conn, action="security.event"))


def test_configured_rules_apply_by_default(engine: Engine) -> None:
    events.configure({"meter.replay": BurstRule(2, 60, "meter")})
    try:
        for i in range(2):
            with engine.begin() as conn:
                events.raise_event(conn, "meter.replay", now=T0 + timedelta(seconds=i), meter_id=1)
    finally:
        events.configure(events.DEFAULT_BURSTS)
    with engine.connect() as conn:
        assert len(events.list_alerts(conn)) == 1


def test_acknowledge_and_close_are_audited_and_follow_the_states(engine: Engine) -> None:
    for i in range(3):
        _raise(engine, "meter.bad-tag", i, meter_id=3)
    with engine.begin() as conn:
        (alert,) = events.list_alerts(conn, state="open")
        acknowledged = events.acknowledge_alert(conn, alert.id, actor="user:sec", now=T0 + timedelta(minutes=5))
    assert (acknowledged.state, acknowledged.acknowledged_by) == ("acknowledged", "user:sec")
    with engine.begin() as conn, pytest.raises(Conflict, match="acknowledged"):
        events.acknowledge_alert(conn, alert.id, actor="user:sec", now=T0)
    with engine.begin() as conn:
        closed = events.close_alert(conn, alert.id, actor="user:lead", now=T0 + timedelta(minutes=9))
    assert (closed.state, closed.closed_by, closed.closed_at) == ("closed", "user:lead", T0 + timedelta(minutes=9))
    with engine.begin() as conn, pytest.raises(Conflict):
        events.close_alert(conn, alert.id, actor="user:lead", now=T0)
    with engine.begin() as conn, pytest.raises(NotFound):
        events.acknowledge_alert(conn, 999_999, actor="user:sec", now=T0)
    with engine.connect() as conn:
        trail = [(e.action, e.actor) for e in audit.query(conn, resource=f"alert:{alert.id}")]
        assert events.list_alerts(conn, state="open") == []
    assert trail == [
        ("security.alert.close", "user:lead"),
        ("security.alert.acknowledge", "user:sec"),
        ("security.alert.open", "system:security"),
    ]


def test_events_after_an_alert_was_closed_start_a_new_burst(engine: Engine) -> None:
    for i in range(3):
        _raise(engine, "meter.bad-tag", i, meter_id=5)
    with engine.begin() as conn:
        (alert,) = events.list_alerts(conn)
        events.close_alert(conn, alert.id, actor="user:sec", now=T0 + timedelta(seconds=3))
    _raise(engine, "meter.bad-tag", 4, meter_id=5)
    with engine.connect() as conn:
        assert len(events.list_alerts(conn)) == 1  # one new event is not a burst yet
    for i in range(2):
        _raise(engine, "meter.bad-tag", 5 + i, meter_id=5)
    with engine.connect() as conn:
        newest = events.list_alerts(conn)[0]
    assert (newest.state, newest.event_count) == ("open", 3)


def test_racing_events_open_exactly_one_alert(engine: Engine) -> None:
    workers = 6
    start = threading.Barrier(workers)
    errors: list[BaseException] = []

    def one(worker: int) -> None:
        try:
            start.wait()
            _raise(engine, "meter.bad-tag", worker, meter_id=9)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=one, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with engine.connect() as conn:
        (alert,) = events.list_alerts(conn)
        unattached = conn.execute(sa.text("SELECT count(*) FROM security_events WHERE alert_id IS NULL")).scalar_one()
    assert alert.event_count + unattached == workers
    assert alert.event_count == workers


def test_events_are_verified_as_part_of_the_chain(engine: Engine) -> None:
    signer = EcdsaAuditSigner.generate()
    for i in range(4):
        _raise(engine, "meter.bad-tag", i, meter_id=1)
    with engine.begin() as conn:
        audit.checkpoint(conn, signer, now=T0)
    with engine.connect() as conn:
        result = audit.verify(conn, public_key=signer.public_key())
    assert result.ok
    assert result.entries == 5  # four events and the alert's opening


@pytest.mark.parametrize(
    ("kind", "extra"),
    [("Meter.Bad", {}), ("x" * 40, {}), ("nodot", {}), ("meter.bad-tag", {"details": {"token": "abc"}})],
)
def test_malformed_events_are_refused(engine: Engine, kind: str, extra: dict[str, object]) -> None:
    with engine.begin() as conn, pytest.raises(ValueError):
        events.raise_event(conn, kind, now=T0, **extra)  # type: ignore[arg-type]
    with engine.connect() as conn:
        assert events.list_events(conn) == []
        assert audit.chain_head(conn)[0] == 0


def test_event_filters(engine: Engine) -> None:
    _raise(engine, "meter.bad-tag", 0, meter_id=1)
    _raise(engine, "meter.hls-failed", 10, meter_id=2)
    _raise(engine, "api.denied", 20, actor="user:bob")
    with engine.connect() as conn:
        assert [e.kind for e in events.list_events(conn, meter_id=2)] == ["meter.hls-failed"]
        assert [e.kind for e in events.list_events(conn, since=T0 + timedelta(seconds=5))] == [
            "api.denied",
            "meter.hls-failed",
        ]
        assert [e.kind for e in events.list_events(conn, until=T0)] == ["meter.bad-tag"]
        assert len(events.list_events(conn, limit=2)) == 2
        newest = events.list_events(conn, limit=1)[0]
        assert [e.kind for e in events.list_events(conn, before_id=newest.id)] == ["meter.hls-failed", "meter.bad-tag"]
        assert events.list_events(conn, actor="' OR 1=1 --") == []
        with pytest.raises(ValueError, match="state"):
            events.list_alerts(conn, state="pending")
