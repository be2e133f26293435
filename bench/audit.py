"""`openami bench audit [--entries 1000000] [--db sqlite|postgres|both] [--url URL]`: audit log cost and verify speed.

Measures, on a fresh database:

- ``actions_per_s``: audited actions, each ``record`` in its own small transaction (like a real
  action that writes nothing else), one after the other;
- ``audit_us_per_action`` (and ``audit_cpu_us_per_action``): what ``record`` adds to a small
  transaction that writes and commits anyway, measured as the difference between such transactions
  with and without it; the figure to compare with a collection session's CPU time (~2-5 ms):
  ``audit_share_of_{2,5}ms_session_pct``;
- ``batched_entries_per_s``: ``record`` calls in transactions of ``--batch`` entries;
- ``verify_entries_per_s``: ``verify`` over the whole chain, ``--entries`` long (default 1 M: the
  chain is filled by a bulk path that computes the same hashes and signed checkpoints, since how the
  rows got there does not matter to ``verify``; not timed).

Checkpoints are signed every ``--every`` entries throughout. Without ``--url`` PostgreSQL is a private
durable cluster (tests/pg.py), removed afterwards. Prints ONE JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))  # tests/pg.py: the same private cluster as the test suite

from _common import bench_database  # noqa: E402
from openami.db.engine import create_engine  # noqa: E402
from openami.db.migrations import upgrade  # noqa: E402
from openami.db.tables import audit_checkpoints, audit_log  # noqa: E402
from openami.security import audit  # noqa: E402
from openami.security.audit_codec import (  # noqa: E402
    GENESIS_HASH,
    canonical_details,
    canonical_entry,
    checkpoint_message,
    entry_hash,
)
from openami.security.audit_keys import EcdsaAuditSigner  # noqa: E402

T0 = datetime(2026, 11, 22, tzinfo=UTC)


def _entry(i: int) -> audit.AuditEntry:
    """A typical entry: a read of one meter's personal data with a purpose and a few details."""
    return audit.AuditEntry(
        actor=f"user:operator{i % 50}",
        action="readings.read",
        outcome="ok",
        resource=f"meter:{i % 100_000 + 1}",
        subject=f"premise:P{i % 100_000 + 1:06d}",
        purpose="billing",
        details={"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z", "values": 96},
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="openami bench audit", description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="chain length for verify (default 1e6)")
    parser.add_argument("--actions", type=int, default=5_000, help="audited actions, one transaction each")
    parser.add_argument("--batch", type=int, default=1_000, help="entries per transaction for the batched figure")
    parser.add_argument("--every", type=int, default=1_000, help="checkpoint interval")
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--url", help="PostgreSQL URL to use instead of a private cluster (must be empty)")
    args = parser.parse_args()
    signer = EcdsaAuditSigner.generate()
    result: dict[str, object] = {"entries": args.entries, "actions": args.actions, "checkpoint_every": args.every}
    for kind in ("sqlite", "postgres") if args.db == "both" else (args.db,):
        with bench_database(kind, args.url) as url:
            engine = create_engine(url)
            try:
                upgrade(engine)
                stats = _run(engine, signer, args)
            finally:
                engine.dispose()
        result.update({f"{kind}_{name}": value for name, value in stats.items()})
    print(json.dumps(result))


def _run(engine: Engine, signer: EcdsaAuditSigner, args: argparse.Namespace) -> dict[str, float]:
    audit.configure(signer=signer, checkpoint_every=args.every)
    try:
        stats = {"actions_per_s": _single(engine, args.actions)}
        stats.update(_in_transaction(engine, args.actions))
        stats["batched_entries_per_s"] = _batched(engine, max(args.actions, args.batch * 5), args.batch)
    finally:
        audit.configure(signer=None)
    with engine.connect() as conn:
        written = audit.chain_head(conn)[0]
    _bulk_fill(engine, signer, written, args.entries - written, args.every)
    stats.update(_verify(engine, signer))
    return stats


