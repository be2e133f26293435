"""Builds and tears down a platform process: storage, keys, bus, MDM, head-end, scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from openami.bus import InProcessBus
from openami.db.checkpoints import WalCheckpointer
from openami.db.engine import create_engine
from openami.db.migrations import upgrade
from openami.headend.collector import Collector, RunSummary
from openami.headend.scheduler import Scheduler
from openami.mdm.ingest import Ingestor
from openami.security.keystore import master_key_provider
from openami.services import events as event_services
from openami.services import identity, outage_feed, switch_guard
from openami.services import keys as key_services
from openami.services import prepay as prepay_services
from openami.services import revenue as revenue_services
from openami.services import security as security_services
from openami.services import switch as switch_services
from openami.services import workflows as workflow_services
from openami.services.context import Platform
from openami.services.meters import load_targets
from openami.services.push_process import PushProcess
from openami.settings import Settings


def open_storage(settings: Settings) -> Engine:
    """Engine for the configured database, migrated to head; StorageUnavailable if it is down."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.resolved_database_url)
    upgrade(engine)
    return engine


def ensure_admin_token(engine: Engine, *, now: datetime) -> str | None:
    """On first run create the 'admin' account (security_admin + ami_operator) and return its token, once."""
    return identity.ensure_admin_token(engine, now=now)


def build_platform(
    settings: Settings, *, engine: Engine | None = None, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> Platform:
    """Everything wired together; call ``start_platform`` inside the event loop before use."""
    security_services.configure(settings)  # audit checkpoints signed with the platform's audit key, burst rules
    switch_guard.configure(settings.guard)  # rate limits, two-person rule, uncommanded openings
    engine = engine or open_storage(settings)
    keystore = master_key_provider(settings)
    bus = InProcessBus()
    ingestor = Ingestor(engine, settings.vee, bus=bus)
    ingestor.subscribe(bus)
    collector = Collector(
        engine,
        bus,
        load_targets(engine, keystore),
        client_system_title=settings.headend.system_title,
        settings=settings.collection,
        now=now,
    )
    platform: Platform | None = None

    def after_run(_summary: RunSummary) -> None:  # meters back after missing a key rotation get it now
        if platform is not None:
            key_services.retry_open_rotations(platform)

    scheduler = Scheduler(collector, settings.collection, now=now, on_run=after_run)
    platform = Platform(settings, engine, keystore, bus, ingestor, collector, scheduler, now)
    return platform


def reload_targets(platform: Platform) -> int:
    """Pick up meters imported since start; returns how many the head-end now knows."""
    platform.collector.targets = load_targets(platform.engine, platform.keystore)
    if isinstance(platform.push_listener, PushProcess):  # it verifies pushes with keys of its own
        platform.push_listener.reload_targets()
    return len(platform.collector.targets)


async def start_platform(platform: Platform) -> None:
    """Start the platform's background parts inside the running event loop (after ``build_platform``).

    Each capability starts its own part here (command queue, push listener, outage engine, ...) and
    stops it in :func:`stop_platform`, in reverse order.
    """
    platform.checkpoints = WalCheckpointer(platform.engine)  # SQLite: no writer checkpoints in its commit
    platform.checkpoints.start()
    await outage_feed.start(platform)  # outage engine and webhooks: subscribed before events flow
    switch_guard.start_detector(platform)  # uncommanded openings -> alarm, ignore mode; before events flow
    await event_services.start_pipeline(platform)  # push listener and event pipeline
    prepay_services.start(platform)  # prepayment: debits on stored readings, standing charges, switch decisions
    switch_services.start_queue(platform)  # the command authority, then the switch command queue
    revenue_services.start(platform)  # tamper events open cases; scans after collection runs


async def stop_platform(platform: Platform) -> None:
    """Stop background parts, flush everything in flight (counters, readings) and close the bus."""
    await revenue_services.stop(platform)
    switch_guard.stop_detector(platform)
    await workflow_services.stop_background(platform)
    await switch_services.stop_queue(platform)
    await event_services.stop_pipeline(platform)
    await outage_feed.stop(platform)
    await key_services.stop_background(platform)
    await platform.collector.close()
    await platform.bus.drain()
    await platform.ingestor.close()
    await platform.bus.close()
    await prepay_services.stop(platform)  # after the bus closed: every stored read was debited
    if platform.checkpoints is not None:  # a last checkpoint after the last write
        await asyncio.to_thread(platform.checkpoints.stop)
    platform.engine.dispose()
