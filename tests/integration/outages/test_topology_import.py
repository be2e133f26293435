"""Topology import (CSV and GeoJSON) on both databases: a valid file replaces the grid in one
transaction; a file with loops, dangling parents, duplicate ids or wrong kinds is rejected whole, with
every offending row named, and the current topology is untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db.tables import audit_log, feeders, meters, premises, service_points, substations, transformers
from openami.errors import PermissionDenied
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services.bootstrap import build_platform
from openami.services.context import Platform
from openami.services.meters import import_commissioning
from openami.services.topology import TopologyRejected, import_topology
from openami.settings import Settings
from openami.sim.commissioning import commissioning_document
from openami.sim.fleet import FleetConfig, build_fleet
from openami.sim.topology_export import topology_csv

from .grid import METERS, add_grid_meters, grid_csv

OPERATOR = RequestScope("user:ops", frozenset({Role.AMI_OPERATOR}), frozenset({ALL_SCOPES}))
BILLING = RequestScope("user:bill", frozenset({Role.BILLING_CIS}), frozenset({ALL_SCOPES}))


@pytest.fixture
def platform(engine: Engine, tmp_path: Path) -> Platform:
    return build_platform(Settings(data_dir=tmp_path), engine=engine)


def _snapshot(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    with engine.connect() as conn:
        return {
            table.name: [tuple(r) for r in conn.execute(sa.select(table).order_by(*table.primary_key.columns))]
            for table in (substations, feeders, transformers, service_points)
        } | {
            "meters": [
                tuple(r) for r in conn.execute(sa.select(meters.c.id, meters.c.service_point_id).order_by(meters.c.id))
            ]
        }


def test_a_valid_csv_replaces_the_grid_and_assigns_the_meters(platform: Platform) -> None:
    ids = add_grid_meters(platform.engine)
    summary = import_topology(platform, OPERATOR, grid_csv(), fmt="csv")
    assert (summary.substations, summary.feeders, summary.transformers) == (2, 4, 20)
    assert (summary.service_points, summary.meters, summary.premises_created) == (METERS, METERS, METERS)
    with platform.engine.connect() as conn:
        placed = dict(conn.execute(sa.select(meters.c.id, meters.c.service_point_id)).all())
        critical = conn.execute(sa.select(sa.func.count()).where(premises.c.critical_care)).scalar_one()
        audited = conn.execute(sa.select(audit_log.c.actor).where(audit_log.c.action == "topology.import")).all()
    assert placed[ids[0]] == "SP0001"
    assert placed[ids[-1]] == f"SP{METERS:04d}"
    assert critical == METERS // 25
    assert [tuple(a) for a in audited] == [("user:ops",)]

    # a smaller grid replaces it: SS2 and its devices go, the meters there are on no service point any more
    smaller = "\n".join(line for line in grid_csv().splitlines() if "SS2" not in line)
    summary = import_topology(platform, OPERATOR, smaller)
    assert (summary.substations, summary.feeders, summary.service_points, summary.meters) == (1, 2, 60, 60)
    with platform.engine.connect() as conn:
        placed = dict(conn.execute(sa.select(meters.c.id, meters.c.service_point_id)).all())
        left = conn.execute(sa.select(sa.func.count()).select_from(transformers)).scalar_one()
    assert placed[ids[-1]] is None
    assert placed[ids[0]] == "SP0001"
    assert left == 10


def test_a_valid_geojson_feature_collection_is_imported(platform: Platform) -> None:
    add_grid_meters(platform.engine)
    features = []
    for line in grid_csv().splitlines()[1:]:
        kind, ident, parent, phase, name, premise, meter, critical = line.split(",")
        props = {
            "kind": kind,
            "id": ident,
            "parent": parent or None,
            "phase": phase or None,
            "name": name,
            "premise_id": premise or None,
            "meter": meter or None,
            "critical_care": critical == "true",
        }
        features.append(
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [4.9, 52.3]}, "properties": props}
        )
    document = json.dumps({"type": "FeatureCollection", "features": features})
    summary = import_topology(platform, OPERATOR, document.encode())
    assert (summary.substations, summary.transformers, summary.meters) == (2, 20, METERS)


BAD_ROWS = """kind,id,parent_id,phase,name,premise_id,meter
substation,SS1,,,North,,
feeder,F1,SS1,,,,
feeder,F1,SS1,,,,
transformer,T1,F9,A,,,
transformer,T2,SS1,A,,,
substation_x,Q1,,,,,
transformer,L1,L2,A,,,
feeder,L2,L1,,,,
service_point,SP1,T2,Z,,P1,NO-SUCH-METER
"""


def test_a_bad_csv_is_rejected_whole_with_every_row_named_and_nothing_changes(platform: Platform) -> None:
    add_grid_meters(platform.engine)
    import_topology(platform, OPERATOR, grid_csv())
    before = _snapshot(platform.engine)
    with pytest.raises(TopologyRejected) as caught:
        import_topology(platform, OPERATOR, BAD_ROWS)
    problems = caught.value.problems
    text = " | ".join(problems)
    assert "row 4 (feeder F1): duplicate id, already used by row 3" in text
    assert "row 5 (transformer T1): parent 'F9' is not in the file (dangling)" in text
    assert "row 6 (transformer T2): parent SS1 is a substation (row 2), not a feeder" in text
    assert "row 7 (substation_x Q1): unknown kind 'substation_x'" in text
    assert "loop: row 8 (L1) -> row 9 (L2) -> L1" in text
    assert "row 10 (service_point SP1): phase 'Z' is not A, B, C or ABC" in text
    assert caught.value.code == "topology-rejected"
    assert _snapshot(platform.engine) == before


def test_unknown_meters_are_rejected_after_the_structure_passes(platform: Platform) -> None:
    add_grid_meters(platform.engine)
    import_topology(platform, OPERATOR, grid_csv())
    before = _snapshot(platform.engine)
    bad = grid_csv().replace("OAM00000007", "OAM99999999")
    with pytest.raises(TopologyRejected, match=r"row \d+ \(service_point SP0007\): meter 'OAM99999999' does not exist"):
        import_topology(platform, OPERATOR, bad)
    assert _snapshot(platform.engine) == before


def test_a_geojson_with_a_loop_is_rejected_naming_the_features(platform: Platform) -> None:
    features = [
        {"type": "Feature", "geometry": None, "properties": {"kind": "feeder", "id": "A", "parent": "B"}},
        {"type": "Feature", "geometry": None, "properties": {"kind": "feeder", "id": "B", "parent": "A"}},
    ]
    with pytest.raises(TopologyRejected, match=r"loop: feature 1 \(A\) -> feature 2 \(B\) -> A"):
        import_topology(platform, OPERATOR, json.dumps({"type": "FeatureCollection", "features": features}))


def test_importing_topology_needs_topology_import(platform: Platform) -> None:
    with pytest.raises(PermissionDenied):
        import_topology(platform, BILLING, grid_csv())


def test_the_simulated_fleets_exported_topology_imports_as_it_was_commissioned(platform: Platform) -> None:
    fleet = build_fleet(FleetConfig(meters=40, seed=3, days=1, port=0))
    import_commissioning(platform.engine, platform.keystore, commissioning_document(fleet), now=platform.now())
    before = _snapshot(platform.engine)
    summary = import_topology(platform, OPERATOR, topology_csv(fleet))
    assert summary.meters == summary.service_points == 40
    assert _snapshot(platform.engine) == before  # the same grid, the same assignments
