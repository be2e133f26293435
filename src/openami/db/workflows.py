"""Repository of the switch workflows (move-in, move-out, non-payment, reinstatement, shedding, limits).

A workflow is one ``switch_workflows`` row (its state and the step it is at) and one
``switch_workflow_steps`` row per step taken, with the step's outcome and the command it sent.
The caller owns the transaction and the audit entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from openami.db.tables import switch_workflow_steps as steps_t
from openami.db.tables import switch_workflows as wf_t
from openami.errors import NotFound

__all__ = ["FINAL_STATES", "Step", "Workflow", "add_step", "create", "finish", "get", "list_workflows", "set_state"]

FINAL_STATES = frozenset({"completed", "failed", "stopped"})


@dataclass(frozen=True, slots=True)
class Step:
    step: str
    outcome: str  # ok, failed, skipped
    detail: str
    command_id: int | None
    at: datetime


@dataclass(frozen=True, slots=True)
class Workflow:
    id: int
    kind: str
    meter_id: int | None
    target: str
    state: str  # running, awaiting-approval, completed, failed, stopped
    step: str
    failure_step: str | None
    failure_reason: str | None
    parameters: dict[str, Any]
    requested_by: str
    requested_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    steps: list[Step] = field(default_factory=list)


def create(  # noqa: PLR0913 - one column each
    conn: Connection,
    kind: str,
    *,
    meter_id: int | None,
    target: str,
    parameters: Mapping[str, Any],
    requested_by: str,
    now: datetime,
    step: str = "start",
) -> int:
    values = {"kind": kind, "meter_id": meter_id, "target": target[:160], "state": "running", "step": step,
              "parameters": json.dumps(dict(parameters), sort_keys=True, default=str), "requested_by": requested_by,
              "requested_at": now, "updated_at": now}  # fmt: skip
    return int(conn.execute(sa.insert(wf_t).values(**values).returning(wf_t.c.id)).scalar_one())


def add_step(
    conn: Connection,
    workflow_id: int,
    step: str,
    outcome: str,
    detail: str,
    *,
    now: datetime,
    command_id: int | None = None,
) -> None:
    """Record one step's outcome and make it the workflow's current step."""
    conn.execute(
        sa.insert(steps_t).values(workflow_id=workflow_id, step=step, outcome=outcome, detail=detail[:500],
                                  command_id=command_id, at=now)
    )  # fmt: skip
    conn.execute(sa.update(wf_t).where(wf_t.c.id == workflow_id).values(step=step, updated_at=now))


def set_state(conn: Connection, workflow_id: int, state: str, *, now: datetime) -> None:
    conn.execute(sa.update(wf_t).where(wf_t.c.id == workflow_id).values(state=state, updated_at=now))


def finish(
    conn: Connection, workflow_id: int, state: str, *, now: datetime, step: str | None = None, reason: str | None = None
) -> None:
    """Final state: completed, or failed/stopped with the step that failed and why."""
    values: dict[str, Any] = {"state": state, "updated_at": now, "finished_at": now}
    if reason is not None:
        values.update(failure_step=step, failure_reason=reason[:500])
    conn.execute(sa.update(wf_t).where(wf_t.c.id == workflow_id).values(**values))


def _workflow(row: sa.Row[Any], steps: list[Step]) -> Workflow:
    m = row._mapping
    return Workflow(
        id=m["id"], kind=m["kind"], meter_id=m["meter_id"], target=m["target"], state=m["state"], step=m["step"],
        failure_step=m["failure_step"], failure_reason=m["failure_reason"], parameters=json.loads(m["parameters"]),
        requested_by=m["requested_by"], requested_at=m["requested_at"], updated_at=m["updated_at"],
        finished_at=m["finished_at"], steps=steps,
    )  # fmt: skip


def get(conn: Connection, workflow_id: int) -> Workflow:
    row = conn.execute(sa.select(wf_t).where(wf_t.c.id == workflow_id)).first()
    if row is None:
        raise NotFound(f"no workflow {workflow_id}")
    query = sa.select(steps_t).where(steps_t.c.workflow_id == workflow_id).order_by(steps_t.c.id)
    steps = [
        Step(step=s.step, outcome=s.outcome, detail=s.detail, command_id=s.command_id, at=s.at)
        for s in conn.execute(query)
    ]
    return _workflow(row, steps)


def list_workflows(
    conn: Connection,
    *,
    kind: str | None = None,
    state: str | None = None,
    meter_id: int | None = None,
    limit: int = 100,
) -> list[Workflow]:
    """Workflows without their steps, newest first."""
    where: list[ColumnElement[bool]] = []
    if kind is not None:
        where.append(wf_t.c.kind == kind)
    if state is not None:
        where.append(wf_t.c.state == state)
    if meter_id is not None:
        where.append(wf_t.c.meter_id == meter_id)
    query = sa.select(wf_t).where(*where).order_by(wf_t.c.id.desc()).limit(limit)
    return [_workflow(row, []) for row in conn.execute(query)]
