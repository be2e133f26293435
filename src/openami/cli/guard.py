"""``openami guard`` and ``openami calendar``: the off-switch guard and the disconnect calendar.

Local administration on the database directly. The actor is ``cli:<operating-system user>``, so the
two-person rule holds between people at the console too: the user who submitted a held batch cannot
approve it. The signed ignore-disconnects ON/OFF commands are queued here and sent by the running
platform's command queue (``openami run``).
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from datetime import date, datetime
from typing import TypeVar

import click
from rich.console import Console
from rich.table import Table

from openami import logging as oam_logging
from openami.errors import OpenAmiError
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import disconnect_calendar as calendar_services
from openami.services import switch_guard
from openami.services.bootstrap import build_platform, open_storage
from openami.services.context import Platform
from openami.settings import Settings

T = TypeVar("T")
_AREA = click.STRING


def cli_scope() -> RequestScope:
    """The console user, as security admin and operator (``cli:<user>``)."""
    roles = frozenset({Role.SECURITY_ADMIN, Role.AMI_OPERATOR})
    return RequestScope(principal=f"cli:{getpass.getuser()}"[:128], roles=roles, scopes=frozenset({ALL_SCOPES}))


def _with_platform(action: Callable[[Platform], T]) -> T:
    """Run ``action`` on a platform built from the settings (not started); errors become messages, exit 1."""
    oam_logging.configure()
    settings = Settings()
    try:
        platform = build_platform(settings, engine=open_storage(settings))
        try:
            return action(platform)
        finally:
            platform.engine.dispose()
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None


def _when(value: datetime | None) -> str:
    return "" if value is None else value.isoformat(timespec="seconds")


@click.group()
def guard() -> None:
    """The off-switch guard: held batches (two-person rule), alarms, ignore-disconnects mode."""


@guard.command()
@click.option("--state", type=click.Choice(["awaiting-approval", "approved", "rejected", "all"]),
              default="awaiting-approval", show_default=True)  # fmt: skip
def batches(state: str) -> None:
    """Batches held by the two-person rule."""
    wanted = None if state == "all" else state
    found = _with_platform(lambda p: switch_guard.list_batches(p.engine, cli_scope(), state=wanted, now=p.now()))
    table = Table(title=f"batches ({state})")
    for column in ("id", "command", "meters", "areas", "state", "requested by", "requested at", "decided by"):
        table.add_column(column)
    for b in found:
        table.add_row(str(b.id), b.command, str(len(b.meter_ids)), b.areas, b.state, b.requested_by,
                      _when(b.requested_at), b.decided_by or "")  # fmt: skip
    Console().print(table)


@guard.command()
@click.argument("batch_id", type=click.IntRange(1))
def approve(batch_id: int) -> None:
    """Approve BATCH_ID as the second person: its commands are queued."""
    batch = _with_platform(lambda p: switch_guard.approve_batch(p, cli_scope(), batch_id))
    click.echo(
        f"batch {batch.id} approved by {batch.decided_by}: {len(batch.meter_ids)} {batch.command} commands queued"
    )


@guard.command()
@click.argument("batch_id", type=click.IntRange(1))
@click.option("--reason", required=True, help="why (recorded)")
def reject(batch_id: int, reason: str) -> None:
    """Reject BATCH_ID: its commands are cancelled."""
    batch = _with_platform(lambda p: switch_guard.reject_batch(p, cli_scope(), batch_id, reason=reason))
    click.echo(f"batch {batch.id} rejected by {batch.decided_by}")


@guard.command()
@click.option("--state", type=click.Choice(["open", "cleared", "all"]), default="all", show_default=True)
def alarms(state: str) -> None:
    """Uncommanded-opening alarms."""
    wanted = None if state == "all" else state
    found = _with_platform(lambda p: switch_guard.list_alarms(p.engine, cli_scope(), state=wanted, now=p.now()))
    table = Table(title="uncommanded-opening alarms")
    for column in ("id", "area", "state", "opened at", "openings", "ignore mode sent", "cleared by"):
        table.add_column(column)
    for a in found:
        table.add_row(str(a.id), a.area, a.state, _when(a.opened_at), str(a.openings),
                      "yes" if a.ignore_disconnects_sent else "", a.cleared_by or "")  # fmt: skip
    Console().print(table)


@guard.command()
def areas() -> None:
    """Areas whose ignore-disconnects mode was ever set."""
    found = _with_platform(lambda p: switch_guard.area_modes(p.engine, cli_scope(), now=p.now()))
    table = Table(title="ignore-disconnects mode by area")
    for column in ("area", "ignoring", "changed by", "changed at", "reason", "alarm"):
        table.add_column(column)
    for m in found:
        table.add_row(m.area, "yes" if m.ignore_disconnects else "no", m.changed_by, _when(m.changed_at), m.reason,
                      "" if m.alarm_id is None else str(m.alarm_id))  # fmt: skip
    Console().print(table)


@guard.command("ignore-disconnects")
@click.argument("area", type=_AREA)
@click.option("--reason", required=True, help="why (recorded)")
def ignore_disconnects(area: str, reason: str) -> None:
    """Put AREA's meters in the signed ignore-disconnects mode."""
    sent = _with_platform(lambda p: switch_guard.ignore_disconnects(p, cli_scope(), area, reason=reason, now=p.now()))
    click.echo(f"area {area}: disconnects refused; IGNORE_DISCONNECTS_ON queued for {sent} meters")


