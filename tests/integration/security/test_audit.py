"""The audit chain on SQLite and PostgreSQL: appends, concurrency, rollbacks, and every kind of tampering
found by ``verify`` with the first bad sequence number named (issue 4, part 5)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Engine

from openami.db.engine import create_engine
from openami.security import audit, audit_verify
from openami.security.audit_codec import canonical_entry
from openami.security.audit_keys import AuditKeyError, EcdsaAuditSigner, load_or_create_signer
from openami.security.audit_verify import _CANONICAL
from tests.integration.security.audit_helpers import T0, attacker, entry, fill, insert_row, rehash, renumber, row

ENTRIES = 23
EVERY = 5  # checkpoints at 5, 10, 15, 20


@pytest.fixture
def signer() -> EcdsaAuditSigner:
    return EcdsaAuditSigner.generate()


_workers = [1]  # segments ``_verify`` asks for: every tamper test runs with one walk and with three


@pytest.fixture(params=[1, 3], ids=["one-walk", "three-segments"])
def segments(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(audit_verify, "PARALLEL_MIN_ENTRIES", 0)  # cut even this short chain
    _workers[0] = request.param
    yield request.param
    _workers[0] = 1


@pytest.fixture
def chain(engine: Engine, signer: EcdsaAuditSigner, segments: int) -> Engine:
    fill(engine, ENTRIES, signer=signer, every=EVERY)
    return engine


def _verify(engine: Engine, signer: EcdsaAuditSigner, **kwargs: int) -> audit.VerifyResult:
    kwargs.setdefault("workers", _workers[0])
    with engine.connect() as conn:
        return audit.verify(conn, public_key=signer.public_key(), **kwargs)


def test_intact_chain_verifies_with_its_checkpoints(chain: Engine, signer: EcdsaAuditSigner) -> None:
    result = _verify(chain, signer)
    assert result.ok, result.problem
    assert (result.entries, result.last_seq, result.checkpoints, result.last_checkpoint_seq) == (23, 23, 4, 20)
    with chain.connect() as conn:
        seqs = conn.execute(sa.text("SELECT seq FROM audit_log ORDER BY seq")).scalars().all()
        assert audit.chain_head(conn)[0] == 23
    assert seqs == list(range(1, 24))


def test_a_long_chain_is_cut_at_signed_checkpoints_into_about_equal_segments() -> None:
    checkpoints = [audit_verify._Checkpoint(seq, bytes(32), 0) for seq in range(1000, 1_000_001, 1000)]
    cuts = audit_verify._cuts(1, checkpoints, 3)
    assert [cp.seq for cp in cuts] == [333_000, 667_000]
    assert audit_verify._cuts(1, checkpoints[:10], 3) == []  # short chains: one walk


def test_verify_from_a_sequence_starts_at_the_checkpoint_before_it(chain: Engine, signer: EcdsaAuditSigner) -> None:
    result = _verify(chain, signer, from_seq=12)
    assert result.ok
    assert result.entries == 13  # 11..23, anchored at the signed hash of entry 10


def test_database_refuses_update_and_delete_of_audit_rows(chain: Engine) -> None:
    for statement in (
        "UPDATE audit_log SET actor = 'user:mallory' WHERE seq = 3",
        "DELETE FROM audit_log WHERE seq = 3",
    ):
        with pytest.raises(exc.DBAPIError, match="append-only"), chain.begin() as conn:
            conn.execute(sa.text(statement))


def test_edited_entry_is_named(chain: Engine, signer: EcdsaAuditSigner) -> None:
    with attacker(chain) as conn:
        conn.execute(sa.text("UPDATE audit_log SET outcome = 'ok', actor = 'user:alice' WHERE seq = 7"))
    result = _verify(chain, signer)
    assert not result.ok
    assert result.first_bad_seq == 7
    assert "edited" in (result.problem or "")
    assert result.last_seq == 6


def test_deleted_middle_entry_is_named(chain: Engine, signer: EcdsaAuditSigner) -> None:
    with attacker(chain) as conn:
        conn.execute(sa.text("DELETE FROM audit_log WHERE seq = 7"))
    result = _verify(chain, signer)
    assert (result.ok, result.first_bad_seq) == (False, 7)
    assert "missing" in (result.problem or "")


def test_inserted_entry_with_recomputed_hash_is_named(chain: Engine, signer: EcdsaAuditSigner) -> None:
    with attacker(chain) as conn:
        six = row(conn, 6)
        renumber(conn, "seq >= :at", 1, {"at": 7})
        forged = {**row(conn, 8), "seq": 7, "actor": "user:mallory", "prev_hash": six["hash"]}
        forged["hash"] = rehash(forged, bytes(six["hash"]))  # type: ignore[arg-type]
        insert_row(conn, forged)
        conn.execute(sa.text("UPDATE audit_chain_head SET seq = seq + 1"))
    result = _verify(chain, signer)
    assert (result.ok, result.first_bad_seq) == (False, 7)
    assert "inserted" in (result.problem or "")


def test_replaced_entry_with_recomputed_hash_is_named(chain: Engine, signer: EcdsaAuditSigner) -> None:
    with attacker(chain) as conn:
        seven = {**row(conn, 7), "details": '{"n":6}'}
        new_hash = rehash(seven, bytes(seven["prev_hash"]))  # type: ignore[arg-type]
        conn.execute(
            sa.text("UPDATE audit_log SET details = :d, hash = :h WHERE seq = 7"), {"d": '{"n":6}', "h": new_hash}
        )
    result = _verify(chain, signer)
    assert (result.ok, result.first_bad_seq) == (False, 7)
    assert "replaced" in (result.problem or "")


def test_reordered_entries_are_named(chain: Engine, signer: EcdsaAuditSigner) -> None:
    with attacker(chain) as conn:
        conn.execute(sa.text("UPDATE audit_log SET seq = -1 WHERE seq = 12"))
        conn.execute(sa.text("UPDATE audit_log SET seq = 12 WHERE seq = 7"))
        conn.execute(sa.text("UPDATE audit_log SET seq = 7 WHERE seq = -1"))
    result = _verify(chain, signer)
    assert (result.ok, result.first_bad_seq) == (False, 7)
    assert "moved" in (result.problem or "")


def test_adjacent_swap_is_named(chain: Engine, signer: EcdsaAuditSigner) -> None:
    with attacker(chain) as conn:
        conn.execute(sa.text("UPDATE audit_log SET seq = -1 WHERE seq = 8"))
        conn.execute(sa.text("UPDATE audit_log SET seq = 8 WHERE seq = 7"))
        conn.execute(sa.text("UPDATE audit_log SET seq = 7 WHERE seq = -1"))
    assert _verify(chain, signer).first_bad_seq == 7


def test_truncation_before_the_last_checkpoint_is_found_even_with_the_head_rewound(
    chain: Engine, signer: EcdsaAuditSigner
) -> None:
    with attacker(chain) as conn:
        last = row(conn, 17)
        conn.execute(sa.text("DELETE FROM audit_log WHERE seq > 17"))
        conn.execute(sa.text("UPDATE audit_chain_head SET seq = 17, hash = :h"), {"h": last["hash"]})
    result = _verify(chain, signer)
    assert (result.ok, result.first_bad_seq) == (False, 18)
    assert "truncated" in (result.problem or "")
    assert "checkpoint 20" in (result.problem or "")


def test_truncation_after_the_last_checkpoint_is_found_against_the_head(
    chain: Engine, signer: EcdsaAuditSigner
) -> None:
    with attacker(chain) as conn:
        conn.execute(sa.text("DELETE FROM audit_log WHERE seq > 21"))
    result = _verify(chain, signer)
    assert (result.ok, result.first_bad_seq) == (False, 22)
    assert "truncated" in (result.problem or "")


def test_recomputed_tail_is_caught_by_the_signed_checkpoint(chain: Engine, signer: EcdsaAuditSigner) -> None:
    with attacker(chain) as conn:
        rows = [row(conn, seq) for seq in range(7, ENTRIES + 1)]
        prev = bytes(row(conn, 6)["hash"])  # type: ignore[arg-type]
        conn.execute(sa.text("DELETE FROM audit_log WHERE seq >= 7"))
        rows[0]["actor"] = "user:mallory"
        for values in rows:
            values["prev_hash"] = prev
            values["hash"] = prev = rehash(values, prev)
            insert_row(conn, values)
        conn.execute(sa.text("UPDATE audit_chain_head SET hash = :h"), {"h": prev})
    result = _verify(chain, signer)
    assert (result.ok, result.first_bad_seq) == (False, 6)  # entries 1..5 are vouched for by checkpoint 5
    assert "rewritten" in (result.problem or "")
    assert "6..10" in (result.problem or "")


def test_entry_appended_outside_record_is_named(chain: Engine, signer: EcdsaAuditSigner) -> None:
    with attacker(chain) as conn:
        last = row(conn, ENTRIES)
        extra = {**last, "seq": 24, "prev_hash": last["hash"], "actor": "user:mallory"}
        extra["hash"] = rehash(extra, bytes(last["hash"]))  # type: ignore[arg-type]
        insert_row(conn, extra)
    result = _verify(chain, signer)
    assert (result.ok, result.first_bad_seq) == (False, 24)
    assert "beyond the chain head" in (result.problem or "")


def test_forged_checkpoint_and_foreign_key_are_refused(chain: Engine, signer: EcdsaAuditSigner) -> None:
    other = EcdsaAuditSigner.generate()
    foreign = _verify(chain, other)
    assert (foreign.ok, foreign.first_bad_seq) == (False, 5)
    assert "another key" in (foreign.problem or "")
    with attacker(chain) as conn:
        conn.execute(sa.text("UPDATE audit_checkpoints SET signed_at_us = signed_at_us + 1 WHERE seq = 10"))
    result = _verify(chain, signer)
    assert (result.ok, result.first_bad_seq) == (False, 10)
    assert "invalid signature" in (result.problem or "")


def test_concurrent_appenders_keep_one_linear_chain(engine: Engine, signer: EcdsaAuditSigner) -> None:
    workers, each = 6, 20
    errors: list[BaseException] = []
    start = threading.Barrier(workers)
    audit.configure(signer=signer, checkpoint_every=7)

    def append(worker: int) -> None:
        try:
            start.wait()
            for i in range(each):
                with engine.begin() as conn:
                    conn.execute(sa.text("SELECT count(*) FROM audit_log")).scalar_one()  # a read first
                    audit.record(
                        conn, audit.AuditEntry(f"user:w{worker}", "readings.read", "ok", details={"i": i}), now=T0
                    )
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=append, args=(w,)) for w in range(workers)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        audit.configure(signer=None)
    assert errors == []
    result = _verify(engine, signer)
    assert result.ok, result.problem
    assert result.entries == workers * each
    assert result.checkpoints == workers * each // 7
    with engine.connect() as conn:
        seqs = conn.execute(sa.text("SELECT seq FROM audit_log ORDER BY seq")).scalars().all()
    assert seqs == list(range(1, workers * each + 1))


def test_rolled_back_entry_leaves_no_trace_and_no_gap(engine: Engine, signer: EcdsaAuditSigner) -> None:
    fill(engine, 3)
    with engine.connect() as conn:
        transaction = conn.begin()
        assert audit.record(conn, entry(99), now=T0) == 4
        transaction.rollback()
    with engine.begin() as conn:
        assert audit.record(conn, entry(100), now=T0) == 4
        assert audit.chain_head(conn)[0] == 4
        assert [r.seq for r in audit.query(conn)] == [4, 3, 2, 1]
        assert audit.query(conn, before_seq=5, limit=1)[0].details["n"] == 100
    assert _verify(engine, signer).ok


def test_a_writer_whose_idea_of_the_head_is_stale_appends_after_the_real_head(
    engine: Engine, signer: EcdsaAuditSigner
) -> None:
    """Two engines (two processes' worth of writers) on one database: each remembers the head it
    wrote last (PostgreSQL's one-round-trip append), which the other then moves on."""
    other = create_engine(engine.url)
    try:
        fill(engine, 2)
        with other.begin() as conn:
            assert audit.record(conn, entry(3), now=T0) == 3
        with engine.begin() as conn:  # this engine last wrote entry 2: the head is 3 now
            assert audit.record(conn, entry(4), now=T0) == 4
        with other.begin() as conn:
            assert audit.record(conn, entry(5), now=T0) == 5
    finally:
        other.dispose()
    result = _verify(engine, signer)
    assert (result.ok, result.entries) == (True, 5), result.problem


@pytest.mark.parametrize(
    "details",
    [{"password": "hunter2"}, {"api_token": "oam_x"}, {"guek": "00" * 16}, {"gak": "x"}, {"secret": "x"},
     {"new_key": "x"}, {"private_key_pem": "x"}, {"Password": "x"}],
)  # fmt: skip
def test_secrets_in_details_are_refused_and_nothing_is_written(engine: Engine, details: dict[str, str]) -> None:
    with engine.begin() as conn:
        with pytest.raises(ValueError, match=r"secret|lower-case"):
            audit.record(conn, audit.AuditEntry("user:a", "auth.login", "ok", details=details), now=T0)
        assert audit.chain_head(conn)[0] == 0
        assert audit.query(conn) == []


def test_metadata_about_keys_is_allowed(engine: Engine) -> None:
    with engine.begin() as conn:
        details = {"key_id": "kek-1", "key_version": 2, "token_name": "ops", "key_kind": "guek"}
        seq = audit.record(conn, audit.AuditEntry("user:a", "keys.rotate", "ok", details=details), now=T0)
        assert audit.query(conn)[0].details == details
    assert seq == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [({"outcome": "maybe"}, "outcome"), ({"actor": ""}, "actor"), ({"action": "Drop Table"}, "action"),
     ({"resource": "meter:1\x00"}, "control"), ({"details": {"x": float("nan")}}, "finite")],
)  # fmt: skip
def test_malformed_entries_are_refused(engine: Engine, change: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"actor": "user:a", "action": "auth.login", "outcome": "ok", **change}
    with engine.begin() as conn, pytest.raises(ValueError, match=message):
        audit.record(conn, audit.AuditEntry(**values), now=T0)  # type: ignore[arg-type]
    with engine.begin() as conn, pytest.raises(ValueError, match="timezone"):
        audit.record(conn, audit.AuditEntry("user:a", "auth.login", "ok"), now=T0.replace(tzinfo=None))


def test_query_filters_by_actor_action_meter_subject_outcome_and_time(engine: Engine) -> None:
    fill(engine, 20)
    with engine.connect() as conn:
        assert {r.actor for r in audit.query(conn, actor="user:u1")} == {"user:u1"}
        assert len(audit.query(conn, actor="user:u1")) == 7
        assert {r.resource for r in audit.query(conn, resource="meter:2")} == {"meter:2"}
        assert all(r.outcome == "denied" for r in audit.query(conn, outcome="denied"))
        assert len(audit.query(conn, action="meter.read-now", subject="premise:P000001")) == 5  # i = 0, 4, ... 16
        window = audit.query(conn, since=T0 + timedelta(seconds=5), until=T0 + timedelta(seconds=9))
        assert [r.seq for r in window] == [10, 9, 8, 7, 6]
        first_page = audit.query(conn, limit=8)
        second_page = audit.query(conn, limit=8, before_seq=first_page[-1].seq)
        assert [r.seq for r in first_page + second_page] == list(range(20, 4, -1))
        assert audit.query(conn, actor="' OR 1=1 --") == []
        assert first_page[0].details["note"] == 'é\n"quoted"'


def test_checkpoint_on_demand_signs_the_head(engine: Engine, signer: EcdsaAuditSigner) -> None:
    with engine.begin() as conn:
        assert audit.checkpoint(conn, signer, now=T0) is None  # an empty chain has nothing to sign
    fill(engine, 4)
    with engine.begin() as conn:
        made = audit.checkpoint(conn, signer, now=T0)
        again = audit.checkpoint(conn, signer, now=T0 + timedelta(hours=1))
    assert made is not None
    assert again == made  # one checkpoint per sequence number: the first signature stays
    assert made.seq == 4
    result = _verify(engine, signer)
    assert (result.ok, result.last_checkpoint_seq, result.last_checkpoint_at) == (True, 4, T0)


def test_signing_key_file_is_created_0600_and_refused_when_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit.pem"
    first = load_or_create_signer(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_signer(path).key_id == first.key_id
    assert "***" in repr(first)
    path.chmod(0o644)
    with pytest.raises(AuditKeyError, match="group or others"):
        load_or_create_signer(path)
    with pytest.raises(AuditKeyError, match="does not exist"):
        load_or_create_signer(tmp_path / "absent.pem", create=False)


def test_database_renders_the_canonical_text_byte_for_byte(engine: Engine) -> None:
    """verify's fast path (the database writes the canonical JSON) agrees with the encoding for awkward text."""
    awkward = ['quote " and backslash \\', "tab\tnew\nline\r\x08\x0c", "zoë ☃ 𝄞 \u2028\u2029 \x7f", "ünïcödé/<>&'"]
    with engine.begin() as conn:
        for i, text in enumerate(awkward):
            details = {"note": text, "n": i, "ratio": 1 / 3, "flag": True, "none": None}
            plain = "".join(c for c in text if c.isprintable() or c == " ")  # no controls outside details
            entry = audit.AuditEntry(f"user:{plain[:20]}", "a.b", "ok", resource=plain, subject=None, details=details)
            audit.record(conn, entry, now=T0)
    with engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        cursor = dbapi.cursor()
        cursor.execute(_CANONICAL[conn.dialect.name], (1, 2**62))
        rendered = {int(seq): text.encode() for seq, text, _ in cursor.fetchall()}
        cursor.close()
        rows = conn.execute(
            sa.text("SELECT seq, at_us, actor, action, outcome, resource, subject, purpose, details FROM audit_log")
        ).all()
    assert rendered == {int(r[0]): canonical_entry(tuple(r)) for r in rows}
