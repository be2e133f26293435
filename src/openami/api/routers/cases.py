"""Revenue protection: investigation cases, the watch list, transformer energy balance, scans, premise flags.

Cases move open → investigating → confirmed-theft | no-fault → closed; any other move is 409
``illegal-case-transition``. Seeing needs ``cases.read``, changing ``cases.manage``, premise flags
``premises.manage``; every change is audited. docs/revenue-protection.md explains rules and thresholds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from openami.api.auth import PlatformDep, Scope
from openami.api.problems import PROBLEM_JSON
from openami.services import revenue

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in (
        (401, "missing or invalid token"),
        (403, "not allowed (cases.read, cases.manage or premises.manage)"),
        (404, "unknown case, meter, transformer or premise"),
        (409, "a transition the case state machine does not allow, or a case already open"),
        (422, "invalid request"),
    )
}
router = APIRouter(prefix="/v1", tags=["revenue protection"], responses=_ERRORS)
CaseId = Annotated[int, Path(ge=1, le=2**62, description="a case's id")]
TransformerId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")]
PremiseId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")]
MeterId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the platform's meter id")]
CaseState = Literal["open", "investigating", "confirmed-theft", "no-fault", "closed"]
Rule = Literal[
    "consumption-while-disconnected", "consumption-while-vacant", "register-mismatch", "reverse-flow",
    "sustained-drop", "energy-balance",
]  # fmt: skip


class CaseOut(BaseModel):
    id: int
    meter_id: int | None
    transformer_id: str | None
    state: CaseState
    reason: str = Field(description='"tamper", "energy-balance", a rule name, or "manual"')
    summary: str
    assignee: str | None
    opened_by: str
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None


class HistoryOut(BaseModel):
    at: datetime
    actor: str
    kind: str = Field(description="opened, state, assigned, note or evidence")
    from_state: str | None
    to_state: str | None
    text: str | None


class CaseDetailOut(CaseOut):
    history: list[HistoryOut]


class CaseOpenIn(BaseModel):
    """Exactly one of ``meter_id`` or ``transformer_id``."""

    model_config = ConfigDict(extra="forbid")
    meter_id: int | None = Field(default=None, ge=1, le=2**31 - 1)
    transformer_id: str | None = Field(default=None, min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")
    summary: str = Field(min_length=1, max_length=255)

    @model_validator(mode="after")
    def _one_subject(self) -> CaseOpenIn:
        if (self.meter_id is None) == (self.transformer_id is None):
            raise ValueError("give exactly one of meter_id or transformer_id")
        return self


class TransitionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to_state: CaseState
    note: str | None = Field(default=None, min_length=1, max_length=revenue.MAX_NOTE)


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assignee: str | None = Field(description="who investigates; null to unassign", min_length=1, max_length=128)


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=revenue.MAX_NOTE)


class WatchOut(BaseModel):
    id: int
    meter_id: int | None
    transformer_id: str | None
    rule: str
    evidence: dict[str, Any] = Field(description="the numbers the rule saw (Wh, shares, times)")
    since: datetime
    last_seen_at: datetime
    cleared_at: datetime | None
    case_id: int | None


class SuspectOut(BaseModel):
    meter_id: int
    baseline_wh: float = Field(description="mean energy per quarter-hour before the period")
    period_wh: float = Field(description="mean energy per quarter-hour in the period")
    drop_share: float


class BalanceOut(BaseModel):
    transformer_id: str
    check_meter_id: int
    period_start: datetime
    period_end: datetime
    intervals: int = Field(description="quarter-hours the check meter and every meter had a stored value for")
    meters: int
    check_wh: float
    meters_wh: float
    loss_wh: float
    loss_share: float | None
    tolerance: float
    flagged: bool
    suspects: list[SuspectOut]
    missing_meters: list[int] = Field(description="meters with no stored value in the period")


class StoredBalanceOut(BaseModel):
    id: int
    transformer_id: str
    check_meter_id: int
    period_start: datetime
    period_end: datetime
    intervals: int
    meters: int
    check_wh: float
    meters_wh: float
    loss_wh: float
    loss_share: float | None
    tolerance: float
    flagged: bool
    suspects: list[int]
    computed_at: datetime


class ScanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    meter_ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] | None = Field(
        default=None, max_length=100_000, description="the meters to scan; absent: every meter"
    )


class ScanOut(BaseModel):
    meters: int
    transformers: int
    findings: dict[str, int] = Field(description="rule → meters it fired for")
    new_watch: int
    cleared_watch: int
    flagged_transformers: list[str]
    cases_opened: int


class PremiseFlagsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vacant: bool | None = None
    has_generation: bool | None = Field(default=None, description="registered generation (export is expected)")


class PremiseFlagsOut(BaseModel):
    premise_id: str
    vacant: bool
    vacant_since: datetime | None
    has_generation: bool


class MoveCheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    move_out: datetime
    move_in: datetime


class FindingOut(BaseModel):
    rule: str
    meter_id: int | None
    summary: str
    evidence: dict[str, Any]


class MoveCheckOut(BaseModel):
    mismatch: FindingOut | None = Field(description="null when the registers agree within tolerance")


def _case(case: revenue.CaseRow) -> dict[str, Any]:
    return {
        "id": case.id, "meter_id": case.meter_id, "transformer_id": case.transformer_id, "state": case.state,
        "reason": case.reason, "summary": case.summary, "assignee": case.assignee, "opened_by": case.opened_by,
        "opened_at": case.opened_at, "updated_at": case.updated_at, "closed_at": case.closed_at,
    }  # fmt: skip


def _detail(detail: revenue.CaseDetail) -> CaseDetailOut:
    history = [
        HistoryOut(at=h.at, actor=h.actor, kind=h.kind, from_state=h.from_state, to_state=h.to_state, text=h.text)
        for h in detail.history
    ]
    return CaseDetailOut(**_case(detail.case), history=history)


def _epoch(value: int) -> datetime:
    return datetime.fromtimestamp(value, UTC)


@router.get("/cases", response_model=list[CaseOut], summary="List investigation cases")
def list_cases(  # noqa: PLR0913 - one query parameter per filter
    platform: PlatformDep,
    scope: Scope,
    *,
    state: CaseState | None = None,
    meter_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    transformer_id: Annotated[str | None, Query(max_length=32)] = None,
    assignee: Annotated[str | None, Query(max_length=128)] = None,
    reason: Annotated[str | None, Query(max_length=40)] = None,
    after_id: Annotated[int | None, Query(ge=0, description="the last id of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=revenue.MAX_LIST)] = 100,
) -> list[CaseOut]:
    """Cases by id, filtered by state, meter, transformer, assignee or reason (keyset paging)."""
    cases = revenue.list_cases(
        platform, scope, state=state, meter_id=meter_id, transformer_id=transformer_id, assignee=assignee,
        reason=reason, after_id=after_id, limit=limit,
    )  # fmt: skip
    return [CaseOut(**_case(c)) for c in cases]


@router.post("/cases", status_code=201, response_model=CaseDetailOut, summary="Open a case by hand")
def open_case(platform: PlatformDep, scope: Scope, body: CaseOpenIn) -> CaseDetailOut:
    """Open a case for a meter or a transformer; 409 when one is already open for it."""
    return _detail(
        revenue.open_case(
            platform, scope, meter_id=body.meter_id, transformer_id=body.transformer_id, summary=body.summary
        )
    )


@router.post("/cases/scan", response_model=ScanOut, summary="Run the anomaly rules and energy balances now")
def scan(platform: PlatformDep, scope: Scope, body: ScanIn | None = None) -> ScanOut:
    """Evaluate every rule (and the balance of every transformer with a check meter) over the named meters or all."""
    summary = revenue.scan(platform, scope, meter_ids=None if body is None else body.meter_ids)
    return ScanOut(
        meters=summary.meters, transformers=summary.transformers, findings=summary.findings,
        new_watch=summary.new_watch, cleared_watch=summary.cleared_watch, cases_opened=summary.cases_opened,
        flagged_transformers=[b.transformer_id for b in summary.balances if b.flagged],
    )  # fmt: skip


@router.get("/cases/{case_id}", response_model=CaseDetailOut, summary="A case with its history")
def get_case(platform: PlatformDep, scope: Scope, case_id: CaseId) -> CaseDetailOut:
    return _detail(revenue.get_case(platform, scope, case_id))


@router.post("/cases/{case_id}/transition", response_model=CaseDetailOut, summary="Move a case to another state")
def move_case(platform: PlatformDep, scope: Scope, case_id: CaseId, body: TransitionIn) -> CaseDetailOut:
    """open → investigating → confirmed-theft | no-fault → closed; anything else is 409."""
    return _detail(revenue.move_case(platform, scope, case_id, body.to_state, note=body.note))


@router.post("/cases/{case_id}/assign", response_model=CaseDetailOut, summary="Assign a case")
def assign_case(platform: PlatformDep, scope: Scope, case_id: CaseId, body: AssignIn) -> CaseDetailOut:
    return _detail(revenue.assign_case(platform, scope, case_id, body.assignee))


@router.post("/cases/{case_id}/notes", response_model=CaseDetailOut, summary="Add a note to a case")
def add_note(platform: PlatformDep, scope: Scope, case_id: CaseId, body: NoteIn) -> CaseDetailOut:
    return _detail(revenue.add_note(platform, scope, case_id, body.text))


@router.get("/watch", response_model=list[WatchOut], summary="Meters to be watched")
def watch_list(
    platform: PlatformDep,
    scope: Scope,
    *,
    rule: Rule | None = None,
    meter_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    transformer_id: Annotated[str | None, Query(max_length=32)] = None,
    include_cleared: bool = False,
    limit: Annotated[int, Query(ge=1, le=revenue.MAX_LIST)] = 500,
) -> list[WatchOut]:
    """What the rules flagged (newest first); an entry is cleared when its rule stops firing."""
    rows = revenue.watch_list(
        platform, scope, rule=rule, meter_id=meter_id, transformer_id=transformer_id,
        include_cleared=include_cleared, limit=limit,
    )  # fmt: skip
    return [
        WatchOut(
            id=w.id,
            meter_id=w.meter_id,
            transformer_id=w.transformer_id,
            rule=w.rule,
            evidence=w.evidence,
            since=w.since,
            last_seen_at=w.last_seen_at,
            cleared_at=w.cleared_at,
            case_id=w.case_id,
        )
        for w in rows
    ]


@router.get(
    "/transformers/{transformer_id}/energy-balance", response_model=BalanceOut, summary="A transformer's energy balance"
)
def energy_balance(
    platform: PlatformDep,
    scope: Scope,
    transformer_id: TransformerId,
    start: Annotated[datetime | None, Query(description="period start (default: the configured days back)")] = None,
    end: Annotated[datetime | None, Query(description="period end (default: now)")] = None,
) -> BalanceOut:
    """The check meter's import against the sum of the transformer's meters, computed now (not stored)."""
    b = revenue.energy_balance(platform, scope, transformer_id, start=start, end=end)
    return BalanceOut(
        transformer_id=b.transformer_id, check_meter_id=b.check_meter_id, period_start=_epoch(b.period_start),
        period_end=_epoch(b.period_end), intervals=b.intervals, meters=b.meters, check_wh=b.check_wh,
        meters_wh=b.meters_wh, loss_wh=b.loss_wh, loss_share=b.loss_share, tolerance=b.tolerance, flagged=b.flagged,
        suspects=[SuspectOut(meter_id=s.meter_id, baseline_wh=s.baseline_wh, period_wh=s.period_wh,
                             drop_share=s.drop_share) for s in b.suspects],
        missing_meters=b.missing_meters,
    )  # fmt: skip


@router.get("/energy-balances", response_model=list[StoredBalanceOut], summary="Balances stored by scans")
def balance_history(
    platform: PlatformDep,
    scope: Scope,
    transformer_id: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=revenue.MAX_LIST)] = 50,
) -> list[StoredBalanceOut]:
    rows = revenue.balance_history(platform, scope, transformer_id, limit=limit)
    return [
        StoredBalanceOut(
            id=r.id,
            transformer_id=r.transformer_id,
            check_meter_id=r.check_meter_id,
            period_start=_epoch(r.period_start),
            period_end=_epoch(r.period_end),
            intervals=r.intervals,
            meters=r.meters,
            check_wh=r.check_wh,
            meters_wh=r.meters_wh,
            loss_wh=r.loss_wh,
            loss_share=r.loss_share,
            tolerance=r.tolerance,
            flagged=r.flagged,
            suspects=r.suspects,
            computed_at=r.computed_at,
        )
        for r in rows
    ]


@router.put(
    "/premises/{premise_id}/flags", response_model=PremiseFlagsOut, summary="Flag a premise vacant or generating"
)
def set_premise_flags(
    platform: PlatformDep, scope: Scope, premise_id: PremiseId, body: PremiseFlagsIn
) -> PremiseFlagsOut:
    """Set ``vacant`` and/or ``has_generation`` (absent: unchanged); the revenue rules read them."""
    flags = revenue.set_premise_flags(
        platform, scope, premise_id, vacant=body.vacant, has_generation=body.has_generation
    )
    return PremiseFlagsOut(
        premise_id=flags.premise_id, vacant=flags.vacant, vacant_since=flags.vacant_since,
        has_generation=flags.has_generation,
    )  # fmt: skip


@router.post(
    "/meters/{meter_id}/move-check", response_model=MoveCheckOut, summary="Compare move-out and move-in registers"
)
def move_check(platform: PlatformDep, scope: Scope, meter_id: MeterId, body: MoveCheckIn) -> MoveCheckOut:
    """The registers nearest to the given move-out and move-in; a mismatch goes on the watch list."""
    finding = revenue.check_move(platform, scope, meter_id, body.move_out, body.move_in)
    if finding is None:
        return MoveCheckOut(mismatch=None)
    return MoveCheckOut(
        mismatch=FindingOut(
            rule=finding.rule, meter_id=finding.meter_id, summary=finding.summary, evidence=finding.evidence
        )
    )
