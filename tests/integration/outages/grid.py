"""A small synthetic grid for the outage tests: meters in the database and the CSV that places them."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from tests.integration.db.helpers import add_meters, spec

SUBSTATIONS = ("SS1", "SS2")
FEEDERS_PER_SUBSTATION = 2
TRANSFORMERS_PER_FEEDER = 5
METERS_PER_TRANSFORMER = 6
METERS = len(SUBSTATIONS) * FEEDERS_PER_SUBSTATION * TRANSFORMERS_PER_FEEDER * METERS_PER_TRANSFORMER  # 120


def add_grid_meters(engine: Engine) -> list[int]:
    with engine.begin() as conn:
        return add_meters(conn, METERS)


def grid_csv(*, critical_every: int = 25) -> str:
    """CSV rows: substations SS1, SS2; feeders SS1-F1..; transformers SS1-F1-T1..; service points SP0001..."""
    rows = ["kind,id,parent_id,phase,name,premise_id,meter,critical_care"]
    n = 0
    for substation in SUBSTATIONS:
        rows.append(f"substation,{substation},,,{substation} substation,,,")
        for f in range(1, FEEDERS_PER_SUBSTATION + 1):
            feeder = f"{substation}-F{f}"
            rows.append(f"feeder,{feeder},{substation},,,,,")
            for x in range(1, TRANSFORMERS_PER_FEEDER + 1):
                transformer = f"{feeder}-T{x}"
                rows.append(f"transformer,{transformer},{feeder},A,,,,")
                for _ in range(METERS_PER_TRANSFORMER):
                    n += 1
                    critical = "true" if n % critical_every == 0 else "false"
                    rows.append(
                        f"service_point,SP{n:04d},{transformer},A,{n} Test Street,P{n:04d},{spec(n).serial},{critical}"
                    )
    return "\n".join(rows) + "\n"


def meters_of(ids: list[int], transformer: str) -> list[int]:
    """The meter ids on one transformer ("SS1-F2-T3"), by the layout of grid_csv."""
    substation, feeder, trafo = transformer.split("-")
    s = SUBSTATIONS.index(substation)
    f, x = int(feeder[1:]) - 1, int(trafo[1:]) - 1
    first = ((s * FEEDERS_PER_SUBSTATION + f) * TRANSFORMERS_PER_FEEDER + x) * METERS_PER_TRANSFORMER
    return ids[first : first + METERS_PER_TRANSFORMER]


def feeder_meters(ids: list[int], feeder: str) -> list[int]:
    return [m for x in range(1, TRANSFORMERS_PER_FEEDER + 1) for m in meters_of(ids, f"{feeder}-T{x}")]