@guard.command()
@click.argument("area", type=_AREA)
def clear(area: str) -> None:
    """End AREA's ignore-disconnects mode and close its alarm (security admin)."""
    sent = _with_platform(lambda p: switch_guard.clear(p, cli_scope(), area, now=p.now()))
    click.echo(f"area {area}: cleared; IGNORE_DISCONNECTS_OFF queued for {sent} meters")


# --- the disconnect calendar ---------------------------------------------------------------------


@click.group()
def calendar() -> None:
    """When non-payment disconnects are not allowed: hours, weekdays, holidays, moratoria."""


def _minute(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        hours, minutes = text.split(":")
        return int(hours) * 60 + int(minutes)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not HH:MM") from None


@calendar.command("list")
def list_entries() -> None:
    """Every calendar entry."""
    found = _with_platform(lambda p: calendar_services.list_entries(p.engine, cli_scope(), now=p.now()))
    table = Table(title="disconnect calendar")
    for column in ("id", "rule", "area", "reason", "by"):
        table.add_column(column)
    for e in found:
        table.add_row(str(e.id), e.describe(), e.area or "everywhere", e.reason, e.created_by)
    Console().print(table)


@calendar.command()
@click.option("--kind", type=click.Choice(calendar_services.KINDS), required=True)
@click.option("--reason", required=True)
@click.option("--area", help="one substation (default: everywhere)")
@click.option("--start", help="hours: HH:MM local")
@click.option("--end", help="hours: HH:MM local (before --start: wraps past midnight)")
@click.option("--weekday", type=click.IntRange(0, 6), help="weekday: 0 Monday .. 6 Sunday")
@click.option("--day", type=click.DateTime(["%Y-%m-%d"]), help="holiday: YYYY-MM-DD")
@click.option("--from", "starts_at", type=click.DateTime(["%Y-%m-%dT%H:%M%z"]), help="moratorium start, with zone")
@click.option("--until", "ends_at", type=click.DateTime(["%Y-%m-%dT%H:%M%z"]), help="moratorium end, with zone")
def add(  # noqa: PLR0913, PLR0917 - one option per field of an entry (click passes them by name)
    kind: str, reason: str, area: str | None, start: str | None, end: str | None, weekday: int | None,
    day: datetime | None, starts_at: datetime | None, ends_at: datetime | None,
) -> None:  # fmt: skip
    """Add a rule, e.g. --kind hours --start 16:00 --end 08:00, or --kind weekday --weekday 5."""
    holiday: date | None = None if day is None else day.date()
    entry = calendar_services.CalendarEntry(
        0, kind, area, reason, start_minute=_minute(start), end_minute=_minute(end), weekday=weekday, day=holiday,
        starts_at=starts_at, ends_at=ends_at,
    )  # fmt: skip
    added = _with_platform(lambda p: calendar_services.add_entry(p.engine, cli_scope(), entry, now=p.now()))
    click.echo(f"calendar entry {added.id}: {added.describe()}")


@calendar.command()
@click.argument("entry_id", type=click.IntRange(1))
def remove(entry_id: int) -> None:
    """Remove calendar entry ENTRY_ID."""
    _with_platform(lambda p: calendar_services.remove_entry(p.engine, cli_scope(), entry_id, now=p.now()))
    click.echo(f"calendar entry {entry_id} removed")
