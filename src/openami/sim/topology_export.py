"""The simulated fleet's grid as a topology CSV file (the format ``openami topology import`` reads).

One row per substation, feeder, transformer and service point (with its premise, the serial of the
meter installed there and the premise's critical-care flag); check meters have no service point and
are not listed. The simulator imports nothing of the platform, so the format is written here by
hand: ``kind,id,parent_id,phase,name,premise_id,meter,critical_care`` (docs/outages.md).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from openami.sim.fleet import Fleet

__all__ = ["HEADER", "topology_csv", "write_topology_csv"]

HEADER = ("kind", "id", "parent_id", "phase", "name", "premise_id", "meter", "critical_care")


def topology_csv(fleet: Fleet) -> str:
    """The fleet's substations, feeders, transformers and service points as CSV text."""
    grid = fleet.topology
    premises = {p.id: p for p in grid.premises}
    meter_at = {m.service_point_id: m.serial for m in fleet.meters if m.service_point_id is not None}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for s in grid.substations:
        writer.writerow(("substation", s.id, "", "", s.name, "", "", ""))
    for f in grid.feeders:
        writer.writerow(("feeder", f.id, f.substation_id, "", "", "", "", ""))
    for x in grid.transformers:
        writer.writerow(("transformer", x.id, x.feeder_id, str(x.phase), "", "", "", ""))
    for sp in grid.service_points:
        premise = premises[sp.premise_id]
        critical = "true" if premise.critical_care else "false"
        row = ("service_point", sp.id, sp.transformer_id, str(sp.phase), premise.address, sp.premise_id,
               meter_at.get(sp.id, ""), critical)  # fmt: skip
        writer.writerow(row)
    return out.getvalue()


def write_topology_csv(path: str | os.PathLike[str], fleet: Fleet) -> Path:
    target = Path(path)
    target.write_text(topology_csv(fleet), encoding="utf-8")
    return target
