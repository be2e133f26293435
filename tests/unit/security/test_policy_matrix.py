"""The policy in code and the "Roles and actions" table of docs/security.md agree, cell by cell.

The table is parsed from the markdown (not generated from the code), so neither can change without
the other. The decision is then exercised through ``authorize`` on both databases: every granted cell
is allowed when its conditions hold and refused when any one of them does not; every empty cell is
refused; and each refusal is audited.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from openami.errors import PermissionDenied
from openami.security import audit
from openami.security.policy import (
    ACTIONS,
    ALL_SCOPES,
    POLICY,
    Condition,
    RequestScope,
    Resource,
    Role,
    authorize,
    decide,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "security.md"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
NO = "—"

Cell = frozenset[Condition] | None  # None: refused; empty: allowed without condition


def _parse_cell(text: str) -> Cell:
    if text == NO:
        return None
    if text == "yes":
        return frozenset()
    return frozenset(Condition(word.strip()) for word in text.split(","))


def _doc_table() -> tuple[list[str], dict[str, dict[str, Cell]]]:
    """(role columns, action -> role -> cell) from the first table under '## Roles and actions'."""
    section = DOC.read_text(encoding="utf-8").split("\n## Roles and actions\n", 1)[1].split("\n## ", 1)[0]
    rows: list[list[str]] = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break  # the table has ended
    header, separator, *body = rows
    assert header[0] == "action"
    assert all(set(cell) <= set("-:") for cell in separator)
    roles = [cell.strip("`") for cell in header[1:]]
    table: dict[str, dict[str, Cell]] = {}
    for cells in body:
        action = cells[0].strip("`")
        assert action not in table, f"{action} appears twice in the docs table"
        assert len(cells) == len(header), f"row {action} has {len(cells)} cells, the header {len(header)}"
        table[action] = {role: _parse_cell(cell) for role, cell in zip(roles, cells[1:], strict=True)}
    return roles, table


ROLES, TABLE = _doc_table()


def _scope(role: Role, scopes: frozenset[str] = frozenset({ALL_SCOPES})) -> RequestScope:
    return RequestScope(f"user:test-{role}", frozenset({role}), scopes, area="SS01", premises=frozenset({"P1"}))


def _resource(conditions: frozenset[Condition]) -> Resource:
    """A resource that satisfies every condition of a grant (for the scopes of ``_scope``)."""
    kind = "transformer" if Condition.MIN_GROUP in conditions else "meter"
    return Resource(kind, "1", area="SS01", premise="P1", meter_kind="gas", group_size=5, min_group_size=5)


def _violations(conditions: frozenset[Condition]) -> dict[Condition, tuple[Resource, str | None]]:
    """For each condition, a (resource, purpose) that breaks it and it alone."""
    ok = _resource(conditions)
    broken = {
        Condition.AREA: (Resource(ok.kind, "1", area="SS02", premise="P1", meter_kind="gas", group_size=5,
                                  min_group_size=5), "safety"),
        Condition.PREMISES: (Resource(ok.kind, "1", area="SS01", premise="P2", meter_kind="gas"), "safety"),
        Condition.GAS: (Resource("meter", "1", area="SS01", premise="P1", meter_kind="electric"), "safety"),
        Condition.SAFETY: (ok, "operations"),
        Condition.MIN_GROUP: (Resource("transformer", "1", area="SS01", group_size=4, min_group_size=5), "safety"),
    }  # fmt: skip
    # on an aggregate, "gas meters" restricts which meters are summed: the query applies it, not the resource
    return {c: broken[c] for c in conditions if not (c is Condition.GAS and Condition.MIN_GROUP in conditions)}


def test_docs_table_has_a_column_per_role_and_a_row_per_action() -> None:
    assert sorted(ROLES) == sorted(str(r) for r in Role)
    assert len(ROLES) == len(set(ROLES))
    assert set(TABLE) == set(ACTIONS), f"only in docs: {set(TABLE) - ACTIONS}; only in code: {ACTIONS - set(TABLE)}"


@pytest.mark.parametrize("action", sorted(POLICY))
def test_code_grants_match_the_docs_table(action: str) -> None:
    for role in Role:
        assert POLICY[action].grants.get(role) == TABLE[action][str(role)], f"{action} x {role}"


@pytest.mark.parametrize("action", sorted(TABLE))
def test_docs_table_cells_match_the_code(action: str) -> None:
    for role_name, cell in TABLE[action].items():
        assert cell == POLICY[action].grants.get(Role(role_name)), f"{action} x {role_name}"


def test_third_party_may_do_nothing_but_see_itself_until_consent_exists() -> None:
    assert [a for a in ACTIONS if Role.THIRD_PARTY in POLICY[a].grants] == ["auth.me"]


def test_row_conditions_only_on_actions_whose_services_scope_their_queries() -> None:
    """An area/premises/gas condition on an action whose service does not apply ``visible_meters``
    would be enforced nowhere: refuse such a table."""
    row_conditions = {Condition.AREA, Condition.PREMISES, Condition.GAS}
    for action, rule in POLICY.items():
        if not rule.row_scoped and not action.startswith("switch."):
            assert all(not (c & row_conditions) for c in rule.grants.values()), action


def test_unknown_action_unknown_purpose_and_narrow_token_are_refused() -> None:
    operator = _scope(Role.AMI_OPERATOR)
    assert decide(operator, "meter.list") is None
    assert decide(operator, "meter.delete") is not None
    assert decide(operator, "readings.read", purpose="curiosity") is not None
    narrow = _scope(Role.AMI_OPERATOR, frozenset({"collection.read"}))
    assert decide(narrow, "collection.read") is None
    assert "meter.list" in (decide(narrow, "meter.list") or "")
    nobody = RequestScope("user:nobody", frozenset(), frozenset({ALL_SCOPES}))
    assert all(decide(nobody, action) is not None for action in ACTIONS)


@pytest.mark.parametrize("role", list(Role))
def test_authorize_follows_the_docs_table(engine: Engine, role: Role) -> None:
    """Allowed cells pass when their conditions hold and fail when any one does not; empty cells fail;
    every refusal is audited although the caller's transaction is rolled back."""
    scope = _scope(role)
    expected_denials = 0
    for action, cells in TABLE.items():
        cell = cells[str(role)]
        with engine.connect() as conn:
            if cell is None:
                with pytest.raises(PermissionDenied):
                    authorize(conn, scope, action, _resource(frozenset()), "safety", now=NOW)
                expected_denials += 1
                continue
            authorize(conn, scope, action, _resource(cell), "safety", now=NOW)
            for condition, (resource, purpose) in _violations(cell).items():
                with pytest.raises(PermissionDenied, match=action):
                    authorize(conn, scope, action, resource, purpose, now=NOW)
                expected_denials += 1
                assert decide(scope, action, resource, purpose), condition
            conn.rollback()
    with engine.connect() as conn:
        entries = audit.query(conn, actor=scope.principal, outcome="denied", limit=10_000)
    denied = [e for e in entries if e.action in ACTIONS]
    assert len(denied) == expected_denials
    assert all(entry.details["reason"] for entry in denied)
    events = [e for e in entries if e.action == "security.event"]
    assert len(events) == expected_denials
    assert {e.details["kind"] for e in events} <= {"api.denied"}
