"""Webhooks: outage changes POSTed to registered systems, signed, retried, every attempt recorded.

A receiver registers a URL (``webhooks.manage``); the platform generates a signing secret for it,
shows it once and stores it wrapped under the master key (AES-256-GCM, bound to the endpoint id), like
meter keys. Every ``OUTAGES_CHANGED`` message becomes one delivery row per endpoint (the outbox), then
a POST of the JSON body with these headers:

- ``X-OpenAMI-Timestamp``: Unix seconds when the request was signed;
- ``X-OpenAMI-Signature``: ``v1=`` + hex HMAC-SHA256 under the secret of ``timestamp + "." + body``;
- ``X-OpenAMI-Delivery``: the delivery id (the same on retries: receivers de-duplicate on it).

A receiver recomputes the HMAC over the raw body, compares in constant time and refuses timestamps
more than a few minutes old (docs/outages.md shows the code). Anything but a 2xx is retried with
doubling backoff up to ``webhook_attempts`` times, then the delivery is "failed". HTTPS is required
and certificates are always verified; plain http is allowed only to a loopback receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from sqlalchemy.engine import Engine

from openami.bus.base import Bus, Unsubscribe
from openami.bus.topics import OUTAGES_CHANGED
from openami.db import webhooks as repo
from openami.db.webhooks import Delivery, Webhook
from openami.domain.outages import OutageChanged
from openami.errors import InvalidInput
from openami.security.audit import AuditEntry, record
from openami.security.keystore import MasterKeyProvider
from openami.security.policy import RequestScope, Resource, authorize
from openami.services.context import Platform
from openami.settings import OutageSettings
from openami.waiting import wait_until_set

__all__ = [
    "ACTION",
    "Registered",
    "Webhook",
    "WebhookDispatcher",
    "list_webhooks",
    "payload_of",
    "register",
    "remove",
    "sign",
    "verify_signature",
]

ACTION = "webhooks.manage"
SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER = "X-OpenAMI-Signature", "X-OpenAMI-Timestamp", "X-OpenAMI-Delivery"
_log = structlog.get_logger("openami.webhooks")


@dataclass(frozen=True, slots=True)
class Registered:
    """A new endpoint and its signing secret: shown this once, never again."""

    webhook: Webhook
    secret: str


def _aad(webhook_id: int) -> bytes:
    return b"openami/webhook-secret/v1\x00" + webhook_id.to_bytes(8, "big")


def _check_url(url: str) -> str:
    """HTTPS anywhere, plain HTTP only to a loopback address (a receiver on this machine)."""
    parts = urlsplit(url)
    if len(url) > 2048 or not parts.hostname or parts.scheme not in ("https", "http"):
        raise InvalidInput("a webhook URL is an absolute https:// URL of at most 2048 characters")
    if parts.username or parts.password:
        raise InvalidInput("a webhook URL may not carry credentials; the payload is signed instead")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise InvalidInput("plain http is allowed only to a loopback receiver; use https")
    return url


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(
    platform: Platform, scope: RequestScope, *, name: str, url: str, now: datetime | None = None
) -> Registered:
    """Add an endpoint (audited); the returned secret is the only copy the caller will ever see."""
    moment = now or platform.now()
    if not 1 <= len(name) <= 64 or not name.isprintable():
        raise InvalidInput("a webhook name is 1-64 printable characters")
    _check_url(url)
    secret = secrets.token_urlsafe(32)
    with platform.engine.begin() as conn:
        authorize(conn, scope, ACTION, Resource("webhook", "new"), purpose="operations", now=moment)
        webhook_id = repo.add_webhook(conn, name=name, url=url, created_by=scope.principal, now=moment)
        wrapped = platform.keystore.wrap(secret.encode("ascii"), _aad(webhook_id))
        repo.set_secret(conn, webhook_id, kek_id=platform.keystore.key_id, wrapped=wrapped)
        host = urlsplit(url).hostname or ""
        entry = AuditEntry(
            actor=scope.principal, action=ACTION, outcome="ok", resource=f"webhook:{webhook_id}",
            details={"operation": "add", "name": name, "host": host[:128]},
        )  # fmt: skip
        record(conn, entry, now=moment)
        return Registered(repo.get_webhook(conn, webhook_id), secret)


def list_webhooks(platform: Platform, scope: RequestScope, *, now: datetime | None = None) -> list[Webhook]:
    moment = now or platform.now()
    with platform.engine.connect() as conn:
        authorize(conn, scope, ACTION, Resource("webhook", "*"), now=moment)
        return repo.list_webhooks(conn)


def remove(platform: Platform, scope: RequestScope, webhook_id: int, *, now: datetime | None = None) -> None:
    moment = now or platform.now()
    with platform.engine.begin() as conn:
        authorize(conn, scope, ACTION, Resource("webhook", str(webhook_id)), purpose="operations", now=moment)
        repo.remove_webhook(conn, webhook_id, now=moment)
        entry = AuditEntry(
            actor=scope.principal, action=ACTION, outcome="ok", resource=f"webhook:{webhook_id}",
            details={"operation": "remove"},
        )  # fmt: skip
        record(conn, entry, now=moment)


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify_signature(secret: bytes, timestamp: str, body: bytes, signature: str, *, tolerance_s: int = 300) -> bool:
    """What a receiver does (also used by the tests): recompute, compare in constant time, check freshness."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, sent, body), signature)


