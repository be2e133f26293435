"""Initial schema: topology, meters and their wrapped keys, readings with version history, registers,
collection runs, communication errors, invocation counters and API tokens.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from openami.db.tables import UtcDateTime

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_METER_ID = sa.Integer

_SQLITE_VERSION_TRIGGER = """
CREATE TRIGGER interval_readings_keep_version AFTER UPDATE ON interval_readings
BEGIN
  INSERT INTO interval_reading_versions
    (meter_id, channel, interval_end, version, value, quality, source, received_at, superseded_at)
  VALUES (OLD.meter_id, OLD.channel, OLD.interval_end, OLD.version, OLD.value, OLD.quality, OLD.source,
          OLD.received_at, NEW.received_at);
END
"""

_PG_VERSION_FUNCTION = """
CREATE FUNCTION interval_readings_keep_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO interval_reading_versions
    (meter_id, channel, interval_end, version, value, quality, source, received_at, superseded_at)
  VALUES (OLD.meter_id, OLD.channel, OLD.interval_end, OLD.version, OLD.value, OLD.quality, OLD.source,
          OLD.received_at, NEW.received_at);
  RETURN NULL;
END $$
"""

_PG_VERSION_TRIGGER = """
CREATE TRIGGER interval_readings_keep_version AFTER UPDATE ON interval_readings
FOR EACH ROW EXECUTE FUNCTION interval_readings_keep_version()
"""

_PG_VIEW = """
CREATE VIEW interval_readings_utc AS
SELECT meter_id, channel, to_timestamp(interval_end) AS interval_end, value, quality, source,
       to_timestamp(received_at) AS received_at, version
