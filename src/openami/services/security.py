"""Audit log, security events and alerts for the API and CLI: policy-checked, one unit of work per call.

Reading the audit log or the security events is itself audited (``audit.read``,
``security.events.read``): who looked, with which filters. Denials are audited by ``authorize``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Engine

from openami.errors import InvalidInput
from openami.security import audit, events
from openami.security.audit import AuditEntry, AuditRecord, VerifyResult
from openami.security.audit_keys import AuditSigner, audit_signer
from openami.security.events import Alert, BurstRule, SecurityEvent
from openami.security.policy import RequestScope, authorize
from openami.settings import Settings

__all__ = [
    "Alert",
    "AuditRecord",
    "SecurityEvent",
    "VerifyResult",
    "acknowledge_alert",
    "audit_entries",
    "checkpoint",
    "close_alert",
    "configure",
    "security_alerts",
    "security_events",
    "verify_chain",
]

READ_AUDIT = "audit.read"
READ_EVENTS = "security.events.read"
MANAGE_ALERTS = "security.alerts.manage"
MAX_PAGE = 1000


def configure(settings: Settings) -> AuditSigner:
    """Process-wide: the audit signer and checkpoint interval, and the burst thresholds; returns the signer.

    Call once where the program starts (platform, CLI). Raises AuditKeyError for an unusable key.
    """
    signer = audit_signer(settings)
    audit.configure(signer=signer, checkpoint_every=settings.audit.checkpoint_every)
    events.configure({kind: BurstRule(r.count, r.window_s, r.per) for kind, r in settings.audit.bursts.items()})
    return signer


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _range(since: datetime | None, until: datetime | None) -> None:
    for value, name in ((since, "since"), (until, "until")):
        if value is not None and value.utcoffset() is None:
            raise InvalidInput(f"'{name}' must carry a time zone (e.g. 2026-11-01T00:00:00Z)")
    if since is not None and until is not None and until < since:
        raise InvalidInput("'until' is before 'since'")


def _limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")


def _filters(**values: object) -> dict[str, str | int | float | bool | None]:
    """The filters a reader used, for the audit entry of the read (long strings cut)."""
    return {k: (v[:128] if isinstance(v, str) else v) for k, v in values.items() if isinstance(v, str | int)}


def audit_entries(  # noqa: PLR0913 - one keyword per filter of GET /v1/audit and `openami audit show`
    engine: Engine,
    scope: RequestScope,
    *,
    actor: str | None = None,
    action: str | None = None,
    outcome: Literal["ok", "denied", "failed"] | None = None,
    meter_id: int | None = None,
    subject: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_seq: int | None = None,
    limit: int = 100,
    now: datetime | None = None,
) -> list[AuditRecord]:
    """Audit entries matching every filter, newest first (page with ``before_seq``); the read is audited."""
    moment = _now(now)
    with engine.connect() as conn:
        authorize(conn, scope, READ_AUDIT, now=moment)
    _range(since, until)
    _limit(limit)
    resource = None if meter_id is None else f"meter:{meter_id}"
    with engine.begin() as conn:
        records = audit.query(
            conn, actor=actor, action=action, outcome=outcome, resource=resource, subject=subject,
            since=since, until=until, before_seq=before_seq, limit=limit,
        )  # fmt: skip
        used = _filters(actor=actor, action=action, outcome=outcome, meter_id=meter_id, subject=subject)
        audit.record(
            conn,
            AuditEntry(scope.principal, READ_AUDIT, "ok", details={**used, "returned": len(records)}),
            now=moment,
        )
    return records


def verify_chain(
    engine: Engine,
    scope: RequestScope,
    *,
    public_key: ec.EllipticCurvePublicKey,
    from_seq: int | None = None,
    now: datetime | None = None,
) -> VerifyResult:
    """Verify the audit chain and its checkpoints (read-only); the verification is audited with its outcome."""
    moment = _now(now)
    with engine.connect() as conn:
        authorize(conn, scope, READ_AUDIT, now=moment)
        result = audit.verify(conn, public_key=public_key, from_seq=from_seq)
    with engine.begin() as conn:
        details: dict[str, str | int | float | bool | None] = {"entries": result.entries}
        if not result.ok:
            details |= {"first_bad_seq": result.first_bad_seq, "problem": (result.problem or "")[:500]}
        outcome = "ok" if result.ok else "failed"
        audit.record(conn, AuditEntry(scope.principal, "audit.verify", outcome, details=details), now=moment)
    return result


def checkpoint(
    engine: Engine, scope: RequestScope, signer: AuditSigner, *, now: datetime | None = None
) -> audit.Checkpoint | None:
    """Sign the chain's head now (on demand); None for an empty chain."""
    moment = _now(now)
    with engine.connect() as conn:
        authorize(conn, scope, READ_AUDIT, now=moment)
    with engine.begin() as conn:
        audit.record(conn, AuditEntry(scope.principal, "audit.checkpoint", "ok"), now=moment)
        return audit.checkpoint(conn, signer, now=moment)


def security_events(  # noqa: PLR0913 - one keyword per filter of GET /v1/security/events
    engine: Engine,
    scope: RequestScope,
    *,
    kind: str | None = None,
    meter_id: int | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
    now: datetime | None = None,
) -> list[SecurityEvent]:
    """Security events, newest first (page with ``before_id``); the read is audited."""
    moment = _now(now)
    with engine.connect() as conn:
        authorize(conn, scope, READ_EVENTS, now=moment)
    _range(since, until)
    _limit(limit)
    with engine.begin() as conn:
        found = events.list_events(
            conn, kind=kind, meter_id=meter_id, actor=actor, since=since, until=until, before_id=before_id, limit=limit
        )
        used = _filters(kind=kind, meter_id=meter_id, actor=actor)
        entry = AuditEntry(scope.principal, READ_EVENTS, "ok", details={**used, "returned": len(found)})
        audit.record(conn, entry, now=moment)
    return found


def security_alerts(
    engine: Engine,
    scope: RequestScope,
    *,
    state: str | None = None,
    kind: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
    now: datetime | None = None,
) -> list[Alert]:
    """Alerts, newest first (page with ``before_id``)."""
    with engine.connect() as conn:
        authorize(conn, scope, READ_EVENTS, now=_now(now))
        _limit(limit)
        if state is not None and state not in events.ALERT_STATES:
            raise InvalidInput(f"state must be one of {', '.join(events.ALERT_STATES)}")
        return events.list_alerts(conn, state=state, kind=kind, before_id=before_id, limit=limit)


def acknowledge_alert(engine: Engine, scope: RequestScope, alert_id: int, *, now: datetime | None = None) -> Alert:
    """open → acknowledged by the caller (audited); NotFound, or Conflict unless the alert is open."""
    moment = _now(now)
    with engine.connect() as conn:
        authorize(conn, scope, MANAGE_ALERTS, now=moment)
    with engine.begin() as conn:
        return events.acknowledge_alert(conn, alert_id, actor=scope.principal, now=moment)


def close_alert(engine: Engine, scope: RequestScope, alert_id: int, *, now: datetime | None = None) -> Alert:
    """open or acknowledged → closed by the caller (audited); NotFound, or Conflict if already closed."""
    moment = _now(now)
    with engine.connect() as conn:
        authorize(conn, scope, MANAGE_ALERTS, now=moment)
    with engine.begin() as conn:
        return events.close_alert(conn, alert_id, actor=scope.principal, now=moment)
