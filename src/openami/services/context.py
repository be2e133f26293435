"""The platform's running parts, and the request scope every service function takes (defined by the policy)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from openami.bus.base import Bus
from openami.db.checkpoints import WalCheckpointer
from openami.headend.collector import Collector
from openami.headend.events import EventPipeline
from openami.headend.push_listener import PushListener
from openami.headend.scheduler import Scheduler
from openami.mdm.ingest import Ingestor
from openami.security.command_authority import CommandAuthority
from openami.security.keystore import MasterKeyProvider
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services.outage import OutageEngine
from openami.services.prepay_engine import PrepayEngine
from openami.services.revenue_engine import RevenueMonitor
from openami.settings import Settings

if TYPE_CHECKING:
    from openami.services.push_process import PushProcess
    from openami.services.switch_guard import UncommandedOpeningDetector
    from openami.services.switch_queue import CommandQueue

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
    push_listener: PushListener | PushProcess | None = None  # PushProcess with settings.push.process
    events: EventPipeline | None = None
    authority: CommandAuthority | None = None  # the command authority (services.switch.ensure_authority)
    commands: CommandQueue | None = None  # the switch command queue (services.switch.start_queue)
    prepay: PrepayEngine | None = None
    revenue: RevenueMonitor | None = None  # revenue protection (services.revenue.start)
    outages: OutageEngine | None = None  # the outage engine (services.outage_feed.start)
    guard: UncommandedOpeningDetector | None = None  # the off-switch guard's detector (services.switch_guard)
    checkpoints: WalCheckpointer | None = None  # SQLite's log checkpoints, off the writers' commits (start_platform)