FROM interval_readings
"""


def _pk(*columns: str, table: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint(*columns, name=f"pk_{table}")


def _fk(column: str, target: str, table: str) -> sa.ForeignKeyConstraint:
    ref_table = target.split(".", maxsplit=1)[0]
    return sa.ForeignKeyConstraint([column], [target], name=f"fk_{table}_{column}_{ref_table}")


def _topology() -> None:
    op.create_table(
        "substations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        _pk("id", table="substations"),
    )
    op.create_table(
        "feeders",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("substation_id", sa.String(32), nullable=False),
        _pk("id", table="feeders"),
        _fk("substation_id", "substations.id", "feeders"),
    )
    op.create_index("ix_feeders_substation_id", "feeders", ["substation_id"])
    op.create_table(
        "transformers",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("feeder_id", sa.String(32), nullable=False),
        sa.Column("phase", sa.String(3), nullable=False),
        _pk("id", table="transformers"),
        _fk("feeder_id", "feeders.id", "transformers"),
    )
    op.create_index("ix_transformers_feeder_id", "transformers", ["feeder_id"])
    op.create_table(
        "premises",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("critical_care", sa.Boolean(), nullable=False, server_default=sa.false()),
        _pk("id", table="premises"),
    )
    op.create_table(
        "service_points",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("premise_id", sa.String(32), nullable=False),
        sa.Column("transformer_id", sa.String(32), nullable=False),
        sa.Column("phase", sa.String(3), nullable=False),
        _pk("id", table="service_points"),
        _fk("premise_id", "premises.id", "service_points"),
        _fk("transformer_id", "transformers.id", "service_points"),
    )
    op.create_index("ix_service_points_premise_id", "service_points", ["premise_id"])
    op.create_index("ix_service_points_transformer_id", "service_points", ["transformer_id"])


def _meters() -> None:
    op.create_table(
        "meters",
        sa.Column("id", _METER_ID(), nullable=False, autoincrement=True),
        sa.Column("serial", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("customer_class", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("system_title", sa.LargeBinary(8), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("firmware", sa.String(32), nullable=False),
        sa.Column("service_point_id", sa.String(32), nullable=True),
        sa.Column("commissioned_at", UtcDateTime(), nullable=False),
        _pk("id", table="meters"),
        _fk("service_point_id", "service_points.id", "meters"),
        sa.UniqueConstraint("serial", name="uq_meters_serial"),
    )
    op.create_index("ix_meters_service_point_id", "meters", ["service_point_id"])
    op.create_table(
        "meter_keys",
        sa.Column("meter_id", _METER_ID(), nullable=False),
        sa.Column("key_kind", sa.String(16), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("kek_id", sa.String(64), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        _pk("meter_id", "key_kind", "key_version", table="meter_keys"),
        _fk("meter_id", "meters.id", "meter_keys"),
    )
    op.create_table(
        "invocation_counters",
        sa.Column("meter_id", _METER_ID(), nullable=False),
        sa.Column("client_ic_next", sa.BigInteger(), nullable=False),
        sa.Column("server_ic_last", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        _pk("meter_id", table="invocation_counters"),
        _fk("meter_id", "meters.id", "invocation_counters"),
    )


def _readings(dialect: str) -> None:
    channels = op.create_table(
        "channels",
        sa.Column("code", sa.SmallInteger(), nullable=False, autoincrement=False),
        sa.Column("obis", sa.String(32), nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        _pk("code", table="channels"),
        sa.UniqueConstraint("obis", name="uq_channels_obis"),
    )
    assert channels is not None
    op.bulk_insert(
        channels,
        [{"code": 1, "obis": "1.0.1.8.0.255", "unit": "Wh"}, {"code": 2, "obis": "1.0.2.8.0.255", "unit": "Wh"}],
    )
    op.create_table(
        "interval_readings",
        sa.Column("meter_id", _METER_ID(), nullable=False, autoincrement=False),
        sa.Column("channel", sa.SmallInteger(), nullable=False, autoincrement=False),
        sa.Column("source", sa.SmallInteger(), nullable=False),
        sa.Column("interval_end", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("value", sa.Float(53), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.Column("quality", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")),
        _pk("meter_id", "channel", "interval_end", table="interval_readings"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "interval_reading_versions",
        sa.Column("meter_id", _METER_ID(), nullable=False, autoincrement=False),
        sa.Column("channel", sa.SmallInteger(), nullable=False, autoincrement=False),
        sa.Column("interval_end", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("version", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("value", sa.Float(53), nullable=False),
        sa.Column("quality", sa.Integer(), nullable=False),
        sa.Column("source", sa.SmallInteger(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.Column("superseded_at", sa.BigInteger(), nullable=False),
        _pk("meter_id", "channel", "interval_end", "version", table="interval_reading_versions"),
        sqlite_with_rowid=False,
    )
    if dialect == "postgresql":
        op.execute(_PG_VERSION_FUNCTION)
        op.execute(_PG_VERSION_TRIGGER)
        op.execute(_PG_VIEW)
    else:
        op.execute(_SQLITE_VERSION_TRIGGER)
    op.create_table(
        "register_snapshots",
        sa.Column("meter_id", _METER_ID(), nullable=False),
        sa.Column("obis", sa.String(32), nullable=False),
        sa.Column("captured_at", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("value", sa.Float(53), nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("quality", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        _pk("meter_id", "obis", "captured_at", table="register_snapshots"),
        _fk("meter_id", "meters.id", "register_snapshots"),
        sqlite_with_rowid=False,
    )


def _operations() -> None:
    op.create_table(
        "collection_runs",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("window_start", UtcDateTime(), nullable=False),
        sa.Column("window_end", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.Column("expected", sa.Integer(), nullable=False),
        sa.Column("received", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("failed", sa.Integer(), nullable=False, server_default=sa.text("0")),
        _pk("id", table="collection_runs"),
    )
    op.create_index("ix_collection_runs_window_start", "collection_runs", ["window_start"])
    op.create_table(
        "communication_errors",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("meter_id", _METER_ID(), nullable=False),
        sa.Column("run_id", _ID, nullable=True),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("occurred_at", UtcDateTime(), nullable=False),
        _pk("id", table="communication_errors"),
        _fk("meter_id", "meters.id", "communication_errors"),
        _fk("run_id", "collection_runs.id", "communication_errors"),
    )
    op.create_index("ix_communication_errors_run_id", "communication_errors", ["run_id"])
    op.create_index("ix_communication_errors_occurred_at", "communication_errors", ["occurred_at"])
    op.create_index("ix_communication_errors_meter_id_occurred_at", "communication_errors", ["meter_id", "occurred_at"])
    op.create_table(
        "api_tokens",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("scopes", sa.String(512), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=True),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        _pk("id", table="api_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    _topology()
    _meters()
    _readings(dialect)
    _operations()


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP VIEW interval_readings_utc")
    for table in (
        "api_tokens",
        "communication_errors",
        "collection_runs",
        "register_snapshots",
        "interval_reading_versions",
        "interval_readings",
        "channels",
        "invocation_counters",
        "meter_keys",
        "meters",
        "service_points",
        "premises",
        "transformers",
        "feeders",
        "substations",
    ):
        op.drop_table(table)
    if dialect == "postgresql":
        op.execute("DROP FUNCTION interval_readings_keep_version()")
