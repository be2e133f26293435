"""``openami read``: read a DLMS/COSEM meter as the management client (HLS-GMAC + Suite 0).

Reads the clock, the serial number, the import and export registers (with scaler and unit) and the
15-minute load profile over [--from, --to], releases, and prints a table or JSON. The client's
invocation counter must grow from one association to the next: it is kept per meter in
``<data_dir>/dlms-client-counters.json`` (mode 0600; ``OPENAMI_DATA_DIR``, default ``var``) unless
``--invocation-counter`` is given. Keys are never printed; failures are one line and exit 1.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from openami.cli.sim import hex_bytes
from openami.protocols.dlms.apdu import DataAccessResult
from openami.protocols.dlms.client import ClientSettings, DlmsClient, ProfileRow
from openami.protocols.dlms.errors import DlmsError
from openami.protocols.dlms.obis import ACTIVE_EXPORT, ACTIVE_IMPORT, LOAD_PROFILE, SERIAL
from openami.settings import Settings

__all__ = ["read"]

UNITS = {27: "W", 28: "VA", 29: "var", 30: "Wh", 31: "VAh", 32: "varh", 33: "A", 35: "V"}
_COUNTERS_FILE = "dlms-client-counters.json"


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    system_title: bytes

    @property
    def key(self) -> str:
        return f"{self.host}:{self.port}/{self.system_title.hex()}"


def _iso(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _parse_iso(text: str) -> datetime:
    try:
        return _iso(datetime.fromisoformat(text))
    except ValueError:
        raise click.BadParameter("must be an ISO 8601 date-time, e.g. 2026-03-01T00:00Z") from None


ISO_DATETIME = click.types.FuncParamType(_parse_iso)


@click.command("read")
@click.option("--host", required=True, help="Meter address.")
@click.option("--port", type=click.IntRange(1, 65535), default=4059, show_default=True)
@click.option("--system-title", "system_title", type=hex_bytes(8), required=True, help="Our (client) system title.")
@click.option("--guek", type=hex_bytes(16), required=True, help="Global unicast encryption key, 32 hex.")
@click.option("--ak", type=hex_bytes(16), required=True, help="Authentication key, 32 hex.")
@click.option("--from", "start", type=ISO_DATETIME, help="Profile start, ISO 8601 (UTC if no offset) [24 h ago].")
@click.option("--to", "end", type=ISO_DATETIME, help="Profile end, ISO 8601, inclusive [now].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="Seconds per request.")
@click.option("--invocation-counter", type=click.IntRange(0, 0xFFFFFFFF), help="Our next frame counter [stored].")
def read(  # noqa: PLR0913, PLR0917 - one parameter per option
    host: str,
    port: int,
    system_title: bytes,
    guek: bytes,
    ak: bytes,
    start: datetime | None,
    end: datetime | None,
    as_json: bool,
    timeout: float,
    invocation_counter: int | None,
) -> None:
    """Read clock, serial, registers and the load profile of a meter (management client SAP 1)."""
    end = end or datetime.now(UTC)
    start = start or end - timedelta(days=1)
    if start > end:
        raise click.BadParameter("--from is after --to", param_hint="--from")
    target = _Target(host, port, system_title)
    store = Settings().data_dir / _COUNTERS_FILE
    client_ic, server_ic = _stored_counters(store, target)
    settings = ClientSettings.management(
        host,
        port,
        system_title=system_title,
        guek=guek,
        gak=ak,
        invocation_counter=client_ic if invocation_counter is None else invocation_counter,
        server_invocation_counter=server_ic,
        timeout_s=timeout,
    )
    try:
        result = asyncio.run(_read(settings, start, end, store, target))
    except DlmsError as exc:
        raise click.ClickException(f"reading {host}:{port} failed: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"reading {host}:{port} failed: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps(result))
    else:
        _print_tables(result)


async def _read(
    settings: ClientSettings, start: datetime, end: datetime, store: Path, target: _Target
) -> dict[str, Any]:
    client = DlmsClient(settings)
    try:
        async with client:
            clock = await client.read_clock()
            serial = await client.get(SERIAL, 1, 2)
            values = await client.get_with_list(
                [(ACTIVE_IMPORT, 3, 2), (ACTIVE_IMPORT, 3, 3), (ACTIVE_EXPORT, 3, 2), (ACTIVE_EXPORT, 3, 3)]
            )
            columns = await client.profile_columns(LOAD_PROFILE)
            rows = await client.read_profile(LOAD_PROFILE, start, end)
    finally:
        if client.client_invocation_counter > settings.invocation_counter:
            _store_counters(store, target, client.client_invocation_counter, client.server_invocation_counter)
    names = [str(c.logical_name) for c in columns if not c.is_clock]
    return {
        "meter": {"host": settings.host, "port": settings.port},
        "serial": serial.decode("ascii", "replace") if isinstance(serial, bytes) else str(serial),
        "clock": clock.isoformat(),
        "registers": {
            str(ACTIVE_IMPORT): _register(values[0], values[1]),
            str(ACTIVE_EXPORT): _register(values[2], values[3]),
        },
        "profile": {
            "obis": str(LOAD_PROFILE),
            "from": start.isoformat(),
            "to": end.isoformat(),
            "columns": ["clock", *names],
            "rows": [_row(row, names) for row in rows],
        },
    }


def _register(value: object, scaler_unit: object) -> dict[str, Any]:
    if isinstance(value, DataAccessResult) or isinstance(scaler_unit, DataAccessResult):
        failed = value if isinstance(value, DataAccessResult) else scaler_unit
        return {"error": str(getattr(failed, "name", failed)).lower()}
    if not (isinstance(value, int) and isinstance(scaler_unit, tuple) and len(scaler_unit) == 2):
        return {"error": "unexpected register encoding"}
    scaler, unit = (int(x) for x in scaler_unit)
    scaled = int(value) * 10**scaler if scaler >= 0 else int(value) * 10.0**scaler
    return {"value": scaled, "raw": int(value), "scaler": scaler, "unit": UNITS.get(unit, str(unit)), "unit_code": unit}


def _row(row: ProfileRow, names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"clock": row.clock.isoformat()}
    for name, value in zip(names, row.values, strict=False):
        if isinstance(value, bytes):
            out[name] = value.hex()
        elif isinstance(value, int) and not isinstance(value, bool):
            out[name] = int(value)
        else:
            out[name] = value
    return out


def _stored_counters(store: Path, target: _Target) -> tuple[int, int]:
    try:
        entry = json.loads(store.read_text()).get(target.key, {})
    except (OSError, ValueError):
        return 0, -1
    return int(entry.get("client_next", 0)), int(entry.get("server_last", -1))


def _store_counters(store: Path, target: _Target, client_next: int, server_last: int) -> None:
    """Remember the counters (best effort: a read that worked is not failed by the cache)."""
    try:
        data = json.loads(store.read_text()) if store.exists() else {}
    except (OSError, ValueError):
        data = {}
    data[target.key] = {"client_next": client_next, "server_last": server_last}
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        temporary = store.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        temporary.replace(store)
    except OSError:
        pass


def _print_tables(result: dict[str, Any]) -> None:
    console = Console()
    summary = Table(title=f"meter {result['serial']} at {result['meter']['host']}:{result['meter']['port']}")
    summary.add_column("item")
    summary.add_column("value", justify="right")
    summary.add_row("clock (UTC)", result["clock"])
    for obis, register in result["registers"].items():
        shown = register.get("error") or f"{register['value']} {register['unit']} (scaler {register['scaler']})"
        summary.add_row(obis, shown)
    console.print(summary)
    profile = result["profile"]
    table = Table(title=f"load profile {profile['obis']}: {len(profile['rows'])} rows")
    for column in profile["columns"]:
        table.add_column(column, justify="left" if column == "clock" else "right")
    for row in profile["rows"]:
        table.add_row(*(str(row.get(column, "")) for column in profile["columns"]))
    console.print(table)
