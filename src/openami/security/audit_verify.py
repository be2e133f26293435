"""Verification of the audit chain: every hash, every link, every signed checkpoint, the chain head.

The chain is streamed in batches in sequence order and each entry's hash is recomputed from its
stored previous hash and its canonical encoding (``audit_codec``). The first problem stops the walk
and is reported with the sequence number of the first bad entry:

- a missing sequence number: an entry was **deleted**;
- an entry whose content does not match its hash: **edited** (or **moved**: sequence numbers are hashed);
- an entry whose stored previous hash is not the hash of the entry before it: if it is the hash of
  the entry two back, the entry in between was **inserted**; otherwise the entry before was replaced
  by one with a recomputed hash;
- the chain's hash at a signed checkpoint differs from the signed one: entries since the previous
  good checkpoint were **rewritten** (the whole tail recomputed);
- fewer entries than the newest signed checkpoint or the chain head records: **truncated**;
  entries beyond the chain head: appended outside ``record``;
- a checkpoint whose signature does not verify with the audit public key: forged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Connection

from openami.db.tables import audit_chain_head, audit_checkpoints
from openami.security.audit_codec import GENESIS_HASH, canonical_entry, checkpoint_message
from openami.security.audit_keys import key_id_of, verify_signature

__all__ = ["VerifyResult", "verify"]

BATCH = 20_000
PARALLEL_MIN_ENTRIES = 200_000
"""Chains at least this long (between checkpoints) are verified in parallel segments."""
_NO_END = 2**62
_ROW = sa.text(
    "SELECT seq, at_us, actor, action, outcome, resource, subject, purpose, details, prev_hash FROM audit_log "
    "WHERE seq = :seq"
)
# Each entry's canonical text as the database renders it: SQLite's json_array and PostgreSQL's to_json
# escape strings exactly as the canonical encoding does (quote, backslash and control characters only).
# Run on the DBAPI cursor, hence the drivers' own placeholders (SQLite needs json_array: 3.38 or newer).
_CANONICAL = {
    "sqlite": (
        "SELECT seq, json_array(1, seq, at_us, actor, action, outcome, resource, subject, purpose, details), hash "
        "FROM audit_log WHERE seq >= ? AND seq <= ? ORDER BY seq"
    ),
    "postgresql": (
        "SELECT seq, concat('[1,', seq, ',', at_us, ',', to_json(actor), ',', to_json(action), ',', "
        "to_json(outcome), ',', coalesce(to_json(resource)::text, 'null'), ',', "
        "coalesce(to_json(subject)::text, 'null'), ',', coalesce(to_json(purpose)::text, 'null'), ',', "
        "to_json(details), ']'), hash FROM audit_log WHERE seq >= %s AND seq <= %s ORDER BY seq"
    ),
}


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of ``verify``: ``ok``, or the first bad sequence number and what is wrong with it."""

    ok: bool
    entries: int  # entries checked
    last_seq: int  # newest sequence number checked and found good (0 if none)
    first_bad_seq: int | None = None
    problem: str | None = None
    checkpoints: int = 0  # signed checkpoints whose signature verified
    last_checkpoint_seq: int | None = None
    last_checkpoint_at: datetime | None = None


class _Checkpoint(NamedTuple):
    seq: int
    hash: bytes
    signed_at_us: int


class _Problem(NamedTuple):
    seq: int
    text: str


def verify(
    conn: Connection,
    *,
    public_key: ec.EllipticCurvePublicKey,
    from_seq: int | None = None,
    workers: int | None = None,
) -> VerifyResult:
    """Check the chain (from ``from_seq``, anchored at the newest good checkpoint before it) and its checkpoints.

    A long chain is cut at signed checkpoints into ``workers`` segments verified at once, each on its
    own connection: a segment starts from the hash its first checkpoint signed, and the segment
    before it must arrive at exactly that hash, so the cut hides nothing. On PostgreSQL this puts
    one server process per segment to rendering the canonical text, which is what limits one walk.
    ``workers`` defaults to 2 on PostgreSQL and 1 on SQLite, where the canonical text is rendered
    inside this process and threads would only contend for it (measured: one walk is faster there).
    """
    if workers is None:
        workers = 2 if conn.dialect.name == "postgresql" else 1
    good, bad_signature = _load_checkpoints(conn, public_key)
    start, anchor = 1, GENESIS_HASH
    if from_seq is not None and from_seq > 1:
        below = [cp for cp in good if cp.seq < from_seq]
        if below:
            start, anchor = below[-1].seq + 1, below[-1].hash
    walk = _walk_segments(conn, start, anchor, [cp for cp in good if cp.seq >= start], workers)
    problems = [p for p in (walk.problem, bad_signature) if p is not None]
    if walk.problem is None:
        problems += _tail_problems(conn, walk.last_seq, walk.last_hash, good)
    last_cp = good[-1] if good else None
    result = VerifyResult(
        ok=True,
        entries=walk.entries,
        last_seq=walk.last_seq,
        checkpoints=len(good),
        last_checkpoint_seq=last_cp.seq if last_cp else None,
        last_checkpoint_at=_from_us(last_cp.signed_at_us) if last_cp else None,
    )
    if not problems:
        return result
    first = min(problems, key=lambda p: p.seq)
    return replace(
        result, ok=False, last_seq=min(walk.last_seq, first.seq - 1), first_bad_seq=first.seq, problem=first.text
    )


