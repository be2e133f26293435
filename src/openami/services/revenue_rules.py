"""Revenue protection's detection: the transformer energy balance and the anomaly rules (docs/revenue-protection.md).

Everything here only reads stored data and returns findings; ``services.revenue_engine`` writes them
(watch entries, balance rows, cases). Times are epoch seconds, UTC; energies Wh. A window
``(start, end]`` holds the intervals whose end lies in it, so a day is 96 quarter-hour intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection

from openami.db import revenue as repo
from openami.domain.codes import ChannelCode
from openami.errors import InvalidInput, NotFound
from openami.settings import RevenueSettings

__all__ = [
    "INTERVAL_S",
    "RULES",
    "Balance",
    "Finding",
    "Suspect",
    "balance_period",
    "check_move",
    "compute_balance",
    "evaluate_rules",
]

INTERVAL_S = 900  # the load profile's capture period: the platform stores quarter-hour energies
DAY_S = 86_400
DISCONNECTED = "consumption-while-disconnected"
VACANT = "consumption-while-vacant"
REGISTER_MISMATCH = "register-mismatch"
REVERSE_FLOW = "reverse-flow"
SUSTAINED_DROP = "sustained-drop"
ENERGY_BALANCE = "energy-balance"
RULES = (DISCONNECTED, VACANT, REGISTER_MISMATCH, REVERSE_FLOW, SUSTAINED_DROP)
"""The per-meter anomaly rules a scan runs (the energy balance is per transformer)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule firing for one meter (or a transformer): what the watch list shows as evidence."""

    rule: str
    meter_id: int | None
    transformer_id: str | None
    evidence: dict[str, Any]
    summary: str


@dataclass(frozen=True, slots=True)
class Suspect:
    meter_id: int
    baseline_wh: float  # mean energy per interval before the period
    period_wh: float  # mean energy per interval in the period
    drop_share: float  # 1 - period / baseline


@dataclass(frozen=True, slots=True)
class Balance:
    """A transformer's check-meter energy against the sum of its meters over the intervals all of them have."""

    transformer_id: str
    check_meter_id: int
    period_start: int
    period_end: int
    intervals: int  # quarter-hours where the check meter and every meter had a stored value
    meters: int
    check_wh: float
    meters_wh: float
    loss_wh: float
    loss_share: float | None  # loss / check energy; None when the check meter saw nothing
    tolerance: float
    flagged: bool
    suspects: list[Suspect] = field(default_factory=list)
    missing_meters: list[int] = field(default_factory=list)  # meters with no value at all in the period


def _floor(epoch: float) -> int:
    return int(epoch) - int(epoch) % INTERVAL_S


def balance_period(now: datetime, days: float) -> tuple[int, int]:
    """``(start, end]`` of the last ``days`` of complete quarter-hours before ``now``."""
    end = _floor(now.timestamp())
    return end - int(days * DAY_S), end


# --- energy balance -------------------------------------------------------------------------------


def compute_balance(conn: Connection, transformer_id: str, start: int, end: int, settings: RevenueSettings) -> Balance:
    """The balance of ``transformer_id`` over ``(start, end]``; NotFound without a check meter.

    Only the quarter-hours for which the check meter AND every meter on the transformer have a stored
    value (actual or estimated) are compared: a meter not read yet must not look like a loss.
    """
    if end <= start:
        raise InvalidInput("the balance period must end after it starts")
    check = repo.check_meters(conn, [transformer_id]).get(transformer_id)
    if check is None:
        raise NotFound(f"transformer {transformer_id[:32]!r} has no check meter")
    meters = repo.meters_on_transformer(conn, transformer_id)
    totals = repo.interval_totals(conn, [check, *meters], start + 1, end, ChannelCode.ACTIVE_IMPORT)
    check_values = totals.get(check, {})
    complete = [e for e in check_values if all(e in totals.get(m, {}) for m in meters)]
    check_wh = sum(check_values[e] for e in complete)
    meters_wh = sum(totals[m][e] for m in meters for e in complete)
    loss = check_wh - meters_wh
    share = loss / check_wh if check_wh > 0 else None
    flagged = share is not None and check_wh >= settings.balance_min_wh and share > settings.balance_tolerance
    suspects = _suspects(conn, meters, start, end, settings) if flagged else []
    missing = [m for m in meters if not totals.get(m)]
    return Balance(
        transformer_id, check, start, end, len(complete), len(meters), check_wh, meters_wh, loss, share,
        settings.balance_tolerance, flagged, suspects, missing,
    )  # fmt: skip


