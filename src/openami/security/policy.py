"""Authorization policy: roles, the closed list of actions, and the one decision point ``authorize``.

Who may do what is data (``POLICY``): for every action, the roles granted it and the conditions
attached to each grant. ``docs/security.md`` shows the same table, and a test parses that table and
compares it with ``POLICY`` cell by cell, so the two cannot drift.

Conditions come in three kinds:

- row conditions (``AREA``, ``PREMISES``, ``GAS``) restrict WHICH meters a grant reaches; services
  apply them inside their queries through ``visible_meters`` (never by filtering results after);
- request conditions (``SAFETY``) depend on the declared purpose;
- resource conditions (``MIN_GROUP``) depend on the resource, e.g. how many meters an aggregate sums.

Default deny: an unknown action, a role without a grant, an unmet condition or a token scope that
does not include the action all refuse, and every refusal is audited in its own transaction (it must
be recorded although the request fails).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from openami.db import tables as t
from openami.errors import PermissionDenied
from openami.security import audit, events

__all__ = [
    "ACTIONS",
    "ALL_SCOPES",
    "POLICY",
    "PURPOSES",
    "ActionRule",
    "Condition",
    "RequestScope",
    "Resource",
    "Role",
    "authorize",
    "decide",
    "visible_meters",
]

ALL_SCOPES = "*"
"""A token scope that does not narrow what the owner's roles allow."""


class Role(enum.StrEnum):
    """Roles from the seeds (ENA control points: DNO, supplier, gas network, third party; NIST actors)."""

    SECURITY_ADMIN = "security_admin"
    AMI_OPERATOR = "ami_operator"
    BILLING_CIS = "billing_cis"
    FIELD_TECHNICIAN = "field_technician"
    NETWORK_OPERATOR = "network_operator"  # a distribution area; aggregates unless consent or safety
    GAS_NETWORK_OPERATOR = "gas_network_operator"  # gas meters (and valves) only
    THIRD_PARTY = "third_party"  # consent-scoped: nothing until consent exists
    CUSTOMER = "customer"  # own premises only
    AUDITOR = "auditor"  # read-only audit


class Condition(enum.StrEnum):
    """A restriction attached to one role's grant of one action; its value is the docs table's word."""

    AREA = "own area"  # meters in the role's distribution area (substation)
    PREMISES = "own premises"  # meters at the customer's premises
    GAS = "gas meters"  # gas meters only
    SAFETY = "purpose safety"  # only with the declared purpose "safety" (seed 002: safety overrides privacy)
    MIN_GROUP = "group >= minimum"  # aggregates over at least the configured minimum number of meters


ROW_CONDITIONS = frozenset({Condition.AREA, Condition.PREMISES, Condition.GAS})

PURPOSES = frozenset({"operations", "billing", "safety", "outage", "planning", "investigation", "customer-access"})
"""Purposes a caller may declare; an unknown purpose is refused."""


@dataclass(frozen=True, slots=True)
class ActionRule:
    """One row of the policy table."""

    description: str
    grants: Mapping[Role, frozenset[Condition]]
    row_scoped: bool = False  # True when the services apply row conditions (visible_meters) to this action


def _rule(description: str, *, row_scoped: bool = False, **grants: tuple[Condition, ...]) -> ActionRule:
    return ActionRule(
        description, {Role(role): frozenset(conditions) for role, conditions in grants.items()}, row_scoped
    )


_YES: tuple[Condition, ...] = ()  # an unconditional grant
_AREA, _PREMISES, _GAS, _SAFETY, _GROUP = (
    Condition.AREA, Condition.PREMISES, Condition.GAS, Condition.SAFETY, Condition.MIN_GROUP,
)  # fmt: skip