def _load_checkpoints(
    conn: Connection, public_key: ec.EllipticCurvePublicKey
) -> tuple[list[_Checkpoint], _Problem | None]:
    """Checkpoints whose signature verifies (by seq), and the first one that does not."""
    cp = audit_checkpoints.c
    rows = conn.execute(sa.select(cp.seq, cp.hash, cp.signed_at_us, cp.key_id, cp.signature).order_by(cp.seq))
    key_id = key_id_of(public_key)
    good: list[_Checkpoint] = []
    for seq, digest, signed_at_us, row_key_id, signature in rows:
        checkpoint = _Checkpoint(int(seq), bytes(digest), int(signed_at_us))
        message = checkpoint_message(checkpoint.seq, checkpoint.hash, checkpoint.signed_at_us)
        if row_key_id != key_id:
            return good, _Problem(checkpoint.seq, f"checkpoint {seq} was signed by another key ({row_key_id[:16]})")
        if not verify_signature(public_key, bytes(signature), message):
            return good, _Problem(checkpoint.seq, f"checkpoint {seq} has an invalid signature (forged or altered)")
        good.append(checkpoint)
    return good, None


class _Walk(NamedTuple):
    entries: int
    last_seq: int
    last_hash: bytes
    problem: _Problem | None


def _walk_segments(conn: Connection, start: int, anchor: bytes, checkpoints: list[_Checkpoint], workers: int) -> _Walk:
    """The chain from ``start``: one walk, or ``workers`` walks over checkpoint-bounded segments."""
    cuts = _cuts(start, checkpoints, workers)
    if not cuts:
        return _walk(conn, start, anchor, checkpoints)
    bounds = [(start, anchor), *((cp.seq + 1, cp.hash) for cp in cuts)]
    ends = [cp.seq for cp in cuts] + [_NO_END]

    def segment(i: int) -> _Walk:
        first, hash_before = bounds[i]
        inside = [cp for cp in checkpoints if first <= cp.seq <= ends[i]]
        if i == 0:
            return _bounded(_walk(conn, first, hash_before, inside, end=ends[i]), ends[i])
        with conn.engine.connect() as own:
            return _bounded(_walk(own, first, hash_before, inside, end=ends[i]), ends[i])

    with ThreadPoolExecutor(max_workers=len(bounds), thread_name_prefix="audit-verify") as pool:
        walks = list(pool.map(segment, range(len(bounds))))
    count = 0
    for walk in walks:
        count += walk.entries
        if walk.problem is not None:
            return walk._replace(entries=count)
    return walks[-1]._replace(entries=count)


def _cuts(start: int, checkpoints: list[_Checkpoint], workers: int) -> list[_Checkpoint]:
    """The checkpoints at which to cut the chain into ``workers`` segments of about equal length."""
    if workers < 2 or not checkpoints or checkpoints[-1].seq - start < PARALLEL_MIN_ENTRIES:
        return []
    span = checkpoints[-1].seq - start + 1
    cuts: list[_Checkpoint] = []
    for k in range(1, workers):
        target = start + span * k // workers
        nearest = min(checkpoints, key=lambda cp: abs(cp.seq - target))
        if not cuts or nearest.seq > cuts[-1].seq:
            cuts.append(nearest)
    return cuts


def _bounded(walk: _Walk, end: int) -> _Walk:
    """A segment that must reach ``end``: entries missing at its end are deleted entries."""
    if walk.problem is None and end != _NO_END and walk.last_seq < end:
        missing = walk.last_seq + 1
        return walk._replace(problem=_Problem(missing, f"entry {missing} is missing (deleted): entry {end} is signed"))
    return walk


