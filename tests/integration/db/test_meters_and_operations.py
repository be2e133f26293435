"""Meters and topology, invocation counters, communication errors, collection runs, API tokens."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from openami.db import collection, comm_errors, counters, meters, tokens
from openami.domain.meters import CustomerClass, MeterKind
from openami.errors import InvalidInput, NotFound
from tests.integration.db.helpers import NOW, add_meters, spec


def commissioning(n_meters: int) -> dict[str, Any]:
    return {
        "format": "openami-commissioning",
        "version": 1,
        "generated_at": NOW.isoformat(),
        "seed": 1,
        "substations": [{"id": "SS01", "name": "North"}],
        "feeders": [{"id": "SS01-F01", "substation_id": "SS01"}],
        "transformers": [{"id": "SS01-F01-T001", "feeder_id": "SS01-F01", "phase": "A"}],
        "premises": [{"id": f"P{i:06d}", "address": f"{i} Main St", "critical_care": i == 1} for i in range(n_meters)],
        "service_points": [
            {"id": f"SP{i:06d}", "premise_id": f"P{i:06d}", "transformer_id": "SS01-F01-T001", "phase": "A"}
            for i in range(n_meters)
        ],
        "meters": [
            {
                "serial": f"OAM{i:08d}",
                "kind": "electric",
                "customer_class": "commercial" if i % 10 == 0 else "residential",
                "host": "127.0.1.1",
                "port": 4059 + i,
                "system_title": f"{i:016x}",
                "model": "openami-sim-e1",
                "firmware": "1.0.0",
                "service_point_id": f"SP{i:06d}",
                "keys": {"guek": "00" * 16, "gak": "11" * 16},
            }
            for i in range(n_meters)
        ],
    }


def test_import_commissioning_is_idempotent_and_meters_can_be_listed(engine: Engine) -> None:
    document = commissioning(25)
    with engine.begin() as conn:
        ids = meters.import_commissioning(conn, document, now=NOW)
    with engine.begin() as conn:
        assert meters.import_commissioning(conn, document, now=NOW + timedelta(days=1)) == ids
    with engine.connect() as conn:
        assert meters.count_meters(conn) == 25
        assert meters.count_meters(conn, customer_class=CustomerClass.COMMERCIAL) == 3
        meter = meters.get_meter_by_serial(conn, "OAM00000007")
        assert meter.id == ids["OAM00000007"]
        assert meters.get_meter(conn, meter.id) == meter
        first = meters.list_meters(conn, limit=10)
        second = meters.list_meters(conn, after_id=first[-1].id, limit=10)
        third = meters.list_meters(conn, after_id=second[-1].id, limit=10)
    assert meter.kind is MeterKind.ELECTRIC
    assert meter.system_title == (7).to_bytes(8, "big")
    assert meter.port == 4066
    assert meter.service_point_id == "SP000007"
    assert len({m.serial for m in first + second + third}) == 25
    assert len(third) == 5


def test_meter_update_keeps_id_and_bad_input_is_refused(engine: Engine) -> None:
    with engine.begin() as conn:
        (meter_id,) = add_meters(conn, 1)
        ids = meters.upsert_meters(conn, [spec(1, firmware="2.0.0", host="10.0.0.9")], now=NOW)
        assert ids == {spec(1).serial: meter_id}
        assert meters.get_meter(conn, meter_id).firmware == "2.0.0"
        with pytest.raises(InvalidInput, match="8 bytes"):
            meters.upsert_meters(conn, [spec(2, system_title=b"short")], now=NOW)
        with pytest.raises(NotFound):
            meters.get_meter(conn, meter_id + 99)
        with pytest.raises(NotFound):
            meters.get_meter_by_serial(conn, "nope")
    bad = commissioning(1)
    bad["meters"][0]["system_title"] = "not hex"
    with pytest.raises(InvalidInput, match="malformed"), engine.begin() as conn:
        meters.import_commissioning(conn, bad, now=NOW)
    with pytest.raises(InvalidInput, match="openami-commissioning"), engine.begin() as conn:
        meters.import_commissioning(conn, {"format": "other"}, now=NOW)


def test_invocation_counters_never_move_backwards(engine: Engine) -> None:
    with engine.begin() as conn:
        (meter,) = add_meters(conn, 1)
        assert counters.get(conn, meter) == counters.Counters(0, None)
        assert counters.advance(conn, meter, now=NOW, client_ic_next=100, server_ic_last=50) == (100, 50)
        assert counters.advance(conn, meter, now=NOW, client_ic_next=10, server_ic_last=5) == (100, 50)
        assert counters.advance(conn, meter, now=NOW, server_ic_last=51) == (100, 51)
        assert counters.advance(conn, meter, now=NOW, client_ic_next=101) == (101, 51)
        assert counters.advance(conn, meter, now=NOW) == (101, 51)
        assert counters.reserve_client_ics(conn, meter, 5, now=NOW) == 101
        assert counters.reserve_client_ics(conn, meter, 1, now=NOW) == 106
        assert counters.get(conn, meter).client_ic_next == 107
        assert counters.accept_server_ic(conn, meter, 52, now=NOW) is True
        assert counters.accept_server_ic(conn, meter, 52, now=NOW) is False  # replay
        assert counters.accept_server_ic(conn, meter, 10, now=NOW) is False
        assert counters.get(conn, meter).server_ic_last == 52


def test_first_server_counter_is_accepted_for_a_new_meter(engine: Engine) -> None:
    with engine.begin() as conn:
        (meter,) = add_meters(conn, 1)
        assert counters.accept_server_ic(conn, meter, 0, now=NOW) is True
        assert counters.accept_server_ic(conn, meter, 0, now=NOW) is False


def test_communication_errors_and_collection_runs(engine: Engine) -> None:
    with engine.begin() as conn:
        a, b = add_meters(conn, 2)
        run = collection.start_run(
            conn, window_start=NOW, window_end=NOW + timedelta(hours=4), expected=2, started_at=NOW
        )
        collection.record_progress(conn, run, received=1)
        comm_errors.record_comm_error(conn, b, "associate", "meter timeout after 10 s", occurred_at=NOW, run_id=run)
        collection.record_progress(conn, run, failed=1)
        collection.finish_run(conn, run, finished_at=NOW + timedelta(minutes=3))
        comm_errors.record_comm_error(conn, a, "connect", "x" * 5000, occurred_at=NOW + timedelta(hours=1))
    with engine.connect() as conn:
        stored = collection.get_run(conn, run)
        assert (stored.expected, stored.received, stored.failed, stored.pending) == (2, 1, 1, 0)
        assert stored.window_start == NOW
        assert stored.finished_at == NOW + timedelta(minutes=3)
        assert collection.latest_run(conn) == stored
        errors = comm_errors.list_comm_errors(conn)
        assert [(e.meter_id, e.step) for e in errors] == [(a, "connect"), (b, "associate")]
        assert len(errors[0].cause) == 2000
        assert comm_errors.list_comm_errors(conn, run_id=run)[0].cause == "meter timeout after 10 s"
        assert comm_errors.list_comm_errors(conn, before_id=errors[0].id) == errors[1:]
        assert comm_errors.count_comm_errors(conn, since=NOW + timedelta(minutes=1)) == 1
        with pytest.raises(NotFound):
            collection.get_run(conn, run + 1)


def test_tokens_are_shown_once_stored_hashed_and_expire(engine: Engine) -> None:
    with engine.begin() as conn:
        token_id, token = tokens.create_token(conn, "admin", ["admin", "read"], now=NOW)
        _, short = tokens.create_token(conn, "ci", ["read"], now=NOW, expires_at=NOW + timedelta(hours=1))
        stored = conn.exec_driver_sql("SELECT token_hash FROM api_tokens").scalars().all()
    assert token.startswith("oam_")
    assert len(token) > 40
    assert token not in stored
    assert short not in stored
    with engine.begin() as conn:
        info = tokens.verify_token(conn, token, now=NOW)
        assert info is not None
        assert info.id == token_id
        assert info.scopes == {"admin", "read"}
        assert tokens.verify_token(conn, token[:-1] + ("A" if token[-1] != "A" else "B"), now=NOW) is None
        assert tokens.verify_token(conn, "garbage", now=NOW) is None
        assert tokens.verify_token(conn, short, now=NOW + timedelta(minutes=59)) is not None
        assert tokens.verify_token(conn, short, now=NOW + timedelta(hours=1)) is None  # expired
        tokens.revoke_token(conn, token_id, now=NOW)
        assert tokens.verify_token(conn, token, now=NOW) is None
        assert [t.name for t in tokens.list_tokens(conn)] == ["admin", "ci"]
        with pytest.raises(InvalidInput):
            tokens.create_token(conn, "bad", ["has space"], now=NOW)
        with pytest.raises(NotFound):
            tokens.revoke_token(conn, 999, now=NOW)


def test_racing_workers_never_accept_the_same_server_counter_twice(engine: Engine) -> None:
    with engine.begin() as conn:
        (meter,) = add_meters(conn, 1)
        counters.accept_server_ic(conn, meter, 0, now=NOW)
    accepted: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for ic in range(1, 40):
            with engine.begin() as conn:
                if counters.accept_server_ic(conn, meter, ic, now=NOW):
                    with lock:
                        accepted.append(ic)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(accepted) == len(set(accepted))  # a replayed counter is accepted by nobody
    with engine.connect() as conn:
        assert counters.get(conn, meter).server_ic_last == 39
