"""Routes that need no token: an explicit, short list."""

from __future__ import annotations

from fastapi import APIRouter

from openami import __version__
from openami.api.schemas import Health

router = APIRouter(tags=["public"])


@router.get("/health", response_model=Health)
def health() -> Health:
    return Health(status="ok", version=__version__)
