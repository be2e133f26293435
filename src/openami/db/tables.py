"""The platform's schema as SQLAlchemy Core tables (the migrations create exactly this).

Time columns come in two kinds (see docs/adr/0003-interval-storage.md):

- hot, per-value columns (``interval_end``, ``received_at``, ``captured_at``, ``superseded_at``) are
  integer epoch seconds, UTC, on both databases: cheapest to bulk-load, compare and index, and the
  same numbers the bus messages carry;
- bookkeeping columns (when a meter was commissioned, a run started, a token expires) are
  ``UtcDateTime``: timezone-aware UTC datetimes in Python, ``timestamptz`` on PostgreSQL.

``interval_readings`` has no foreign key to ``meters``: it would cost a lookup per row (on PostgreSQL
one per COPYed row, 3-4x slower; on SQLite ~8 %), so ``readings.write_intervals`` checks each batch's
meters once instead. Meters are never deleted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

__all__ = ["UtcDateTime", "metadata"]


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out; a naive datetime is refused."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError("naive datetime given where an aware UTC datetime is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PRIMARY KEY is SQLite's rowid
MeterId = sa.Integer  # int4 keeps the hot readings rows and their key narrow on PostgreSQL
Epoch = sa.BigInteger  # epoch seconds, UTC

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

# --- grid topology: substation → feeder → transformer → service point ← premise -------------------

substations = sa.Table(
    "substations",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
)

feeders = sa.Table(
    "feeders",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("substation_id", sa.String(32), sa.ForeignKey("substations.id"), nullable=False, index=True),
)

transformers = sa.Table(
    "transformers",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("feeder_id", sa.String(32), sa.ForeignKey("feeders.id"), nullable=False, index=True),
    sa.Column("phase", sa.String(3), nullable=False),
)

premises = sa.Table(
    "premises",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("address", sa.String(255), nullable=False),
    sa.Column("critical_care", sa.Boolean(), nullable=False, server_default=sa.false()),
)

service_points = sa.Table(
    "service_points",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("premise_id", sa.String(32), sa.ForeignKey("premises.id"), nullable=False, index=True),
    sa.Column("transformer_id", sa.String(32), sa.ForeignKey("transformers.id"), nullable=False, index=True),
    sa.Column("phase", sa.String(3), nullable=False),
)

# --- meters and their keys -------------------------------------------------------------------------

meters = sa.Table(
    "meters",
    metadata,
    sa.Column("id", MeterId(), primary_key=True, autoincrement=True),
    sa.Column("serial", sa.String(32), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("customer_class", sa.String(16), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("port", sa.Integer(), nullable=False),
    sa.Column("system_title", sa.LargeBinary(8), nullable=False),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("firmware", sa.String(32), nullable=False),
    sa.Column("service_point_id", sa.String(32), sa.ForeignKey("service_points.id"), nullable=True, index=True),
    sa.Column("commissioned_at", UtcDateTime(), nullable=False),
)

meter_keys = sa.Table(
    "meter_keys",
    metadata,
    sa.Column("meter_id", MeterId(), sa.ForeignKey("meters.id"), primary_key=True),
    sa.Column("key_kind", sa.String(16), primary_key=True),  # "guek", "gak"
    sa.Column("key_version", sa.Integer(), primary_key=True),  # 1, 2, ... per (meter, kind): rotations
    sa.Column("kek_id", sa.String(64), nullable=False),  # which master key wrapped it
    sa.Column("wrapped", sa.LargeBinary(), nullable=False),  # AES-256-GCM: format byte, nonce, ciphertext+tag
    sa.Column("created_at", UtcDateTime(), nullable=False),
    # "pending" (generated, not yet proven in the meter), "active" (one per meter and kind), "retired"
    sa.Column("state", sa.String(16), nullable=False, server_default=sa.text("'active'")),
    sa.Column("state_changed_at", UtcDateTime(), nullable=True),
)

# --- readings -------------------------------------------------------------------------------------

channels = sa.Table(  # reference data for people reading the tables; code is ChannelCode
    "channels",
    metadata,
    sa.Column("code", sa.SmallInteger(), primary_key=True, autoincrement=False),
    sa.Column("obis", sa.String(32), nullable=False, unique=True),
    sa.Column("unit", sa.String(16), nullable=False),
)

interval_readings = sa.Table(  # the current version of every (meter, channel, interval end)
    "interval_readings",
    metadata,
    # column order avoids alignment padding on PostgreSQL (40 bytes of data per row)
    sa.Column("meter_id", MeterId(), primary_key=True, autoincrement=False),
    sa.Column("channel", sa.SmallInteger(), primary_key=True, autoincrement=False),  # ChannelCode; unit Wh
    sa.Column("source", sa.SmallInteger(), nullable=False),  # SourceCode
    sa.Column("interval_end", Epoch(), primary_key=True, autoincrement=False),
    sa.Column("value", sa.Float(53), nullable=False),
    sa.Column("received_at", Epoch(), nullable=False),
    sa.Column("quality", sa.Integer(), nullable=False),  # domain.readings.Quality flags
    sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")),
    # estimates are few; this partial index finds a meter's oldest one (a gap to read again) at once
    sa.Index(
        "ix_interval_readings_estimated",
        "meter_id",
        "interval_end",
        sqlite_where=sa.text("source = 2"),
        postgresql_where=sa.text("source = 2"),
    ),
    sqlite_with_rowid=False,
)

interval_reading_versions = sa.Table(  # superseded versions, written by a trigger on update
    "interval_reading_versions",
    metadata,
    sa.Column("meter_id", MeterId(), primary_key=True, autoincrement=False),
    sa.Column("channel", sa.SmallInteger(), primary_key=True, autoincrement=False),
    sa.Column("interval_end", Epoch(), primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("value", sa.Float(53), nullable=False),
    sa.Column("quality", sa.Integer(), nullable=False),
    sa.Column("source", sa.SmallInteger(), nullable=False),
    sa.Column("received_at", Epoch(), nullable=False),
    sa.Column("superseded_at", Epoch(), nullable=False),  # received_at of the version that replaced it
    sqlite_with_rowid=False,
)

register_snapshots = sa.Table(
    "register_snapshots",
    metadata,
    sa.Column("meter_id", MeterId(), sa.ForeignKey("meters.id"), primary_key=True),
    sa.Column("obis", sa.String(32), primary_key=True),
    sa.Column("captured_at", Epoch(), primary_key=True, autoincrement=False),
    sa.Column("value", sa.Float(53), nullable=False),
    sa.Column("unit", sa.String(16), nullable=False),
    sa.Column("quality", sa.Integer(), nullable=False),
    sa.Column("received_at", Epoch(), nullable=False),
    sqlite_with_rowid=False,
)

# --- collection bookkeeping -----------------------------------------------------------------------

collection_runs = sa.Table(
    "collection_runs",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),  # "scheduled", "on-demand", "catch-up"
    sa.Column("window_start", UtcDateTime(), nullable=False),
    sa.Column("window_end", UtcDateTime(), nullable=False),
    sa.Column("started_at", UtcDateTime(), nullable=False),
    sa.Column("finished_at", UtcDateTime(), nullable=True),
    sa.Column("expected", sa.Integer(), nullable=False),
    sa.Column("received", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("failed", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Index(None, "window_start"),
)

communication_errors = sa.Table(
    "communication_errors",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("meter_id", MeterId(), sa.ForeignKey("meters.id"), nullable=False),
    sa.Column("run_id", Id, sa.ForeignKey("collection_runs.id"), nullable=True, index=True),
    sa.Column("step", sa.String(64), nullable=False),
    sa.Column("cause", sa.Text(), nullable=False),
    sa.Column("occurred_at", UtcDateTime(), nullable=False, index=True),
    sa.Index(None, "meter_id", "occurred_at"),
)

invocation_counters = sa.Table(  # DLMS invocation counters; only ever move forward
    "invocation_counters",
    metadata,
    sa.Column("meter_id", MeterId(), sa.ForeignKey("meters.id"), primary_key=True),
    sa.Column("client_ic_next", sa.BigInteger(), nullable=False),  # next IC the head-end will use
    sa.Column("server_ic_last", sa.BigInteger(), nullable=True),  # last IC accepted from the meter
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    # the GUEK version server_ic_last belongs to: a new key is a new counter space (security.keys)
    sa.Column("key_version", sa.Integer(), nullable=False, server_default=sa.text("1")),
)

# --- API access -----------------------------------------------------------------------------------

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),  # SHA-256 hex; never the token
    sa.Column("scopes", sa.String(512), nullable=False),  # space-separated
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=True),
    sa.Column("revoked_at", UtcDateTime(), nullable=True),
)

# --- audit and security events (security.audit, security.events) ---------------------------------
# The audit log is append-only and hash-chained (docs/security.md "Audit log"): ``at_us`` is epoch
# microseconds UTC (exact on both databases and hashed as an integer), ``details`` the entry's
# canonical JSON text, ``prev_hash``/``hash`` raw SHA-256 digests. ``audit_chain_head`` is one row
# (id 1) holding the newest sequence number and hash: appenders update it first, which serialises
# them (row lock on PostgreSQL, the write lock on SQLite) so the chain can never fork.

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", Id, primary_key=True, autoincrement=False),
    sa.Column("at_us", Epoch(), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("resource", sa.String(128), nullable=True),
    sa.Column("subject", sa.String(128), nullable=True),
    sa.Column("purpose", sa.String(64), nullable=True),
    sa.Column("details", sa.Text(), nullable=False),
    sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
    sa.Index(None, "actor", "seq"),
    sa.Index(None, "action", "seq"),
    sa.Index(None, "resource", "seq"),
    sa.Index(None, "subject", "seq"),
    sa.Index(None, "at_us"),
)

audit_chain_head = sa.Table(
    "audit_chain_head",
    metadata,
    sa.Column("id", sa.SmallInteger(), primary_key=True, autoincrement=False),  # always 1
    sa.Column("seq", sa.BigInteger(), nullable=False),  # 0 before the first entry
    sa.Column("hash", sa.LargeBinary(32), nullable=False),  # 32 zero bytes before the first entry
)

audit_checkpoints = sa.Table(  # signed (seq, hash) of the chain, every N entries and on demand
    "audit_checkpoints",
    metadata,
    sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
    sa.Column("signed_at_us", Epoch(), nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),  # SHA-256 of the public key (SPKI DER), hex
    sa.Column("signature", sa.LargeBinary(), nullable=False),  # ECDSA P-256 / SHA-256, DER
)

security_events = sa.Table(  # no FK to meters: an event must never be lost to an unknown meter id
    "security_events",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("occurred_at", UtcDateTime(), nullable=False),
    sa.Column("meter_id", MeterId(), nullable=True),
    sa.Column("actor", sa.String(128), nullable=True),
    sa.Column("details", sa.Text(), nullable=False),  # canonical JSON
    sa.Column("audit_seq", sa.BigInteger(), nullable=False),  # the audit entry written with it
    sa.Column("alert_id", Id, sa.ForeignKey("security_alerts.id"), nullable=True, index=True),
    sa.Index(None, "kind", "occurred_at"),
    sa.Index(None, "meter_id", "occurred_at"),
    sa.Index(None, "actor", "occurred_at"),
)

security_alerts = sa.Table(  # one row per burst of security events above a threshold
    "security_alerts",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("scope", sa.String(160), nullable=False),  # "meter:42", "actor:user:bob" or "fleet"
    sa.Column("state", sa.String(16), nullable=False),  # "open", "acknowledged", "closed"
    sa.Column("opened_at", UtcDateTime(), nullable=False),
    sa.Column("last_event_at", UtcDateTime(), nullable=False),
    sa.Column("event_count", sa.Integer(), nullable=False),
    sa.Column("threshold", sa.Integer(), nullable=False),  # N events ...
    sa.Column("window_s", sa.Integer(), nullable=False),  # ... within T seconds
    sa.Column("acknowledged_by", sa.String(128), nullable=True),
    sa.Column("acknowledged_at", UtcDateTime(), nullable=True),
    sa.Column("closed_by", sa.String(128), nullable=True),
    sa.Column("closed_at", UtcDateTime(), nullable=True),
    sa.Index(None, "kind", "scope", "state"),
    sa.Index(None, "state", "opened_at"),
)

# --- identities and roles (security.identity, security.policy) ---
# An account is a person (password login) or a system client (mutual TLS, no password). Roles are
# assigned per account; ``area`` (a substation) scopes network operators, ``account_premises`` scopes
# customers. A token issued for an account carries that account's roles as they are when it is used.

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    sa.Column("display_name", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),  # "user" | "client"
    sa.Column("password_hash", sa.String(255), nullable=True),  # argon2id PHC string; NULL: no password login
    sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("failed_logins", sa.Integer(), nullable=False, server_default=sa.text("0")),  # consecutive
    sa.Column("locked_until", UtcDateTime(), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("last_login_at", UtcDateTime(), nullable=True),
)

account_roles = sa.Table(
    "account_roles",
    metadata,
    sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), primary_key=True),
    sa.Column("role", sa.String(32), primary_key=True),  # security.policy.Role
    sa.Column("area", sa.String(32), sa.ForeignKey("substations.id"), nullable=True),
    sa.Column("granted_at", UtcDateTime(), nullable=False),
)

account_premises = sa.Table(
    "account_premises",
    metadata,
    sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), primary_key=True),
    sa.Column("premise_id", sa.String(32), sa.ForeignKey("premises.id"), primary_key=True),
)

account_tokens = sa.Table(  # who owns an API token; a token without an owner grants nothing
    "account_tokens",
    metadata,
    sa.Column("token_id", Id, sa.ForeignKey("api_tokens.id"), primary_key=True),
    sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), nullable=False, index=True),
)

system_clients = sa.Table(  # certificates of system-to-system clients, mapped to an account
    "system_clients",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), nullable=False, index=True),
    sa.Column("subject_cn", sa.String(255), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),  # SHA-256 of the DER, lower-case hex
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("revoked_at", UtcDateTime(), nullable=True),
)

# --- PKI (security.pki) ---
# Every certificate the utility CA issued (including the CA's own), by serial number (upper-case hex).
# Private keys are never stored: they are handed to the requester once. ``pki_crls`` keeps every CRL
# the CA signed; its ``number`` is the CRL number extension, strictly increasing.

pki_certificates = sa.Table(
    "pki_certificates",
    metadata,
    sa.Column("serial", sa.String(40), primary_key=True),  # up to 20 octets (RFC 5280 4.1.2.2), hex
    sa.Column("profile", sa.String(32), nullable=False),  # security.pki.Profile
    sa.Column("subject", sa.String(255), nullable=False),  # RFC 4514 string
    sa.Column("common_name", sa.String(64), nullable=False),
    sa.Column("not_before", UtcDateTime(), nullable=False),
    sa.Column("not_after", UtcDateTime(), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),  # SHA-256 of the DER, lower-case hex
    sa.Column("issued_at", UtcDateTime(), nullable=False),
    sa.Column("revoked_at", UtcDateTime(), nullable=True),
    sa.Column("revocation_reason", sa.String(32), nullable=True),  # security.pki.RevocationReason
    sa.Index(None, "common_name"),
)

pki_crls = sa.Table(
    "pki_crls",
    metadata,
    sa.Column("number", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("this_update", UtcDateTime(), nullable=False),
    sa.Column("next_update", UtcDateTime(), nullable=False),
    sa.Column("revoked_count", sa.Integer(), nullable=False),
    sa.Column("der", sa.LargeBinary(), nullable=False),
)

# --- key management (security.keys) ---
# A rotation request (one meter, a list, a feeder, every meter; normal or emergency) has one row per
# meter in ``meter_key_rotations``, whose state machine docs/security.md "Key management" describes:
# queued -> uncertain (transfer sent, outcome unknown) -> rotated, or failed / cancelled. The new keys
# are ``meter_keys`` rows in state "pending" (``guek_version``/``gak_version``) until proven in the
# meter. At most one open (queued or uncertain) rotation per meter.

key_rotations = sa.Table(
    "key_rotations",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("target", sa.String(160), nullable=False),  # "meter:42", "feeder:SS01-F01", "meters:3", "all"
    sa.Column("emergency", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("requested_by", sa.String(128), nullable=False),  # the audit actor
    sa.Column("requested_at", UtcDateTime(), nullable=False),
)

meter_key_rotations = sa.Table(
    "meter_key_rotations",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("rotation_id", Id, sa.ForeignKey("key_rotations.id"), nullable=False, index=True),
    sa.Column("meter_id", MeterId(), sa.ForeignKey("meters.id"), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # queued, uncertain, rotated, failed, cancelled
    sa.Column("priority", sa.SmallInteger(), nullable=False),  # higher first: emergency re-keys
    sa.Column("guek_version", sa.Integer(), nullable=False),  # the pending meter_keys versions
    sa.Column("gak_version", sa.Integer(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("last_error", sa.String(255), nullable=True),  # why the last attempt did not finish; no keys
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Column("transfer_sent_at", UtcDateTime(), nullable=True),
    sa.Column("settled_at", UtcDateTime(), nullable=True),
    sa.Index(None, "meter_id", "state"),
    sa.Index(None, "state", "priority"),
    sa.Index(
        "uq_meter_key_rotations_open",
        "meter_id",
        unique=True,
        sqlite_where=sa.text("state IN ('queued', 'uncertain')"),
        postgresql_where=sa.text("state IN ('queued', 'uncertain')"),
    ),
)

# --- switch commands (services.switch, headend.commands; migration 0007) ---

# --- off-switch guard (services.switch_guard; migration 0008) ---

# --- prepayment (services.prepay; migration 0009) ---

# --- meter events (headend.push_listener, services.events; migration 0010) ---

# --- outages and webhooks (services.outage, services.webhooks; migration 0011) ---

# --- revenue protection (services.revenue; migration 0012) ---