def payload_of(message: OutageChanged) -> str:
    """The JSON body for one outage change (the OMS feed's format, docs/outages.md)."""
    body: dict[str, Any] = {"type": "outage." + message.change, **asdict(message)}
    for key in ("started_at", "restored_at", "at"):
        value = body[key]
        body[key] = None if value is None else value.isoformat()
    body["state"], body["device_kind"] = str(message.state), str(message.device_kind)
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


class WebhookDispatcher:
    """Turns outage changes into delivery rows and sends them (one per platform, started by bootstrap)."""

    def __init__(
        self,
        engine: Engine,
        keystore: MasterKeyProvider,
        bus: Bus,
        settings: OutageSettings,
        *,
        now: Any,
        concurrency: int = 8,
    ) -> None:
        self._engine = engine
        self._keystore = keystore
        self._bus = bus
        self._settings = settings
        self._now = now
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Unsubscribe | None = None
        self._client: httpx.AsyncClient | None = None
        self._incoming: list[OutageChanged] = []  # changes received, not yet in the outbox
        self._storing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # verify=True (the default, spelt out): certificate verification is never switched off
        self._client = httpx.AsyncClient(verify=True, follow_redirects=False, trust_env=False)
        self._unsubscribe = self._bus.subscribe(OUTAGES_CHANGED, self.handle)
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._storing is not None:  # the changes received go to the outbox first
            await self._storing
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    async def handle(self, message: OutageChanged) -> None:
        """The ``OUTAGES_CHANGED`` handler: the change joins the next outbox write (``_store``). A storm
        publishes hundreds of changes at once (133 outages opened, then their late gasps); a
        transaction and a thread hop each took the CPU that commands and on-demand reads need, right
        after the outage engine's own writes."""
        self._incoming.append(message)
        if self._storing is None or self._storing.done():
            self._storing = asyncio.create_task(self._store(), name="webhook-outbox")

    async def _store(self) -> None:
        """Write the changes received so far, one transaction for all, until none are left."""
        while self._incoming:
            batch, self._incoming = self._incoming, []
            changes = [repo.Change(m.outage_id, m.version, payload_of(m)) for m in batch]

            def enqueue(changes: list[repo.Change] = changes) -> int:
                with self._engine.begin() as conn:
                    ids = [h.id for h in repo.active_webhooks(conn)]
                    return repo.enqueue(conn, ids, changes, now=self._now()) if ids else 0

            try:
                if await asyncio.to_thread(enqueue):
                    self._wake.set()
            except Exception:  # noqa: BLE001 - as a failed bus handler was: logged, the next batch goes on
                _log.exception("webhooks.enqueue.failed", changes=len(changes))

    async def _run(self) -> None:
        while True:
            due: list[Delivery] = []
            try:
                due, later = await asyncio.to_thread(self._due)
                await asyncio.gather(*(self._send(delivery) for delivery in due))
            except Exception:  # noqa: BLE001 - the dispatcher must outlive one failed round; it is logged
                _log.exception("webhooks.round.failed")
                later = 1.0
            if due:
                continue
            await wait_until_set(self._wake, later)
            self._wake.clear()

    def _due(self) -> tuple[list[Delivery], float]:
        now = self._now()
        with self._engine.connect() as conn:
            due = repo.due_deliveries(conn, now=now)
            upcoming = repo.next_due(conn)
        wait = 5.0 if upcoming is None else min(5.0, max(0.01, (upcoming - now).total_seconds()))
        return due, wait

    def _secret(self, webhook_id: int) -> tuple[str, bytes]:
        with self._engine.connect() as conn:
            hook = repo.get_webhook(conn, webhook_id)
            return hook.url, self._keystore.unwrap(repo.wrapped_secret(conn, webhook_id), _aad(webhook_id))

    async def _send(self, delivery: Delivery) -> None:
        assert self._client is not None
        async with self._slots:
            url, secret = await asyncio.to_thread(self._secret, delivery.webhook_id)
            body = delivery.payload.encode("utf-8")
            stamp = int(time.time())
            headers = {
                "Content-Type": "application/json", TIMESTAMP_HEADER: str(stamp),
                SIGNATURE_HEADER: sign(secret, stamp, body), DELIVERY_HEADER: str(delivery.id),
            }  # fmt: skip
            status: int | None = None
            error: str | None = None
            try:
                response = await self._client.post(
                    url, content=body, headers=headers, timeout=self._settings.webhook_timeout_s
                )
                status = response.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:255]
            await asyncio.to_thread(self._record, delivery, status, error)

    def _record(self, delivery: Delivery, status: int | None, error: str | None) -> None:
        now = self._now()
        attempts = delivery.attempts + 1
        if error is None:
            state = "delivered"
        elif attempts >= self._settings.webhook_attempts:
            state = "failed"
        else:
            state = "pending"
        backoff = timedelta(seconds=self._settings.webhook_backoff_s * 2 ** (attempts - 1))
        with self._engine.begin() as conn:
            repo.record_attempt(
                conn, delivery.id, state=state, status=status, error=error, next_attempt_at=now + backoff, now=now
            )
        _log.info("webhooks.attempt", delivery_id=delivery.id, state=state, status=status)