POLICY: Mapping[str, ActionRule] = {
    "auth.me": _rule(
        "see one's own identity, roles and scopes",
        security_admin=_YES, ami_operator=_YES, billing_cis=_YES, field_technician=_YES, network_operator=_YES,
        gas_network_operator=_YES, third_party=_YES, customer=_YES, auditor=_YES,
    ),
    "meter.list": _rule(
        "list registered meters", row_scoped=True,
        ami_operator=_YES, billing_cis=_YES, field_technician=_YES, network_operator=(_AREA,),
        gas_network_operator=(_AREA, _GAS), customer=(_PREMISES,),
    ),
    "meter.read": _rule(
        "read one meter's registry entry", row_scoped=True,
        ami_operator=_YES, billing_cis=_YES, field_technician=_YES, network_operator=(_AREA,),
        gas_network_operator=(_AREA, _GAS), customer=(_PREMISES,),
    ),
    "readings.read": _rule(
        "read one meter's interval values (personal data)", row_scoped=True,
        ami_operator=_YES, billing_cis=_YES, network_operator=(_AREA, _SAFETY),
        gas_network_operator=(_AREA, _GAS, _SAFETY), customer=(_PREMISES,),
    ),
    "readings.read-aggregate": _rule(
        "read summed interval values of a group of meters (e.g. a transformer's load)", row_scoped=True,
        ami_operator=(_GROUP,), network_operator=(_AREA, _GROUP), gas_network_operator=(_AREA, _GAS, _GROUP),
    ),
    "meter.read-now": _rule(
        "read a meter now over DLMS (a command on the meter)", ami_operator=_YES, field_technician=_YES
    ),
    "collection.read": _rule("see collection runs", ami_operator=_YES, field_technician=_YES),
    "comm-errors.read": _rule("see communication errors", ami_operator=_YES, field_technician=_YES),
    "meters.import": _rule("import meters, keys and topology from a commissioning file", ami_operator=_YES),
    "tokens.manage": _rule("list and revoke API tokens", security_admin=_YES),
    "accounts.manage": _rule("create, list, disable accounts and assign roles", security_admin=_YES),
    "pki.manage": _rule("initialise the CA, issue, revoke and list certificates", security_admin=_YES),
    "keys.rotate": _rule("rotate meter keys (one meter, a group, emergency re-key)", security_admin=_YES),
    "audit.read": _rule("read and verify the audit log", security_admin=_YES, auditor=_YES),
    "security.events.read": _rule("see security events and alerts", security_admin=_YES, auditor=_YES),
    "security.alerts.manage": _rule("acknowledge and close security alerts", security_admin=_YES),
    "switch.disconnect": _rule(
        "open an electricity supply switch (signed by the command authority)",
        ami_operator=_YES, network_operator=(_AREA, _SAFETY),
    ),
    "switch.reconnect": _rule("close (or arm for the customer to close) a supply switch", ami_operator=_YES),
    "switch.limit": _rule(
        "set or cancel a meter's load limit (limited demand / energy)", ami_operator=_YES, network_operator=(_AREA,),
    ),
    "switch.read-state": _rule(
        "query a meter's switch and limiter state over DLMS",
        ami_operator=_YES, billing_cis=_YES, field_technician=_YES,
    ),
    "switch.valve-close": _rule(
        "close a gas valve (no simulated gas valve yet)", ami_operator=_YES, gas_network_operator=(_AREA, _GAS),
    ),
    "commands.read": _rule(
        "see switch and limiter commands and their status", row_scoped=True,
        ami_operator=_YES, billing_cis=_YES, field_technician=_YES, network_operator=(_AREA,),
    ),
    "commands.cancel": _rule("cancel a command that has not been sent", ami_operator=_YES, billing_cis=_YES),
    "commands.approve": _rule(
        "approve a batch of commands as the second person (two-person rule)", security_admin=_YES, ami_operator=_YES,
    ),
    "guard.read": _rule(
        "see the off-switch guard: limits, pending approvals, uncommanded-opening alarms",
        security_admin=_YES, ami_operator=_YES, auditor=_YES,
    ),
    "guard.ignore-disconnects": _rule(
        "broadcast the signed 'ignore disconnects' mode to an area's meters", security_admin=_YES, ami_operator=_YES,
    ),
    "guard.clear": _rule("clear the 'ignore disconnects' mode and an uncommanded-opening alarm", security_admin=_YES),
    "service.move-in": _rule("move-in: read, backfeed check, connect, verify", ami_operator=_YES, billing_cis=_YES),
    "service.move-out": _rule(
        "move-out: disconnect at a set time, verify, final read", ami_operator=_YES, billing_cis=_YES,
    ),
    "collections.disconnect": _rule("disconnect for non-payment (never critical care)", billing_cis=_YES),
    "collections.reinstate": _rule("reconnect after payment", billing_cis=_YES, ami_operator=_YES),
    "load.shed": _rule(
        "emergency load shedding of a set of meters (critical care never shed)", row_scoped=True,
        ami_operator=_YES, network_operator=(_AREA,),
    ),
    "calendar.manage": _rule("set no-disconnect hours, holidays and weather moratoria", ami_operator=_YES),
    "premises.manage": _rule("flag a premise critical-care or vacant", ami_operator=_YES, billing_cis=_YES),
    "prepay.read": _rule(
        "read a prepayment account's balance and ledger (personal data)", row_scoped=True,
        billing_cis=_YES, customer=(_PREMISES,),
    ),
    "prepay.manage": _rule("enrol a meter in prepayment, set its thresholds", billing_cis=_YES),
    "prepay.payment": _rule("record a payment (top-up) on a prepayment account", billing_cis=_YES),
    "prepay.adjust": _rule("post an adjustment to a prepayment account", billing_cis=_YES),
    "tariffs.manage": _rule("define tariffs (prices per kWh and standing charges)", billing_cis=_YES),
    "events.read": _rule(
        "see meter events and alarms (last gasp, tamper, voltage ...)", row_scoped=True,
        security_admin=_YES, ami_operator=_YES, field_technician=_YES, network_operator=(_AREA,),
    ),
    "outages.read": _rule(
        "see outages, their affected meters and restoration", row_scoped=True,
        ami_operator=_YES, field_technician=_YES, network_operator=(_AREA,),
    ),
    "outages.manage": _rule("confirm, annotate or close an outage by hand", ami_operator=_YES),
    "topology.import": _rule("replace the grid topology from a CSV or GeoJSON file", ami_operator=_YES),
    "webhooks.manage": _rule("register and remove systems notified of outages", security_admin=_YES, ami_operator=_YES),
    "cases.read": _rule(
        "see revenue-protection cases and meters to be watched", ami_operator=_YES, billing_cis=_YES,
        field_technician=_YES,
    ),
    "cases.manage": _rule("open, assign, move and close revenue-protection cases", ami_operator=_YES, billing_cis=_YES),
}  # fmt: skip

