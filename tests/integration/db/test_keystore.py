"""Keys at rest: AES-256-GCM envelope under a master key from a 0600 file or from settings."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretBytes
from sqlalchemy.engine import Engine

from openami.db.tables import meter_keys
from openami.errors import NotFound
from openami.security import keystore as keystore_module
from openami.security.keystore import (
    FileMasterKey,
    KeyIntegrityError,
    MasterKeyError,
    MasterKeyProvider,
    MeterKeys,
    StaticMasterKey,
    load_active_keys,
    load_meter_keys,
    master_key_provider,
    store_first_keys,
    store_meter_keys,
)
from openami.settings import Settings
from tests.integration.db.helpers import NOW, add_meters

GUEK = bytes(range(16))
GAK = bytes(range(16, 32))


def test_master_key_file_is_created_0600_with_32_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "var" / "master.key"
    first = FileMasterKey.open(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    assert FileMasterKey.open(path).key_id == first.key_id  # reused, not regenerated
    assert isinstance(first, MasterKeyProvider)
    assert FileMasterKey.open(tmp_path / "other.key").key_id != first.key_id


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_master_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    FileMasterKey.open(path)
    path.chmod(mode)
    with pytest.raises(MasterKeyError, match="group or others") as caught:
        FileMasterKey.open(path)
    assert "chmod 600" in caught.value.message


def test_master_key_file_of_wrong_size_or_missing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(MasterKeyError, match="exactly 32 bytes"):
        FileMasterKey.open(path)
    with pytest.raises(MasterKeyError, match="does not exist"):
        FileMasterKey.open(tmp_path / "absent.key", create=False)


def test_master_key_from_settings_hex_or_raw(tmp_path: Path) -> None:
    key = os.urandom(32)
    from_hex = master_key_provider(Settings(master_key=SecretBytes(key.hex().encode()), data_dir=tmp_path))
    from_raw = master_key_provider(Settings(master_key=SecretBytes(key), data_dir=tmp_path))
    assert from_hex.key_id == from_raw.key_id == StaticMasterKey(key).key_id
    from_file = master_key_provider(Settings(data_dir=tmp_path))
    assert isinstance(from_file, FileMasterKey)
    assert from_file.path == tmp_path / "master.key"
    with pytest.raises(MasterKeyError):
        master_key_provider(Settings(master_key=SecretBytes(b"too short"), data_dir=tmp_path))


def test_keys_round_trip_and_are_stored_encrypted(engine: Engine, tmp_path: Path) -> None:
    keystore = FileMasterKey.open(tmp_path / "master.key")
    with engine.begin() as conn:
        (meter,) = add_meters(conn, 1)
        store_meter_keys(conn, keystore, meter, MeterKeys(GUEK, GAK), now=NOW)
        store_meter_keys(conn, keystore, meter, MeterKeys(GUEK, GAK), now=NOW)  # idempotent re-import
    with engine.connect() as conn:
        assert load_meter_keys(conn, keystore, meter) == MeterKeys(GUEK, GAK)
        blobs = conn.execute(sa.select(meter_keys.c.wrapped, meter_keys.c.key_version)).all()
    assert len(blobs) == 2
    assert all(GUEK not in bytes(b) and GAK not in bytes(b) for b, _ in blobs)
    assert {v for _, v in blobs} == {1}


def test_rotated_key_becomes_version_2(engine: Engine, tmp_path: Path) -> None:
    keystore = FileMasterKey.open(tmp_path / "master.key")
    new_gak = bytes(16)
    with engine.begin() as conn:
        (meter,) = add_meters(conn, 1)
        store_meter_keys(conn, keystore, meter, MeterKeys(GUEK, GAK), now=NOW)
        store_meter_keys(conn, keystore, meter, MeterKeys(GUEK, new_gak), now=NOW)
        assert load_meter_keys(conn, keystore, meter) == MeterKeys(GUEK, new_gak)
        versions = conn.execute(
            sa.select(meter_keys.c.key_kind, sa.func.max(meter_keys.c.key_version)).group_by(meter_keys.c.key_kind)
        )
        assert dict(versions.all()) == {"guek": 1, "gak": 2}


def test_blob_moved_to_another_meter_does_not_decrypt(engine: Engine, tmp_path: Path) -> None:
    keystore = FileMasterKey.open(tmp_path / "master.key")
    with engine.begin() as conn:
        a, b = add_meters(conn, 2)
        store_meter_keys(conn, keystore, a, MeterKeys(GUEK, GAK), now=NOW)
        store_meter_keys(conn, keystore, b, MeterKeys(GAK, GUEK), now=NOW)
        blob_a = conn.execute(
            sa.select(meter_keys.c.wrapped).where(meter_keys.c.meter_id == a, meter_keys.c.key_kind == "guek")
        ).scalar_one()
        conn.execute(
            sa.update(meter_keys)
            .where(meter_keys.c.meter_id == b, meter_keys.c.key_kind == "guek")
            .values(wrapped=blob_a)
        )
    with engine.connect() as conn, pytest.raises(KeyIntegrityError, match=f"guek of meter {b} failed") as caught:
        load_meter_keys(conn, keystore, b)
    assert caught.value.__cause__ is None
    assert GUEK.hex() not in str(caught.value)


def test_wrong_master_key_is_refused_and_missing_keys_are_not_found(engine: Engine, tmp_path: Path) -> None:
    keystore = FileMasterKey.open(tmp_path / "master.key")
    with engine.begin() as conn:
        a, b = add_meters(conn, 2)
        store_meter_keys(conn, keystore, a, MeterKeys(GUEK, GAK), now=NOW)
    with engine.connect() as conn:
        with pytest.raises(KeyIntegrityError, match="wrapped under master key"):
            load_meter_keys(conn, FileMasterKey.open(tmp_path / "other.key"), a)
        with pytest.raises(NotFound, match=f"meter {b}"):
            load_meter_keys(conn, keystore, b)


def test_aad_binds_kind_and_version() -> None:
    keystore = StaticMasterKey(os.urandom(32))
    blob = keystore.wrap(GUEK, b"meter-1-guek")
    assert keystore.unwrap(blob, b"meter-1-guek") == GUEK
    with pytest.raises(KeyIntegrityError):
        keystore.unwrap(blob, b"meter-2-guek")
    with pytest.raises(KeyIntegrityError):
        keystore.unwrap(blob[:-1] + bytes([blob[-1] ^ 1]), b"meter-1-guek")


def test_keys_never_appear_in_repr_str_or_errors() -> None:
    keys = MeterKeys(GUEK, GAK)
    for text in (repr(keys), str(keys), f"{keys}", repr([keys]), repr(StaticMasterKey(GUEK + GAK))):
        assert "***" in text
        for secret in (GUEK, GAK):
            assert secret.hex() not in text
            assert repr(secret) not in text
    with pytest.raises(ValueError, match="hex digits") as caught:
        MeterKeys.from_hex("zz" + GUEK.hex()[2:], GAK.hex())
    assert GAK.hex() not in str(caught.value)
    assert caught.value.__cause__ is None
    assert MeterKeys.from_hex(GUEK.hex(), GAK.hex()) == keys


def test_many_meters_are_commissioned_and_loaded_in_chunks_of_meter_ids(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL takes at most 65,535 parameters a statement: 100,000 meters' ids in one IN list failed."""
    monkeypatch.setattr(keystore_module, "_IN_CHUNK", 2)
    keystore = FileMasterKey.open(tmp_path / "master.key")
    with engine.begin() as conn:
        ids = add_meters(conn, 5)
        keys = {m: MeterKeys(guek=bytes([m % 256]) * 16, gak=GAK) for m in ids}
        assert store_first_keys(conn, keystore, dict(list(keys.items())[:3]), now=NOW) == set(ids[:3])
        assert store_first_keys(conn, keystore, keys, now=NOW) == set(ids[3:])  # the first three were known
    with engine.connect() as conn:
        loaded, failed = load_active_keys(conn, keystore, [*ids, max(ids) + 1])
    assert {m: k.guek for m, (k, _) in loaded.items()} == {m: k.guek for m, k in keys.items()}
    assert list(failed) == [max(ids) + 1]
