"""The command authority's certificate reaches every simulated meter of a fleet (workers and in-process)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from openami.cli.sim_fleet import fleet as fleet_command
from openami.protocols.dlms import obis
from openami.protocols.dlms.client import ClientSettings, DlmsClient
from openami.protocols.dlms.signed_command import authority_fingerprint, certificate_der_from_pem
from openami.sim.fleet import Fleet, FleetConfig, SimMeter
from openami.sim.runner import run_fleet_in_process, start_fleet_processes

HEADEND_TITLE = b"OPENAMI1"


def _authority_pem(curve: ec.EllipticCurve) -> str:
    key = ec.generate_private_key(curve)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openami command authority (test)")])
    start = datetime(2020, 1, 1, tzinfo=UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=36500))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


PEM = _authority_pem(ec.SECP256R1())
CONFIG = FleetConfig(
    meters=2, seed=5, flaky_fraction=0.0, drift_fraction=0.0, port=0, days=1, authority_certificate_pem=PEM
)


async def _pinned_fingerprint(meter: SimMeter) -> object:
    settings = ClientSettings.management(
        meter.host, meter.port, system_title=HEADEND_TITLE, guek=meter.guek, gak=meter.gak, timeout_s=10.0
    )
    async with DlmsClient(settings) as client:
        return await client.get(obis.COMMAND_GATEWAY, 200, 2)


async def test_meters_in_worker_processes_pin_the_fleet_s_authority() -> None:
    expected = authority_fingerprint(certificate_der_from_pem(PEM))
    with start_fleet_processes(CONFIG, processes=1, timeout=60) as handle:
        fingerprints = [await _pinned_fingerprint(meter) for meter in handle.fleet.meters]
    assert fingerprints == [expected, expected]


async def test_meters_served_in_process_pin_the_fleet_s_authority() -> None:
    stop = asyncio.Event()
    ready: asyncio.Future[Fleet] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_fleet_in_process(CONFIG, stop, ready))
    try:
        running = await asyncio.wait_for(ready, timeout=60)
        fingerprint = await _pinned_fingerprint(running.meters[1])
    finally:
        stop.set()
        await task
    assert fingerprint == authority_fingerprint(certificate_der_from_pem(PEM))


@pytest.mark.parametrize("content", ["not a certificate", _authority_pem(ec.SECP384R1())])
def test_cli_refuses_an_authority_certificate_it_cannot_use(tmp_path: Path, content: str) -> None:
    path = tmp_path / "authority.pem"
    path.write_text(content)
    result = CliRunner().invoke(
        fleet_command, ["--meters", "1", "--authority-cert", str(path), "--out", str(tmp_path / "c.json")]
    )
    assert result.exit_code == 2
    assert "--authority-cert" in result.output
