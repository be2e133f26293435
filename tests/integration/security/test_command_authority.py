"""The command authority on SQLite and PostgreSQL: created once with a certificate from the utility CA,
its key stored only wrapped under the master key, signatures a meter verifies, and one strictly
increasing originator counter taken in the caller's transaction."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.engine import Engine

from openami.db.tables import audit_log, command_authorities
from openami.errors import NotFound
from openami.protocols.dlms.signed_command import (
    Command,
    CommandRefused,
    Envelope,
    Refusal,
    verify_signed_command,
)
from openami.security import command_authority as authority_core
from openami.security.keystore import KeyIntegrityError, StaticMasterKey
from openami.security.pki import COMMAND_SIGNING_EKU, CaFiles
from openami.security.pki_registry import Profile, find_certificate

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TITLE = bytes.fromhex("4F414D0000000001")


@pytest.fixture
def keystore() -> StaticMasterKey:
    return StaticMasterKey(bytes(range(32)))


@pytest.fixture
def files(tmp_path: Path) -> CaFiles:
    return CaFiles(tmp_path / "pki")


def _create(engine: Engine, keystore: StaticMasterKey, files: CaFiles) -> authority_core.CommandAuthority:
    with engine.begin() as conn:
        return authority_core.load_or_create(conn, keystore, files, now=NOW)


def test_created_once_with_a_command_authority_certificate_from_the_ca(
    engine: Engine, keystore: StaticMasterKey, files: CaFiles
) -> None:
    with engine.connect() as conn, pytest.raises(NotFound):
        authority_core.load(conn, keystore)
    first = _create(engine, keystore, files)
    assert files.exists()  # the CA was created for it
    again = _create(engine, keystore, files)
    assert again.fingerprint == first.fingerprint
    assert again.private_key.private_numbers() == first.private_key.private_numbers()
    certificate = first.certificate
    assert certificate.subject.rfc4514_string() == f"CN={authority_core.AUTHORITY_COMMON_NAME}"
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [COMMAND_SIGNING_EKU]
    ca_certificate = x509.load_pem_x509_certificate(files.cert.read_bytes())
    certificate.verify_directly_issued_by(ca_certificate)
    with engine.connect() as conn:
        record = find_certificate(conn, fingerprint=first.fingerprint)
        assert record is not None
        assert record.profile is Profile.COMMAND_AUTHORITY
        assert conn.execute(sa.select(sa.func.count()).select_from(command_authorities)).scalar_one() == 1
        created = conn.execute(sa.select(audit_log.c.actor).where(audit_log.c.action == "authority.create")).all()
        assert len(created) == 1
    assert "private_key" not in repr(first)


def test_the_key_is_stored_only_wrapped_under_the_master_key(
    engine: Engine, keystore: StaticMasterKey, files: CaFiles
) -> None:
    created = _create(engine, keystore, files)
    der = created.private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    scalar = created.private_key.private_numbers().private_value.to_bytes(32, "big")
    with engine.connect() as conn:
        wrapped = bytes(conn.execute(sa.select(command_authorities.c.wrapped_key)).scalar_one())
    assert der not in wrapped
    assert scalar not in wrapped
    for path in files.directory.iterdir():
        assert scalar not in path.read_bytes()
        assert der not in path.read_bytes()
    with engine.connect() as conn, pytest.raises(KeyIntegrityError):
        authority_core.load(conn, StaticMasterKey(bytes(32)))  # another master key cannot open it


def test_a_signed_command_verifies_under_the_certificate_and_a_tampered_one_does_not(
    engine: Engine, keystore: StaticMasterKey, files: CaFiles
) -> None:
    created = _create(engine, keystore, files)
    envelope = Envelope(TITLE, Command.DISCONNECT, 7, NOW, NOW + timedelta(minutes=5))
    signed = created.sign(envelope)
    public_key = x509.load_pem_x509_certificate(created.certificate_pem.encode()).public_key()
    assert verify_signed_command(signed, public_key=public_key, own_title=TITLE, last_counter=6, now=NOW) == envelope  # type: ignore[arg-type]
    forged = type(signed)(signed.envelope[:-1] + bytes([signed.envelope[-1] ^ 1]), signed.signature)
    with pytest.raises(CommandRefused) as refused:
        verify_signed_command(forged, public_key=public_key, own_title=TITLE, last_counter=6, now=NOW)  # type: ignore[arg-type]
    assert refused.value.reason in (Refusal.BAD_SIGNATURE, Refusal.MALFORMED)


def test_the_counter_is_strictly_increasing_and_a_rollback_never_reuses_one(engine: Engine) -> None:
    with engine.begin() as conn:
        first = authority_core.take_counter(conn)
        second = authority_core.take_counter(conn)
    assert second == first + 1
    with engine.connect() as conn, conn.begin() as transaction:  # the command was not recorded: rolled back
        authority_core.take_counter(conn)
        transaction.rollback()
    with engine.begin() as conn:
        third = authority_core.take_counter(conn)
        assert authority_core.last_counter(conn) == third
    assert third > second


def test_concurrent_signers_never_share_a_counter(engine: Engine) -> None:
    taken: list[int] = []
    lock = threading.Lock()

    def sign_many() -> None:
        for _ in range(20):
            with engine.begin() as conn:
                value = authority_core.take_counter(conn)
            with lock:
                taken.append(value)

    threads = [threading.Thread(target=sign_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(taken) == 80
    assert len(set(taken)) == 80
