"""Grid topology import: a CSV or GeoJSON file replaces the whole grid, or nothing changes.

File formats (docs/outages.md, "Topology files"):

- **CSV**, one file, a header row and one row per node: ``kind,id,parent_id,phase,name`` plus, for
  service points, ``premise_id``, ``meter`` (the serial number of the meter installed there, may be
  empty) and ``critical_care`` (``true``/``false``, for a premise the file creates or updates).
  ``kind`` is ``substation``, ``feeder``, ``transformer`` or ``service_point``; the parent of a feeder
  is a substation, of a transformer a feeder, of a service point a transformer; a substation has none.
  ``phase`` (A, B, C, ABC) is required for transformers and service points; ``name`` is a
  substation's name and, for a service point whose premise is new, the premise's address.
- **GeoJSON**: a FeatureCollection whose features carry the same fields in ``properties``
  (``kind``, ``id``, ``parent``, ``phase``, ``name``, ``premise_id``, ``meter``, ``critical_care``);
  the geometry is accepted and not stored.

Everything is validated before anything is written, and the file is rejected whole with every
offending row named: unknown kinds, missing or duplicate ids (ids are unique across the file),
dangling parents, parent loops, a parent of the wrong kind, bad phases, service points without a
premise, meters that do not exist or are installed twice, and substations that are still some
account's area but missing from the file. A valid file then replaces the grid in one transaction,
audited as ``topology.import`` (``db.topology.replace_topology``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from openami.db import meters as meter_repo
from openami.db import topology as repo
from openami.domain.meters import Feeder, Phase, Premise, ServicePoint, Substation
from openami.domain.meters import Transformer as GridTransformer
from openami.errors import InvalidInput
from openami.security.audit import AuditEntry, record
from openami.security.policy import RequestScope, Resource, authorize
from openami.services.context import Platform

__all__ = ["ACTION", "ImportSummary", "Node", "TopologyRejected", "import_topology", "parse_csv", "parse_geojson"]

ACTION = "topology.import"
KINDS = ("substation", "feeder", "transformer", "service_point")
PARENT_KIND = {"substation": None, "feeder": "substation", "transformer": "feeder", "service_point": "transformer"}
MAX_BYTES = 64 * 1024 * 1024
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,32}$")
_SHOWN = 200  # problems listed in the message; the count says how many more


class TopologyRejected(InvalidInput):
    """A topology file with problems; ``problems`` names every offending row, nothing was written."""

    code = "topology-rejected"

    def __init__(self, problems: list[str]) -> None:
        shown = "; ".join(problems[:_SHOWN])
        more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        super().__init__(f"topology rejected, nothing changed ({len(problems)} problems): {shown}{more}")
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Node:
    """One row of a topology file; ``where`` names it in error messages ("row 7", "feature 3")."""

    where: str
    kind: str
    id: str
    parent: str
    phase: str = ""
    name: str = ""
    premise_id: str = ""
    meter: str = ""
    critical_care: str = ""


@dataclass(frozen=True, slots=True)
class ImportSummary:
    substations: int
    feeders: int
    transformers: int
    service_points: int
    meters: int  # meters assigned to a service point
    premises_created: int


# -- parsing ---------------------------------------------------------------------------------------------


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def parse_csv(text: str) -> list[Node]:
    """Rows of a topology CSV (header required); TopologyRejected when the header lacks a column."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("kind", "id", "parent_id") if c not in (reader.fieldnames or ())]
    if missing:
        raise TopologyRejected([f"header: missing column(s) {', '.join(missing)}"])
    nodes = []
    for number, row in enumerate(reader, start=2):  # row 1 is the header
        if not any(_text(v) for v in row.values() if not isinstance(v, list)):
            continue  # a blank line
        nodes.append(
            Node(
                f"row {number}", _text(row.get("kind")).lower(), _text(row.get("id")), _text(row.get("parent_id")),
                _text(row.get("phase")).upper(), _text(row.get("name")), _text(row.get("premise_id")),
                _text(row.get("meter")), _text(row.get("critical_care")).lower(),
            )
        )  # fmt: skip
    return nodes


