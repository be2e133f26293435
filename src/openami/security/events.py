"""Security events (meter- and API-side failures), audited, and burst alerts (docs/security.md).

``raise_event`` stores the event and its audit entry in the caller's transaction, then applies the
kind's burst threshold: ``count`` events within ``window_s`` seconds, per meter, per actor or fleet-
wide, open ONE alert; later events of the same burst join it. The audit append happens first and
serialises concurrent events (the chain head is locked until commit), so two racing events can
neither both open an alert nor both miss the threshold.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openami.db.tables import UtcDateTime
from openami.db.tables import security_alerts as alerts_t
from openami.db.tables import security_events as events_t
from openami.errors import Conflict, NotFound
from openami.security.audit import AuditEntry, record
from openami.security.audit_codec import canonical_details, check_text

__all__ = [
    "DEFAULT_BURSTS",
    "KINDS",
    "Alert",
    "BurstRule",
    "SecurityEvent",
    "acknowledge_alert",
    "close_alert",
    "configure",
    "get_alert",
    "list_alerts",
    "list_events",
    "raise_event",
]

Detail = str | int | float | bool | None
KINDS = frozenset(
    {"meter.bad-tag", "meter.hls-failed", "meter.replay", "api.login-failed", "api.denied", "api.lockout",
     "api.bad-certificate", "meter.command-refused", "meter.uncommanded-opening", "push.unknown-source",
     "guard.refused", "guard.same-approver", "guard.uncommanded-openings", "field.backfeed"}
)  # fmt: skip
ALERT_STATES = ("open", "acknowledged", "closed")
_KIND = re.compile(r"[a-z]+(\.[a-z0-9-]+)+")
_DENIALS = frozenset({"api.denied", "api.lockout"})
_EMPTY: Mapping[str, Detail] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class BurstRule:
    """``count`` events of one kind within ``window_s`` seconds, counted per meter, actor or fleet."""

    count: int
    window_s: int
    per: Literal["meter", "actor", "fleet"] = "meter"


DEFAULT_BURSTS: Mapping[str, BurstRule] = MappingProxyType(
    {
        "meter.bad-tag": BurstRule(3, 3600, "meter"),
        "meter.hls-failed": BurstRule(3, 3600, "meter"),
        "meter.replay": BurstRule(1, 3600, "meter"),
        "api.login-failed": BurstRule(5, 300, "actor"),
        "api.denied": BurstRule(10, 300, "actor"),
        "api.lockout": BurstRule(1, 3600, "actor"),
        "api.bad-certificate": BurstRule(5, 300, "fleet"),
        "meter.command-refused": BurstRule(1, 3600, "meter"),  # a forged, replayed or stale signed command
        "meter.uncommanded-opening": BurstRule(3, 600, "fleet"),
        "push.unknown-source": BurstRule(20, 300, "fleet"),  # someone is sending pushes we cannot place
        "guard.refused": BurstRule(5, 600, "actor"),
        "guard.same-approver": BurstRule(1, 3600, "actor"),
        "guard.uncommanded-openings": BurstRule(1, 3600, "fleet"),
        "field.backfeed": BurstRule(1, 3600, "meter"),
    }
)
_rules: dict[str, Mapping[str, BurstRule]] = {"current": DEFAULT_BURSTS}
_rules_lock = threading.Lock()


def configure(rules: Mapping[str, BurstRule]) -> None:
    """Set the process-wide burst thresholds (kinds without a rule never open an alert)."""
    for kind, rule in rules.items():
        if rule.count < 1 or rule.window_s < 1 or rule.per not in {"meter", "actor", "fleet"}:
            raise ValueError(f"invalid burst rule for {kind!r}: {rule}")
    with _rules_lock:
        _rules["current"] = MappingProxyType(dict(rules))


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    id: int
    kind: str
    occurred_at: datetime
    meter_id: int | None
    actor: str | None
    details: dict[str, Any]
    audit_seq: int
    alert_id: int | None


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    kind: str
    scope: str  # "meter:42", "actor:user:bob", "fleet"
    state: str  # "open", "acknowledged", "closed"
    opened_at: datetime
    last_event_at: datetime
    event_count: int
    threshold: int
    window_s: int
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    closed_by: str | None
    closed_at: datetime | None


def raise_event(
    conn: Connection,
    kind: str,
    *,
    now: datetime,
    meter_id: int | None = None,
    actor: str | None = None,
    details: Mapping[str, Detail] = _EMPTY,
    rules: Mapping[str, BurstRule] | None = None,
) -> int:
    """Store a security event and its audit entry in the caller's transaction; returns the event id.

    ``rules`` overrides the configured burst thresholds (``configure``). Raises ValueError for a
    malformed kind or details that name a secret (nothing is written then).
    """
    if not isinstance(kind, str) or len(kind) > 32 or not _KIND.fullmatch(kind):
        raise ValueError(f"security event kind {kind!r} must be dotted lower-case words (at most 32 characters)")
    check_text(actor, "actor", max_length=128)
    text = canonical_details(details)
    audit_seq = record(
        conn,
        AuditEntry(
            actor=actor or ("system:headend" if kind.startswith("meter.") else "system:security"),
            action="security.event",
            outcome="denied" if kind in _DENIALS else "failed",
            resource=None if meter_id is None else f"meter:{meter_id}",
            details={**details, "kind": kind},
        ),
        now=now,
    )
    event_id = int(
        conn.execute(
            sa.insert(events_t)
            .values(kind=kind, occurred_at=now, meter_id=meter_id, actor=actor, details=text, audit_seq=audit_seq)
            .returning(events_t.c.id)
        ).scalar_one()
    )
    rule = (_rules["current"] if rules is None else rules).get(kind)
    if rule is not None:
        _apply_burst(conn, rule, kind, event_id, meter_id, actor, now)
    return event_id


def _apply_burst(
    conn: Connection, rule: BurstRule, kind: str, event_id: int, meter_id: int | None, actor: str | None, now: datetime
) -> None:
    ev, al = events_t.c, alerts_t.c
    if rule.per == "meter" and meter_id is not None:
        scope, same = f"meter:{meter_id}", ev.meter_id == meter_id
    elif rule.per == "actor" and actor is not None:
        scope, same = f"actor:{actor}", ev.actor == actor
    else:  # fleet-wide, or the event lacks the meter/actor its rule counts by
        scope, same = "fleet", sa.true()
    window_start = now - timedelta(seconds=rule.window_s)
    active = conn.execute(
        sa.select(al.id)
        .where(al.kind == kind, al.scope == scope, al.state != "closed", al.last_event_at >= window_start)
        .order_by(al.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if active is not None:
        later = sa.case((al.last_event_at < sa.literal(now, UtcDateTime()), sa.literal(now, UtcDateTime())),
                        else_=al.last_event_at)  # fmt: skip
        conn.execute(
            sa.update(alerts_t).where(al.id == active).values(event_count=al.event_count + 1, last_event_at=later)
        )
        conn.execute(sa.update(events_t).where(ev.id == event_id).values(alert_id=active))
        return
    in_burst = sa.and_(ev.kind == kind, same, ev.alert_id.is_(None), ev.occurred_at >= window_start)
    count = int(conn.execute(sa.select(sa.func.count()).select_from(events_t).where(in_burst)).scalar_one())
    if count < rule.count:
        return
    alert_id = int(
        conn.execute(
            sa.insert(alerts_t)
            .values(kind=kind, scope=scope, state="open", opened_at=now, last_event_at=now, event_count=count,
                    threshold=rule.count, window_s=rule.window_s)
            .returning(al.id)
        ).scalar_one()
    )  # fmt: skip
    conn.execute(sa.update(events_t).where(in_burst).values(alert_id=alert_id))
    record(
        conn,
        AuditEntry(
            actor="system:security",
            action="security.alert.open",
            outcome="ok",
            resource=f"alert:{alert_id}",
            details={"kind": kind, "scope": scope, "events": count, "window_s": rule.window_s},
        ),
        now=now,
    )


def _event(row: sa.Row[Any]) -> SecurityEvent:
    m = row._mapping
    return SecurityEvent(
        id=int(m["id"]),
        kind=m["kind"],
        occurred_at=m["occurred_at"],
        meter_id=m["meter_id"],
        actor=m["actor"],
        details=json.loads(m["details"]),
        audit_seq=int(m["audit_seq"]),
        alert_id=m["alert_id"],
    )


def _alert(row: sa.Row[Any]) -> Alert:
    return Alert(**dict(row._mapping))


def list_events(  # noqa: PLR0913 - one optional keyword per filter the CLI and API offer
    conn: Connection,
    *,
    kind: str | None = None,
    meter_id: int | None = None,
    actor: str | None = None,
    alert_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[SecurityEvent]:
    """Events matching every given filter, newest first; page with ``before_id``."""
    if not 1 <= limit <= 10_000:
        raise ValueError("limit must be between 1 and 10000")
    ev = events_t.c
    stmt = sa.select(events_t)
    for column, value in ((ev.kind, kind), (ev.meter_id, meter_id), (ev.actor, actor), (ev.alert_id, alert_id)):
        if value is not None:
            stmt = stmt.where(column == value)
    if since is not None:
        stmt = stmt.where(ev.occurred_at >= since)
    if until is not None:
        stmt = stmt.where(ev.occurred_at <= until)
    if before_id is not None:
        stmt = stmt.where(ev.id < before_id)
    return [_event(r) for r in conn.execute(stmt.order_by(ev.id.desc()).limit(limit))]


def list_alerts(
    conn: Connection,
    *,
    state: str | None = None,
    kind: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[Alert]:
    """Alerts, newest first; ``state`` one of open, acknowledged, closed."""
    if not 1 <= limit <= 10_000:
        raise ValueError("limit must be between 1 and 10000")
    if state is not None and state not in ALERT_STATES:
        raise ValueError(f"alert state must be one of {', '.join(ALERT_STATES)}")
    al = alerts_t.c
    stmt = sa.select(alerts_t)
    if state is not None:
        stmt = stmt.where(al.state == state)
    if kind is not None:
        stmt = stmt.where(al.kind == kind)
    if before_id is not None:
        stmt = stmt.where(al.id < before_id)
    return [_alert(r) for r in conn.execute(stmt.order_by(al.id.desc()).limit(limit))]


def get_alert(conn: Connection, alert_id: int) -> Alert:
    row = conn.execute(sa.select(alerts_t).where(alerts_t.c.id == alert_id)).one_or_none()
    if row is None:
        raise NotFound(f"no alert {alert_id}")
    return _alert(row)


def acknowledge_alert(conn: Connection, alert_id: int, *, actor: str, now: datetime) -> Alert:
    """open → acknowledged (audited); NotFound for an unknown alert, Conflict unless it is open."""
    return _transition(conn, alert_id, "acknowledged", ("open",), actor=actor, now=now)


def close_alert(conn: Connection, alert_id: int, *, actor: str, now: datetime) -> Alert:
    """open or acknowledged → closed (audited); NotFound for an unknown alert, Conflict if closed."""
    return _transition(conn, alert_id, "closed", ("open", "acknowledged"), actor=actor, now=now)


def _transition(
    conn: Connection, alert_id: int, state: str, origins: tuple[str, ...], *, actor: str, now: datetime
) -> Alert:
    check_text(actor, "actor", max_length=128, required=True)
    al = alerts_t.c
    who = {
        "acknowledged": {"acknowledged_by": actor, "acknowledged_at": now},
        "closed": {"closed_by": actor, "closed_at": now},
    }
    done = conn.execute(
        sa.update(alerts_t).where(al.id == alert_id, al.state.in_(origins)).values(state=state, **who[state])
    ).rowcount
    if done != 1:
        current = get_alert(conn, alert_id)  # NotFound for an unknown id
        raise Conflict(f"alert {alert_id} is {current.state}: it cannot become {state}")
    verb = "acknowledge" if state == "acknowledged" else "close"
    record(
        conn,
        AuditEntry(actor=actor, action=f"security.alert.{verb}", outcome="ok", resource=f"alert:{alert_id}"),
        now=now,
    )
    return get_alert(conn, alert_id)
