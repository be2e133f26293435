"""The utility CA on SQLite and PostgreSQL: profiles and their extensions, the CA key encrypted at
rest, revocation and CRL contents, the registry and its audit trail; the `openami pki` commands
with path traversal and overwrite refusals."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy.engine import Engine

from openami.db.tables import audit_log, pki_crls
from openami.errors import Conflict, InvalidInput, NotFound
from openami.security import pki
from openami.security.keystore import StaticMasterKey
from openami.security.pki import COMMAND_SIGNING_EKU, CaFiles, CertificateRequest
from openami.security.pki_files import PkiFileError
from openami.security.pki_registry import Profile, RevocationReason, find_certificate, fingerprint, list_certificates

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ACTOR = "cli:test"


@pytest.fixture
def keystore() -> StaticMasterKey:
    return StaticMasterKey(bytes(range(32)))


@pytest.fixture
def ca(engine: Engine, tmp_path: Path, keystore: StaticMasterKey) -> pki.CertificateAuthority:
    with engine.begin() as conn:
        return pki.init_ca(conn, CaFiles(tmp_path / "pki"), keystore, now=NOW, actor=ACTOR)


def _issue(engine: Engine, ca: pki.CertificateAuthority, request: CertificateRequest) -> pki.IssuedCertificate:
    with engine.begin() as conn:
        return pki.issue_certificate(conn, ca, request, now=NOW, actor=ACTOR)


def _ext(certificate: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return certificate.extensions.get_extension_for_class(kind)


def test_ca_is_a_self_signed_p256_root_with_path_length_zero(ca: pki.CertificateAuthority) -> None:
    cert = ca.certificate
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True  # type: ignore[attr-defined]
    assert constraints.value.path_length == 0  # type: ignore[attr-defined]
    usage = _ext(cert, x509.KeyUsage).value
    assert usage.key_cert_sign  # type: ignore[attr-defined]
    assert usage.crl_sign  # type: ignore[attr-defined]
    assert not usage.digital_signature  # type: ignore[attr-defined]


def test_ca_key_is_encrypted_at_rest_and_private(ca: pki.CertificateAuthority, keystore: StaticMasterKey) -> None:
    files = ca.files
    key_pem = files.key.read_bytes()
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in key_pem
    with pytest.raises(TypeError):  # needs a password: nothing on disk is the key in plaintext
        serialization.load_pem_private_key(key_pem, password=None)
    raw = ca.key.private_numbers().private_value.to_bytes(32, "big")
    for path in files.directory.iterdir():
        assert raw not in path.read_bytes(), path
        assert raw.hex() not in path.read_text(errors="replace").lower(), path
    for path in (files.key, files.passphrase):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    assert pki.load_ca(files, keystore).key.private_numbers() == ca.key.private_numbers()
    with pytest.raises(PkiFileError, match="master key"):
        pki.load_ca(files, StaticMasterKey(b"\x07" * 32))


def test_ca_refuses_to_be_overwritten(engine: Engine, ca: pki.CertificateAuthority, keystore: StaticMasterKey) -> None:
    before = ca.files.key.read_bytes()
    with engine.begin() as conn, pytest.raises(Conflict, match="refusing to overwrite"):
        pki.init_ca(conn, ca.files, keystore, now=NOW, actor=ACTOR)
    assert ca.files.key.read_bytes() == before


def test_server_certificate_has_server_auth_and_sans(engine: Engine, ca: pki.CertificateAuthority) -> None:
    request = CertificateRequest(
        Profile.SERVER, "api", dns_names=("api.example.net",), ip_addresses=("10.0.0.5", "::1")
    )
    issued = _issue(engine, ca, request)
    cert = issued.certificate
    cert.verify_directly_issued_by(ca.certificate)
    assert _ext(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    sans = _ext(cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["api.example.net"]  # type: ignore[attr-defined]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5", "::1"]  # type: ignore[attr-defined]
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature  # type: ignore[attr-defined]
    assert not usage.value.key_cert_sign  # type: ignore[attr-defined]
    assert _ext(cert, x509.BasicConstraints).value.ca is False  # type: ignore[attr-defined]
    assert cert.not_valid_before_utc == NOW - pki.BACKDATE
    assert cert.not_valid_after_utc == NOW + timedelta(days=pki.DEFAULT_DAYS[Profile.SERVER])
    assert 2**64 < cert.serial_number < 2**159  # 159 random bits (a collision-free 64-bit floor, RFC 5280 4.1.2.2)


def test_client_and_command_authority_profiles(engine: Engine, ca: pki.CertificateAuthority) -> None:
    client = _issue(engine, ca, CertificateRequest(Profile.CLIENT, "cis-gateway")).certificate
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cis-gateway"
    assert _ext(client, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    authority = _issue(engine, ca, CertificateRequest(Profile.COMMAND_AUTHORITY, "command-authority")).certificate
    usage = _ext(authority, x509.KeyUsage).value
    flags = ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "key_cert_sign")
    assert usage.digital_signature
    assert not any(getattr(usage, f) for f in flags)
    eku = _ext(authority, x509.ExtendedKeyUsage).value
    assert list(eku) == [COMMAND_SIGNING_EKU]  # neither serverAuth nor clientAuth: TLS refuses it


def test_serials_are_distinct_and_registered_with_fingerprints(engine: Engine, ca: pki.CertificateAuthority) -> None:
    issued = [_issue(engine, ca, CertificateRequest(Profile.CLIENT, f"client-{i}")) for i in range(5)]
    with engine.connect() as conn:
        records = list_certificates(conn)
    assert sorted(r.profile for r in records) == sorted([Profile.CA, *[Profile.CLIENT] * 5])  # same issued_at
    assert len({r.serial for r in records}) == 6
    for item in issued:
        with engine.connect() as conn:
            found = find_certificate(conn, fingerprint=fingerprint(item.certificate))
        assert found == item.record
        assert found.status(NOW) == "valid"


@pytest.mark.parametrize(
    "request_",
    [
        CertificateRequest(Profile.CLIENT, "../etc/passwd"),
        CertificateRequest(Profile.CLIENT, "x" * 65),
        CertificateRequest(Profile.SERVER, "api"),  # no SAN
        CertificateRequest(Profile.SERVER, "api", dns_names=("bad name",)),
        CertificateRequest(Profile.SERVER, "api", ip_addresses=("10.0.0.300",)),
        CertificateRequest(Profile.CLIENT, "ok", valid_days=0),
        CertificateRequest(Profile.CA, "another-ca"),
    ],
)
def test_bad_requests_are_refused_and_nothing_is_recorded(
    engine: Engine, ca: pki.CertificateAuthority, request_: CertificateRequest
) -> None:
    with pytest.raises(InvalidInput):
        _issue(engine, ca, request_)
    with engine.connect() as conn:
        assert len(list_certificates(conn)) == 1


def test_revocation_publishes_a_signed_crl_with_reason_and_next_update(
    engine: Engine, ca: pki.CertificateAuthority
) -> None:
    first = _issue(engine, ca, CertificateRequest(Profile.CLIENT, "first"))
    second = _issue(engine, ca, CertificateRequest(Profile.CLIENT, "second"))
    later = NOW + timedelta(hours=1)
    with engine.begin() as conn:
        record = pki.revoke_certificate(
            conn, ca, first.record.serial.lower(), RevocationReason.KEY_COMPROMISE, now=later, actor=ACTOR
        )
    assert record.revoked_at == later
    assert record.status(later) == "revoked"
    crl = x509.load_pem_x509_crl(ca.files.crl.read_bytes())
    assert crl.is_signature_valid(ca.key.public_key())
    assert crl.last_update_utc == later
    assert crl.next_update_utc == later + pki.CRL_LIFETIME
    entry = crl.get_revoked_certificate_by_serial_number(first.certificate.serial_number)
    assert entry is not None
    assert entry.revocation_date_utc == later
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(second.certificate.serial_number) is None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2  # 1 was init's, empty
    with engine.connect() as conn:
        numbers = conn.execute(sa.select(pki_crls.c.number, pki_crls.c.revoked_count).order_by("number")).all()
    assert [tuple(n) for n in numbers] == [(1, 0), (2, 1)]


def test_revocation_refusals(engine: Engine, ca: pki.CertificateAuthority) -> None:
    issued = _issue(engine, ca, CertificateRequest(Profile.CLIENT, "once"))
    reason = RevocationReason.SUPERSEDED
    with engine.begin() as conn:
        pki.revoke_certificate(conn, ca, issued.record.serial, reason, now=NOW, actor=ACTOR)
    cases = [(issued.record.serial, Conflict), ("ABCDEF", NotFound), ("not-hex", InvalidInput)]
    cases.append((format(ca.certificate.serial_number, "X"), InvalidInput))  # the CA itself
    for serial, error in cases:
        with engine.begin() as conn, pytest.raises(error):
            pki.revoke_certificate(conn, ca, serial, reason, now=NOW, actor=ACTOR)


def test_issuance_and_revocation_are_audited(engine: Engine, ca: pki.CertificateAuthority) -> None:
    issued = _issue(engine, ca, CertificateRequest(Profile.CLIENT, "audited"))
    with engine.begin() as conn:
        pki.revoke_certificate(
            conn, ca, issued.record.serial, RevocationReason.PRIVILEGE_WITHDRAWN, now=NOW, actor=ACTOR
        )
        rows = conn.execute(
            sa.select(audit_log.c.actor, audit_log.c.action, audit_log.c.resource, audit_log.c.details)
            .where(audit_log.c.action.like("pki.%"))
            .order_by(audit_log.c.seq)
        ).all()
    assert [(r.actor, r.action) for r in rows] == [(ACTOR, "pki.issue"), (ACTOR, "pki.issue"), (ACTOR, "pki.revoke")]
    assert rows[1].resource == rows[2].resource == f"certificate:{issued.record.serial}"
    assert json.loads(rows[2].details)["reason"] == "privilege-withdrawn"
    assert "PRIVATE" not in "".join(r.details for r in rows)


def test_expired_certificate_is_reported_expired(engine: Engine, ca: pki.CertificateAuthority) -> None:
    with engine.begin() as conn:
        old = pki.issue_certificate(
            conn, ca, CertificateRequest(Profile.CLIENT, "old", valid_days=1), now=NOW - timedelta(days=3), actor=ACTOR
        )
    assert old.certificate.not_valid_after_utc < NOW
    assert old.record.status(NOW) == "expired"


# -- the CLI ---------------------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "openami.cli", "pki", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAMI_")}
    env.update(OPENAMI_DATA_DIR=str(tmp_path / "var"), OPENAMI_DATABASE_URL=db_url)
    return env


def test_cli_init_issue_list_revoke_crl(cli_env: dict[str, str], tmp_path: Path) -> None:
    assert _cli("list", env=cli_env).returncode == 0
    init = _cli("init", env=cli_env)
    assert init.returncode == 0, init.stderr
    assert "ca.crt.pem" in init.stdout
    again = _cli("init", env=cli_env)
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr

    out = tmp_path / "issued"
    client = _cli("issue", "client", "cis", "--out", str(out), env=cli_env)
    assert client.returncode == 0, client.stderr
    key_file = out / "cis.key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    server = _cli("issue", "server", "--dns", "api.example.net", "--ip", "10.1.2.3", "--out", str(out), env=cli_env)
    assert server.returncode == 0, server.stderr
    assert _cli("issue", "command-authority", "--out", str(out), env=cli_env).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}.{k}.pem" for n in ("cis", "server", "command-authority") for k in ("crt", "key")
    )

    listing = json.loads(_cli("list", "--json", env=cli_env).stdout)
    assert [c["profile"] for c in listing] == ["ca", "client", "server", "command-authority"]
    serial = listing[1]["serial"]
    revoked = _cli("revoke", serial, "--reason", "key-compromise", env=cli_env)
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(_cli("list", "--json", env=cli_env).stdout)[1]["status"] == "revoked"
    assert _cli("revoke", serial, "--reason", "key-compromise", env=cli_env).returncode == 1
    assert "unspecified" in _cli("revoke", serial, "--reason", "because", env=cli_env).stderr  # lists the choices

    crl_file = tmp_path / "crl.pem"
    assert _cli("crl", "--out", str(crl_file), env=cli_env).returncode == 0
    crl = x509.load_pem_x509_crl(crl_file.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    refused = _cli("crl", "--out", str(crl_file), env=cli_env)
    assert refused.returncode == 1
    assert "refusing to overwrite" in refused.stderr
    assert _cli("crl", "--out", str(crl_file), "--force", env=cli_env).returncode == 0
    table = _cli("list", env={**cli_env, "COLUMNS": "250"})
    assert "revoked (key-compromise)" in table.stdout


def test_cli_refuses_path_traversal_and_overwriting_keys(cli_env: dict[str, str], tmp_path: Path) -> None:
    assert _cli("init", env=cli_env).returncode == 0
    out = tmp_path / "out"
    for name in ("../escape", "a/b", "..", ".hidden", "x\\..\\y"):
        result = _cli("issue", "client", name, "--out", str(out), env=cli_env)
        assert result.returncode == 1, name
        assert "not a plain file name" in result.stderr, result.stderr
    for args in (("issue", "client", "ok", "--out", f"{out}/../elsewhere"), ("crl", "--out", f"{out}/../crl.pem")):
        result = _cli(*args, env=cli_env)
        assert result.returncode == 2
        assert "contains '..'" in result.stderr
    assert not (tmp_path / "escape.key.pem").exists()
    assert not (tmp_path / "elsewhere").exists()

    assert _cli("issue", "client", "dup", "--out", str(out), env=cli_env).returncode == 0
    key_before = (out / "dup.key.pem").read_bytes()
    again = _cli("issue", "client", "dup", "--out", str(out), env=cli_env)
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr
    assert (out / "dup.key.pem").read_bytes() == key_before
    listing = json.loads(_cli("list", "--json", env=cli_env).stdout)
    assert [c["common_name"] for c in listing].count("dup") == 1  # the refused issuance recorded nothing

    (out / "link.key.pem").symlink_to(tmp_path / "target")  # a planted link is not followed
    result = _cli("issue", "client", "link", "--out", str(out), env=cli_env)
    assert result.returncode == 1
    assert not (tmp_path / "target").exists()


def test_cli_without_a_ca_says_so(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = _cli("issue", "client", "early", "--out", str(tmp_path / "o"), env=cli_env)
    assert result.returncode == 1
    assert "openami pki init" in result.stderr
    assert _cli("revoke", "ABC", "--reason", "superseded", env=cli_env).returncode == 1