def _single(engine: Engine, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        with engine.begin() as conn:
            audit.record(conn, _entry(i), now=T0 + timedelta(microseconds=i))
    return round(count / (time.perf_counter() - start))


def _in_transaction(engine: Engine, count: int, block: int = 250) -> dict[str, float]:
    """What ``record`` adds to an action's transaction: the same small write-and-commit transactions
    with and without an audit entry, alternating in blocks; the difference per action, wall and CPU
    (process CPU read once per block: on some VMs reading it costs ~100 us)."""
    totals = {False: [0.0, 0.0], True: [0.0, 0.0]}
    done = 0
    while done < count:
        for audited in (False, True):
            start, start_cpu = time.perf_counter(), time.process_time()
            for i in range(done, done + block):
                with engine.begin() as conn:
                    conn.execute(sa.text("UPDATE audit_chain_head SET seq = seq WHERE id = 1"))  # the action's write
                    if audited:
                        audit.record(conn, _entry(i), now=T0)
            totals[audited][0] += time.perf_counter() - start
            totals[audited][1] += time.process_time() - start_cpu
        done += block
    wall_us = (totals[True][0] - totals[False][0]) / done * 1e6
    cpu_us = (totals[True][1] - totals[False][1]) / done * 1e6
    return {
        "action_alone_us": round(totals[False][0] / done * 1e6, 1),
        "audit_us_per_action": round(wall_us, 1),
        "audit_cpu_us_per_action": round(cpu_us, 1),
        "audit_share_of_2ms_session_pct": round(wall_us / 2000 * 100, 2),
        "audit_share_of_5ms_session_pct": round(wall_us / 5000 * 100, 2),
    }


def _batched(engine: Engine, count: int, batch: int) -> float:
    start = time.perf_counter()
    done = 0
    while done < count:
        with engine.begin() as conn:
            for i in range(done, min(done + batch, count)):
                audit.record(conn, _entry(i), now=T0)
        done += batch
    return round(count / (time.perf_counter() - start))


def _bulk_fill(engine: Engine, signer: EcdsaAuditSigner, after: int, count: int, every: int) -> None:
    """Append ``count`` entries after entry ``after`` with the chain's own encoding, in large inserts."""
    if count <= 0:
        return
    with engine.connect() as conn:
        prev = audit.chain_head(conn)[1]
    chunk = 20_000
    seq = after
    at_us = audit.to_epoch_us(T0)
    while seq < after + count:
        rows, checkpoints = [], []
        for _ in range(min(chunk, after + count - seq)):
            seq += 1
            e = _entry(seq)
            details = canonical_details(e.details)
            fields = (seq, at_us, e.actor, e.action, e.outcome, e.resource, e.subject, e.purpose, details)
            digest = entry_hash(prev, canonical_entry(fields))
            rows.append({
                "seq": seq, "at_us": at_us, "actor": e.actor, "action": e.action, "outcome": e.outcome,
                "resource": e.resource, "subject": e.subject, "purpose": e.purpose, "details": details,
                "prev_hash": prev, "hash": digest,
            })  # fmt: skip
            if seq % every == 0:
                signature = signer.sign(checkpoint_message(seq, digest, at_us))
                checkpoints.append(
                    {"seq": seq, "hash": digest, "signed_at_us": at_us, "key_id": signer.key_id, "signature": signature}
                )
            prev = digest
        with engine.begin() as conn:
            conn.execute(sa.insert(audit_log), rows)
            if checkpoints:
                conn.execute(sa.insert(audit_checkpoints), checkpoints)
            conn.execute(
                sa.text("UPDATE audit_chain_head SET seq = :seq, hash = :h WHERE id = 1"), {"seq": seq, "h": prev}
            )
        print(f"\rfilled {seq:,} entries", file=sys.stderr, end="")
    print(file=sys.stderr)
    assert prev != GENESIS_HASH


def _verify(engine: Engine, signer: EcdsaAuditSigner) -> dict[str, float]:
    """``verify`` as it runs by default (PostgreSQL: two segments in parallel; SQLite: one walk), then
    with the other choice (``_two_segments`` / ``_one_walk``): the ratio measured in the same run."""
    stats: dict[str, float] = {}
    other = (1, "_one_walk") if engine.dialect.name == "postgresql" else (2, "_two_segments")
    for workers, suffix in ((None, ""), other):
        with engine.connect() as conn:
            start, start_cpu = time.perf_counter(), time.process_time()
            result = audit.verify(conn, public_key=signer.public_key(), workers=workers)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        assert result.ok, result.problem
        stats.update({
            "verified_entries": result.entries,
            "verified_checkpoints": result.checkpoints,
            f"verify_s{suffix}": round(elapsed, 2),
            f"verify_entries_per_s{suffix}": round(result.entries / elapsed),
            # this process only (PostgreSQL renders the canonical text server-side)
            f"verify_entries_per_cpu_s{suffix}": round(result.entries / cpu),
        })  # fmt: skip
    return stats


if __name__ == "__main__":
    main()