def _suspects(
    conn: Connection, meters: Sequence[int], start: int, end: int, settings: RevenueSettings
) -> list[Suspect]:
    """The meters whose consumption fell most against the baseline before the period (most likely bypassed)."""
    baseline_start = start - int(settings.balance_baseline_days * DAY_S)
    before = repo.energy_by_meter(conn, meters, baseline_start + 1, start, ChannelCode.ACTIVE_IMPORT)
    during = repo.energy_by_meter(conn, meters, start + 1, end, ChannelCode.ACTIVE_IMPORT)
    found: list[Suspect] = []
    for meter_id in meters:
        (b_sum, b_n), (p_sum, p_n) = before.get(meter_id, (0.0, 0)), during.get(meter_id, (0.0, 0))
        if not b_n or not p_n or b_sum <= 0:
            continue
        baseline, period = b_sum / b_n, p_sum / p_n
        drop = 1.0 - period / baseline
        if drop >= settings.suspect_drop_share:
            found.append(Suspect(meter_id, baseline, period, drop))
    found.sort(key=lambda s: s.baseline_wh - s.period_wh, reverse=True)  # the biggest missing energy first
    return found[: settings.max_suspects]


# --- anomaly rules --------------------------------------------------------------------------------


def evaluate_rules(
    conn: Connection, meter_ids: Sequence[int], settings: RevenueSettings, now: datetime, rules: Sequence[str] = RULES
) -> list[Finding]:
    """Run the named rules over the meters; every finding, in rule order."""
    unknown = [r for r in rules if r not in _RULE_FUNCTIONS]
    if unknown:
        raise InvalidInput(f"unknown rules: {', '.join(sorted(unknown))[:200]}")
    end = _floor(now.timestamp())
    findings: list[Finding] = []
    for rule in rules:
        findings.extend(_RULE_FUNCTIONS[rule](conn, meter_ids, settings, end))
    return findings


def _import_after(
    conn: Connection, meter_ids: Sequence[int], since: dict[int, int], end: int
) -> dict[int, tuple[float, int]]:
    """Import of each meter after its own moment (the interval it happened in is left out: it may hold energy
    from before), up to ``end``."""
    found: dict[int, tuple[float, int]] = {}
    for meter_id in meter_ids:
        first = _floor(since[meter_id]) + 2 * INTERVAL_S
        if first <= end:
            found.update(repo.energy_by_meter(conn, [meter_id], first, end, ChannelCode.ACTIVE_IMPORT))
    return found


def _disconnected(conn: Connection, meter_ids: Sequence[int], settings: RevenueSettings, end: int) -> list[Finding]:
    """Import recorded after a confirmed disconnect that no later reconnect undid."""
    commands = repo.last_switch_commands(conn, meter_ids, per_meter=1)
    off = {m: c[0] for m, c in commands.items() if c and c[0].command == "disconnect"}
    since = {m: int(c.confirmed_at.timestamp()) for m, c in off.items()}
    found = []
    for meter_id, (wh, n) in _import_after(conn, list(off), since, end).items():
        if wh > settings.idle_import_wh:
            evidence = {"command_id": off[meter_id].id, "disconnected_at": off[meter_id].confirmed_at.isoformat(),
                        "import_wh": round(wh, 3), "intervals": n}  # fmt: skip
            found.append(Finding(DISCONNECTED, meter_id, None, evidence, f"{wh:.0f} Wh imported while disconnected"))
    return found


def _vacant(conn: Connection, meter_ids: Sequence[int], settings: RevenueSettings, end: int) -> list[Finding]:
    """Import recorded at a premise flagged vacant, after it was flagged."""
    premises = repo.premises_of(conn, meter_ids)
    flags = repo.premise_flags(conn, sorted(set(premises.values())))
    vacant = {m: flags[p] for m, p in premises.items() if p in flags and flags[p].vacant}
    since = {m: int((f.vacant_since or f.updated_at).timestamp()) for m, f in vacant.items()}
    found = []
    for meter_id, (wh, n) in _import_after(conn, list(vacant), since, end).items():
        if wh > settings.idle_import_wh:
            evidence = {"premise_id": premises[meter_id], "vacant_since": _iso(since[meter_id]),
                        "import_wh": round(wh, 3), "intervals": n}  # fmt: skip
            found.append(Finding(VACANT, meter_id, None, evidence, f"{wh:.0f} Wh imported at a vacant premise"))
    return found


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _register_mismatch(
    conn: Connection, meter_ids: Sequence[int], settings: RevenueSettings, _end: int
) -> list[Finding]:
    """The final register at the last move-out (a confirmed disconnect) against the register at the next
    move-in (the confirmed reconnect after it): a difference means energy went through a switch that was
    open (or the meter was changed or reset)."""
    window = int(settings.register_window_h * 3600)
    found = []
    for meter_id, commands in repo.last_switch_commands(conn, meter_ids, per_meter=2).items():
        if len(commands) < 2 or commands[0].command == "disconnect" or commands[1].command != "disconnect":
            continue
        move_in, move_out = commands
        out_at, in_at = int(move_out.confirmed_at.timestamp()), int(move_in.confirmed_at.timestamp())
        out_wh = move_out.final_import_wh
        if out_wh is None:
            near = repo.register_near(conn, meter_id, out_at, window)
            out_wh = None if near is None else near[0]
        near_in = repo.register_near(conn, meter_id, in_at, window)
        if out_wh is None or near_in is None:
            continue  # no register on one side: nothing to compare
        refs = {"move_out_command": move_out.id, "move_in_command": move_in.id, "workflow": move_out.workflow}
        finding = _mismatch(meter_id, out_wh, near_in[0], settings, **refs)
        if finding is not None:
            found.append(finding)
    return found