def parse_geojson(text: str) -> list[Node]:
    """Features of a GeoJSON FeatureCollection; TopologyRejected when it is not one."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TopologyRejected([f"not JSON: {exc.msg} at line {exc.lineno}"]) from None
    if not isinstance(document, dict) or document.get("type") != "FeatureCollection":
        raise TopologyRejected(["not a GeoJSON FeatureCollection"])
    features = document.get("features")
    if not isinstance(features, list):
        raise TopologyRejected(["a FeatureCollection needs a 'features' array"])
    nodes = []
    for number, feature in enumerate(features, start=1):
        props = feature.get("properties") if isinstance(feature, dict) else None
        if not isinstance(props, dict):
            nodes.append(Node(f"feature {number}", "", "", ""))  # reported as missing kind and id
            continue
        nodes.append(
            Node(
                f"feature {number}", _text(props.get("kind")).lower(), _text(props.get("id")),
                _text(props.get("parent")), _text(props.get("phase")).upper(), _text(props.get("name")),
                _text(props.get("premise_id")), _text(props.get("meter")), _text(props.get("critical_care")).lower(),
            )
        )  # fmt: skip
    return nodes


def parse(data: bytes | str, fmt: str | None = None) -> list[Node]:
    """CSV or GeoJSON by ``fmt`` ("csv", "geojson"), or guessed: a document starting with ``{`` is GeoJSON."""
    if len(data) > MAX_BYTES:
        raise InvalidInput(f"a topology file is at most {MAX_BYTES // (1024 * 1024)} MiB")
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise TopologyRejected(["the file is not UTF-8 text"]) from None
    chosen = fmt or ("geojson" if text.lstrip().startswith("{") else "csv")
    if chosen not in ("csv", "geojson"):
        raise InvalidInput(f"unknown topology format {fmt!r}: csv or geojson")
    return parse_geojson(text) if chosen == "geojson" else parse_csv(text)


# -- validation (no database) --------------------------------------------------------------------------


def _label(node: Node) -> str:
    return f"{node.where} ({node.kind or '?'} {node.id or '?'})"


def _row_problems(node: Node) -> list[str]:
    problems = []
    if node.kind not in PARENT_KIND:
        problems.append(f"{_label(node)}: unknown kind {node.kind[:32]!r} (one of {', '.join(KINDS)})")
    if not _ID.match(node.id):
        problems.append(f"{_label(node)}: an id is 1-32 letters, digits or . _ : -")
    if node.kind in ("transformer", "service_point") and node.phase not in {p.value for p in Phase}:
        problems.append(f"{_label(node)}: phase {node.phase[:8]!r} is not A, B, C or ABC")
    if node.kind == "service_point" and not _ID.match(node.premise_id):
        problems.append(f"{_label(node)}: a service point needs a premise_id (1-32 letters, digits or . _ : -)")
    if node.critical_care not in ("", "true", "false", "1", "0", "yes", "no"):
        problems.append(f"{_label(node)}: critical_care {node.critical_care[:8]!r} is not true or false")
    return problems


def _duplicates(nodes: list[Node]) -> list[str]:
    first: dict[str, Node] = {}
    problems = []
    for node in nodes:
        if not node.id:
            continue
        seen = first.setdefault(node.id, node)
        if seen is not node:
            problems.append(f"{_label(node)}: duplicate id, already used by {seen.where}")
    return problems


def _parent_problems(nodes: list[Node], by_id: Mapping[str, Node]) -> list[str]:
    problems = []
    for node in nodes:
        expected = PARENT_KIND.get(node.kind, "?")
        if not node.parent:
            if expected not in (None, "?"):
                problems.append(f"{_label(node)}: a {node.kind} needs a parent {expected}")
            continue
        parent = by_id.get(node.parent)
        if parent is None:
            problems.append(f"{_label(node)}: parent {node.parent[:32]!r} is not in the file (dangling)")
        elif expected is None:
            problems.append(f"{_label(node)}: a substation has no parent, {parent.where} was given")
        elif expected not in ("?", parent.kind):
            problems.append(
                f"{_label(node)}: parent {node.parent} is a {parent.kind or '?'} ({parent.where}), not a {expected}"
            )
    return problems


def _loops(nodes: list[Node], by_id: Mapping[str, Node]) -> list[str]:
    """Every parent cycle, once, naming its rows in order."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    problems = []
    for start in nodes:
        path: list[Node] = []
        node: Node | None = start
        while node is not None and state.get(node.id) is None:
            state[node.id] = 1
            path.append(node)
            node = by_id.get(node.parent) if node.parent else None
        if node is not None and state.get(node.id) == 1:  # came back onto the current path
            cycle = path[path.index(node) :]
            problems.append("loop: " + " -> ".join(f"{n.where} ({n.id})" for n in cycle) + f" -> {node.id}")
        for visited in path:
            state[visited.id] = 2
    return problems


def validate_structure(nodes: list[Node]) -> list[str]:
    """Every problem of the file that needs no database, in file order."""
    problems = [p for node in nodes for p in _row_problems(node)] + _duplicates(nodes)
    by_id: dict[str, Node] = {}
    for node in nodes:
        by_id.setdefault(node.id, node)
    problems += _loops(nodes, by_id)
    problems += _parent_problems(nodes, by_id)
    meters: dict[str, Node] = {}
    for node in nodes:
        if node.kind == "service_point" and node.meter:
            seen = meters.setdefault(node.meter, node)
            if seen is not node:
                problems.append(f"{_label(node)}: meter {node.meter[:32]!r} is already installed at {seen.where}")
    if not nodes:
        problems.append("the file has no rows")
    return problems


# -- the import ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    substations: list[Substation]
    feeders: list[Feeder]
    transformers: list[GridTransformer]
    premises: list[Premise]
    service_points: list[ServicePoint]
    assignments: dict[str, int]
    premises_created: int = 0


def _flag(value: str) -> bool:
    return value in ("true", "1", "yes")


def _plan(conn: Connection, nodes: list[Node]) -> tuple[_Plan, list[str]]:
    """The rows to write and the problems only the database can show (meters, account areas)."""
    of = {kind: [n for n in nodes if n.kind == kind] for kind in KINDS}
    points = of["service_point"]
    serials = sorted({n.meter for n in points if n.meter})
    known = meter_repo.meter_ids_by_serial(conn, serials)
    problems = [
        f"{_label(n)}: meter {n.meter[:32]!r} does not exist" for n in points if n.meter and n.meter not in known
    ]
    kept = {n.id for n in of["substation"]}
    problems += [
        f"substation {area}: {count} account role(s) have it as their area; it must stay in the file"
        for area, count in sorted(repo.account_areas(conn).items())
        if area not in kept
    ]
    existing = repo.existing_premises(conn, sorted({n.premise_id for n in points}))
    premises: dict[str, Premise] = {}
    for n in points:  # new premises get the row's name as address; known ones only change their flag if given
        if n.premise_id not in existing or n.critical_care:
            premises[n.premise_id] = Premise(n.premise_id, n.name, _flag(n.critical_care))
    plan = _Plan(
        substations=[Substation(n.id, n.name or n.id) for n in of["substation"]],
        feeders=[Feeder(n.id, n.parent) for n in of["feeder"]],
        transformers=[GridTransformer(n.id, n.parent, Phase(n.phase)) for n in of["transformer"]],
        premises=[p for p in premises.values() if p.id not in existing],
        service_points=[ServicePoint(n.id, n.premise_id, n.parent, Phase(n.phase)) for n in points],
        assignments={n.id: known[n.meter] for n in points if n.meter in known},
        premises_created=sum(1 for p in premises.values() if p.id not in existing),
    )
    plan.premises += _changed_flags(conn, [p for p in premises.values() if p.id in existing])
    return plan, problems


def _changed_flags(conn: Connection, flagged: list[Premise]) -> list[Premise]:
    """Known premises whose critical-care flag the file sets: keep their address, set the flag."""
    addresses = repo.premise_addresses(conn, [p.id for p in flagged])
    return [Premise(p.id, addresses[p.id], p.critical_care) for p in flagged]


def import_topology(
    platform: Platform,
    scope: RequestScope,
    data: bytes | str,
    *,
    fmt: str | None = None,
    source: str = "upload",
    now: datetime | None = None,
) -> ImportSummary:
    """Replace the grid with the file's (authorised ``topology.import``, audited); TopologyRejected lists
    every problem and nothing is changed. The outage engine, if running, reloads the grid."""
    moment = now or platform.now()
    with platform.engine.begin() as conn:
        authorize(conn, scope, ACTION, Resource("topology", "grid"), purpose="operations", now=moment)
    nodes = parse(data, fmt)
    problems = validate_structure(nodes)
    if problems:
        raise TopologyRejected(problems)
    with platform.engine.begin() as conn:
        plan, problems = _plan(conn, nodes)
        if problems:
            raise TopologyRejected(problems)
        repo.replace_topology(
            conn, substations=plan.substations, feeders=plan.feeders, transformers=plan.transformers,
            premises=plan.premises, service_points=plan.service_points, assignments=plan.assignments,
        )  # fmt: skip
        counts = repo.topology_counts(conn)
        details: dict[str, str | int | float | bool | None] = {
            "source": source[:64], "substations": counts.substations, "feeders": counts.feeders,
            "transformers": counts.transformers, "service_points": counts.service_points, "meters": counts.meters,
        }  # fmt: skip
        record(
            conn,
            AuditEntry(actor=scope.principal, action=ACTION, outcome="ok", resource="topology:grid", details=details),
            now=moment,
        )
    _notify(platform)
    return ImportSummary(
        counts.substations,
        counts.feeders,
        counts.transformers,
        counts.service_points,
        counts.meters,
        plan.premises_created,
    )


def _notify(platform: Platform) -> None:
    """Tell the outage engine (if one runs) that the grid changed."""
    if platform.outages is not None:
        platform.outages.reload_grid()


def summary_lines(summary: ImportSummary) -> Iterable[str]:
    yield f"{summary.substations} substations, {summary.feeders} feeders, {summary.transformers} transformers"
    yield f"{summary.service_points} service points, {summary.meters} meters assigned"
