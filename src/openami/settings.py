"""The one settings class; the only module that reads the environment (prefix ``OPENAMI_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretBytes, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CollectionSettings(BaseModel):
    """Collection windows, per seed 004 (residential 4-6 reads a day, commercial hourly)."""

    residential_reads_per_day: int = Field(default=6, ge=1, le=96)
    commercial_reads_per_day: int = Field(default=24, ge=1, le=96)
    concurrency: int = Field(default=64, ge=1, le=5000)
    retries: int = Field(default=3, ge=0, le=10)
    backoff_s: float = Field(default=0.5, ge=0.0)
    timeout_s: float = Field(default=10.0, gt=0.0)
    catch_up_days: int = Field(default=7, ge=1, le=90)


class VeeSettings(BaseModel):
    """Validation and estimation rules of the MDM (docs/vee.md); energies in Wh per interval."""

    spike_multiple: float = Field(default=10.0, gt=1.0)
    spike_floor_wh: float = Field(default=500.0, ge=0.0)  # never a spike below this, however small the typical
    max_interval_wh: float = Field(default=50_000.0, gt=0.0)
    clock_tolerance_s: float = Field(default=30.0, gt=0.0)
    register_tolerance_wh: float = Field(default=10.0, ge=0.0)
    short_gap_intervals: int = Field(default=4, ge=1)
    like_day_weeks: int = Field(default=4, ge=1, le=52)  # same weekday/time this many weeks back
    status_flag_mask: int = Field(default=0xFF, ge=0, le=0xFF)  # status bits that flag METER_STATUS
    typical_min_values: int = Field(default=8, ge=1)  # nonzero values needed for a read's own typical


class HeadEndSettings(BaseModel):
    """The head-end's own DLMS identity (its client system title: 3-letter maker code + 5 bytes)."""

    system_title_hex: str = Field(default="4F414D4845000001", pattern=r"^[0-9A-Fa-f]{16}$")

    @property
    def system_title(self) -> bytes:
        return bytes.fromhex(self.system_title_hex)


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8059, ge=0, le=65535)


class TlsSettings(BaseModel):
    """HTTPS and mutual TLS for the API (docs/security.md, "PKI and TLS").

    ``mode``: ``auto`` serves HTTPS unless the API listens on a loopback address; ``https`` always;
    ``http`` never, which is refused on any non-loopback address. Without ``cert_file``/``key_file`` the
    server certificate is issued by the utility CA on first run (for ``api.host`` and ``server_names``).
    ``client_auth``: whether clients are asked for a certificate of the utility CA (mutual TLS);
    ``optional`` lets bearer-token clients in too.
    """

    mode: Literal["auto", "https", "http"] = "auto"
    client_auth: Literal["none", "optional", "required"] = "optional"
    cert_file: Path | None = None
    key_file: Path | None = None
    server_names: list[str] = Field(default_factory=list)  # extra DNS names / IP addresses (SANs)
    ca_dir: Path | None = None  # default: data_dir / "pki"
    handshake_timeout_s: float = Field(default=10.0, gt=0.0, le=120.0)


class IdentitySettings(BaseModel):
    """Operator accounts, passwords, tokens and data minimisation (docs/security.md)."""

    lockout_threshold: int = Field(default=5, ge=1, le=100)  # consecutive failed logins that lock an account
    lockout_minutes: float = Field(default=15.0, gt=0.0, le=24 * 60)
    # argon2id, RFC 9106 second recommended option (t=3, 64 MiB, p=4); lower values only for tests
    argon2_time_cost: int = Field(default=3, ge=1, le=20)
    argon2_memory_kib: int = Field(default=65_536, ge=1024, le=4 * 1024 * 1024)
    argon2_parallelism: int = Field(default=4, ge=1, le=64)
    min_password_length: int = Field(default=12, ge=8, le=256)
    token_ttl_minutes: int = Field(default=8 * 60, ge=1, le=90 * 24 * 60)  # tokens issued at login
    aggregate_min_group: int = Field(default=5, ge=2, le=1000)  # fewest meters an aggregate may sum (k)


class BurstThreshold(BaseModel):
    """A burst of security events: ``count`` events of one kind within ``window_s`` seconds, counted
    per meter, per actor or over the whole fleet, opens one alert."""

    count: int = Field(ge=1, le=100_000)
    window_s: int = Field(ge=1, le=7 * 86_400)
    per: Literal["meter", "actor", "fleet"] = "meter"