def _mismatch(meter_id: int, out_wh: float, in_wh: float, settings: RevenueSettings, **refs: Any) -> Finding | None:
    difference = in_wh - out_wh
    if abs(difference) <= settings.register_tolerance_wh:
        return None
    evidence = {"move_out_register_wh": round(out_wh, 3), "move_in_register_wh": round(in_wh, 3),
                "difference_wh": round(difference, 3), **refs}  # fmt: skip
    what = "advanced" if difference > 0 else "went back"
    return Finding(
        REGISTER_MISMATCH,
        meter_id,
        None,
        evidence,
        f"register {what} {abs(difference):.0f} Wh between move-out and move-in",
    )


def check_move(
    conn: Connection, meter_id: int, move_out: datetime, move_in: datetime, settings: RevenueSettings
) -> Finding | None:
    """The register-mismatch rule for given move-out and move-in times (registers nearest to each).

    InvalidInput when the times are in the wrong order or no register snapshot is near one of them.
    """
    if move_in <= move_out:
        raise InvalidInput("the move-in must come after the move-out")
    window = int(settings.register_window_h * 3600)
    registers = []
    for label, moment in (("move-out", move_out), ("move-in", move_in)):
        near = repo.register_near(conn, meter_id, int(moment.timestamp()), window)
        if near is None:
            raise InvalidInput(
                f"meter {meter_id} has no import register within {settings.register_window_h:g} h of the {label}"
            )
        registers.append(near)
    (out_wh, out_at), (in_wh, in_at) = registers
    return _mismatch(
        meter_id, out_wh, in_wh, settings, move_out_captured_at=_iso(out_at), move_in_captured_at=_iso(in_at)
    )


def _reverse_flow(conn: Connection, meter_ids: Sequence[int], settings: RevenueSettings, end: int) -> list[Finding]:
    """Exported energy from a premise with no registered generation (a reversed or tampered connection)."""
    premises = repo.premises_of(conn, meter_ids)
    flags = repo.premise_flags(conn, sorted(set(premises.values())))
    candidates = [m for m, p in premises.items() if not (p in flags and flags[p].has_generation)]
    start = end - int(settings.reverse_days * DAY_S)
    found = []
    for meter_id, (wh, n) in repo.energy_by_meter(conn, candidates, start + 1, end, ChannelCode.ACTIVE_EXPORT).items():
        if wh > settings.reverse_min_wh:
            evidence = {"premise_id": premises[meter_id], "export_wh": round(wh, 3), "intervals": n,
                        "window_start": _iso(start), "window_end": _iso(end)}  # fmt: skip
            found.append(
                Finding(REVERSE_FLOW, meter_id, None, evidence, f"{wh:.0f} Wh exported without registered generation")
            )
    return found


def _sustained_drop(conn: Connection, meter_ids: Sequence[int], settings: RevenueSettings, end: int) -> list[Finding]:
    """The mean import per interval of the recent days below a share of the days before them."""
    middle = end - int(settings.drop_recent_days * DAY_S)
    start = middle - int(settings.drop_baseline_days * DAY_S)
    recent = repo.energy_by_meter(conn, meter_ids, middle + 1, end, ChannelCode.ACTIVE_IMPORT)
    baseline = repo.energy_by_meter(conn, meter_ids, start + 1, middle, ChannelCode.ACTIVE_IMPORT)
    need_recent = settings.min_coverage * (end - middle) / INTERVAL_S
    need_baseline = settings.min_coverage * (middle - start) / INTERVAL_S
    found = []
    for meter_id, (r_sum, r_n) in recent.items():
        b_sum, b_n = baseline.get(meter_id, (0.0, 0))
        if r_n < need_recent or b_n < need_baseline:
            continue  # too little data on one side to call it a drop
        before, now = b_sum / b_n, r_sum / r_n
        if before >= settings.drop_min_baseline_wh and now < settings.drop_below_share * before:
            evidence = {"recent_mean_wh": round(now, 3), "baseline_mean_wh": round(before, 3),
                        "share": round(now / before, 4), "recent_from": _iso(middle),
                        "baseline_from": _iso(start)}  # fmt: skip
            found.append(
                Finding(SUSTAINED_DROP, meter_id, None, evidence, f"consumption at {now / before:.0%} of its baseline")
            )
    return found


_RULE_FUNCTIONS: dict[str, Callable[[Connection, Sequence[int], RevenueSettings, int], list[Finding]]] = {
    DISCONNECTED: _disconnected,
    VACANT: _vacant,
    REGISTER_MISMATCH: _register_mismatch,
    REVERSE_FLOW: _reverse_flow,
    SUSTAINED_DROP: _sustained_drop,
}
