"""``openami pki``: the utility certificate authority (init, issue, revoke, list, crl).

Every issuance and revocation is audited (actor ``cli:local-admin``): whoever can run this command
can read the database and the master key, as for the other local administration commands.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from openami.errors import OpenAmiError
from openami.services import pki as pki_services
from openami.services.bootstrap import open_storage
from openami.services.pki import CertificateRecord, Profile, RevocationReason
from openami.settings import Settings

ACTOR = "cli:local-admin"
_REASONS = [reason.value for reason in RevocationReason]


def _fail(exc: OpenAmiError) -> click.ClickException:
    return click.ClickException(exc.message)


def _safe_path(value: Path, option: str) -> Path:
    """Refuse ``..`` components: a path given to the CA names where to write, never how to get out."""
    if ".." in value.parts:
        raise click.BadParameter(f"{value} contains '..'; give the directory itself", param_hint=option)
    return value


def _out_dir(_ctx: click.Context, _param: click.Parameter, value: Path) -> Path:
    return _safe_path(value, "--out")


_OUT = click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    callback=_out_dir,
    help="directory for <name>.crt.pem and <name>.key.pem (the key is written once, mode 0600)",
)
_DAYS = click.option("--days", type=click.IntRange(1, 3650), default=None, help="validity (default per profile)")


@click.group()
def pki() -> None:
    """The utility certificate authority: certificates for the API server, system clients and the
    command authority; revocation and CRLs."""


@pki.command()
@click.option("--common-name", default="openami utility CA", show_default=True)
def init(common_name: str) -> None:
    """Create the CA (ECDSA P-256) if there is none; an existing CA is never overwritten."""
    settings = Settings()
    try:
        engine = open_storage(settings)
        pki_services.init_ca(engine, settings, now=datetime.now(UTC), actor=ACTOR, common_name=common_name)
    except OpenAmiError as exc:
        raise _fail(exc) from None
    files = pki_services.ca_files(settings)
    click.echo(f"CA created: {files.cert} (clients trust this certificate); CRL in {files.crl}")


@pki.group()
def issue() -> None:
    """Issue a certificate; its private key is written once to --out and never stored."""


def _issue(request: pki_services.CertificateRequest, out_dir: Path) -> None:
    settings = Settings()
    try:
        engine = open_storage(settings)
        issued = pki_services.issue(engine, settings, request, out_dir, now=datetime.now(UTC), actor=ACTOR)
    except OpenAmiError as exc:
        raise _fail(exc) from None
    record = issued.record
    click.echo(f"issued {record.profile.value} certificate {record.serial} for {record.common_name}")
    click.echo(f"  certificate: {issued.cert_file}\n  private key: {issued.key_file} (mode 0600; not kept by the CA)")
    click.echo(f"  valid until {record.not_after.isoformat()}; SHA-256 fingerprint {record.fingerprint}")


@issue.command("server")
@click.option("--dns", "dns_names", multiple=True, help="DNS name (repeatable)")
@click.option("--ip", "ips", multiple=True, help="IP address (repeatable)")
@_OUT
@_DAYS
def issue_server(dns_names: tuple[str, ...], ips: tuple[str, ...], out_dir: Path, days: int | None) -> None:
    """A TLS server certificate (serverAuth) for the given names and addresses."""
    if not dns_names and not ips:
        raise click.UsageError("give at least one --dns or --ip")
    request = pki_services.CertificateRequest(Profile.SERVER, "openami-api", dns_names, ips, days)
    _issue(request, out_dir)


@issue.command("client")
@click.argument("name")
@_OUT
@_DAYS
def issue_client(name: str, out_dir: Path, days: int | None) -> None:
    """A mutual-TLS client certificate (clientAuth) for system client NAME (its CN)."""
    _issue(pki_services.CertificateRequest(Profile.CLIENT, name, valid_days=days), out_dir)


@issue.command("command-authority")
@_OUT
@_DAYS
def issue_command_authority(out_dir: Path, days: int | None) -> None:
    """The command authority's signing certificate (digitalSignature only; refused by TLS)."""
    request = pki_services.CertificateRequest(Profile.COMMAND_AUTHORITY, "openami-command-authority", valid_days=days)
    _issue(request, out_dir)


@pki.command()
@click.argument("serial")
@click.option("--reason", type=click.Choice(_REASONS), required=True)
def revoke(serial: str, reason: str) -> None:
    """Revoke certificate SERIAL (hex) and publish a new CRL; the API refuses it from the next connection."""
    settings = Settings()
    try:
        engine = open_storage(settings)
        record = pki_services.revoke(
            engine, settings, serial, RevocationReason(reason), now=datetime.now(UTC), actor=ACTOR
        )
    except OpenAmiError as exc:
        raise _fail(exc) from None
    click.echo(f"revoked {record.serial} ({record.common_name}, {reason}); new CRL published")


@pki.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def list_(as_json: bool) -> None:
    """Every certificate the CA issued, with its status."""
    try:
        records = pki_services.list_certificates_of(open_storage(Settings()))
    except OpenAmiError as exc:
        raise _fail(exc) from None
    now = datetime.now(UTC)
    if as_json:
        click.echo(json.dumps([_json(r, now) for r in records], indent=2))
        return
    table = Table(title=f"certificates ({len(records)})")
    for column in ("serial", "profile", "common name", "not after", "status", "fingerprint (SHA-256)"):
        table.add_column(column)
    for r in records:
        status = r.status(now) + (f" ({r.revocation_reason})" if r.revocation_reason else "")
        table.add_row(
            r.serial, r.profile.value, r.common_name, r.not_after.isoformat(), status, r.fingerprint[:16] + "…"
        )
    Console().print(table)


def _json(r: CertificateRecord, now: datetime) -> dict[str, Any]:
    return {
        "serial": r.serial,
        "profile": r.profile.value,
        "subject": r.subject,
        "common_name": r.common_name,
        "not_before": r.not_before.isoformat(),
        "not_after": r.not_after.isoformat(),
        "fingerprint": r.fingerprint,
        "issued_at": r.issued_at.isoformat(),
        "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
        "revocation_reason": r.revocation_reason.value if r.revocation_reason else None,
        "status": r.status(now),
    }


@pki.command()
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="replace an existing file")
def crl(out_file: Path, force: bool) -> None:
    """Write the newest CRL (PEM) to FILE, for relying parties that fetch it themselves."""
    _safe_path(out_file, "--out")
    settings = Settings()
    try:
        engine = open_storage(settings)
        number = pki_services.export_crl(engine, settings, out_file, now=datetime.now(UTC), overwrite=force)
    except OpenAmiError as exc:
        raise _fail(exc) from None
    click.echo(f"CRL number {number} written to {out_file}")