def _default_bursts() -> dict[str, BurstThreshold]:
    return {
        "meter.bad-tag": BurstThreshold(count=3, window_s=3600, per="meter"),
        "meter.hls-failed": BurstThreshold(count=3, window_s=3600, per="meter"),
        "meter.replay": BurstThreshold(count=1, window_s=3600, per="meter"),
        "api.login-failed": BurstThreshold(count=5, window_s=300, per="actor"),
        "api.denied": BurstThreshold(count=10, window_s=300, per="actor"),
        "api.lockout": BurstThreshold(count=1, window_s=3600, per="actor"),
        "api.bad-certificate": BurstThreshold(count=5, window_s=300, per="fleet"),
    }


class AuditSettings(BaseModel):
    """Audit log checkpoints and their signing key (ECDSA P-256 PEM), security-event burst thresholds."""

    checkpoint_every: int = Field(default=1000, ge=1, le=1_000_000)
    signing_key_file: Path | None = None  # default: data_dir / "audit-signing-key.pem", created 0600
    signing_key: SecretStr | None = None  # PEM; takes precedence over the file
    bursts: dict[str, BurstThreshold] = Field(default_factory=_default_bursts)


class GuardSettings(BaseModel):
    """The off-switch guard and the disconnect calendar (docs/switch.md, "Off-switch guard and workflows").

    Rate limits count admitted disconnects over a rolling window, fleet-wide and per area (substation).
    A batch of more than ``approval_batch_size`` meters of a command in ``approval_commands`` waits for a
    second, different approver. ``uncommanded_threshold`` switch openings no command explains, in one
    area within ``uncommanded_window_s``, raise an alarm and (``auto_ignore_disconnects``) put that area's
    meters in the signed ignore-disconnects mode. ``timezone`` is the calendar's local time (IANA name).
    """

    max_disconnects_fleet: int = Field(default=1000, ge=1, le=10_000_000)
    max_disconnects_area: int = Field(default=200, ge=1, le=10_000_000)
    rate_window_s: int = Field(default=3600, ge=1, le=7 * 86_400)
    approval_batch_size: int = Field(default=10, ge=1, le=10_000_000)
    approval_commands: list[str] = Field(default_factory=lambda: ["disconnect", "limit"])
    uncommanded_threshold: int = Field(default=3, ge=1, le=100_000)
    uncommanded_window_s: int = Field(default=900, ge=1, le=7 * 86_400)
    auto_ignore_disconnects: bool = True
    timezone: str = Field(default="UTC", min_length=1, max_length=64)


class PushSettings(BaseModel):
    """The head-end's push listener and event pipeline (docs/events.md).

    Notifications wait in a queue of ``queue_size`` for ``workers`` that store up to ``batch_size``
    at a time (by default one on SQLite, whose single writer gains nothing from a second worker, which
    only decoded while the first held the write lock and so made it hold longer; two on PostgreSQL);
    when the queue is full the listener stops reading sockets (backpressure, no loss).
    At most ``max_connections`` connections are served at once; more wait in the kernel's backlog.
    With ``udp`` the listener also takes one notification per UDP datagram on the same port (the Push
    Setup's transport service 1: no connection per push, so a storm costs a fraction of the CPU); a
    datagram arriving while the queue is full is dropped and counted (the event log read on collection
    recovers it), and ``udp_receive_buffer_bytes`` sizes the socket's kernel buffer for bursts.
    Events more than ``future_tolerance_s`` ahead of the head-end's clock, or more than
    ``commissioning_slack_s`` before their meter's commissioning, are refused. With ``process`` the
    listener and pipeline run in a process of their own (``services.push_process``): a storm's
    notifications then take none of the CPU that commands and on-demand reads need, and with
    ``process_nice`` (added to the platform's nice) the child gives way to the platform when the cores
    are busy (storm benchmark: commands' p99 a median 2.15 times their baseline at 10, 2.46 at 0).
    A batch is one transaction, stored in parts of 100 events: on SQLite an event
    holds the only write lock for about 20 µs (index pages in random meter order), and a command or
    on-demand read that waits for it gets it after the part being written; 500 stores a storm's
    power-ups as fast as 2,000 did (docs/benchmarks.md).
    """

    enabled: bool = True
    process: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=4060, ge=0, le=65535)
    queue_size: int = Field(default=50_000, ge=1, le=10_000_000)
    workers: int | None = Field(default=None, ge=1, le=64)  # None: 1 on SQLite, 2 on PostgreSQL
    batch_size: int = Field(default=500, ge=1, le=100_000)
    max_connections: int = Field(default=1024, ge=1, le=100_000)
    backlog: int = Field(default=4096, ge=1, le=65_535)
    max_frame_bytes: int = Field(default=8192, ge=64, le=65_535)
    udp: bool = True
    udp_receive_buffer_bytes: int = Field(default=64 * 1024 * 1024, ge=65_536, le=1024 * 1024 * 1024)
    idle_timeout_s: float = Field(default=10.0, gt=0.0, le=600.0)
    future_tolerance_s: float = Field(default=3600.0, ge=0.0)
    commissioning_slack_s: float = Field(default=86_400.0, ge=0.0)
    process_nice: int = Field(default=10, ge=0, le=19)


