"""The platform's running parts and the request scope every service function takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from openami.bus.base import Bus
from openami.db import tokens as token_repo
from openami.errors import PermissionDenied, Unauthenticated
from openami.headend.collector import Collector
from openami.headend.scheduler import Scheduler
from openami.mdm.ingest import Ingestor
from openami.security.keystore import MasterKeyProvider
from openami.settings import Settings

ALL_SCOPES = "*"


@dataclass(frozen=True, slots=True)
class RequestScope:
    """Who is asking and what they may do; produced by authentication, passed to every service call."""

    principal: str
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        """Fail closed: raise PermissionDenied unless the scope (or ``*``) was granted."""
        if ALL_SCOPES not in self.scopes and scope not in self.scopes:
            raise PermissionDenied(f"this token lacks the '{scope}' scope")


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


def authenticate_token(platform: Platform, token: str) -> RequestScope:
    with platform.engine.connect() as conn:
        info = token_repo.verify_token(conn, token, now=platform.now())
    if info is None:
        raise Unauthenticated("the bearer token is unknown, revoked or expired")
    return RequestScope(principal=f"token:{info.name}", scopes=info.scopes)
