"""The platform's running parts, and the request scope every service function takes (defined by the policy)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from openami.bus.base import Bus
from openami.headend.collector import Collector
from openami.headend.scheduler import Scheduler
from openami.mdm.ingest import Ingestor
from openami.security.keystore import MasterKeyProvider
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.settings import Settings

__all__ = ["ALL_SCOPES", "Platform", "RequestScope", "Role"]


@dataclass(slots=True)
class Platform:
    """Everything one platform process runs: storage, keys, bus, head-end and MDM."""

    settings: Settings
    engine: Engine
    keystore: MasterKeyProvider
    bus: Bus
    ingestor: Ingestor
    collector: Collector
    scheduler: Scheduler
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
