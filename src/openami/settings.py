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

    @property
    def resolved_database_url(self) -> str:
        """The configured URL, or the embedded default: a SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'openami.sqlite3').resolve()}"

    @property
    def resolved_master_key_file(self) -> Path:
        return self.master_key_file or self.data_dir / "master.key"
