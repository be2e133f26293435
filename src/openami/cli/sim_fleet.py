"""``openami sim fleet``: run a simulated fleet in worker processes until interrupted."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import FrameType

import click

from openami.protocols.dlms.errors import EncodeError
from openami.protocols.dlms.signed_command import certificate_der_from_pem, public_key_from_certificate
from openami.sim.fleet import DEFAULT_PORT, PUSH_TRANSPORTS, Fleet, FleetConfig, build_fleet
from openami.sim.runner import start_fleet_processes

__all__ = ["fleet"]


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _authority_pem(path: Path | None) -> str | None:
    """The certificate file's PEM, checked to hold a P-256 key (a bad file fails here, not in every meter)."""
    if path is None:
        return None
    pem = path.read_text(encoding="ascii", errors="replace")
    try:
        public_key_from_certificate(certificate_der_from_pem(pem))
    except EncodeError as exc:
        raise click.BadParameter(str(exc), param_hint="--authority-cert") from exc
    return pem


def _push_address(push: str) -> tuple[str, int]:
    host, _, port = push.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65_535:
        raise click.BadParameter(f"{push!r} is not HOST:PORT", param_hint="--push")
    return host.strip("[]"), int(port)


def _push_host(push: str | None) -> str | None:
    return None if push is None else _push_address(push)[0]


def _push_port(push: str | None) -> int:
    return 0 if push is None else _push_address(push)[1]


def _push_text(config: FleetConfig) -> str:
    if not config.push_host:
        return "nowhere"
    return f"{config.push_host}:{config.push_port} over {config.push_transport.upper()}"


def _span(fleet: Fleet) -> str:
    first, last = fleet.meters[0], fleet.meters[-1]
    if first.host == last.host:
        ports = {m.port for m in fleet.meters}
        return f"{first.host} ports {min(ports)}-{max(ports)}" if len(ports) > 1 else f"{first.host}:{first.port}"
    port = f":{first.port}" if len({m.port for m in fleet.meters}) == 1 else " (ports chosen by the OS)"
    return f"{first.host}-{last.host}{port}"


@click.command("fleet")
@click.option("--meters", "-n", type=click.IntRange(min=1), required=True, help="Number of meters.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the grid, loads, faults and keys.")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("var/commissioning.json"),
    show_default=True,
    help="Commissioning file to write (mode 0600; it holds the meters' keys).",
)
@click.option("--processes", "-p", type=click.IntRange(min=1), help="Worker processes [default: 1 per 5,000 meters].")
@click.option(
    "--base-port",
    type=click.IntRange(0, 65_535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port of every meter (each on its own 127.x.y.z); with --single-address the first port. 0: OS-chosen.",
)
@click.option("--single-address", is_flag=True, help="All meters on 127.0.0.1, meter i on base-port + i.")
@click.option("--days", type=click.IntRange(1, 3660), default=7, show_default=True, help="Load profile history.")
@click.option("--flaky", type=click.FloatRange(0, 1), default=0.03, show_default=True, help="Share of flaky meters.")
@click.option("--drift", type=click.FloatRange(0, 1), default=0.01, show_default=True, help="Share of drifting clocks.")
@click.option(
    "--random-keys", is_flag=True, help="Draw keys from the OS CSPRNG instead of deriving them from the seed."
)
@click.option(
    "--authority-cert",
    "authority_cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Command authority certificate (PEM) every meter pins; without it meters refuse every signed command.",
)
@click.option(
    "--push",
    "push",
    metavar="HOST:PORT",
    help="Where meters push their events (the head-end's push listener); without it they only log them.",
)
@click.option(
    "--push-transport",
    type=click.Choice(PUSH_TRANSPORTS),
    default="tcp",
    show_default=True,
    help="How meters push: a TCP connection or a UDP datagram per notification (the head-end listens on both).",
)
@click.option("--check-meters", is_flag=True, help="Add a check meter at every transformer (energy balance).")
def fleet(  # noqa: PLR0913, PLR0917 - one parameter per command-line option
    meters: int,
    seed: int,
    out: Path,
    processes: int | None,
    base_port: int,
    single_address: bool,
    days: int,
    flaky: float,
    drift: float,
    random_keys: bool,
    authority_cert: Path | None,
    push: str | None,
    push_transport: str,
    check_meters: bool,
) -> None:
    """Run a fleet of simulated DLMS meters on loopback until SIGINT/SIGTERM; write its commissioning file."""
    try:
        config = FleetConfig(
            meters=meters, seed=seed, flaky_fraction=flaky, drift_fraction=drift, single_address=single_address,
            port=base_port, random_keys=random_keys, days=days,
            authority_certificate_pem=_authority_pem(authority_cert),
            push_host=_push_host(push), push_port=_push_port(push), push_transport=push_transport,
            check_meters=check_meters,
        )  # fmt: skip
        built = build_fleet(config)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _run(built, out, processes)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(built: Fleet, out: Path, processes: int | None) -> None:
    click.echo(f"starting: {len(built.meters)} meters, seed {built.config.seed}", err=True)
    try:
        handle = start_fleet_processes(built, processes=processes, commissioning_path=out)
    except KeyboardInterrupt:
        raise click.Abort from None
    except (TimeoutError, RuntimeError, OSError) as exc:
        raise click.ClickException(f"the fleet did not start: {exc}") from exc
    try:
        running = handle.fleet
        for pid, part in zip(handle.pids, running.partitions(len(handle.pids)), strict=True):
            where = _span(Fleet(running.config, running.topology, part))
            click.echo(f"listening: worker pid {pid}: {len(part)} meters on {where}")
        click.echo(
            f"ready: {len(running.meters)} meters on {_span(running)} in {len(handle.pids)} processes "
            f"({len(running.flaky)} flaky, {len(running.drifting)} drifting clocks, "
            f"{len(running.check_meters)} transformer check meters; pushing to "
            f"{_push_text(running.config)}); "
            f"commissioning file {handle.commissioning_path.resolve() if handle.commissioning_path else '-'}",
        )
        while handle.alive():
            time.sleep(0.5)
        raise click.ClickException("a fleet worker exited unexpectedly; stopping the others")
    except KeyboardInterrupt:
        click.echo("stopping", err=True)
    finally:
        handle.stop()
