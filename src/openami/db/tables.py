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
    # indexed: the push process asks for its max every second (has a key changed? migration 0015)
    sa.Column("state_changed_at", UtcDateTime(), nullable=True, index=True),
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
    # no foreign key to meters: write_registers checks each batch with one query (ADR 0003)
    sa.Column("meter_id", MeterId(), primary_key=True, autoincrement=False),
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
# ``command_authorities``: the command authority's certificate and its private key, PKCS#8 DER wrapped
# by the master key (AES-256-GCM, bound to the certificate's fingerprint); one row is active.
# ``authority_counter``: the one originator counter (a single row, id 1), taken with an UPDATE in the
# transaction that records the command, so counters are strictly increasing across processes.
# ``switch_commands``: one signed command per row and its lifecycle (docs/switch.md): awaiting-approval,
# queued, sent, confirmed, failed, expired, cancelled; the meter's confirmation in the last columns.

command_authorities = sa.Table(
    "command_authorities",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("serial", sa.String(40), nullable=False, unique=True),  # the certificate's (pki_certificates)
    sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),  # SHA-256 of the DER, hex
    sa.Column("certificate_pem", sa.Text(), nullable=False),
    sa.Column("kek_id", sa.String(64), nullable=False),  # which master key wrapped the private key
    sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
    sa.Column("active", sa.Boolean(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)

authority_counter = sa.Table(
    "authority_counter",
    metadata,
    sa.Column("id", sa.SmallInteger(), primary_key=True, autoincrement=False),
    sa.Column("last_counter", sa.BigInteger(), nullable=False),
)

switch_commands = sa.Table(
    "switch_commands",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("meter_id", MeterId(), sa.ForeignKey("meters.id"), nullable=False),
    sa.Column("command", sa.String(16), nullable=False),  # disconnect, reconnect, reconnect-arm, limit, cancel-limit
    sa.Column("threshold_w", sa.Integer(), nullable=True),  # limit parameters
    sa.Column("duration_s", sa.Integer(), nullable=True),
    sa.Column("emergency", sa.Boolean(), nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("counter", sa.BigInteger(), nullable=False, unique=True),  # the authority's originator counter
    sa.Column("execute_at", UtcDateTime(), nullable=False),  # not_before of the signed envelope
    sa.Column("not_after", UtcDateTime(), nullable=False),
    sa.Column("envelope", sa.LargeBinary(), nullable=False),  # the signed bytes, as the meter receives them
    sa.Column("signature", sa.LargeBinary(), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),  # SHA-256 of the request (idempotency check)
    sa.Column("idempotency_key", sa.String(128), nullable=True),
    sa.Column("requested_by", sa.String(128), nullable=False),  # the audit actor
    sa.Column("reason", sa.String(255), nullable=False),
    sa.Column("purpose", sa.String(32), nullable=True),
    sa.Column("workflow", sa.String(32), nullable=True),
    sa.Column("batch_id", sa.BigInteger(), nullable=True),
    sa.Column("priority", sa.SmallInteger(), nullable=False),  # higher first
    sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("next_attempt_at", UtcDateTime(), nullable=False),  # a meter that did not answer: backoff
    sa.Column("failure_reason", sa.String(255), nullable=True),  # always set on failed and expired
    sa.Column("refusal", sa.String(32), nullable=True),  # the meter's Refusal name (bad-signature, replayed ...)
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("queued_at", UtcDateTime(), nullable=True),
    sa.Column("sent_at", UtcDateTime(), nullable=True),
    sa.Column("confirmed_at", UtcDateTime(), nullable=True),
    sa.Column("failed_at", UtcDateTime(), nullable=True),
    sa.Column("expired_at", UtcDateTime(), nullable=True),
    sa.Column("cancelled_at", UtcDateTime(), nullable=True),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Column("output_state", sa.Boolean(), nullable=True),  # the meter's confirmation
    sa.Column("control_state", sa.SmallInteger(), nullable=True),
    sa.Column("voltage_v", sa.Float(), nullable=True),
    sa.Column("current_a", sa.Float(), nullable=True),
    sa.Column("load_side_voltage_v", sa.Float(), nullable=True),
    sa.Column("active_threshold_w", sa.Integer(), nullable=True),
    sa.Column("final_import_wh", sa.Float(), nullable=True),  # final register read after a disconnect
    sa.Column("final_export_wh", sa.Float(), nullable=True),
    sa.Column("final_read_at", UtcDateTime(), nullable=True),
    sa.Index(None, "meter_id", "status"),
    sa.Index(None, "status", "next_attempt_at"),
    sa.Index(None, "batch_id"),
    sa.Index(None, "requested_by", "idempotency_key", unique=True),
)

# --- off-switch guard (services.switch_guard; migration 0008) ---
# ``guard_disconnects``: one row per disconnect the guard admitted; the rate limits count them over a
# rolling window, fleet-wide and per area (substation; NULL for a meter outside the topology).
# ``guard_batches``: batches held by the two-person rule (awaiting-approval -> approved | rejected).
# ``guard_openings``: every SWITCH_OPENED event the detector saw, explained by a command or not, once
# per (meter, meter time); ``guard_alarms``: >= N unexplained openings in one area within the window
# (open -> cleared). ``guard_area_modes``: an area whose meters were sent the signed ignore-disconnects
# mode. ``disconnect_calendar``: when non-payment disconnects are not allowed (daily hours, weekdays,
# holidays, moratoria; optionally per area). ``switch_workflows`` and ``switch_workflow_steps``: the
# move-in, move-out, non-payment, reinstatement, shedding and limit workflows and each step's outcome.

guard_disconnects = sa.Table(
    "guard_disconnects",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("meter_id", MeterId(), sa.ForeignKey("meters.id"), nullable=False),
    sa.Column("area", sa.String(32), nullable=True),
    sa.Column("admitted_at", UtcDateTime(), nullable=False),
    sa.Column("batch_id", Id, nullable=True),  # guard_batches.id when it needed a second approver
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Index(None, "admitted_at"),
    sa.Index(None, "area", "admitted_at"),
)

guard_batches = sa.Table(
    "guard_batches",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("command", sa.String(32), nullable=False),  # "disconnect", "limit", ...
    sa.Column("meter_count", sa.Integer(), nullable=False),
    sa.Column("meter_ids", sa.Text(), nullable=False),  # JSON array: re-checked against the limits on approval
    sa.Column("areas", sa.String(255), nullable=False),  # comma-separated, for people
    sa.Column("state", sa.String(24), nullable=False),  # awaiting-approval, approved, rejected
    sa.Column("requested_by", sa.String(128), nullable=False),
    sa.Column("requested_at", UtcDateTime(), nullable=False),
    sa.Column("decided_by", sa.String(128), nullable=True),
    sa.Column("decided_at", UtcDateTime(), nullable=True),
    sa.Column("note", sa.String(255), nullable=True),  # the rejection's reason
    sa.Index(None, "state"),
)

guard_alarms = sa.Table(
    "guard_alarms",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("area", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # open, cleared
    sa.Column("opened_at", UtcDateTime(), nullable=False),
    sa.Column("openings", sa.Integer(), nullable=False),  # unexplained openings so far
    sa.Column("threshold", sa.Integer(), nullable=False),
    sa.Column("window_s", sa.Integer(), nullable=False),
    sa.Column("ignore_disconnects_sent", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("cleared_by", sa.String(128), nullable=True),
    sa.Column("cleared_at", UtcDateTime(), nullable=True),
    sa.Index(None, "area", "state"),
)

guard_openings = sa.Table(
    "guard_openings",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("meter_id", MeterId(), nullable=False),
    sa.Column("area", sa.String(32), nullable=True),
    sa.Column("meter_time", Epoch(), nullable=False),  # the meter's time stamp of the event
    sa.Column("seen_at", UtcDateTime(), nullable=False),
    sa.Column("counter", sa.BigInteger(), nullable=True),  # the signed command's counter the meter reported
    sa.Column("uncommanded", sa.Boolean(), nullable=False),
    sa.Column("alarm_id", Id, sa.ForeignKey("guard_alarms.id"), nullable=True),
    sa.UniqueConstraint("meter_id", "meter_time"),
    sa.Index(None, "area", "uncommanded", "seen_at"),
)

guard_area_modes = sa.Table(
    "guard_area_modes",
    metadata,
    sa.Column("area", sa.String(32), primary_key=True),
    sa.Column("ignore_disconnects", sa.Boolean(), nullable=False),
    sa.Column("changed_by", sa.String(128), nullable=False),
    sa.Column("changed_at", UtcDateTime(), nullable=False),
    sa.Column("reason", sa.String(255), nullable=False),
    sa.Column("alarm_id", Id, sa.ForeignKey("guard_alarms.id"), nullable=True),
)

disconnect_calendar = sa.Table(
    "disconnect_calendar",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),  # hours, weekday, holiday, moratorium
    sa.Column("area", sa.String(32), nullable=True),  # NULL: everywhere
    sa.Column("start_minute", sa.SmallInteger(), nullable=True),  # hours: local minutes of the day, may wrap
    sa.Column("end_minute", sa.SmallInteger(), nullable=True),
    sa.Column("weekday", sa.SmallInteger(), nullable=True),  # weekday: 0 Monday .. 6 Sunday (local)
    sa.Column("day", sa.Date(), nullable=True),  # holiday: a local date
    sa.Column("starts_at", UtcDateTime(), nullable=True),  # moratorium: [starts_at, ends_at)
    sa.Column("ends_at", UtcDateTime(), nullable=True),
    sa.Column("reason", sa.String(255), nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)

switch_workflows = sa.Table(
    "switch_workflows",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(24), nullable=False),  # move-in, move-out, non-payment, reinstate, shed, ...
    sa.Column("meter_id", MeterId(), nullable=True),  # single-meter workflows
    sa.Column("target", sa.String(160), nullable=False),  # "meter:42", "feeder:SS01-F01", "meters:12"
    sa.Column("state", sa.String(24), nullable=False),  # running, completed, failed, awaiting-approval
    sa.Column("step", sa.String(32), nullable=False),  # the step running now, or the last one
    sa.Column("failure_step", sa.String(32), nullable=True),
    sa.Column("failure_reason", sa.String(500), nullable=True),
    sa.Column("parameters", sa.Text(), nullable=False),  # JSON: what was asked (no personal data)
    sa.Column("requested_by", sa.String(128), nullable=False),
    sa.Column("requested_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Column("finished_at", UtcDateTime(), nullable=True),
    sa.Index(None, "state"),
    sa.Index(None, "meter_id"),
)

switch_workflow_steps = sa.Table(
    "switch_workflow_steps",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("workflow_id", Id, sa.ForeignKey("switch_workflows.id"), nullable=False, index=True),
    sa.Column("step", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # ok, failed, skipped
    sa.Column("detail", sa.String(500), nullable=False),
    sa.Column("command_id", sa.BigInteger(), nullable=True),  # the switch command the step sent
    sa.Column("at", UtcDateTime(), nullable=False),
)

# --- prepayment (services.prepay; migration 0009) ---
# Money is an integer number of micro-units (1e-6) of the currency's major unit (EUR 1.00 = 1_000_000):
# exact for every ISO 4217 currency, with room for sub-cent interval prices. Energy is integer mWh.
# ``prepay_ledger`` is append-only (triggers refuse UPDATE and DELETE); ``prepay_accounts.balance``
# caches the newest ``balance_after`` and is updated in the posting's transaction, which serialises
# postings per account. ``prepay_debits`` records every interval debited (version, energy, price), so
# a re-delivered reading is never debited twice and a new version is corrected by a ledger entry.

prepay_tariffs = sa.Table(  # immutable once defined: a price change is a new tariff
    "prepay_tariffs",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("code", sa.String(32), nullable=False, unique=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),  # ISO 4217
    sa.Column("price_per_kwh", sa.BigInteger(), nullable=False),  # micro-units per kWh
    sa.Column("standing_charge_per_day", sa.BigInteger(), nullable=False),  # micro-units per day
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)

prepay_accounts = sa.Table(
    "prepay_accounts",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("meter_id", MeterId(), sa.ForeignKey("meters.id"), nullable=False, unique=True),
    sa.Column("premise_id", sa.String(32), sa.ForeignKey("premises.id"), nullable=True, index=True),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("tariff_id", Id, sa.ForeignKey("prepay_tariffs.id"), nullable=False),
    sa.Column("low_credit_threshold", sa.BigInteger(), nullable=False),  # micro-units
    sa.Column("friendly_hours", sa.String(255), nullable=False),  # "mon-fri 18:00-08:00; sat-sun 00:00-24:00"
    sa.Column("state", sa.String(16), nullable=False),  # supply: "connected" | "disconnected"
    sa.Column("credit_state", sa.String(8), nullable=False),  # "ok" | "low" | "zero": alerts fire on a change
    sa.Column("balance", sa.BigInteger(), nullable=False),  # = balance_after of the newest ledger entry
    sa.Column("entries", sa.Integer(), nullable=False),  # ledger entries so far (the newest one's seq)
    sa.Column("debit_from", Epoch(), nullable=False),  # intervals ending after this are debited
    sa.Column("debited_through", Epoch(), nullable=False),  # high-water mark: newest interval end debited
    sa.Column("standing_through", Epoch(), nullable=False),  # standing charges posted for days before this
    sa.Column("last_command_id", sa.BigInteger(), nullable=True),  # the newest switch command it submitted
    sa.Column("last_switch_error", sa.String(255), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

prepay_ledger = sa.Table(  # append-only
    "prepay_ledger",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("account_id", Id, sa.ForeignKey("prepay_accounts.id"), nullable=False),
    sa.Column("seq", sa.Integer(), nullable=False),  # 1, 2, ... per account
    sa.Column("kind", sa.String(16), nullable=False),  # payment, consumption, standing-charge, adjustment, correction
    sa.Column("amount", sa.BigInteger(), nullable=False),  # signed micro-units; debits are negative
    sa.Column("balance_after", sa.BigInteger(), nullable=False),
    sa.Column("energy_mwh", sa.BigInteger(), nullable=True),  # consumption and correction entries
    sa.Column("period_start", Epoch(), nullable=True),  # first interval end / day start covered
    sa.Column("period_end", Epoch(), nullable=True),  # last interval end / day end covered
    sa.Column("reference", sa.String(128), nullable=False),  # payment reference, reason, what was debited
    sa.Column("idempotency_key", sa.String(128), nullable=True),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("account_id", "seq"),
    sa.UniqueConstraint("account_id", "idempotency_key"),  # NULLs are distinct on both databases
)

prepay_debits = sa.Table(  # one row per (account, import interval) debited; corrected in place, never removed
    "prepay_debits",
    metadata,
    sa.Column("account_id", Id, primary_key=True, autoincrement=False),
    sa.Column("interval_end", Epoch(), primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer(), nullable=False),  # interval_readings.version that was priced
    sa.Column("energy_mwh", sa.BigInteger(), nullable=False),
    sa.Column("price_per_kwh", sa.BigInteger(), nullable=False),  # the price applied (corrections reuse it)
    sa.Column("amount", sa.BigInteger(), nullable=False),  # micro-units debited for it (positive)
    sa.Column("entry_id", Id, nullable=False),  # the ledger entry that last priced it
    sqlite_with_rowid=False,
)

prepay_alerts = sa.Table(
    "prepay_alerts",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("account_id", Id, sa.ForeignKey("prepay_accounts.id"), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # "low-credit" | "zero-credit"
    sa.Column("balance", sa.BigInteger(), nullable=False),  # micro-units when raised
    sa.Column("raised_at", UtcDateTime(), nullable=False),
    sa.Column("cleared_at", UtcDateTime(), nullable=True),  # a top-up above the threshold clears it
    sa.Index(None, "account_id", "raised_at"),
    sa.Index(None, "raised_at"),
)

# --- meter events (headend.push_listener, services.events; migration 0010) ---
# One row per event of a registered meter. (meter, code, meter_time) is an event's identity: the same
# event arriving as a push and from the event log, or a retransmitted push, is stored once (the first
# arrival's source and receive time are kept). ``meter_time`` is the meter's time stamp, epoch seconds;
# ``received_at`` the head-end's, epoch seconds with fractions (latency is measured against it).
# ``meter_events_rejected`` keeps what was refused and why (an unknown meter, an impossible time);
# ``push_counters`` the last invocation counter accepted from a meter's pushes, per key version, so a
# restart does not reopen a replay window.

meter_events = sa.Table(
    "meter_events",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("meter_id", MeterId(), sa.ForeignKey("meters.id"), nullable=False),
    sa.Column("code", sa.SmallInteger(), nullable=False),
    sa.Column("category", sa.String(16), nullable=False),
    sa.Column("meter_time", Epoch(), nullable=False),
    sa.Column("received_at", sa.Double(), nullable=False),
    sa.Column("source", sa.String(8), nullable=False),  # "push" | "log"
    sa.Column("value", sa.Double(), nullable=True),
    sa.UniqueConstraint("meter_id", "code", "meter_time"),
    sa.Index(None, "meter_time"),
    sa.Index(None, "category", "meter_time"),
)

meter_events_rejected = sa.Table(  # no FK to meters: an unknown meter is one reason to be here
    "meter_events_rejected",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("meter_id", MeterId(), nullable=True),
    sa.Column("code", sa.Integer(), nullable=False),
    sa.Column("meter_time", Epoch(), nullable=False),
    sa.Column("received_at", sa.Double(), nullable=False),
    sa.Column("source", sa.String(8), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),  # "unknown-meter", "future", "too-old", "unknown-code"
    sa.Index(None, "received_at"),
)

push_counters = sa.Table(
    "push_counters",
    metadata,
    sa.Column("meter_id", MeterId(), sa.ForeignKey("meters.id"), primary_key=True),
    sa.Column("key_version", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("last_counter", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", sa.Double(), nullable=False),
)

# --- outages and webhooks (services.outage, services.webhooks; migration 0011) ---
# An outage is one failed device (substation, feeder, transformer, or a single meter's service) inferred
# from last gasps and pings (docs/outages.md); ``outage_meters`` lists every meter it darkens (inferred,
# not only those that sent a last gasp) and how each came back. A nested outage has ``parent_id``.
# Device and area ids are plain strings (no foreign key): a topology import replaces the grid, and the
# outage history must survive it. ``version`` counts the outage's changes (the OMS feed's sequence).

outages = sa.Table(
    "outages",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("device_kind", sa.String(16), nullable=False),  # substation, feeder, transformer, meter
    sa.Column("device_id", sa.String(32), nullable=False),
    sa.Column("area", sa.String(32), nullable=True),  # the substation: network operators see their own
    sa.Column("parent_id", Id, sa.ForeignKey("outages.id"), nullable=True, index=True),
    sa.Column("state", sa.String(16), nullable=False),  # open, restored, momentary, closed
    sa.Column("started_at", UtcDateTime(), nullable=False),  # earliest last gasp (meter time)
    sa.Column("detected_at", UtcDateTime(), nullable=False),
    sa.Column("restored_at", UtcDateTime(), nullable=True),
    sa.Column("verified_at", UtcDateTime(), nullable=True),  # restoration verification finished
    sa.Column("closed_at", UtcDateTime(), nullable=True),
    sa.Column("closed_by", sa.String(128), nullable=True),
    sa.Column("cause", sa.String(32), nullable=False),  # how it was found: last-gasps, verification
    sa.Column("last_gasps", sa.Integer(), nullable=False),
    sa.Column("meters", sa.Integer(), nullable=False),  # affected meters
    sa.Column("premises", sa.Integer(), nullable=False),  # affected premises (customers)
    sa.Column("critical_care", sa.Integer(), nullable=False),  # affected critical-care premises
    sa.Column("pings_sent", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("pings_answered", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("still_dark", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Index(None, "state", "started_at"),
    sa.Index(None, "device_kind", "device_id", "state"),
    sa.Index(None, "area", "started_at"),
)

outage_meters = sa.Table(
    "outage_meters",
    metadata,
    # no foreign keys (migration 0014, as ADR 0003 for readings): written only with their outage, in
    # its transaction, and a storm writes 54,000 of them; meters and outages are never deleted
    sa.Column("outage_id", Id, primary_key=True),
    sa.Column("meter_id", MeterId(), primary_key=True, index=True),
    sa.Column("state", sa.String(16), nullable=False),  # dark, restored, still-dark
    sa.Column("last_gasp", sa.Boolean(), nullable=False),  # it sent one (the others were inferred)
    sa.Column("premise_id", sa.String(32), nullable=True),
    sa.Column("critical_care", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("restored_at", UtcDateTime(), nullable=True),
    sa.Column("restored_by", sa.String(16), nullable=True),  # push (power-up), ping (verification), manual
)

outage_notes = sa.Table(
    "outage_notes",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("outage_id", Id, sa.ForeignKey("outages.id"), nullable=False, index=True),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("text", sa.String(1000), nullable=False),
)

webhooks = sa.Table(  # systems notified of outage changes; the signing secret is wrapped like a meter key
    "webhooks",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("kek_id", sa.String(64), nullable=False),
    sa.Column("secret_wrapped", sa.LargeBinary(), nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("removed_at", UtcDateTime(), nullable=True),
)

webhook_deliveries = sa.Table(  # one row per (endpoint, outage change): the outbox and its outcome
    "webhook_deliveries",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("webhook_id", Id, sa.ForeignKey("webhooks.id"), nullable=False),
    sa.Column("outage_id", Id, sa.ForeignKey("outages.id"), nullable=False),
    sa.Column("outage_version", sa.Integer(), nullable=False),
    sa.Column("payload", sa.Text(), nullable=False),  # the JSON body, exactly as signed and sent
    sa.Column("state", sa.String(16), nullable=False),  # pending, delivered, failed
    sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
    sa.Column("last_status", sa.Integer(), nullable=True),  # the receiver's HTTP status
    sa.Column("last_error", sa.String(255), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("delivered_at", UtcDateTime(), nullable=True),
    sa.UniqueConstraint("webhook_id", "outage_id", "outage_version"),
    sa.Index(None, "state", "next_attempt_at"),
)

# --- revenue protection (services.revenue; migration 0012) ---
# No foreign key from these tables to the topology tables: a topology import replaces the topology
# whole (services.topology) and must not be blocked by a case or a flag; meters are never deleted.
# ``transformer_check_meters``: the meter at a transformer that measures its whole load (commissioning
# ``check_for_transformer``). ``premise_flags``: revenue-relevant facts about a premise that the grid
# import does not carry (vacant since when, registered generation), kept apart so a re-import of the
# topology cannot clear them. ``revenue_cases``: investigation cases; at most one case that is not
# closed per meter (and per transformer for a transformer's case, meter_id NULL); every change is a
# ``revenue_case_history`` row (tamper evidence de-duplicated by ``evidence_key``). ``revenue_watch``:
# meters (or a transformer) to be watched, one open entry per meter and rule. ``energy_balances``:
# each computed transformer balance, flagged or not.

_OPEN_CASE = "state <> 'closed'"

transformer_check_meters = sa.Table(
    "transformer_check_meters",
    metadata,
    sa.Column("meter_id", MeterId(), sa.ForeignKey("meters.id"), primary_key=True),
    sa.Column("transformer_id", sa.String(32), nullable=False, index=True),
    sa.Column("registered_at", UtcDateTime(), nullable=False),
)

premise_flags = sa.Table(
    "premise_flags",
    metadata,
    sa.Column("premise_id", sa.String(32), primary_key=True),
    sa.Column("vacant", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("vacant_since", UtcDateTime(), nullable=True),
    sa.Column("has_generation", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("updated_by", sa.String(128), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

revenue_cases = sa.Table(
    "revenue_cases",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("meter_id", MeterId(), sa.ForeignKey("meters.id"), nullable=True),
    sa.Column("transformer_id", sa.String(32), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),  # open, investigating, confirmed-theft, no-fault, closed
    sa.Column("reason", sa.String(40), nullable=False),  # "tamper", "energy-balance", a rule name, "manual"
    sa.Column("summary", sa.String(255), nullable=False),
    sa.Column("assignee", sa.String(128), nullable=True),
    sa.Column("opened_by", sa.String(128), nullable=False),
    sa.Column("opened_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Column("closed_at", UtcDateTime(), nullable=True),
    sa.Index(None, "state", "id"),
    sa.Index(None, "meter_id"),
    sa.Index(None, "transformer_id"),
    sa.Index(
        "uq_revenue_cases_open_meter",
        "meter_id",
        unique=True,
        sqlite_where=sa.text(f"{_OPEN_CASE} AND meter_id IS NOT NULL"),
        postgresql_where=sa.text(f"{_OPEN_CASE} AND meter_id IS NOT NULL"),
    ),
    sa.Index(
        "uq_revenue_cases_open_transformer",
        "transformer_id",
        unique=True,
        sqlite_where=sa.text(f"{_OPEN_CASE} AND meter_id IS NULL"),
        postgresql_where=sa.text(f"{_OPEN_CASE} AND meter_id IS NULL"),
    ),
)

revenue_case_history = sa.Table(
    "revenue_case_history",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("case_id", Id, sa.ForeignKey("revenue_cases.id"), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # opened, state, assigned, note, evidence
    sa.Column("from_state", sa.String(16), nullable=True),
    sa.Column("to_state", sa.String(16), nullable=True),
    sa.Column("text", sa.Text(), nullable=True),
    sa.Column("evidence_key", sa.String(64), nullable=True),  # "event:43@1763798400": one row per event
    sa.Index(None, "case_id", "id"),
    sa.Index("uq_revenue_case_history_evidence", "case_id", "evidence_key", unique=True),
)

revenue_watch = sa.Table(
    "revenue_watch",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("meter_id", MeterId(), sa.ForeignKey("meters.id"), nullable=True),
    sa.Column("transformer_id", sa.String(32), nullable=True),
    sa.Column("rule", sa.String(40), nullable=False),
    sa.Column("evidence", sa.Text(), nullable=False),  # canonical JSON: the numbers the rule saw
    sa.Column("since", UtcDateTime(), nullable=False),
    sa.Column("last_seen_at", UtcDateTime(), nullable=False),
    sa.Column("cleared_at", UtcDateTime(), nullable=True),
    sa.Column("case_id", Id, sa.ForeignKey("revenue_cases.id"), nullable=True),
    sa.Index(None, "meter_id"),
    sa.Index(None, "transformer_id"),
    sa.Index(None, "rule", "id"),
    sa.Index(
        "uq_revenue_watch_open",
        "meter_id",
        "rule",
        unique=True,
        sqlite_where=sa.text("cleared_at IS NULL AND meter_id IS NOT NULL"),
        postgresql_where=sa.text("cleared_at IS NULL AND meter_id IS NOT NULL"),
    ),
)

energy_balances = sa.Table(
    "energy_balances",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("transformer_id", sa.String(32), nullable=False),
    sa.Column("check_meter_id", MeterId(), sa.ForeignKey("meters.id"), nullable=False),
    sa.Column("period_start", Epoch(), nullable=False),  # intervals ending after this ...
    sa.Column("period_end", Epoch(), nullable=False),  # ... up to and including this
    sa.Column("intervals", sa.Integer(), nullable=False),  # intervals every meter and the check meter had
    sa.Column("meters", sa.Integer(), nullable=False),
    sa.Column("check_wh", sa.Float(53), nullable=False),
    sa.Column("meters_wh", sa.Float(53), nullable=False),
    sa.Column("loss_wh", sa.Float(53), nullable=False),
    sa.Column("loss_share", sa.Float(53), nullable=True),  # NULL when the check meter saw no energy
    sa.Column("tolerance", sa.Float(53), nullable=False),
    sa.Column("flagged", sa.Boolean(), nullable=False),
    sa.Column("suspects", sa.Text(), nullable=False),  # JSON list of meter ids, most likely first
    sa.Column("computed_at", UtcDateTime(), nullable=False),
    sa.Index(None, "transformer_id", "period_end"),
)