ACTIONS = frozenset(POLICY)


@dataclass(frozen=True, slots=True)
class RequestScope:
    """Who is asking: produced by authentication, passed to every service function, never changed."""

    principal: str  # the audit actor string: "user:alice", "client:cis", "cli:local-admin"
    roles: frozenset[Role]
    scopes: frozenset[str]  # token scopes narrow what the roles allow; "*" = no narrowing
    area: str | None = None  # network operator's distribution area (substation id)
    premises: frozenset[str] = frozenset()  # customer's own premises


@dataclass(frozen=True, slots=True)
class Resource:
    """What an action is applied to, with the attributes conditions look at."""

    kind: str  # "meter", "transformer", "account", "token", ...
    id: str
    area: str | None = None  # substation the resource belongs to
    premise: str | None = None  # premise the resource belongs to
    meter_kind: str | None = None  # "electric" | "gas" for meters
    group_size: int | None = None  # for aggregates: how many meters are summed
    min_group_size: int | None = None  # for aggregates: the configured minimum

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


def _unmet(
    conditions: frozenset[Condition], scope: RequestScope, resource: Resource | None, purpose: str | None
) -> str | None:
    """Why one grant does not apply, or None when all its conditions hold."""
    if Condition.SAFETY in conditions and purpose != "safety":
        return "only with the purpose 'safety'"
    if Condition.MIN_GROUP in conditions:
        if resource is None or resource.group_size is None or resource.min_group_size is None:
            return "only for a group of meters"
        if resource.group_size < resource.min_group_size:
            return f"a group of {resource.group_size} meters is under the minimum of {resource.min_group_size}"
    return _row_unmet(conditions, scope, resource)


def _row_unmet(conditions: frozenset[Condition], scope: RequestScope, resource: Resource | None) -> str | None:
    """The row conditions: the scope must carry what they need, and a given resource must match."""
    if Condition.AREA in conditions:
        if scope.area is None:
            return "no area is assigned"
        if resource is not None and resource.area != scope.area:
            return "outside the assigned area"
    if Condition.PREMISES in conditions:
        if not scope.premises:
            return "no premises are assigned"
        if resource is not None and resource.premise not in scope.premises:
            return "not one of the own premises"
    gas_only = Condition.GAS in conditions and resource is not None and resource.kind == "meter"
    if gas_only and resource is not None and resource.meter_kind != "gas":
        return "gas meters only"
    return None


def _token_allows(scope: RequestScope, action: str) -> bool:
    return ALL_SCOPES in scope.scopes or action in scope.scopes


