"""Webhook endpoints notified of every outage change (signed JSON POSTs, retried; ``webhooks.manage``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from openami.api.auth import PlatformDep, Scope
from openami.api.problems import PROBLEM_JSON
from openami.services import webhooks as webhook_services

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in (
        (401, "missing or invalid token"),
        (403, "not allowed (webhooks.manage)"),
        (404, "unknown webhook"),
        (422, "invalid request (an https URL; http only to a loopback receiver)"),
    )
}
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=_ERRORS)


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    url: str = Field(min_length=8, max_length=2048, description="https://...; http:// only to a loopback address")


class WebhookOut(BaseModel):
    id: int
    name: str
    url: str
    created_by: str
    created_at: datetime


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(
        description="HMAC-SHA256 signing secret: shown once, never again (X-OpenAMI-Signature, docs/outages.md)"
    )


def _out(w: webhook_services.Webhook) -> WebhookOut:
    return WebhookOut(id=w.id, name=w.name, url=w.url, created_by=w.created_by, created_at=w.created_at)


@router.post("", status_code=201, response_model=WebhookCreatedOut, summary="Register a webhook endpoint")
def add_webhook(platform: PlatformDep, scope: Scope, body: WebhookIn) -> WebhookCreatedOut:
    """Register an endpoint for outage changes; the answer holds its signing secret, this once."""
    made = webhook_services.register(platform, scope, name=body.name, url=body.url)
    return WebhookCreatedOut(**_out(made.webhook).model_dump(), secret=made.secret)


@router.get("", response_model=list[WebhookOut], summary="List webhook endpoints")
def list_webhooks(platform: PlatformDep, scope: Scope) -> list[WebhookOut]:
    return [_out(w) for w in webhook_services.list_webhooks(platform, scope)]


@router.delete("/{webhook_id}", status_code=204, summary="Remove a webhook endpoint")
def remove_webhook(platform: PlatformDep, scope: Scope, webhook_id: Annotated[int, Path(ge=1, le=2**62)]) -> Response:
    """Stop notifying it; its undelivered notifications are dropped."""
    webhook_services.remove(platform, scope, webhook_id)
    return Response(status_code=204)