def _walk(conn: Connection, start: int, anchor: bytes, checkpoints: list[_Checkpoint], end: int = _NO_END) -> _Walk:
    """Stream entries from ``start`` and recompute the chain; stops at the first bad entry.

    The database renders each entry's canonical text (``_CANONICAL``) and this process hashes it
    after the running hash: one comparison proves both the link and the content. Any mismatch is
    re-checked from the row's own fields with ``canonical_entry`` before it is called bad, so the
    database's JSON rendering only ever speeds things up and cannot hide or invent a problem.
    """
    sha256 = hashlib.sha256
    pending = iter(checkpoints)
    next_cp = next(pending, None)
    cp_seq = next_cp.seq if next_cp else -1
    vouched = start - 1  # newest entry a signed checkpoint has confirmed
    expected, running, before = start, anchor, b""
    count = 0
    for batch in _batches(conn, start, end):
        for seq, text, stored in batch:
            digest = sha256(running + text.encode()).digest()
            if digest != stored or seq != expected:
                problem = _recheck(conn, seq, expected, running, before, bytes(stored))
                if problem is not None:
                    return _Walk(count, expected - 1, running, problem)
                digest = bytes(stored)  # the database rendered the text differently; the fields are fine
            if seq == cp_seq:
                if digest != next_cp.hash:  # type: ignore[union-attr]
                    message = (
                        f"entries {vouched + 1}..{seq} were rewritten: the chain at entry {seq} "
                        "does not match its signed checkpoint"
                    )
                    return _Walk(count, expected - 1, running, _Problem(vouched + 1, message))
                vouched = seq
                next_cp = next(pending, None)
                cp_seq = next_cp.seq if next_cp else -1
            before, running, expected = running, digest, seq + 1
            count += 1
    return _Walk(count, expected - 1, running, None)


def _batches(conn: Connection, start: int, end: int) -> Iterator[list[tuple[int, str, bytes]]]:
    """Rows (seq, canonical text, hash) from ``start`` to ``end``, in batches, straight from the DBAPI cursor of
    ``conn`` (a server-side cursor on PostgreSQL, so a long chain is never held in memory)."""
    if not conn.in_transaction():
        conn.begin()
    dbapi: Any = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        cursor = dbapi.cursor(name="openami_audit_verify")
        cursor.itersize = BATCH
    else:
        cursor = dbapi.cursor()
    try:
        cursor.execute(_CANONICAL[conn.dialect.name], (start, end))
        while rows := cursor.fetchmany(BATCH):
            yield rows
    finally:
        cursor.close()


def _recheck(
    conn: Connection, seq: int, expected: int, running: bytes, before: bytes, stored: bytes
) -> _Problem | None:
    """None if entry ``seq`` is good after all (recomputed from its fields), else what is wrong."""
    if seq != expected:
        return _diagnose(seq, expected, b"", running, before, self_consistent=False)
    row = conn.execute(_ROW, {"seq": seq}).one()
    prev = bytes(row[-1])
    digest = hashlib.sha256(prev + canonical_entry(tuple(row[:-1]))).digest()
    if prev == running and digest == stored:
        return None
    return _diagnose(seq, expected, prev, running, before, self_consistent=digest == stored)


def _diagnose(seq: int, expected: int, prev: bytes, running: bytes, before: bytes, self_consistent: bool) -> _Problem:
    if seq != expected:
        return _Problem(expected, f"entry {expected} is missing (deleted): the next stored entry is {seq}")
    if prev == running:
        return _Problem(seq, f"entry {seq} was edited: its content does not match its hash")
    if before and prev == before:
        return _Problem(seq - 1, f"entry {seq - 1} was inserted: entry {seq} was chained to entry {seq - 2}")
    if self_consistent:
        return _Problem(
            seq - 1,
            f"entry {seq - 1} was replaced (its hash recomputed) or entry {seq} was forged: "
            f"entry {seq} does not chain to it",
        )
    return _Problem(seq, f"entry {seq} was edited or moved: neither its content nor its link to entry {seq - 1} match")


def _tail_problems(conn: Connection, last_seq: int, last_hash: bytes, good: list[_Checkpoint]) -> list[_Problem]:
    """Truncation (against the newest signed checkpoint and the chain head) and entries past the head."""
    problems = []
    if good and good[-1].seq > last_seq:
        newest = good[-1].seq
        text = f"entries {last_seq + 1}..{newest} are missing (truncated): checkpoint {newest} is signed"
        problems.append(_Problem(last_seq + 1, text))
    head = conn.execute(
        sa.select(audit_chain_head.c.seq, audit_chain_head.c.hash).where(audit_chain_head.c.id == 1)
    ).one_or_none()
    if head is None:
        problems.append(_Problem(last_seq + 1, "the chain head row is missing"))
        return problems
    head_seq, head_hash = int(head[0]), bytes(head[1])
    if head_seq > last_seq:
        text = f"entries {last_seq + 1}..{head_seq} are missing (truncated): the chain head records {head_seq}"
        problems.append(_Problem(last_seq + 1, text))
    elif head_seq < last_seq:
        text = f"entry {head_seq + 1} lies beyond the chain head {head_seq}: appended outside the audit writer"
        problems.append(_Problem(head_seq + 1, text))
    elif last_seq and head_hash != last_hash:
        problems.append(_Problem(last_seq, f"the chain head's hash does not match entry {last_seq}"))
    return problems


def _from_us(at_us: int) -> datetime:
    return datetime.fromtimestamp(at_us // 1_000_000, UTC).replace(microsecond=at_us % 1_000_000)