def decide(
    scope: RequestScope, action: str, resource: Resource | None = None, purpose: str | None = None
) -> str | None:
    """The decision without side effects: None when allowed, else why not (for people, no secrets)."""
    rule = POLICY.get(action)
    if rule is None:
        return f"'{action}' is not an action of the policy"
    if not _token_allows(scope, action):
        return f"this token lacks the '{action}' scope"
    if purpose is not None and purpose not in PURPOSES:
        return f"'{purpose[:32]}' is not a known purpose"
    reasons: list[str] = []
    for role in sorted(scope.roles):
        conditions = rule.grants.get(role)
        if conditions is None:
            continue
        unmet = _unmet(conditions, scope, resource, purpose)
        if unmet is None:
            return None
        reasons.append(f"{role}: {unmet}")
    return "; ".join(reasons) or f"no role of {scope.principal} may {action}"


def authorize(
    conn: Connection,
    scope: RequestScope,
    action: str,
    resource: Resource | None = None,
    purpose: str | None = None,
    *,
    now: datetime,
) -> None:
    """Default deny: raise PermissionDenied (and audit the denial) unless allowed.

    The denial is written in its own short transaction on ``conn``'s engine, so it is kept although
    the caller's transaction is rolled back; call this before writing anything in ``conn``.
    """
    reason = decide(scope, action, resource, purpose)
    if reason is None:
        return
    _record_denial(conn, scope, action, resource, purpose, reason, now=now)
    raise PermissionDenied(f"{action} refused: {reason}")


def _record_denial(
    conn: Connection,
    scope: RequestScope,
    action: str,
    resource: Resource | None,
    purpose: str | None,
    reason: str,
    *,
    now: datetime,
) -> None:
    details: dict[str, str | int | float | bool | None] = {
        "reason": reason[:500],
        "roles": ",".join(sorted(scope.roles)),
    }
    target = None if resource is None else str(resource)
    with conn.engine.begin() as own:
        entry = audit.AuditEntry(
            actor=scope.principal, action=action, outcome="denied", resource=target, purpose=purpose, details=details
        )
        audit.record(own, entry, now=now)
        events.raise_event(own, "api.denied", now=now, actor=scope.principal, details={"action": action, **details})


def visible_meters(scope: RequestScope, action: str, purpose: str | None = None) -> ColumnElement[bool]:
    """A WHERE clause on ``meters`` selecting the meters ``scope`` may reach with ``action``.

    The union over the scope's roles of each grant's row conditions; ``false`` when nothing is
    granted. Grants whose request conditions (purpose) are unmet contribute nothing.
    """
    rule = POLICY.get(action)
    if rule is None or not _token_allows(scope, action):
        return sa.false()
    clauses: list[ColumnElement[bool]] = []
    for role in sorted(scope.roles):
        conditions = rule.grants.get(role)
        if conditions is None or _unmet(conditions - ROW_CONDITIONS - {Condition.MIN_GROUP}, scope, None, purpose):
            continue
        row = _row_clause(conditions & ROW_CONDITIONS, scope)
        if row is None:
            return sa.true()
        clauses.append(row)
    return sa.or_(*clauses) if clauses else sa.false()


def _row_clause(conditions: frozenset[Condition], scope: RequestScope) -> ColumnElement[bool] | None:
    """The row conditions of one grant as a clause; None when the grant reaches every meter."""
    parts: list[ColumnElement[bool]] = []
    if Condition.AREA in conditions:
        parts.append(_in_area(scope.area) if scope.area is not None else sa.false())
    if Condition.PREMISES in conditions:
        parts.append(_at_premises(scope.premises) if scope.premises else sa.false())
    if Condition.GAS in conditions:
        parts.append(t.meters.c.kind == "gas")
    return sa.and_(*parts) if parts else None


def _in_area(area: str) -> ColumnElement[bool]:
    sp, tr, fd = t.service_points, t.transformers, t.feeders
    points = (
        sa.select(sp.c.id)
        .join(tr, tr.c.id == sp.c.transformer_id)
        .join(fd, fd.c.id == tr.c.feeder_id)
        .where(fd.c.substation_id == area)
    )
    return t.meters.c.service_point_id.in_(points)


def _at_premises(premises: frozenset[str]) -> ColumnElement[bool]:
    sp = t.service_points
    return t.meters.c.service_point_id.in_(sa.select(sp.c.id).where(sp.c.premise_id.in_(sorted(premises))))
