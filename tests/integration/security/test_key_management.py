"""Key management in storage (both databases): key versions pending/active/retired, the rotation state
machine, counters per key version, audit in the same transaction, and imports that supersede a rotation."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db import counters as counter_repo
from openami.db import key_rotations as reports
from openami.db.tables import audit_log, meter_key_rotations, meter_keys
from openami.security import keys
from openami.security.keys import RotationState
from openami.security.keystore import MeterKeys, StaticMasterKey, load_meter_keys, store_meter_keys
from tests.integration.db.helpers import NOW, add_meters

PROVIDER = StaticMasterKey(bytes(range(32)))
OLD = MeterKeys(bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 48)))
ACTOR = "user:sec-admin"


def _meters(engine: Engine, count: int, *, kek: bool = True) -> list[int]:
    with engine.begin() as conn:
        ids = add_meters(conn, count)
        for meter_id in ids:
            keys_ = OLD if kek else MeterKeys(OLD.guek, OLD.gak)
            store_meter_keys(conn, PROVIDER, meter_id, keys_, now=NOW)
    return ids


def _states(engine: Engine, meter_id: int) -> dict[tuple[str, int], str]:
    query = sa.select(meter_keys.c.key_kind, meter_keys.c.key_version, meter_keys.c.state).where(
        meter_keys.c.meter_id == meter_id
    )
    with engine.connect() as conn:
        return {(k, v): s for k, v, s in conn.execute(query)}


def _request(engine: Engine, ids: list[int], *, emergency: bool = False) -> int:
    with engine.begin() as conn:
        return keys.request_rotation(
            conn, PROVIDER, ids, target=f"meters:{len(ids)}", emergency=emergency, actor=ACTOR, now=NOW
        )


def _open(engine: Engine, rotation_id: int | None = None) -> list[keys.MeterRotation]:
    with engine.connect() as conn:
        return keys.open_rotations(conn, rotation_id=rotation_id)


def test_generated_keys_are_16_random_bytes_each() -> None:
    pairs = {keys.generate_keys() for _ in range(50)}
    assert len(pairs) == 50
    assert all(len(a) == len(b) == 16 and a != b for a, b in pairs)


def test_request_stores_new_keys_pending_and_active_keys_stay_in_use(engine: Engine) -> None:
    a, b = _meters(engine, 2)
    rotation_id = _request(engine, [a, b])
    assert _states(engine, a) == {
        ("guek", 1): "active", ("gak", 1): "active", ("kek", 1): "active",
        ("guek", 2): "pending", ("gak", 2): "pending",
    }  # fmt: skip
    with engine.connect() as conn:
        assert load_meter_keys(conn, PROVIDER, a) == OLD  # reads keep using the active keys
        key_set = keys.load_key_set(conn, PROVIDER, a)
        new = keys.load_new_keys(conn, PROVIDER, _open(engine)[0])
    assert key_set.pending is None  # queued: nothing sent, nothing to try
    assert key_set.version == 1
    assert new.kek == OLD.kek
    assert new.guek != OLD.guek
    assert new.gak != OLD.gak
    assert [r.state for r in _open(engine, rotation_id)] == [RotationState.QUEUED] * 2
    with engine.connect() as conn:
        blobs = conn.execute(sa.select(meter_keys.c.wrapped)).scalars().all()
    assert all(new.guek not in bytes(blob) and new.gak not in bytes(blob) for blob in blobs)


def test_rotation_proven_activates_new_keys_moves_counters_and_audits_in_one_go(engine: Engine) -> None:
    (meter,) = _meters(engine, 1)
    with engine.begin() as conn:
        counter_repo.advance(conn, meter, now=NOW, client_ic_next=500, server_ic_last=400, key_version=1)
    _request(engine, [meter])
    (rotation,) = _open(engine)
    with engine.begin() as conn:
        assert keys.mark_sending(conn, rotation.id, now=NOW)
        assert not keys.mark_sending(conn, rotation.id, now=NOW)  # only from queued
        new = keys.load_new_keys(conn, PROVIDER, rotation)
        assert keys.load_key_set(conn, PROVIDER, meter).pending is not None  # uncertain: try these first
        # a session that used the old keys and ends now cannot move the new key's counter...
        assert keys.prove(conn, rotation, server_ic_last=7, actor="system:headend", via="rotation", now=NOW)
        counter_repo.advance(conn, meter, now=NOW, client_ic_next=600, server_ic_last=450, key_version=1)
        assert counter_repo.get_for_key(conn, meter) == (counter_repo.Counters(600, 7), 2)
        assert not keys.prove(conn, rotation, server_ic_last=9, actor="system:headend", via="read", now=NOW)
        assert load_meter_keys(conn, PROVIDER, meter) == MeterKeys(new.guek, new.gak, OLD.kek)
        entries = conn.execute(
            sa.select(audit_log.c.actor, audit_log.c.outcome, audit_log.c.resource, audit_log.c.details).where(
                audit_log.c.action == "keys.rotate"
            )
        ).all()
    assert _states(engine, meter)[("guek", 1)] == "retired"
    assert _states(engine, meter)[("guek", 2)] == "active"
    assert [(e.actor, e.outcome, e.resource) for e in entries] == [
        (ACTOR, "ok", f"rotation:{rotation.rotation_id}"),
        ("system:headend", "ok", f"meter:{meter}"),
    ]
    for entry in entries:
        for secret in (new.guek, new.gak, OLD.guek, OLD.gak, OLD.kek):
            assert secret.hex() not in entry.details


def test_refused_transfer_fails_and_retires_the_unused_keys(engine: Engine) -> None:
    (meter,) = _meters(engine, 1)
    _request(engine, [meter])
    (rotation,) = _open(engine)
    with engine.begin() as conn:
        keys.mark_sending(conn, rotation.id, now=NOW)
        assert keys.mark_refused(conn, rotation, "the meter refused (other_reason)", actor="system:headend", now=NOW)
    assert _open(engine) == []
    assert _states(engine, meter)[("guek", 2)] == "retired"
    assert _states(engine, meter)[("guek", 1)] == "active"
    with engine.connect() as conn:
        report = reports.rotation_report(conn, rotation.rotation_id)
    assert report.counts["failed"] == 1
    assert report.finished


def test_uncertain_settled_by_old_keys_goes_back_to_queued(engine: Engine) -> None:
    (meter,) = _meters(engine, 1)
    _request(engine, [meter])
    (rotation,) = _open(engine)
    with engine.begin() as conn:
        keys.mark_sending(conn, rotation.id, now=NOW)
        keys.mark_unreachable(conn, rotation.id, "no answer to the key transfer", now=NOW)
        assert keys.mark_not_applied(conn, rotation.id, now=NOW)
    (again,) = _open(engine)
    assert again.state is RotationState.QUEUED
    assert again.attempts == 2
    assert (again.guek_version, again.gak_version) == (rotation.guek_version, rotation.gak_version)


def test_meter_without_master_key_cannot_rotate(engine: Engine) -> None:
    with_kek, without = _meters(engine, 1) + _meters_without_kek(engine)
    rotation_id = _request(engine, [with_kek, without])
    with engine.connect() as conn:
        report = reports.rotation_report(conn, rotation_id)
    assert report.counts == {"rotated": 0, "pending": 1, "uncertain": 0, "failed": 1, "cancelled": 0}
    (failed,) = [m for m in report.meters if m.state == "failed"]
    assert failed.meter_id == without
    assert "master key" in (failed.last_error or "")


def _meters_without_kek(engine: Engine) -> list[int]:
    with engine.begin() as conn:
        ids = add_meters(conn, 3)[2:]  # a third meter (ids 1-2 exist)
        store_meter_keys(conn, PROVIDER, ids[0], MeterKeys(OLD.guek, OLD.gak), now=NOW)
    return ids


def test_second_request_adopts_an_open_rotation_and_emergency_goes_first(engine: Engine) -> None:
    a, b, c = _meters(engine, 3)
    first = _request(engine, [a, b])
    second = _request(engine, [b, c], emergency=True)
    open_rows = _open(engine)
    assert [(r.meter_id, r.rotation_id) for r in open_rows] == [(b, second), (c, second), (a, first)]
    assert [r.priority for r in open_rows] == [keys.EMERGENCY_PRIORITY, keys.EMERGENCY_PRIORITY, 0]
    assert ("guek", 3) not in _states(engine, b)  # b kept its pending keys, no third version
    with engine.connect() as conn:
        recent = reports.recent_rotations(conn)
    assert [(r.id, r.counts["pending"]) for r in recent] == [(second, 2), (first, 1)]


def test_import_of_other_keys_cancels_the_rotation_and_opens_a_new_counter_space(engine: Engine) -> None:
    (meter,) = _meters(engine, 1)
    with engine.begin() as conn:
        counter_repo.advance(conn, meter, now=NOW, client_ic_next=50, server_ic_last=40, key_version=1)
    _request(engine, [meter])
    imported = MeterKeys(os.urandom(16), os.urandom(16), OLD.kek)
    with engine.begin() as conn:
        assert not store_meter_keys(conn, PROVIDER, meter, OLD, now=NOW)  # same keys: nothing changes
        assert store_meter_keys(conn, PROVIDER, meter, imported, now=NOW)
        assert keys.cancel_open_rotations(conn, meter, actor="system:import", now=NOW) == 1
        assert load_meter_keys(conn, PROVIDER, meter) == imported
        assert counter_repo.get_for_key(conn, meter) == (counter_repo.Counters(50, None), 3)
        cancelled = conn.execute(sa.select(meter_key_rotations.c.state)).scalar_one()
    assert cancelled == "cancelled"
    assert _states(engine, meter)[("guek", 2)] == "retired"  # the pending version, never used


def test_one_open_rotation_per_meter_is_enforced_by_the_database(engine: Engine) -> None:
    (meter,) = _meters(engine, 1)
    _request(engine, [meter])
    (rotation,) = _open(engine)
    row = {
        "rotation_id": rotation.rotation_id, "meter_id": meter, "state": "queued", "priority": 0, "guek_version": 9,
        "gak_version": 9, "created_at": NOW, "updated_at": NOW,
    }  # fmt: skip
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.insert(meter_key_rotations).values(**row))
    with engine.begin() as conn:  # a closed one may sit next to it
        conn.execute(sa.insert(meter_key_rotations).values(**{**row, "state": "rotated"}))


def test_key_status_shows_versions_and_states_never_keys(engine: Engine) -> None:
    (meter,) = _meters(engine, 1)
    _request(engine, [meter])
    with engine.connect() as conn:
        status = reports.key_status(conn, meter)
    assert [(v.kind, v.version, v.state) for v in status.versions] == [
        ("gak", 1, "active"), ("gak", 2, "pending"), ("guek", 1, "active"), ("guek", 2, "pending"),
        ("kek", 1, "active"),
    ]  # fmt: skip
    assert status.rotation is not None
    assert status.rotation.state == "pending"
    text = repr(status)
    assert all(k.hex() not in text for k in (OLD.guek, OLD.gak, OLD.kek))


def test_migration_0006_keeps_existing_keys_and_counters_usable_and_downgrades(empty_db_url: str) -> None:
    from alembic import command  # noqa: PLC0415

    from openami.db.engine import create_engine  # noqa: PLC0415
    from openami.db.migrations import alembic_config, upgrade  # noqa: PLC0415

    engine = create_engine(empty_db_url)
    try:
        upgrade(engine, "0005")
        with engine.begin() as conn:  # a database from before key management: two GUEK versions (an import)
            (meter,) = add_meters(conn, 1)
            for kind, version in (("guek", 1), ("guek", 2), ("gak", 1)):
                key = bytes([version]) * 16
                conn.execute(
                    sa.text(
                        "INSERT INTO meter_keys (meter_id, key_kind, key_version, kek_id, wrapped, created_at) "
                        "VALUES (:m, :k, :v, :kek, :w, :t)"
                    ).bindparams(sa.bindparam("t", type_=meter_keys.c.created_at.type)),
                    {"m": meter, "k": kind, "v": version, "kek": PROVIDER.key_id,
                     "w": PROVIDER.wrap(key, _aad(meter, kind, version)), "t": NOW},
                )  # fmt: skip
            conn.execute(
                sa.text(
                    "INSERT INTO invocation_counters (meter_id, client_ic_next, server_ic_last, updated_at) "
                    "VALUES (:m, 10, 5, :t)"
                ).bindparams(sa.bindparam("t", type_=meter_keys.c.created_at.type)),
                {"m": meter, "t": NOW},
            )
        upgrade(engine)
        assert _states(engine, meter) == {("guek", 1): "retired", ("guek", 2): "active", ("gak", 1): "active"}
        with engine.connect() as conn:
            assert load_meter_keys(conn, PROVIDER, meter) == MeterKeys(bytes([2]) * 16, bytes([1]) * 16)
            assert counter_repo.get_for_key(conn, meter) == (counter_repo.Counters(10, 5), 2)
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "0005")
        with engine.connect() as conn:
            assert "meter_key_rotations" not in sa.inspect(conn).get_table_names()
            assert "state" not in {c["name"] for c in sa.inspect(conn).get_columns("meter_keys")}
        upgrade(engine)
    finally:
        engine.dispose()


def _aad(meter_id: int, kind: str, version: int) -> bytes:
    from openami.security.keystore import _aad as aad  # noqa: PLC0415 - the blob format under test

    return aad(meter_id, kind, version)


def test_bulk_key_sets_equal_the_one_meter_loader_for_every_kind_of_meter(engine: Engine) -> None:
    """Startup loads every meter's keys a page at a time; it must agree with ``load_key_set`` meter by
    meter: plain meters, a meter mid-rotation (uncertain: pending keys), one without a master key,
    one with a key missing and one whose key is wrapped under another master key (both unusable)."""
    plain, uncertain, no_kek, missing, foreign = _meters(engine, 5)
    _request(engine, [uncertain])
    with engine.begin() as conn:
        assert keys.mark_sending(conn, _open(engine)[0].id, now=NOW)
        for meter_id, kind in ((missing, "gak"), (no_kek, "kek")):
            conn.execute(sa.delete(meter_keys).where(meter_keys.c.meter_id == meter_id, meter_keys.c.key_kind == kind))
    with engine.begin() as conn:
        store_meter_keys(conn, StaticMasterKey(bytes(32)), foreign, OLD, now=NOW)  # a new version, other master key
    ids = [plain, uncertain, no_kek, missing, foreign]
    with engine.connect() as conn:
        sets, failed = keys.load_key_sets(conn, PROVIDER, ids)
        one_by_one = {m: keys.load_key_set(conn, PROVIDER, m) for m in (plain, uncertain, no_kek)}
    assert sets == one_by_one
    assert sets[uncertain].pending is not None
    assert sets[no_kek].active.kek is None
    assert sorted(failed) == [missing, foreign]
    assert failed[missing].code == "not-found"
