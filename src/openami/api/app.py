"""The FastAPI application: routers, problem+json errors, OpenAPI at /docs."""

from __future__ import annotations

from fastapi import FastAPI

from openami import __version__
from openami.api import problems
from openami.api.routers import aggregates, auth, collection, commands, keys, meters, public, security
from openami.api.routers import cases as case_routes
from openami.api.routers import events as event_routes
from openami.api.routers import guard as guard_routes
from openami.api.routers import outages as outage_routes
from openami.api.routers import prepay as prepay_routes
from openami.api.routers import topology as topology_routes
from openami.api.routers import webhooks as webhook_routes
from openami.api.routers import workflows as workflow_routes
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
    app.include_router(commands.router)
    app.include_router(event_routes.router)
    app.include_router(case_routes.router)
    app.include_router(guard_routes.router)
    app.include_router(workflow_routes.router)
    app.include_router(prepay_routes.router)
    app.include_router(outage_routes.router)
    app.include_router(webhook_routes.router)
    app.include_router(topology_routes.router)
    return app
