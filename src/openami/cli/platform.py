"""Platform commands: ``run`` (API, head-end, MDM and optionally a simulated fleet), ``meters``, ``readings``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import uvicorn
from rich.console import Console
from rich.table import Table

from openami import logging as oam_logging
from openami import runtime
from openami.cli import loop
from openami.domain.codes import ChannelCode
from openami.errors import OpenAmiError
from openami.services import meters as meter_services
from openami.services import readings as reading_services
from openami.services.bootstrap import (
    build_platform,
    ensure_admin_token,
    open_storage,
    start_platform,
    stop_platform,
)
from openami.services.context import ALL_SCOPES, Platform, RequestScope, Role
from openami.settings import Settings
from openami.waiting import wait_until_set

CLI_SCOPE = RequestScope(
    principal="cli:local-admin",
    roles=frozenset({Role.AMI_OPERATOR, Role.SECURITY_ADMIN}),
    scopes=frozenset({ALL_SCOPES}),
)
"""The CLI works on the local database directly: whoever can run it can read the database file."""

_err = Console(stderr=True)


def _fail(message: str) -> click.ClickException:
    return click.ClickException(message)


def _iso(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date-time", param_hint=name) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# -- meters -------------------------------------------------------------------------------------------


@click.group()
def meters() -> None:
    """Registered meters: import a commissioning file, list them."""


@meters.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_meters(path: Path) -> None:
    """Import meters, keys (stored wrapped) and topology from a commissioning file."""
    settings = Settings()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    try:
        engine = open_storage(settings)
        from openami.security.keystore import master_key_provider  # noqa: PLC0415 - only this command needs it

        ids = meter_services.import_commissioning(
            engine, master_key_provider(settings), document, now=datetime.now(UTC)
        )
    except OpenAmiError as exc:
        raise _fail(exc.message) from None
    click.echo(f"imported {len(ids)} meters from {path}")


@meters.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def list_meters(limit: int, as_json: bool) -> None:
    """List registered meters."""
    try:
        engine = open_storage(Settings())
        found = meter_services.list_meters(engine, CLI_SCOPE, after_id=None, limit=limit)
        total = meter_services.count_meters(engine, CLI_SCOPE)
    except OpenAmiError as exc:
        raise _fail(exc.message) from None
    if as_json:
        click.echo(json.dumps([_meter_json(m) for m in found], indent=2))
        return
    table = Table(title=f"meters ({len(found)} of {total})")
    for column in ("id", "serial", "class", "address", "system title", "model", "firmware"):
        table.add_column(column)
    for m in found:
        table.add_row(
            str(m.id), m.serial, str(m.customer_class), f"{m.host}:{m.port}", m.system_title.hex().upper(), m.model,
            m.firmware,
        )  # fmt: skip
    Console().print(table)


def _meter_json(m: Any) -> dict[str, Any]:
    return {
        "id": m.id,
        "serial": m.serial,
        "kind": str(m.kind),
        "customer_class": str(m.customer_class),
        "host": m.host,
        "port": m.port,
        "system_title": m.system_title.hex().upper(),
        "model": m.model,
        "firmware": m.firmware,
    }


# -- readings -----------------------------------------------------------------------------------------


@click.command()
@click.argument("meter_id", type=int)
@click.option("--from", "start", help="ISO 8601 (default: 24 hours ago)")
@click.option("--to", "end", help="ISO 8601 (default: now)")
@click.option("--channel", type=click.Choice(["import", "export"]))
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
def readings(meter_id: int, start: str | None, end: str | None, channel: str | None, fmt: str) -> None:
    """Stored interval values of METER_ID with quality flags, source and version."""
    to = _iso(end, "--to") if end else datetime.now(UTC)
    frm = _iso(start, "--from") if start else to - timedelta(hours=24)
    code = {"import": ChannelCode.ACTIVE_IMPORT, "export": ChannelCode.ACTIVE_EXPORT}.get(channel or "")
    try:
        engine = open_storage(Settings())
        values = reading_services.meter_readings(engine, CLI_SCOPE, meter_id, frm, to, code)
    except OpenAmiError as exc:
        raise _fail(exc.message) from None
    if fmt == "csv":
        click.echo(reading_services.readings_csv(values), nl=False)
    elif fmt == "json":
        rows = [
            {**v.__dict__, "interval_end": v.interval_end.isoformat(), "received_at": v.received_at.isoformat()}
            if hasattr(v, "__dict__")
            else _value_json(v)
            for v in values
        ]
        click.echo(json.dumps(rows, indent=2))
    else:
        table = Table(title=f"meter {meter_id}: {len(values)} values, {frm.isoformat()} .. {to.isoformat()}")
        for column in ("channel", "interval end", "value", "unit", "quality", "source", "v"):
            table.add_column(column)
        for v in values:
            table.add_row(
                v.channel, v.interval_end.isoformat(), f"{v.value:.1f}", v.unit, ",".join(v.quality), v.source,
                str(v.version),
            )  # fmt: skip
        Console().print(table)


def _value_json(v: reading_services.IntervalValue) -> dict[str, Any]:
    return {
        "channel": v.channel,
        "interval_end": v.interval_end.isoformat(),
        "value": v.value,
        "unit": v.unit,
        "quality": v.quality,
        "source": v.source,
        "version": v.version,
        "received_at": v.received_at.isoformat(),
    }


# -- run ----------------------------------------------------------------------------------------------


@click.command()
@click.option("--sim", "sim_meters", type=click.IntRange(0, 100_000), default=0, help="start a simulated fleet")
@click.option("--seed", default=1, show_default=True, help="simulated fleet seed")
@click.option(
    "--sim-port", default=4059, show_default=True, type=click.IntRange(0, 65535), help="simulated meters' port (0: any)"
)
@click.option("--host", default=None, help="API listen address (default from settings: 127.0.0.1)")
@click.option("--port", default=None, type=click.IntRange(0, 65535), help="API port (default from settings: 8059)")
def run(sim_meters: int, seed: int, sim_port: int, host: str | None, port: int | None) -> None:
    """Start the platform: REST API, head-end collection and MDM (and a simulated fleet with --sim N)."""
    oam_logging.configure(level=logging.WARNING)
    settings = Settings()
    if host is not None or port is not None:
        settings = settings.model_copy(
            update={"api": settings.api.model_copy(update={k: v for k, v in (("host", host), ("port", port)) if v})}
        )
    try:
        engine = open_storage(settings)
    except OpenAmiError as exc:
        raise _fail(f"cannot open the database: {exc.message}") from None
    try:  # the command authority exists before the fleet starts: the simulated meters pin its certificate
        authority_pem = _authority_pem(settings, engine)
    except OpenAmiError as exc:
        raise _fail(f"cannot load the command authority: {exc.message}") from None
    fleet = _start_fleet(settings, engine, sim_meters, seed, sim_port, authority_pem) if sim_meters else None
    try:
        token = ensure_admin_token(engine, now=datetime.now(UTC))
        if token is not None:
            token_file = settings.data_dir / "admin-token"
            _write_private(token_file, token)
            _err.print(f"[bold]admin API token[/] (shown once; also in {token_file}, mode 0600):\n{token}")
        platform = build_platform(settings, engine=engine)
        loop.tune_gc()
        loop.run(_serve(platform))
    except OpenAmiError as exc:
        raise _fail(exc.message) from None
    finally:
        if fleet is not None:
            fleet.stop()


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = path.open("x", encoding="utf-8")
    path.chmod(0o600)
    with fd:
        fd.write(text + "\n")


def _authority_pem(settings: Settings, engine: Any) -> str:
    """Load (or create on first run) the command authority; its certificate PEM for the meters to pin."""
    from openami.security import command_authority  # noqa: PLC0415
    from openami.security.keystore import master_key_provider  # noqa: PLC0415
    from openami.services.pki import ca_files  # noqa: PLC0415

    with engine.begin() as conn:
        authority = command_authority.load_or_create(
            conn, master_key_provider(settings), ca_files(settings), now=datetime.now(UTC)
        )
    return authority.certificate_pem


def _start_fleet(settings: Settings, engine: Any, count: int, seed: int, port: int, authority_pem: str) -> Any:
    from openami.security.keystore import master_key_provider  # noqa: PLC0415
    from openami.sim.fleet import FleetConfig  # noqa: PLC0415 - the simulator is only for --sim
    from openami.sim.runner import start_fleet_processes  # noqa: PLC0415

    path = settings.data_dir / "sim-commissioning.json"
    _err.print(f"starting a simulated fleet of {count} meters (seed {seed})...")
    push_host = settings.push.host if settings.push.enabled and settings.push.port else None  # the push listener
    config = FleetConfig(
        meters=count, seed=seed, port=port, push_host=push_host, push_port=settings.push.port,
        authority_certificate_pem=authority_pem,
    )  # fmt: skip
    handle = start_fleet_processes(config, commissioning_path=path)
    document = json.loads(path.read_text(encoding="utf-8"))
    ids = meter_services.import_commissioning(engine, master_key_provider(settings), document, now=datetime.now(UTC))
    _err.print(f"fleet ready: {len(ids)} meters imported from {path}")
    return handle


async def _serve(platform: Platform) -> None:
    from openami.api.app import create_app  # noqa: PLC0415 - FastAPI only for the serving command
    from openami.api.tls import uvicorn_tls_options  # noqa: PLC0415
    from openami.services.pki import prepare_server_tls  # noqa: PLC0415

    settings = platform.settings
    try:
        await start_platform(platform)
        server_tls = prepare_server_tls(platform)  # HTTPS (CA and certificate on first run); HTTP on loopback only
    except OpenAmiError:
        await stop_platform(platform)
        raise
    app = create_app(platform)
    runtime.tune_gc()  # again: the grid, the open outages and the API are long-lived too, frozen with the targets
    config = uvicorn.Config(
        app, host=settings.api.host, port=settings.api.port, log_level="warning", lifespan="off",
        **uvicorn_tls_options(server_tls),
    )  # fmt: skip
    server = uvicorn.Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server_task = asyncio.create_task(server.serve())
    scheduler_task = asyncio.create_task(platform.scheduler.run_forever(stop))
    _err.print(
        f"API on {'https' if server_tls else 'http'}://{settings.api.host}:{settings.api.port} (OpenAPI at /docs); "
        f"{len(platform.collector.targets)} meters; Ctrl-C stops"
    )
    if server_tls is not None:
        _err.print(f"clients trust the utility CA's certificate: {server_tls.ca_cert_file}")
    progress_task = asyncio.create_task(_show_progress(platform, stop))
    await stop.wait()
    _err.print("stopping...")
    server.should_exit = True
    # A collection in progress is abandoned rather than drained: Ctrl-C also stops the simulated
    # meters, and nothing is lost (the next run reads every interval since the last one stored).
    scheduler_task.cancel()
    await asyncio.gather(server_task, scheduler_task, return_exceptions=True)
    progress_task.cancel()
    await stop_platform(platform)


async def _show_progress(platform: Platform, stop: asyncio.Event) -> None:
    """One status line per change: collection progress of the current run."""
    last: tuple[int, int, int] | None = None
    while not stop.is_set():
        current = platform.scheduler.progress
        if current != last and current[0]:
            expected, received, failed = current
            _err.print(f"collection: {received + failed}/{expected} meters ({received} read, {failed} failed)")
            last = current
        await wait_until_set(stop, 2.0)