class PrepaySettings(BaseModel):
    """Prepayment (docs/prepayment.md): friendly-credit hours, reconnection, the background check, reconciliation.

    Amounts are decimal strings in the account's currency (never floats). ``friendly_hours`` is the
    default for new accounts ("mon-sun 18:00-08:00; sat-sun": evenings, nights, weekends), read in
    ``timezone``, with ``holidays`` ("YYYY-MM-DD") friendly all day. A disconnected supply is reconnected
    once a top-up brings the balance above ``reconnect_threshold``, ``reconnect_mode`` "armed" (the
    customer closes the switch) or "immediate". Every ``check_interval_s`` standing charges are posted
    and zero-credit accounts re-checked (friendly hours may have ended).
    """

    enabled: bool = True
    friendly_hours: str = Field(default="mon-sun 18:00-08:00; sat-sun", max_length=255)
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    holidays: list[str] = Field(default_factory=list)
    default_low_credit: str = Field(default="5.00", pattern=r"^\d{1,12}(\.\d{1,6})?$")
    reconnect_threshold: str = Field(default="0", pattern=r"^\d{1,12}(\.\d{1,6})?$")
    reconnect_mode: Literal["armed", "immediate"] = "armed"
    command_valid_for_s: int = Field(default=3600, ge=60, le=7 * 86_400)
    check_interval_s: float = Field(default=300.0, gt=0.0, le=86_400.0)
    reconcile_tolerance_wh: float = Field(default=100.0, ge=0.0)


class SwitchSettings(BaseModel):
    """Switch and limiter commands (docs/switch.md): the queue worker and the head-end's command slots.

    A meter that does not answer is tried again after ``retry_backoff_s`` (doubling, at most
    ``max_backoff_s``) until the command's validity ends; ``default_valid_for_s`` is the validity of a
    command that names none, at most ``max_valid_for_s``. ``slots`` sessions run at once, apart from
    bulk collection's.
    """

    enabled: bool = True
    slots: int = Field(default=64, ge=1, le=1024)  # bench switch: p99 30 s with 16, 10.8 s with 64
    poll_s: float = Field(default=0.5, gt=0.0, le=60.0)
    retry_backoff_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    max_backoff_s: float = Field(default=300.0, gt=0.0, le=86_400.0)
    default_valid_for_s: int = Field(default=3600, ge=10, le=30 * 86_400)
    max_valid_for_s: int = Field(default=7 * 86_400, ge=10, le=30 * 86_400)
    max_batch: int = Field(default=10_000, ge=1, le=1_000_000)
    stale_sent_s: float = Field(default=120.0, ge=1.0, le=86_400.0)  # "sent" this long: its sender stopped


class RevenueSettings(BaseModel):
    """Revenue protection (docs/revenue-protection.md): energy balance tolerance, anomaly rule thresholds.

    Energies are Wh. ``balance_tolerance`` is the share of a transformer's check-meter energy that may go
    missing before it is flagged (technical losses are ~2-5 %). A suspect's consumption in the balance
    period fell by ``suspect_drop_share`` or more against the ``balance_baseline_days`` before it. The
    sustained-drop rule compares the mean per interval of the last ``drop_recent_days`` with the
    ``drop_baseline_days`` before them. A rule in ``case_rules`` also opens (or adds to) a case.
    """

    enabled: bool = True
    balance_days: float = Field(default=1.0, gt=0.0, le=92.0)
    balance_tolerance: float = Field(default=0.05, ge=0.0, lt=1.0)
    balance_min_wh: float = Field(default=500.0, ge=0.0)  # no flag below this much check-meter energy
    balance_baseline_days: float = Field(default=7.0, gt=0.0, le=92.0)
    suspect_drop_share: float = Field(default=0.25, gt=0.0, le=1.0)
    max_suspects: int = Field(default=5, ge=1, le=100)
    idle_import_wh: float = Field(default=100.0, ge=0.0)  # more than this on a disconnected/vacant premise
    reverse_days: float = Field(default=1.0, gt=0.0, le=92.0)
    reverse_min_wh: float = Field(default=50.0, ge=0.0)
    register_tolerance_wh: float = Field(default=100.0, ge=0.0)  # move-out vs move-in register
    register_window_h: float = Field(default=6.0, gt=0.0, le=168.0)
    drop_recent_days: float = Field(default=7.0, gt=0.0, le=92.0)
    drop_baseline_days: float = Field(default=28.0, gt=0.0, le=366.0)
    drop_below_share: float = Field(default=0.5, gt=0.0, lt=1.0)
    drop_min_baseline_wh: float = Field(default=20.0, ge=0.0)  # per interval: ignore nearly idle meters
    min_coverage: float = Field(default=0.5, gt=0.0, le=1.0)  # share of a window's intervals that must be stored
    case_rules: list[str] = Field(default_factory=lambda: ["consumption-while-disconnected", "energy-balance"])
    scan_delay_s: float = Field(default=30.0, ge=0.0, le=86_400.0)  # quiet time after readings before a scan
    scan_max_wait_s: float = Field(default=900.0, ge=0.0, le=86_400.0)  # ... but never postponed longer than this


