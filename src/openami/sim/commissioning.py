"""The commissioning file: what the platform imports to know the simulated fleet (docs/internal/contracts.md).

It holds every meter's keys by design (it is how a utility's meter supplier hands keys over), so it
is written with mode 0600 from its first byte (created 0600 under a temporary name, then renamed into
place) and never logged.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from openami.sim.fleet import FIRMWARE, MODEL, Fleet, SimMeter

__all__ = [
    "FORMAT",
    "VERSION",
    "commissioning_document",
    "read_commissioning",
    "validate_commissioning",
    "write_commissioning",
]

FORMAT = "openami-commissioning"
VERSION = 1

_SECTIONS: dict[str, frozenset[str]] = {
    "substations": frozenset({"id", "name"}),
    "feeders": frozenset({"id", "substation_id"}),
    "transformers": frozenset({"id", "feeder_id", "phase"}),
    "premises": frozenset({"id", "address", "critical_care"}),
    "service_points": frozenset({"id", "premise_id", "transformer_id", "phase"}),
    "meters": frozenset(
        {
            "serial",
            "kind",
            "customer_class",
            "host",
            "port",
            "system_title",
            "model",
            "firmware",
            "service_point_id",
            "keys",
        }
    ),
}
_TOP = frozenset({"format", "version", "generated_at", "seed", *_SECTIONS})
_HEX16 = re.compile(r"[0-9a-f]{16}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_CHECK = "check_for_transformer"
_KEY_SETS = ({"guek", "gak"}, {"guek", "gak", "kek"})  # kek (master key for key transfer) since issue 4


def commissioning_document(fleet: Fleet, generated_at: datetime | None = None) -> dict[str, Any]:
    """The commissioning JSON document of ``fleet`` (exactly the contract's shape)."""
    when = (generated_at or datetime.now(UTC)).astimezone(UTC)
    topology = fleet.topology
    return {
        "format": FORMAT,
        "version": VERSION,
        "generated_at": when.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "seed": fleet.config.seed,
        "substations": [{"id": s.id, "name": s.name} for s in topology.substations],
        "feeders": [{"id": f.id, "substation_id": f.substation_id} for f in topology.feeders],
        "transformers": [{"id": t.id, "feeder_id": t.feeder_id, "phase": t.phase.value} for t in topology.transformers],
        "premises": [{"id": p.id, "address": p.address, "critical_care": p.critical_care} for p in topology.premises],
        "service_points": [
            {"id": sp.id, "premise_id": sp.premise_id, "transformer_id": sp.transformer_id, "phase": sp.phase.value}
            for sp in topology.service_points
        ],
        "meters": [_meter_json(m) for m in fleet.meters],
    }


def _meter_json(meter: SimMeter) -> dict[str, Any]:
    entry = {
        "serial": meter.serial,
        "kind": "electric",
        "customer_class": meter.customer_class.value,
        "host": meter.host,
        "port": meter.port,
        "system_title": meter.system_title.hex(),
        "model": MODEL,
        "firmware": FIRMWARE,
        "service_point_id": meter.service_point_id,
        "keys": _keys_json(meter),
    }
    if meter.check_for_transformer is not None:  # a transformer's check meter (contract: no service point)
        entry["check_for_transformer"] = meter.check_for_transformer
    return entry


def _keys_json(meter: SimMeter) -> dict[str, str]:
    keys = {"guek": meter.guek.hex(), "gak": meter.gak.hex()}
    if meter.kek is not None:
        keys["kek"] = meter.kek.hex()
    return keys


def write_commissioning(path: str | os.PathLike[str], document: dict[str, Any]) -> Path:
    """Write ``document`` to ``path`` atomically with mode 0600 (replacing any older file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(json.dumps(document, separators=(",", ":")).encode())
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o600)  # in case a umask or ACL widened what O_CREAT asked for  # noqa: PTH101
        temporary.replace(target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def read_commissioning(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a commissioning file (raises ValueError naming the first problem)."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    validate_commissioning(document)
    return document  # type: ignore[no-any-return]


def validate_commissioning(document: Any) -> None:
    """Check the contract's shape and the references between sections; raise ValueError if wrong."""
    if not isinstance(document, dict) or set(document) != _TOP:
        raise ValueError(f"top-level keys must be exactly {sorted(_TOP)}")
    if document["format"] != FORMAT or document["version"] != VERSION:
        raise ValueError(f"not an {FORMAT} version {VERSION} document")
    datetime.fromisoformat(document["generated_at"])
    ids: dict[str, set[str]] = {}
    for section, keys in _SECTIONS.items():
        rows = document[section]
        for row in rows:
            if not isinstance(row, dict) or (set(row) != keys and not _is_check_meter(section, row, keys)):
                raise ValueError(f"{section}: every entry must have exactly the keys {sorted(keys)}")
        ids[section] = {row.get("id") or row.get("serial") for row in rows}
        if len(ids[section]) != len(rows):
            raise ValueError(f"{section}: duplicate ids")
    _check_references(document, ids)
    for meter in document["meters"]:
        _check_meter(meter)


def _is_check_meter(section: str, row: dict[str, Any], keys: frozenset[str]) -> bool:
    """A transformer's check meter: the meter keys plus ``check_for_transformer``, no service point."""
    return section == "meters" and set(row) == keys | {_CHECK} and row["service_point_id"] is None


def _check_references(document: dict[str, Any], ids: dict[str, set[str]]) -> None:
    references = (
        ("feeders", "substation_id", "substations"),
        ("transformers", "feeder_id", "feeders"),
        ("service_points", "premise_id", "premises"),
        ("service_points", "transformer_id", "transformers"),
        ("meters", "service_point_id", "service_points"),
    )
    checks = [row for row in document["meters"] if _CHECK in row]
    unknown_transformers = {row[_CHECK] for row in checks} - ids["transformers"]
    if unknown_transformers:
        raise ValueError(f"meters.{_CHECK} names unknown transformers: {sorted(unknown_transformers)[:3]}")
    for section, key, target in references:
        unknown = {row[key] for row in document[section] if _CHECK not in row} - ids[target]
        if unknown:
            raise ValueError(f"{section}.{key} names unknown {target}: {sorted(unknown)[:3]}")


def _check_meter(meter: dict[str, Any]) -> None:
    serial = meter["serial"]
    if meter["kind"] not in ("electric", "gas", "water") or meter["customer_class"] not in (
        "residential",
        "commercial",
    ):
        raise ValueError(f"meter {serial}: unknown kind or customer class")
    if not _HEX16.fullmatch(meter["system_title"]):
        raise ValueError(f"meter {serial}: system_title must be 16 lowercase hex digits")
    keys = meter["keys"]
    if (
        not isinstance(keys, dict)
        or set(keys) not in _KEY_SETS
        or not all(isinstance(k, str) and _HEX32.fullmatch(k) for k in keys.values())
    ):
        # never echo the keys
        raise ValueError(f"meter {serial}: keys must be guek, gak and optionally kek, 32 hex digits each")
    if not isinstance(meter["port"], int) or not 0 <= meter["port"] <= 65_535:
        raise ValueError(f"meter {serial}: invalid port")
