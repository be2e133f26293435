"""The FastAPI application: routers, problem+json errors, OpenAPI at /docs."""

from __future__ import annotations

from fastapi import FastAPI

from openami import __version__
from openami.api import problems
from openami.api.routers import aggregates, auth, collection, keys, meters, public, security
from openami.services.context import Platform


def create_app(platform: Platform) -> FastAPI:
    app = FastAPI(
        title="openami",
        version=__version__,
        description=(
            "AMI head-end and meter data management. Every route but /health and POST /v1/auth/token "
            "needs a bearer token."
        ),
    )
    app.state.platform = platform
    problems.install(app)
    app.include_router(public.router)
    app.include_router(meters.router)
    app.include_router(collection.router)
    app.include_router(auth.router)
    app.include_router(aggregates.router)
    app.include_router(security.router)
    app.include_router(keys.router)
    return app