class OutageSettings(BaseModel):
    """Outage detection and the OMS feed (docs/outages.md).

    Last gasps are grouped until ``quiet_s`` pass without a new one, or ``settle_s`` after the first
    (``storm_settle_s`` once the group holds ``storm_gasps``; such a storm's group is inferred every
    ``storm_check_s`` from ``settle_s`` on, and decided as soon as the inferences have named the same
    devices while the group grew by a tenth: a picture that holds only because gasps stalled proves nothing);
    the inference (``min_delivery``, ``spurious``, ``device_prior``) then names the failed devices, and
    up to ``ping_sample`` meters inside and ``ping_sample`` around each are pinged (``ping_timeout_s``)
    to confirm, at most ``confirm_rounds`` times and at most ``ping_budget`` meters a round (the biggest
    suspected devices first: in a storm's first seconds hundreds of single meters are suspects too).
    Power back within ``momentary_s`` of the start is a momentary outage. Restoration is verified
    ``restore_quiet_s`` after the last power-up (at most ``restore_settle_s`` after the first).
    Webhook deliveries are tried ``webhook_attempts`` times, waiting ``webhook_backoff_s`` (doubling)
    between tries, each with ``webhook_timeout_s``.
    """

    enabled: bool = True
    quiet_s: float = Field(default=0.5, gt=0.0, le=60.0)
    settle_s: float = Field(default=1.5, gt=0.0, le=60.0)
    storm_gasps: int = Field(default=1000, ge=1)
    storm_settle_s: float = Field(default=4.0, gt=0.0, le=60.0)
    storm_check_s: float = Field(default=0.25, ge=0.0, le=60.0)  # 0: a storm always waits storm_settle_s
    momentary_s: float = Field(default=3.0, ge=0.0, le=300.0)
    min_delivery: float = Field(default=0.3, gt=0.0, le=1.0)
    spurious: float = Field(default=1e-4, gt=0.0, lt=0.5)
    device_prior: float = Field(default=1e-3, gt=0.0, lt=1.0)
    ping_sample: int = Field(default=5, ge=0, le=1000)
    ping_budget: int = Field(default=512, ge=1, le=100_000)
    ping_timeout_s: float = Field(default=2.0, gt=0.0, le=60.0)
    confirm_rounds: int = Field(default=2, ge=0, le=5)
    restore_quiet_s: float = Field(default=1.0, gt=0.0, le=600.0)
    restore_settle_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    max_event_age_s: float = Field(default=900.0, gt=0.0)  # older power events (a late event-log read) are history
    webhook_attempts: int = Field(default=6, ge=1, le=50)
    webhook_backoff_s: float = Field(default=2.0, gt=0.0, le=3600.0)
    webhook_timeout_s: float = Field(default=10.0, gt=0.0, le=120.0)


class Settings(BaseSettings):
    """Everything configurable. Build it where the program starts, never at import time."""

    model_config = SettingsConfigDict(env_prefix="OPENAMI_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Path("var")
    database_url: str | None = None
    master_key_file: Path | None = None
    master_key: SecretBytes | None = None
    api: ApiSettings = ApiSettings()
    tls: TlsSettings = TlsSettings()
    headend: HeadEndSettings = HeadEndSettings()
    collection: CollectionSettings = CollectionSettings()
    vee: VeeSettings = VeeSettings()
    audit: AuditSettings = AuditSettings()
    identity: IdentitySettings = IdentitySettings()
    revenue: RevenueSettings = RevenueSettings()
    push: PushSettings = PushSettings()
    guard: GuardSettings = GuardSettings()
    prepay: PrepaySettings = PrepaySettings()
    switch: SwitchSettings = SwitchSettings()
    outages: OutageSettings = OutageSettings()

    @property
    def resolved_database_url(self) -> str:
        """The configured URL, or the embedded default: a SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'openami.sqlite3').resolve()}"

    @property
    def resolved_master_key_file(self) -> Path:
        return self.master_key_file or self.data_dir / "master.key"
