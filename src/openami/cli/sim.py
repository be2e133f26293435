"""``openami sim``: simulated meters (``sim meter``) and fleets (``sim fleet``, when installed)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal

import click

from openami.sim.meter import MeterConfig, SimulatedMeter, close_servers, serve_meter

__all__ = ["hex_bytes", "sim"]


def hex_bytes(size: int) -> click.types.FuncParamType:
    """A click type for ``size`` bytes given as hex; the error never repeats the value (it may be a key)."""

    def convert(text: str) -> bytes:
        try:
            value = bytes.fromhex(text)
        except ValueError:
            raise click.BadParameter(f"must be {2 * size} hexadecimal digits ({size} bytes)") from None
        if len(value) != size:
            raise click.BadParameter(f"must be {2 * size} hexadecimal digits ({size} bytes), not {len(value)} bytes")
        return value

    convert.__name__ = f"{2 * size}-hex-digits"
    return click.types.FuncParamType(convert)


@click.group()
def sim() -> None:
    """Simulated DLMS/COSEM meters, indistinguishable on the wire from real ones."""


@sim.command("meter")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=4059, show_default=True, help="0: any free port.")
@click.option("--serial", required=True, help="Serial number (0.0.96.1.0.255).")
@click.option("--system-title", "system_title", type=hex_bytes(8), required=True, help="Meter system title, 16 hex.")
@click.option("--guek", type=hex_bytes(16), required=True, help="Global unicast encryption key, 32 hex.")
@click.option("--ak", type=hex_bytes(16), required=True, help="Authentication key, 32 hex.")
@click.option("--days", type=click.IntRange(1, 3660), default=7, show_default=True, help="Load profile history.")
def meter(host: str, port: int, serial: str, system_title: bytes, guek: bytes, ak: bytes, days: int) -> None:
    """Run one simulated meter until interrupted (management SAP 1: HLS-GMAC + Suite 0; public SAP 16)."""
    config = MeterConfig(serial, system_title, guek, ak, profile_days=days)
    try:
        asyncio.run(_serve(SimulatedMeter(config), host, port))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


async def _serve(simulated: SimulatedMeter, host: str, port: int) -> None:
    server = await serve_meter(simulated, host, port)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    click.echo(f"meter {simulated.config.serial} listening on {bound_host}:{bound_port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await close_servers([server])
        click.echo(f"meter {simulated.config.serial} stopped")


def _add_fleet() -> None:
    """``sim fleet`` lives in its own module; attach it when it is there."""
    try:
        module = importlib.import_module("openami.cli.sim_fleet")
    except ModuleNotFoundError as exc:
        if exc.name != "openami.cli.sim_fleet":
            raise
        return
    command = getattr(module, "fleet", None)
    if isinstance(command, click.Command):
        sim.add_command(command)


_add_fleet()
