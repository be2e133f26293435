"""The one ``openami`` command; each area registers its subcommands from its own module."""

from __future__ import annotations

import importlib
import runpy
import sys
from pathlib import Path

import click

# module -> attribute names of click commands/groups it contributes
_COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "openami.cli.dlms": ("read",),
    "openami.cli.sim": ("sim",),
    "openami.cli.platform": ("run", "meters", "readings"),
    "openami.cli.keys": ("keys",),
    "openami.cli.switch": ("switch",),
    "openami.cli.guard": ("guard", "calendar"),
    "openami.cli.workflows": ("workflow",),
    "openami.cli.audit": ("audit", "security"),
    "openami.cli.pki": ("pki",),
    "openami.cli.accounts": ("accounts",),
    "openami.cli.prepay": ("prepay",),
    "openami.cli.events": ("events",),
    "openami.cli.cases": ("cases", "balance"),
    "openami.cli.outages": ("outages", "topology_group", "webhooks"),
}


@click.group()
@click.version_option(package_name="openami")
def main() -> None:
    """openami: AMI head-end, meter data management and fleet simulator."""


def _bench_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "bench"


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
)
@click.argument("name")
@click.pass_context
def bench(ctx: click.Context, name: str) -> None:
    """Run benchmark NAME from bench/ (e.g. dlms, ingest, collect); it prints one JSON object."""
    script = _bench_dir() / f"{name}.py"
    if not script.is_file():
        available = sorted(p.stem for p in _bench_dir().glob("*.py") if not p.stem.startswith("_"))
        raise click.ClickException(f"unknown benchmark {name!r}; available: {', '.join(available) or 'none'}")
    sys.argv = [str(script), *ctx.args]
    runpy.run_path(str(script), run_name="__main__")


def _register() -> None:
    for module_name, names in _COMMAND_MODULES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # an area not built yet
        for name in names:
            command = getattr(module, name, None)
            if isinstance(command, click.Command):
                main.add_command(command)


_register()
