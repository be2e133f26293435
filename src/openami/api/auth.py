"""Bearer-token authentication: produces the frozen RequestScope every service function takes.

Routers that need a caller declare ``Scope``; the only public routes are health, version and the
login itself. A missing, malformed, unknown, revoked or expired token is a 401 problem, and every
request's token use (or refusal) is audited by ``services.identity.authenticate_bearer``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from openami.services import identity as identity_services
from openami.services.context import Platform, RequestScope

# Declares the scheme in OpenAPI; the header itself is parsed (strictly) by the identity service.
_bearer = HTTPBearer(auto_error=False, description="API token: POST /v1/auth/token, or the first-run admin token")


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def require_scope(
    request: Request,
    platform: Annotated[Platform, Depends(get_platform)],
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> RequestScope:
    """Fail closed: no token, a malformed, unknown, revoked or expired one is a 401 problem."""
    return identity_services.authenticate_bearer(
        platform.engine,
        request.headers.getlist("authorization"),
        method=request.method,
        path=request.url.path,
        now=platform.now(),
    )


Scope = Annotated[RequestScope, Depends(require_scope)]
PlatformDep = Annotated[Platform, Depends(get_platform)]
